//! libFuzzer target `http_body`: see `missive_fuzz::http_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::http_body(data));
