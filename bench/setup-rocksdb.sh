#!/usr/bin/env bash
# Installs what the RocksDB comparison (`--features rocksdb`) needs to build
# (libclang for bindgen) and builds it. The C++ build takes ~20 minutes on
# 2 cores.
#
# RocksDB's build script passes -msse4.2 / -mpclmul to the C++ compiler only
# when the Rust target features include them, and otherwise prints
# "compiling without SSE4.2: CRC will be slow": its crc32c (every WAL record,
# and block checksums where a table asks for crc32c) then runs in software.
# The comparison is against RocksDB at its best, so the bench is built for
# this machine's CRC instructions when it has them. The flags change every
# crate's fingerprint: the build goes to its own target directory
# (target/rocksdb-bench) so it does not rebuild the test suite's.
set -euo pipefail
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y libclang-dev
fi
flags=""
if grep -qw sse4_2 /proc/cpuinfo && grep -qw pclmulqdq /proc/cpuinfo; then
  flags="-C target-feature=+sse4.2,+pclmulqdq"
fi
RUSTFLAGS="${RUSTFLAGS:-} $flags" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/rocksdb-bench}" \
  cargo build --release -p missive-bench --features rocksdb
echo "built: ${CARGO_TARGET_DIR:-target/rocksdb-bench}/release/missive-bench"
