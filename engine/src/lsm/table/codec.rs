//! Data-block compression: the codecs a block may be stored with, and the
//! per-table dictionary.
//!
//! A stored block's compression byte (see [`crate::lsm::table`]) names its
//! codec: 0 none, 1 LZ4, 2 zstd, 3 LZ4 against the table's dictionary.
//! Every compressed form starts with the block's uncompressed size (u32
//! LE), which bounds the decoder's output before it runs.
//!
//! # Why zstd, and why a dictionary, at the bottom level only
//!
//! The bottom level holds nearly all the data and is written once and
//! kept, so it alone is worth a slower compressor (the recompression pass,
//! `compaction::picker`). LZ4 — even its high-compression match finder —
//! only finds repeated strings; message text drawn from a language repeats
//! words more than strings, and only an entropy coder (zstd's Huffman and
//! FSE stages) turns that into fewer bytes: on the benchmark's messages,
//! values alone in 16 KiB blocks take 67.1 B/msg with LZ4-HC and 61.7 with
//! zstd level 3 (`missive-bench space-floor`).
//!
//! The cost is on the read side: zstd decodes at ~1 GB/s here against
//! LZ4's several, and a read decodes the whole block it needs. At 16 KiB
//! per block that put ~20 µs on every block-cache miss and doubled
//! page-back's p99. Smaller blocks decode less per query, but zstd
//! compresses a small block poorly on its own (4 KiB: 64.4 B/msg) because
//! it starts every block with empty statistics. A dictionary trained on
//! the table's own first blocks gives each block those statistics and the
//! common words up front: 8 KiB blocks with a 16 KiB dictionary take
//! 57.2 B/msg, less than 16 KiB blocks without one, and decode in half
//! the time. The dictionary is stored once per table (first in the file),
//! loaded once when the table opens, and shared by every read of it.
//!
//! # LZ4 with a dictionary: most of zstd's space at LZ4's read speed
//!
//! The same trained dictionary serves LZ4-HC too, as a *prefix*: the
//! match finder may point into the dictionary's bytes as if they came
//! just before the block, so the first use of a common word in a block
//! is a match instead of literals. On the benchmark's messages, values
//! alone in 16 KiB blocks take 61.2 B/msg at HC level 4 with a 16 KiB
//! dictionary against 67.1 without (58.9 at level 9; `space-floor`,
//! 2026-12-06), less than zstd 3 without a dictionary, while decoding as
//! fast as plain LZ4 (3.6–4.7 GB/s) — **provided the dictionary sits in
//! memory right before the output**: `LZ4_decompress_safe_usingDict`
//! takes its fast prefix path only then, and its external-dictionary path
//! measured at half the speed (1.8–2.2 GB/s). So a reading thread decodes
//! into a scratch buffer that starts with the dictionary and copies the
//! block out: one `memcpy` of the block per miss, and one of the
//! dictionary (16 KiB) when its buffer last held another table's — each
//! thread keeps 16, one per dictionary id modulo 16, so a read moving
//! between a few tables rarely pays it (a single buffer per thread cost
//! page-back's p99 ~1.5 µs); see [`decompress`].

use std::cell::RefCell;

use zstd::zstd_safe::DDict;

/// Compression byte of a block stored as built.
pub(crate) const STORED: u8 = 0;
/// Compression byte of an LZ4 block.
pub(crate) const LZ4: u8 = 1;
/// Compression byte of a zstd frame (with the table's dictionary if it has
/// one).
pub(crate) const ZSTD: u8 = 2;
/// Compression byte of an LZ4 block compressed with the table's dictionary
/// as its prefix (the block format of [`LZ4`]; decoding needs the
/// dictionary).
pub(crate) const LZ4_DICT: u8 = 3;

/// Largest uncompressed block either decoder accepts: LZ4's input limit
/// (`LZ4_MAX_INPUT_SIZE`); the builder never makes blocks near it. (The
/// block's checksum was verified before, so the size prefix is what the
/// writer stored.)
const MAX_BLOCK_BYTES: usize = 0x7E00_0000;

/// Bytes of a table's dictionary (zstd's `ZDICT` trains it to at most
/// this). 16 KiB did as well as 64 KiB on the benchmark's messages
/// (57.2 vs 56.8 B/msg at 8 KiB blocks) for a quarter of the bytes.
pub(crate) const DICTIONARY_BYTES: usize = 16 << 10;

/// Uncompressed bytes of the first blocks a table's dictionary is trained
/// on: ~100× the dictionary, zstd's own rule of thumb. Those blocks wait in
/// memory until the dictionary exists.
pub(crate) const DICTIONARY_SAMPLE_BYTES: usize = 100 * DICTIONARY_BYTES;

/// Fewest sample blocks worth training on; a table with fewer is stored
/// without a dictionary.
const MIN_SAMPLES: usize = 8;

/// How data blocks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Stored as built.
    None,
    /// lz4_flex's fast compressor: for flushes and compactions that are
    /// rewritten again soon.
    Lz4,
    /// The LZ4 reference library's high-compression match finder at this
    /// level (1–12), with a dictionary trained per table. The same block
    /// format as `Lz4`; blocks compressed against the dictionary are
    /// [`LZ4_DICT`].
    Lz4Hc(i32),
    /// zstd at this level (1–22), with a dictionary trained per table.
    Zstd(i32),
}

/// A table's block compressor: the codec, and the compression context
/// (with the dictionary, once trained) reused for every block.
pub(crate) struct Compressor {
    how: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    lz4: Option<lz4hc::DictCompressor>,
}

impl Compressor {
    pub fn new(how: Compression) -> Self {
        Compressor {
            how,
            zstd: None,
            lz4: None,
        }
    }

    /// Whether this compressor wants a dictionary trained before its first
    /// block.
    pub fn wants_dictionary(&self) -> bool {
        matches!(self.how, Compression::Zstd(_) | Compression::Lz4Hc(_))
    }

    /// Trains a dictionary on `samples` (the table's first blocks) and
    /// compresses every later block with it. `None` when there is too
    /// little to learn from or training fails: blocks are then compressed
    /// without one.
    pub fn train<S: AsRef<[u8]>>(&mut self, samples: &[S]) -> Option<Vec<u8>> {
        if !self.wants_dictionary() || samples.len() < MIN_SAMPLES {
            return None;
        }
        // zstd's trainer for both codecs: its dictionary is the header and
        // entropy tables zstd needs, then the content — the segments most
        // worth matching — which is what LZ4 finds its matches in (the few
        // header bytes before it cost nothing but their size).
        let dict = zstd::dict::from_samples(samples, DICTIONARY_BYTES).ok()?;
        match self.how {
            Compression::Zstd(level) => {
                // The context keeps its own digested copy for every later
                // frame.
                let mut c = zstd::bulk::Compressor::with_dictionary(level, &dict).ok()?;
                Self::trim(&mut c)?;
                self.zstd = Some(c);
            }
            Compression::Lz4Hc(level) => {
                self.lz4 = Some(lz4hc::DictCompressor::new(level, dict.clone())?);
            }
            Compression::None | Compression::Lz4 => return None,
        }
        Some(dict)
    }

    /// Frame fields a block does not need: its size is stored before the
    /// frame, its checksum after the block, and the dictionary is the
    /// table's.
    fn trim(c: &mut zstd::bulk::Compressor<'_>) -> Option<()> {
        c.include_checksum(false).ok()?;
        c.include_dictid(false).ok()?;
        c.include_contentsize(false).ok()?;
        Some(())
    }

    /// `raw` compressed, with its compression byte; `None` when
    /// compression is off, fails, or does not make the block smaller.
    pub fn compress(&mut self, raw: &[u8]) -> Option<(Vec<u8>, u8)> {
        let size = u32::try_from(raw.len()).ok()?;
        let (out, kind) = match self.how {
            Compression::None => return None,
            Compression::Lz4 => (lz4_flex::compress_prepend_size(raw), LZ4),
            Compression::Lz4Hc(_) if self.lz4.is_some() => {
                let c = self.lz4.as_mut()?;
                let mut out = vec![0u8; 4 + lz4hc::compress_bound(raw.len())?];
                out[..4].copy_from_slice(&size.to_le_bytes());
                let n = c.compress(raw, &mut out[4..])?;
                out.truncate(4 + n);
                (out, LZ4_DICT)
            }
            Compression::Lz4Hc(level) => {
                let bound = lz4::block::compress_bound(raw.len()).ok()?;
                let mut out = vec![0u8; bound + 4];
                let mode = lz4::block::CompressionMode::HIGHCOMPRESSION(level);
                // Fails only for inputs over 2 GiB: the block is stored raw.
                let n = lz4::block::compress_to_buffer(raw, Some(mode), true, &mut out).ok()?;
                out.truncate(n);
                (out, LZ4)
            }
            Compression::Zstd(level) => {
                if self.zstd.is_none() {
                    let mut c = zstd::bulk::Compressor::new(level).ok()?;
                    Self::trim(&mut c)?;
                    self.zstd = Some(c);
                }
                let c = self.zstd.as_mut()?;
                let mut out = vec![0u8; 4 + zstd::zstd_safe::compress_bound(raw.len())];
                out[..4].copy_from_slice(&size.to_le_bytes());
                let n = c.compress_to_buffer(raw, &mut out[4..]).ok()?;
                out.truncate(4 + n);
                (out, ZSTD)
            }
        };
        (out.len() < raw.len()).then_some((out, kind))
    }
}

/// A table's dictionary, prepared for decoding once when the table opens:
/// digested for zstd, and its bytes as they are for LZ4.
pub(crate) struct Dictionary {
    zstd: DDict<'static>,
    bytes: Vec<u8>,
    /// Unique per dictionary made in this process: how a reading thread
    /// knows its LZ4 scratch buffer already starts with these bytes (an
    /// address could be reused by the next table's dictionary).
    id: u64,
}

impl Dictionary {
    /// Digests a stored dictionary; `None` when zstd refuses it (a
    /// dictionary with zstd's magic whose tables do not parse).
    pub fn new(bytes: &[u8]) -> Option<Self> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Some(Dictionary {
            zstd: DDict::try_create(bytes)?,
            bytes: bytes.to_vec(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dictionary")
    }
}

/// The block's uncompressed size prefix and the compressed bytes after it.
fn split_size(stored: &[u8]) -> Result<(usize, &[u8]), String> {
    let (size, src) = stored
        .split_first_chunk::<4>()
        .ok_or("shorter than its size prefix")?;
    let size = u32::from_le_bytes(*size) as usize;
    if size > MAX_BLOCK_BYTES {
        return Err(format!("claims {size} bytes uncompressed"));
    }
    Ok((size, src))
}

/// Decodes a stored block of compression byte `kind`; `dict` is the
/// table's dictionary, if it has one.
pub(crate) fn decompress(
    kind: u8,
    stored: &[u8],
    dict: Option<&Dictionary>,
) -> Result<Vec<u8>, String> {
    match kind {
        STORED => Ok(stored.to_vec()),
        LZ4 => decompress_lz4(stored),
        ZSTD => decompress_zstd(stored, dict),
        LZ4_DICT => match dict {
            Some(d) => decompress_lz4_dict(stored, d),
            None => Err("LZ4 block of a dictionary, in a table without one".into()),
        },
        k => Err(format!("unknown block compression {k}")),
    }
}

/// Decodes an LZ4 block stored with its `u32` little-endian uncompressed
/// size first (the format `lz4::block::compress(.., true)` writes).
///
/// Why not `lz4::block::decompress`: it zero-fills the output buffer
/// before LZ4 overwrites all of it, and on a block-cache miss that memset
/// was 4 % of page-back's time. LZ4 writes every byte it reports.
fn decompress_lz4(stored: &[u8]) -> Result<Vec<u8>, String> {
    let (size, src) = split_size(stored)?;
    let (Ok(src_len), Ok(cap)) = (i32::try_from(src.len()), i32::try_from(size)) else {
        return Err("block too large".into());
    };
    let mut out = Vec::<u8>::with_capacity(size);
    // SAFETY: `src` is valid for `src_len` bytes and `out` has room for
    // `cap` bytes. LZ4_decompress_safe never writes past `cap` nor reads
    // past `src_len` whatever the input (it is the variant made for
    // untrusted input), and reads back only output it has written. It
    // returns how many bytes it wrote, or a negative number on malformed
    // input; only an exact, successful count marks bytes initialised.
    let n = unsafe {
        lz4::liblz4::LZ4_decompress_safe(src.as_ptr().cast(), out.as_mut_ptr().cast(), src_len, cap)
    };
    if n != cap {
        return Err(match n {
            n if n < 0 => "malformed LZ4 data".into(),
            n => format!("{n} bytes instead of {size}"),
        });
    }
    // SAFETY: the call above initialised exactly `size` bytes (n == cap).
    unsafe { out.set_len(size) };
    Ok(out)
}

/// Scratch buffers a reading thread keeps for LZ4 blocks with a
/// dictionary, each starting with one table's dictionary; a dictionary
/// takes the slot of its id modulo this (ids are handed out in order, so
/// the tables a read moves between rarely share one). Each holds its
/// dictionary and the largest block decoded there — ~24 KiB with the
/// default 8 KiB blocks — allocated as used.
const LZ4_SCRATCH_SLOTS: usize = 16;

thread_local! {
    /// Each reading thread's LZ4 scratch buffers: per slot, the id of the
    /// dictionary its bytes start with (0: none yet), and the buffer — that
    /// dictionary, then room for a block.
    static LZ4_SCRATCH: RefCell<Vec<(u64, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
}

/// Decodes an LZ4 block compressed with `dict` as its prefix: into one of
/// this thread's scratch buffers right after a copy of the dictionary
/// (LZ4's fast path, see the module's essay; the copy is made when the
/// slot last held another table's), then out into a block of its own.
fn decompress_lz4_dict(stored: &[u8], dict: &Dictionary) -> Result<Vec<u8>, String> {
    let (size, src) = split_size(stored)?;
    let (Ok(src_len), Ok(cap), Ok(dict_len)) = (
        i32::try_from(src.len()),
        i32::try_from(size),
        i32::try_from(dict.bytes.len()),
    ) else {
        return Err("block too large".into());
    };
    LZ4_SCRATCH.with(|cell| {
        let mut slots = cell.borrow_mut();
        if slots.is_empty() {
            slots.resize_with(LZ4_SCRATCH_SLOTS, || (0, Vec::new()));
        }
        let (placed, buf) = &mut slots[(dict.id % LZ4_SCRATCH_SLOTS as u64) as usize];
        let d = dict.bytes.len();
        if *placed != dict.id {
            buf.clear();
            buf.extend_from_slice(&dict.bytes);
            *placed = dict.id;
        }
        buf.truncate(d);
        buf.reserve(size);
        // SAFETY: `buf` holds the dictionary's `d` initialised bytes with
        // room for `size` more after them, and `src` is valid for `src_len`
        // bytes. LZ4_decompress_safe_usingDict is the variant for untrusted
        // input: it never writes past `cap` bytes from its output pointer,
        // never reads past `src_len`, and never reads before the
        // dictionary's start (a match reaching further back is an error).
        // The dictionary ends exactly where the output begins, which is
        // what selects its prefix path.
        let n = unsafe {
            let base = buf.as_mut_ptr();
            lz4hc::LZ4_decompress_safe_usingDict(
                src.as_ptr().cast(),
                base.add(d).cast(),
                src_len,
                cap,
                base.cast_const().cast(),
                dict_len,
            )
        };
        if n != cap {
            return Err(match n {
                n if n < 0 => "malformed LZ4 data".to_string(),
                n => format!("{n} bytes instead of {size}"),
            });
        }
        // SAFETY: the call initialised exactly `size` bytes after the
        // dictionary (n == cap).
        unsafe { buf.set_len(d + size) };
        Ok(buf[d..].to_vec())
    })
}

thread_local! {
    /// Each reading thread's zstd decompression context: creating one per
    /// block (~100 KiB of tables to set up) cost more than decoding a
    /// small block.
    static DCTX: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// Decodes a zstd block: its size first, then a frame without checksum,
/// compressed with `dict` when the table has one.
fn decompress_zstd(stored: &[u8], dict: Option<&Dictionary>) -> Result<Vec<u8>, String> {
    let (size, src) = split_size(stored)?;
    let mut out = Vec::<u8>::with_capacity(size);
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = match slot.as_mut() {
            Some(d) => d,
            None => slot
                .insert(zstd::zstd_safe::DCtx::try_create().ok_or("no memory for a zstd context")?),
        };
        // The context is bounded by `out`'s capacity: it never writes
        // more than `size` bytes, whatever the frame claims.
        let n = match dict {
            Some(d) => dctx.decompress_using_ddict(&mut out, src, &d.zstd),
            None => dctx.decompress(&mut out, src),
        }
        .map_err(|code| {
            format!(
                "malformed zstd data ({})",
                zstd::zstd_safe::get_error_name(code)
            )
        })?;
        if n != size {
            return Err(format!("{n} bytes instead of {size}"));
        }
        Ok(out)
    })
}

/// The LZ4 reference library's streaming high-compression API and its
/// dictionary decoder: `lz4-sys` compiles them (lz4 1.10, `lz4hc.c` and
/// `lz4.c`) but does not declare them.
mod lz4hc {
    use std::os::raw::{c_char, c_int, c_void};

    extern "C" {
        fn LZ4_createStreamHC() -> *mut c_void;
        fn LZ4_freeStreamHC(stream: *mut c_void) -> c_int;
        fn LZ4_resetStreamHC_fast(stream: *mut c_void, level: c_int);
        fn LZ4_loadDictHC(stream: *mut c_void, dict: *const c_char, size: c_int) -> c_int;
        fn LZ4_attach_HC_dictionary(working: *mut c_void, dict: *const c_void);
        fn LZ4_compress_HC_continue(
            stream: *mut c_void,
            src: *const c_char,
            dst: *mut c_char,
            src_size: c_int,
            dst_capacity: c_int,
        ) -> c_int;
        fn LZ4_compressBound(size: c_int) -> c_int;
        pub fn LZ4_decompress_safe_usingDict(
            src: *const c_char,
            dst: *mut c_char,
            src_size: c_int,
            dst_capacity: c_int,
            dict: *const c_char,
            dict_size: c_int,
        ) -> c_int;
    }

    /// Bytes an LZ4 block of `len` input bytes may take at worst.
    pub fn compress_bound(len: usize) -> Option<usize> {
        // SAFETY: a pure function of its argument.
        let n = unsafe { LZ4_compressBound(c_int::try_from(len).ok()?) };
        usize::try_from(n).ok().filter(|&n| n > 0)
    }

    /// An HC stream: freed when dropped.
    struct Stream(*mut c_void);

    impl Stream {
        fn new() -> Option<Self> {
            // SAFETY: allocates and initialises a stream, or returns null.
            let p = unsafe { LZ4_createStreamHC() };
            (!p.is_null()).then_some(Stream(p))
        }
    }

    impl Drop for Stream {
        fn drop(&mut self) {
            // SAFETY: made by LZ4_createStreamHC, freed once.
            unsafe { LZ4_freeStreamHC(self.0) };
        }
    }

    /// LZ4-HC at one level against one dictionary: the dictionary indexed
    /// once into a stream of its own, attached to a working stream per
    /// block (each block independent of the others, as a reader needs).
    pub struct DictCompressor {
        level: c_int,
        working: Stream,
        // Declared after `working`, so dropped after it: the working
        // stream refers to the dictionary stream, which refers to `dict`'s
        // bytes (a Vec's heap buffer, which does not move).
        dictionary: Stream,
        dict: Vec<u8>,
    }

    // SAFETY: the streams are owned by this value alone, used only through
    // `&mut self`, and LZ4 keeps no thread-local state.
    unsafe impl Send for DictCompressor {}

    impl DictCompressor {
        pub fn new(level: i32, dict: Vec<u8>) -> Option<Self> {
            let size = c_int::try_from(dict.len()).ok()?;
            let (working, dictionary) = (Stream::new()?, Stream::new()?);
            // SAFETY: `dictionary` is a live stream; `dict` outlives it
            // (field order above) and is not changed again.
            unsafe {
                LZ4_resetStreamHC_fast(dictionary.0, level);
                LZ4_loadDictHC(dictionary.0, dict.as_ptr().cast(), size);
            }
            Some(DictCompressor {
                level,
                working,
                dictionary,
                dict,
            })
        }

        /// `raw` compressed into `out` (at least [`compress_bound`] bytes);
        /// the bytes written, `None` if LZ4 fails.
        pub fn compress(&mut self, raw: &[u8], out: &mut [u8]) -> Option<usize> {
            let src_len = c_int::try_from(raw.len()).ok()?;
            let cap = c_int::try_from(out.len()).ok()?;
            debug_assert!(!self.dict.is_empty());
            // SAFETY: both streams are live; the reset drops whatever the
            // working stream saw of the previous block, so the block is
            // compressed against the dictionary alone; `raw` and `out` are
            // valid for their lengths, and LZ4 writes at most `cap` bytes.
            let n = unsafe {
                LZ4_resetStreamHC_fast(self.working.0, self.level);
                LZ4_attach_HC_dictionary(self.working.0, self.dictionary.0);
                LZ4_compress_HC_continue(
                    self.working.0,
                    raw.as_ptr().cast(),
                    out.as_mut_ptr().cast(),
                    src_len,
                    cap,
                )
            };
            usize::try_from(n).ok().filter(|&n| n > 0)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// Text-like blocks: words of a 2 000-word vocabulary, the common ones
    /// far more often (as in a language), with a few binary bytes between.
    fn blocks(n: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = fastrand::Rng::with_seed(1);
        let words: Vec<Vec<u8>> = (0..2000)
            .map(|_| {
                (0..rng.usize(2..9))
                    .map(|_| rng.alphabetic() as u8)
                    .collect()
            })
            .collect();
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n)
            .map(|_| {
                let mut b = Vec::new();
                while b.len() < len {
                    let w = (rng.f64().powi(3) * words.len() as f64) as usize;
                    b.extend_from_slice(&words[w]);
                    b.push(b' ');
                    b.extend_from_slice(&rng.u32(..).to_le_bytes()[..rng.usize(..2)]);
                }
                b
            })
            .collect()
    }

    fn round_trip(how: Compression, train: bool) {
        let all = blocks(40, 8 << 10, 3);
        let mut c = Compressor::new(how);
        let dict = if train { c.train(&all[..20]) } else { None };
        assert_eq!(dict.is_some(), train, "{how:?}");
        let d = dict.as_deref().and_then(Dictionary::new);
        for (i, raw) in all.iter().enumerate() {
            let (stored, kind) = c.compress(raw).unwrap();
            assert!(stored.len() < raw.len(), "{how:?} block {i} did not shrink");
            assert_eq!(
                decompress(kind, &stored, d.as_ref()).unwrap(),
                *raw,
                "{how:?} {i}"
            );
        }
    }

    #[test]
    fn every_codec_returns_what_it_stored() {
        round_trip(Compression::Lz4, false);
        round_trip(Compression::Lz4Hc(4), false);
        round_trip(Compression::Lz4Hc(4), true);
        round_trip(Compression::Zstd(3), false);
        round_trip(Compression::Zstd(3), true);
    }

    #[test]
    fn lz4_decodes_blocks_of_every_size_from_either_compressor() {
        let mut rng = fastrand::Rng::with_seed(7);
        for len in [4096usize, 16_384, 70_000] {
            let raw: Vec<u8> = (0..len).map(|_| b"abcab "[rng.usize(..6)]).collect();
            for how in [Compression::Lz4, Compression::Lz4Hc(4)] {
                let (stored, kind) = Compressor::new(how).compress(&raw).unwrap();
                assert_eq!(
                    decompress(kind, &stored, None).unwrap(),
                    raw,
                    "{len} {how:?}"
                );
            }
        }
    }

    #[test]
    fn a_dictionary_makes_small_blocks_smaller() {
        let all = blocks(200, 8 << 10, 5);
        let total = |c: &mut Compressor| -> usize {
            all[100..]
                .iter()
                .map(|b| c.compress(b).unwrap().0.len())
                .sum()
        };
        for how in [Compression::Zstd(3), Compression::Lz4Hc(4)] {
            let plain = total(&mut Compressor::new(how));
            let mut trained = Compressor::new(how);
            trained.train(&all[..100]).unwrap();
            let with = total(&mut trained);
            assert!(
                with < plain * 95 / 100,
                "{how:?}: {with} vs {plain} without a dictionary"
            );
        }
    }

    /// A reading thread's scratch buffers keep the dictionaries last used;
    /// blocks of more tables than there are slots, read in turn, must each
    /// be decoded against their own (the id, not the slot or the address,
    /// says which dictionary is in place).
    #[test]
    fn lz4_blocks_of_alternating_tables_decode_against_their_own_dictionary() {
        let tables: Vec<_> = (0..LZ4_SCRATCH_SLOTS as u64 + 2)
            .map(|seed| {
                let all = blocks(24, 16 << 10, 100 + seed);
                let mut c = Compressor::new(Compression::Lz4Hc(4));
                let dict = Dictionary::new(&c.train(&all[..20]).unwrap()).unwrap();
                let stored: Vec<_> = all[20..].iter().map(|r| c.compress(r).unwrap()).collect();
                (dict, stored, all)
            })
            .collect();
        for i in 0..4 {
            for (dict, stored, all) in &tables {
                let (bytes, kind) = &stored[i];
                assert_eq!(*kind, LZ4_DICT);
                assert_eq!(decompress(*kind, bytes, Some(dict)).unwrap(), all[20 + i]);
            }
        }
        // Without the dictionary it was written with: an error, never
        // another block.
        let (a, b) = (&tables[0], &tables[1]);
        let (bytes, kind) = &a.1[0];
        assert!(decompress(*kind, bytes, None).is_err());
        assert_ne!(
            decompress(*kind, bytes, Some(&b.0)).ok(),
            Some(a.2[20].clone())
        );
    }

    #[test]
    fn too_few_samples_train_nothing() {
        let mut c = Compressor::new(Compression::Zstd(3));
        assert!(c.train(&blocks(MIN_SAMPLES - 1, 8 << 10, 1)).is_none());
        assert!(Compressor::new(Compression::Lz4)
            .train(&blocks(50, 8 << 10, 1))
            .is_none());
    }

    /// Whatever the bytes, decoding fails cleanly or returns exactly the
    /// size the block claims — never more, never a crash.
    #[test]
    fn decoders_refuse_what_their_compressor_did_not_write() {
        let raw = blocks(1, 5000, 9).pop().unwrap();
        let mut trained = Compressor::new(Compression::Lz4Hc(4));
        let dict = trained
            .train(&blocks(20, 8 << 10, 10))
            .and_then(|d| Dictionary::new(&d))
            .unwrap();
        for how in [
            Compression::Lz4,
            Compression::Zstd(3),
            Compression::Lz4Hc(4),
        ] {
            let (good, kind) = match how {
                Compression::Lz4Hc(_) => trained.compress(&raw).unwrap(),
                _ => Compressor::new(how).compress(&raw).unwrap(),
            };
            let d = (kind == LZ4_DICT).then_some(&dict);
            let size = u32::from_le_bytes(good[..4].try_into().unwrap());
            let with_size = |n: u32| {
                let mut s = good.clone();
                s[..4].copy_from_slice(&n.to_le_bytes());
                s
            };
            let cases: Vec<(&str, Vec<u8>)> = vec![
                ("no size", good[..3].to_vec()),
                ("truncated", good[..good.len() / 2].to_vec()),
                ("size too small", with_size(size - 1)),
                ("size too large", with_size(size + 1)),
                ("size past the limit", with_size(u32::MAX)),
                ("garbage", [&good[..4], &[0xFF; 64][..]].concat()),
            ];
            for (what, bad) in cases {
                assert!(
                    decompress(kind, &bad, d).is_err(),
                    "{how:?}: {what} accepted"
                );
            }
        }
        assert!(
            decompress(4, &[0; 16], Some(&dict)).is_err(),
            "unknown codec accepted"
        );
    }

    #[test]
    fn a_block_needs_the_dictionary_it_was_written_with() {
        let all = blocks(30, 8 << 10, 11);
        let mut c = Compressor::new(Compression::Zstd(3));
        c.train(&all[..20]).unwrap();
        let (stored, kind) = c.compress(&all[25]).unwrap();
        let other = Compressor::new(Compression::Zstd(3)).train(&blocks(30, 8 << 10, 12)[..20]);
        let other = Dictionary::new(&other.unwrap()).unwrap();
        assert_ne!(
            decompress(kind, &stored, Some(&other)).ok(),
            Some(all[25].clone())
        );
    }
}
