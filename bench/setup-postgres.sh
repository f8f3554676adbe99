#!/usr/bin/env bash
# Installs what the PostgreSQL anchor of `missive-bench search`
# (`--features postgres`) needs: the Debian `postgresql` package (its
# binaries under /usr/lib/postgresql/<version>/bin and a `postgres` user;
# the bench starts its own private server in a temporary directory and
# never touches the package's cluster).
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
fi
cargo build --release -p missive-bench --features postgres
