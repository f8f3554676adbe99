//! libFuzzer target `table_file`: see `missive_fuzz::table_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::table_file(data));
