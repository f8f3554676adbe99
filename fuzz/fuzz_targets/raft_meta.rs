//! libFuzzer target `raft_meta`: see `missive_fuzz::raft_meta`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| missive_fuzz::raft_meta(data));
