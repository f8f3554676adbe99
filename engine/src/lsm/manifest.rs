//! The manifest: a checksummed log of version edits, so the set of live
//! tables, the next table id, the last sequence number and how far each log
//! stream has been flushed survive restarts.
//!
//! ## Files
//!
//! `CURRENT` names the live manifest (`MANIFEST-000042\n`); it is replaced
//! crash-safely (temp file, fsync, rename, fsync the directory). Every open
//! writes a fresh manifest holding one snapshot edit of the whole state and
//! then points `CURRENT` at it, so a manifest never grows across restarts and
//! a torn tail of the previous one is left behind with it. While running,
//! a manifest that grows past a bound is rewritten the same way.
//!
//! ## Format (version 4; versions 1–3, without tags 6 and 7 or 8 and 9, are read too)
//!
//! ```text
//! header:  magic b"MSVMANIF" ‖ version u16 LE ‖ reserved u16 ‖ crc32 u32 LE (of the 12 bytes before)
//! record:  crc32 u32 LE (of len ‖ payload) ‖ len u32 LE ‖ payload
//! payload: a sequence of fields, each a tag byte then:
//!   1 add file    level u8, id u64, size u64, smallest (u16 len ‖ bytes),
//!                 largest (u16 len ‖ bytes), min_seq u64, max_seq u64, entries u64
//!   2 remove file level u8, id u64
//!   3 next table id u64
//!   4 last seq      u64
//!   5 flushed       stream u64, index u64
//!   6 forget flushed stream u64: the stream has no flushed position (its
//!                 log was reset); applied before any tag 5 of the same edit
//!   7 recompressed id u64: the file this edit adds (a tag 1 before it in
//!                 the same edit) was written by the recompression pass
//!   8 pin blob    id u64: blob file `id` is kept at open although no table
//!                 may reference it (written by the store's owner, see
//!                 `Lsm::create_pinned_blob_file`)
//!   9 unpin blob  id u64: the pin is gone; applied after any tag 8 of the
//!                 same edit
//! ```
//!
//! Integers little-endian. A record is applied whole or not at all. On load,
//! a bad or incomplete *last* record is a write the crash interrupted (its
//! edit was never acknowledged: the edit's fsync had not returned) and is
//! ignored; a bad record followed by an intact one is corruption.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{write_file_atomic, OsFs};
use crate::log::StreamId;
use crate::lsm::table::TableId;
use crate::lsm::version::FileMeta;

const MAGIC: [u8; 8] = *b"MSVMANIF";
const VERSION: u16 = 4;
/// The oldest manifest version this build reads.
const VERSION_MIN: u16 = 1;
const HEADER_LEN: usize = 16;
/// Rewrite the manifest once it grows past this.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// One change to the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Edit {
    pub added: Vec<FileMeta>,
    pub removed: Vec<(u8, TableId)>,
    pub next_table_id: Option<u64>,
    pub last_seq: Option<u64>,
    pub flushed: Vec<(StreamId, u64)>,
    /// Streams whose flushed position is dropped (applied before
    /// `flushed`).
    pub forgotten: Vec<StreamId>,
    /// Blob files pinned by this edit (kept at open without a table).
    pub pinned_blobs: Vec<u64>,
    /// Blob files unpinned by this edit (applied after `pinned_blobs`).
    pub unpinned_blobs: Vec<u64>,
}

/// The state a manifest describes.
#[derive(Debug, Clone, Default)]
pub(crate) struct ManifestState {
    pub files: BTreeMap<TableId, FileMeta>,
    pub next_table_id: u64,
    pub last_seq: u64,
    pub flushed: HashMap<StreamId, u64>,
    /// Blob files kept at open although no table may reference them.
    pub pinned_blobs: BTreeSet<u64>,
}

impl ManifestState {
    pub fn apply(&mut self, e: &Edit) {
        for (_, id) in &e.removed {
            self.files.remove(id);
        }
        for f in &e.added {
            self.files.insert(f.id, f.clone());
        }
        if let Some(n) = e.next_table_id {
            self.next_table_id = self.next_table_id.max(n);
        }
        if let Some(s) = e.last_seq {
            self.last_seq = self.last_seq.max(s);
        }
        for s in &e.forgotten {
            self.flushed.remove(s);
        }
        for (s, i) in &e.flushed {
            let v = self.flushed.entry(*s).or_insert(0);
            *v = (*v).max(*i);
        }
        self.pinned_blobs.extend(&e.pinned_blobs);
        for id in &e.unpinned_blobs {
            self.pinned_blobs.remove(id);
        }
    }

    /// One edit that recreates this state.
    pub fn snapshot(&self) -> Edit {
        let mut flushed: Vec<_> = self.flushed.iter().map(|(s, i)| (*s, *i)).collect();
        flushed.sort();
        Edit {
            added: self.files.values().cloned().collect(),
            removed: Vec::new(),
            next_table_id: Some(self.next_table_id),
            last_seq: Some(self.last_seq),
            flushed,
            forgotten: Vec::new(),
            pinned_blobs: self.pinned_blobs.iter().copied().collect(),
            unpinned_blobs: Vec::new(),
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

impl Edit {
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::new();
        for f in &self.added {
            o.push(1);
            o.push(f.level);
            o.extend_from_slice(&f.id.0.to_le_bytes());
            o.extend_from_slice(&f.size.to_le_bytes());
            put_bytes(&mut o, &f.smallest);
            put_bytes(&mut o, &f.largest);
            o.extend_from_slice(&f.min_seq.to_le_bytes());
            o.extend_from_slice(&f.max_seq.to_le_bytes());
            o.extend_from_slice(&f.entries.to_le_bytes());
            if f.recompressed {
                o.push(7);
                o.extend_from_slice(&f.id.0.to_le_bytes());
            }
        }
        for (level, id) in &self.removed {
            o.push(2);
            o.push(*level);
            o.extend_from_slice(&id.0.to_le_bytes());
        }
        if let Some(n) = self.next_table_id {
            o.push(3);
            o.extend_from_slice(&n.to_le_bytes());
        }
        if let Some(n) = self.last_seq {
            o.push(4);
            o.extend_from_slice(&n.to_le_bytes());
        }
        for s in &self.forgotten {
            o.push(6);
            o.extend_from_slice(&s.0.to_le_bytes());
        }
        for (s, i) in &self.flushed {
            o.push(5);
            o.extend_from_slice(&s.0.to_le_bytes());
            o.extend_from_slice(&i.to_le_bytes());
        }
        for id in &self.pinned_blobs {
            o.push(8);
            o.extend_from_slice(&id.to_le_bytes());
        }
        for id in &self.unpinned_blobs {
            o.push(9);
            o.extend_from_slice(&id.to_le_bytes());
        }
        o
    }

    pub fn decode(b: &[u8]) -> Option<Edit> {
        let mut e = Edit::default();
        let mut p = 0usize;
        let u64_at = |p: &mut usize| -> Option<u64> {
            let v = u64::from_le_bytes(b.get(*p..*p + 8)?.try_into().ok()?);
            *p += 8;
            Some(v)
        };
        let bytes_at = |p: &mut usize| -> Option<Vec<u8>> {
            let n = u16::from_le_bytes([*b.get(*p)?, *b.get(*p + 1)?]) as usize;
            let v = b.get(*p + 2..*p + 2 + n)?.to_vec();
            *p += 2 + n;
            Some(v)
        };
        while p < b.len() {
            let tag = b[p];
            p += 1;
            match tag {
                1 => {
                    let level = *b.get(p)?;
                    p += 1;
                    let id = TableId(u64_at(&mut p)?);
                    let size = u64_at(&mut p)?;
                    let smallest = bytes_at(&mut p)?;
                    let largest = bytes_at(&mut p)?;
                    let min_seq = u64_at(&mut p)?;
                    let max_seq = u64_at(&mut p)?;
                    let entries = u64_at(&mut p)?;
                    e.added.push(FileMeta {
                        id,
                        level,
                        size,
                        smallest,
                        largest,
                        min_seq,
                        max_seq,
                        entries,
                        recompressed: false,
                    });
                }
                2 => {
                    let level = *b.get(p)?;
                    p += 1;
                    e.removed.push((level, TableId(u64_at(&mut p)?)));
                }
                3 => e.next_table_id = Some(u64_at(&mut p)?),
                4 => e.last_seq = Some(u64_at(&mut p)?),
                5 => {
                    let s = StreamId(u64_at(&mut p)?);
                    e.flushed.push((s, u64_at(&mut p)?));
                }
                6 => e.forgotten.push(StreamId(u64_at(&mut p)?)),
                7 => {
                    let id = TableId(u64_at(&mut p)?);
                    e.added.iter_mut().find(|f| f.id == id)?.recompressed = true;
                }
                8 => e.pinned_blobs.push(u64_at(&mut p)?),
                9 => e.unpinned_blobs.push(u64_at(&mut p)?),
                _ => return None,
            }
        }
        Some(e)
    }
}

/// The open manifest file, appended to by flushes and compactions.
#[derive(Debug)]
pub(crate) struct ManifestWriter {
    dir: PathBuf,
    number: u64,
    path: PathBuf,
    file: File,
    size: u64,
}

fn manifest_name(n: u64) -> String {
    format!("MANIFEST-{n:06}")
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(payload.len() + 8);
    rec.extend_from_slice(&[0u8; 4]);
    rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    rec.extend_from_slice(payload);
    let crc = crc32fast::hash(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
    rec
}

impl ManifestWriter {
    /// Writes manifest number `number` holding `state`, points CURRENT at it,
    /// and removes the manifest it replaces.
    pub fn create(dir: &Path, number: u64, state: &ManifestState) -> Result<ManifestWriter> {
        let path = dir.join(manifest_name(number));
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(&frame(&state.snapshot().encode()));
        let fs = OsFs::std();
        let io = |op| {
            let p = path.clone();
            move |e| Error::io(op, p, e)
        };
        // The manifest itself is new, so atomic creation is just this:
        write_file_atomic(&fs, dir, &manifest_name(number), &bytes).map_err(io("write"))?;
        write_file_atomic(
            &fs,
            dir,
            "CURRENT",
            format!("{}\n", manifest_name(number)).as_bytes(),
        )
        .map_err(io("point CURRENT at"))?;
        if number > 0 {
            let old = dir.join(manifest_name(number - 1));
            if old.exists() {
                std::fs::remove_file(&old).map_err(|e| Error::io("remove", &old, e))?;
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io("open"))?;
        Ok(ManifestWriter {
            dir: dir.to_path_buf(),
            number,
            path,
            file,
            size: bytes.len() as u64,
        })
    }

    /// Appends an edit and fsyncs it. Once this returns, the edit is durable.
    pub fn append(&mut self, edit: &Edit) -> Result<()> {
        let rec = frame(&edit.encode());
        self.file
            .write_all(&rec)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io("append to", &self.path, e))?;
        self.size += rec.len() as u64;
        Ok(())
    }

    /// Rewrites the manifest as one snapshot if it has grown too large.
    pub fn maybe_rotate(&mut self, state: &ManifestState) -> Result<()> {
        if self.size > MAX_MANIFEST_BYTES {
            *self = ManifestWriter::create(&self.dir, self.number + 1, state)?;
        }
        Ok(())
    }
}

/// Loads the manifest CURRENT names. `Ok(None)` for a new directory.
pub(crate) fn load(dir: &Path) -> Result<Option<(u64, ManifestState)>> {
    Ok(load_edits(dir)?.map(|(n, _, edits)| {
        let mut state = ManifestState::default();
        for e in &edits {
            state.apply(e);
        }
        (n, state)
    }))
}

/// The manifest CURRENT names: its number, path and every intact edit in
/// order (a torn final record is left out, as `load` does).
pub(crate) fn load_edits(dir: &Path) -> Result<Option<(u64, PathBuf, Vec<Edit>)>> {
    let current = dir.join("CURRENT");
    let name = match std::fs::read_to_string(&current) {
        Ok(s) => s.trim_end().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &current, e)),
    };
    let number = name
        .strip_prefix("MANIFEST-")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            Error::corruption(
                &current,
                0,
                format!("CURRENT names {name:?}, not a manifest"),
            )
        })?;
    let path = dir.join(&name);
    let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
    let edits = parse_edits(&path, &bytes)?;
    Ok(Some((number, path, edits)))
}

/// A manifest file's intact edits, in order: the header checked, a torn
/// final record left out, a bad record followed by an intact one
/// corruption (`path` only names the file in errors).
pub(crate) fn parse_edits(path: &Path, bytes: &[u8]) -> Result<Vec<Edit>> {
    let corrupt = |off: usize, why: &str| Error::corruption(path, off as u64, why.to_owned());
    if bytes.len() < HEADER_LEN || bytes[0..8] != MAGIC {
        return Err(corrupt(0, "bad magic: not a Missive manifest"));
    }
    let h_crc = u32::from_le_bytes(
        bytes[12..16]
            .try_into()
            .map_err(|_| corrupt(12, "header"))?,
    );
    if crc32fast::hash(&bytes[0..12]) != h_crc {
        return Err(corrupt(0, "manifest header checksum mismatch"));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !(VERSION_MIN..=VERSION).contains(&version) {
        return Err(Error::UnsupportedVersion {
            file: path.to_path_buf(),
            found: u32::from(version),
            supported: u32::from(VERSION),
        });
    }
    let mut edits = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < bytes.len() {
        match decode_record(bytes, pos) {
            Some((edit, len)) => {
                edits.push(edit);
                pos += len;
            }
            None => {
                // A bad record is a torn tail only if nothing intact follows.
                if (pos + 1..bytes.len()).any(|p| decode_record(bytes, p).is_some()) {
                    return Err(corrupt(pos, "bad manifest record followed by intact ones"));
                }
                tracing::warn!(path = %path.display(), pos, "ignoring a torn final manifest record");
                break;
            }
        }
    }
    if edits.is_empty() {
        return Err(corrupt(HEADER_LEN, "manifest holds no intact record"));
    }
    Ok(edits)
}

fn decode_record(bytes: &[u8], pos: usize) -> Option<(Edit, usize)> {
    let crc = u32::from_le_bytes(bytes.get(pos..pos + 4)?.try_into().ok()?);
    let len = u32::from_le_bytes(bytes.get(pos + 4..pos + 8)?.try_into().ok()?) as usize;
    let body = bytes.get(pos + 4..pos.checked_add(8)?.checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some((Edit::decode(&body[4..])?, 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_round_trip() {
        let e = Edit {
            added: vec![FileMeta {
                id: TableId(7),
                level: 2,
                size: 100,
                smallest: b"a".to_vec(),
                largest: b"z".to_vec(),
                min_seq: 1,
                max_seq: 9,
                entries: 5,
                recompressed: true,
            }],
            removed: vec![(0, TableId(3))],
            next_table_id: Some(8),
            last_seq: Some(9),
            flushed: vec![(StreamId(1), 42)],
            forgotten: vec![StreamId(2)],
            pinned_blobs: vec![11, 12],
            unpinned_blobs: vec![5],
        };
        assert_eq!(Edit::decode(&e.encode()), Some(e));
    }

    #[test]
    fn pins_come_and_go_and_survive_the_snapshot() {
        let mut st = ManifestState::default();
        st.apply(&Edit {
            pinned_blobs: vec![4, 5],
            ..Edit::default()
        });
        // An unpin in the same edit as its pin wins.
        st.apply(&Edit {
            pinned_blobs: vec![6],
            unpinned_blobs: vec![4, 6],
            ..Edit::default()
        });
        assert_eq!(st.pinned_blobs, BTreeSet::from([5]));
        let mut again = ManifestState::default();
        again.apply(&Edit::decode(&st.snapshot().encode()).unwrap());
        assert_eq!(again.pinned_blobs, st.pinned_blobs);
    }
}
