//! libFuzzer target `snapshot_file`: see `missive_fuzz::snapshot_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::snapshot_file(data));
