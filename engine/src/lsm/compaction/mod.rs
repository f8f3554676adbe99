//! Compaction: the pure picker (`picker`) decides, the worker (`worker`)
//! merges and writes, and `sim` runs the picker on synthetic workloads
//! without disk. The same two carry the recompression pass
//! (`picker::pick_recompress`): one table of the deepest level rewritten
//! with LZ4-HC in idle time.

pub mod picker;
pub mod sim;
pub(crate) mod worker;
