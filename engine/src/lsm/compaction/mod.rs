//! Compaction: the pure picker (`picker`) decides, the worker (`worker`)
//! merges and writes, and `sim` runs the picker on synthetic workloads
//! without disk.

pub mod picker;
pub mod sim;
pub(crate) mod worker;
