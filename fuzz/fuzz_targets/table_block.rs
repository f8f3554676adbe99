//! libFuzzer target `table_block`: see `missive_fuzz::table_block`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::table_block(data));
