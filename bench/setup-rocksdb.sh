#!/usr/bin/env bash
# Installs what the RocksDB comparison (`--features rocksdb`) needs to build:
# libclang for bindgen. The C++ build itself takes ~17 minutes on 2 cores.
set -euo pipefail
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y libclang-dev
fi
cargo build --release -p missive-bench --features rocksdb
