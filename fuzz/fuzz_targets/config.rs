//! libFuzzer target `config`: see `missive_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::config(data));
