//! libFuzzer target `manifest`: see `missive_fuzz::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::manifest(data));
