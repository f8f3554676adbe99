//! libFuzzer target `signal`: see `missive_fuzz::signal`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::signal(data));
