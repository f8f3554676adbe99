//! Little-endian integers read from the start of a byte slice: the fixed
//! fields of the log's frames, the tables' footers and index entries, and
//! the blob files' records (every on-disk integer of the engine is LE).
//!
//! Callers pass slices they have already bounds-checked against the
//! format's lengths; a shorter slice is a bug in the caller and panics.

/// The u32 LE at the start of `b` (at least 4 bytes).
pub(crate) fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// The u64 LE at the start of `b` (at least 8 bytes).
pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}
