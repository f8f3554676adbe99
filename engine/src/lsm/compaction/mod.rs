//! Compaction: the pure picker (`picker`) decides, the worker (`worker`)
//! merges and writes.

pub mod picker;
pub(crate) mod worker;
