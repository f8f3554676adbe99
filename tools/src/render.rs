//! Rendering inspection results: a table for people, JSON for scripts.

use std::fmt::Write as _;

use missive_engine::inspect::{DirStats, LogSegmentDump, ManifestDump, TableDump, VerifyReport};
use missive_engine::keys::decode_message_key;
use missive_engine::lsm::compaction::sim::{SimConfig, SimReport};
use missive_engine::residue::Search;
use serde_json::{json, Value};

/// One command's output in both forms.
pub struct Output {
    pub text: String,
    pub json: Value,
}

/// A key for people: message keys decoded, anything else in hex.
fn key(k: &[u8]) -> String {
    match decode_message_key(k) {
        Some((conv, ts)) => format!("msg conv={} ts={}", conv.0, ts.0),
        None => k.iter().fold(String::from("0x"), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
}

pub fn log(segments: &[LogSegmentDump], records: bool) -> Output {
    let mut text = String::new();
    let mut js = Vec::new();
    for s in segments {
        let torn = s
            .torn
            .as_ref()
            .map(|(off, why)| format!(", torn tail at {off}: {why}"))
            .unwrap_or_default();
        let _ = writeln!(
            text,
            "{}  seq {}  {} records  {} bytes used  {}{}",
            s.path.display(),
            s.seq,
            s.records.len(),
            s.end,
            if s.sealed { "sealed" } else { "open" },
            torn
        );
        let mut recs = Vec::new();
        if records {
            for r in &s.records {
                let _ = writeln!(
                    text,
                    "  @{:<10} {:<10} stream {:<6} index {:<10} {} bytes",
                    r.offset, r.kind, r.stream, r.index, r.len
                );
                recs.push(json!({"offset": r.offset, "kind": r.kind, "stream": r.stream, "index": r.index, "len": r.len}));
            }
        }
        let mut o = json!({
            "path": s.path, "seq": s.seq, "records": s.records.len(), "end": s.end,
            "sealed": s.sealed,
            "torn_tail": s.torn.as_ref().map(|(off, why)| json!({"offset": off, "reason": why})),
        });
        if records {
            o["record_list"] = Value::Array(recs);
        }
        js.push(o);
    }
    Output {
        text,
        json: json!({ "segments": js }),
    }
}

pub fn table(t: &TableDump) -> Output {
    let mut text = String::new();
    let tombstones: usize = t.blocks.iter().map(|b| b.tombstones).sum();
    let _ = writeln!(text, "table      {}", t.path.display());
    let _ = writeln!(text, "size       {} bytes ({})", t.size, mib(t.size));
    let _ = writeln!(text, "entries    {} ({tombstones} tombstones)", t.entries);
    let _ = writeln!(
        text,
        "key range  {} .. {}",
        key(&t.smallest),
        key(&t.largest)
    );
    let _ = writeln!(
        text,
        "format     version {} ({} blocks)",
        t.format_version,
        if t.format_version == 1 {
            "interleaved"
        } else {
            "columnar"
        }
    );
    let _ = writeln!(text, "blocks     {}", t.blocks.len());
    let _ = writeln!(
        text,
        "bloom      {} bytes, {} probes",
        t.bloom_bytes, t.bloom_probes
    );
    let _ = writeln!(
        text,
        "compression ratio (raw/stored) {:.2}",
        t.compression_ratio
    );
    if t.dictionary_bytes > 0 {
        let _ = writeln!(text, "dictionary {} bytes (zstd)", t.dictionary_bytes);
    }
    let _ = writeln!(
        text,
        "\n  offset      stored      raw  codec entries  first key .. last key"
    );
    for b in &t.blocks {
        let _ = writeln!(
            text,
            "  {:<10} {:>7} {:>8}  {:<5} {:>7}  {} .. {}",
            b.offset,
            b.stored_len,
            b.raw_len,
            b.codec,
            b.entries,
            key(&b.first_key),
            key(&b.last_key)
        );
    }
    let blocks: Vec<Value> = t
        .blocks
        .iter()
        .map(|b| {
            json!({"offset": b.offset, "stored_len": b.stored_len, "raw_len": b.raw_len,
                   "compressed": b.compressed, "codec": b.codec, "entries": b.entries, "tombstones": b.tombstones,
                   "first_key": key(&b.first_key), "last_key": key(&b.last_key)})
        })
        .collect();
    Output {
        text,
        json: json!({
            "path": t.path, "size": t.size, "entries": t.entries, "tombstones": tombstones,
            "format_version": t.format_version, "dictionary_bytes": t.dictionary_bytes,
            "smallest": key(&t.smallest), "largest": key(&t.largest),
            "bloom_bytes": t.bloom_bytes, "bloom_probes": t.bloom_probes,
            "compression_ratio": t.compression_ratio, "blocks": blocks,
        }),
    }
}

pub fn manifest(m: &ManifestDump) -> Output {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "manifest   {} (number {})",
        m.path.display(),
        m.number
    );
    let _ = writeln!(
        text,
        "next table {}   last seq {}",
        m.next_table_id, m.last_seq
    );
    for (s, i) in &m.flushed {
        let _ = writeln!(text, "flushed    stream {s} up to log index {i}");
    }
    let _ = writeln!(text, "\nedits ({}):", m.edits.len());
    for (n, e) in m.edits.iter().enumerate() {
        let _ = writeln!(
            text,
            "  #{n}: +{:?} -{:?} flushed {:?} last_seq {:?}",
            e.added, e.removed, e.flushed, e.last_seq
        );
    }
    let _ = writeln!(text, "\nlive tables ({}):", m.files.len());
    for f in &m.files {
        let _ = writeln!(
            text,
            "  L{} #{:<6} {:>10} bytes {:>8} entries  {} .. {}",
            f.level,
            f.id.0,
            f.size,
            f.entries,
            key(&f.smallest),
            key(&f.largest)
        );
    }
    let files: Vec<Value> = m
        .files
        .iter()
        .map(|f| {
            json!({"id": f.id.0, "level": f.level, "size": f.size, "entries": f.entries,
                   "smallest": key(&f.smallest), "largest": key(&f.largest),
                   "min_seq": f.min_seq, "max_seq": f.max_seq})
        })
        .collect();
    let edits: Vec<Value> = m
        .edits
        .iter()
        .map(|e| json!({"added": e.added, "removed": e.removed, "flushed": e.flushed, "last_seq": e.last_seq}))
        .collect();
    Output {
        text,
        json: json!({
            "path": m.path, "number": m.number, "next_table_id": m.next_table_id,
            "last_seq": m.last_seq, "flushed": m.flushed, "edits": edits, "files": files,
        }),
    }
}

pub fn verify(r: &VerifyReport) -> Output {
    let blobs = if r.blob_files > 0 {
        format!(", {} blob files ({} values)", r.blob_files, r.blob_values)
    } else {
        String::new()
    };
    let mut text = format!(
        "ok: {} log segments ({} records), {} tables ({} entries){blobs}: every checksum holds\n",
        r.log_segments, r.log_records, r.tables, r.table_entries
    );
    if let Some((path, off, why)) = &r.torn_tail {
        let _ = writeln!(
            text,
            "note: torn final write in {} at byte offset {off} ({why}); the next open cuts it",
            path.display()
        );
    }
    Output {
        text,
        json: json!({
            "ok": true, "log_segments": r.log_segments, "log_records": r.log_records,
            "tables": r.tables, "table_entries": r.table_entries,
            "blob_files": r.blob_files, "blob_values": r.blob_values,
            "torn_tail": r.torn_tail.as_ref().map(|(p, o, w)| json!({"file": p, "offset": o, "reason": w})),
        }),
    }
}

pub fn residue(dir: &std::path::Path, s: &Search) -> Output {
    let mut text = String::new();
    for f in &s.found {
        let _ = writeln!(text, "FOUND in {}: {}", f.path.display(), f.place);
    }
    for (p, why) in &s.unreadable {
        let _ = writeln!(
            text,
            "unreadable (searched raw only): {}: {why}",
            p.display()
        );
    }
    let _ = writeln!(
        text,
        "{}: {} files ({}), {} log records and {} table entries decoded: {}",
        dir.display(),
        s.files,
        mib(s.bytes),
        s.log_records,
        s.table_entries,
        if s.found.is_empty() {
            "not found"
        } else {
            "FOUND"
        }
    );
    let found: Vec<Value> = s
        .found
        .iter()
        .map(|f| json!({"file": f.path, "place": f.place}))
        .collect();
    let unreadable: Vec<Value> = s
        .unreadable
        .iter()
        .map(|(p, w)| json!({"file": p, "error": w}))
        .collect();
    Output {
        text,
        json: json!({
            "found": found, "unreadable": unreadable, "files": s.files, "bytes": s.bytes,
            "log_records": s.log_records, "table_entries": s.table_entries,
        }),
    }
}

pub fn stats(s: &DirStats) -> Output {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "log        {} segments, {}",
        s.log_segments,
        mib(s.log_bytes)
    );
    let _ = writeln!(text, "tables     {}", mib(s.table_bytes));
    let _ = writeln!(text, "\nlevel  files        bytes      entries");
    for (i, l) in s.levels.iter().enumerate() {
        let _ = writeln!(
            text,
            "L{i:<5} {:>5} {:>12} {:>12}",
            l.files, l.bytes, l.entries
        );
    }
    let _ = writeln!(
        text,
        "\nspace amplification {:.2}   read amplification {} tables per point read",
        s.space_amplification, s.read_amplification
    );
    let levels: Vec<Value> = s
        .levels
        .iter()
        .map(|l| json!({"files": l.files, "bytes": l.bytes, "entries": l.entries}))
        .collect();
    Output {
        text,
        json: json!({
            "log_segments": s.log_segments, "log_bytes": s.log_bytes, "table_bytes": s.table_bytes,
            "levels": levels, "space_amplification": s.space_amplification,
            "read_amplification": s.read_amplification,
        }),
    }
}

pub fn sim(c: &SimConfig, r: &SimReport) -> Output {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "leveled: {} flushes of {}, L0 trigger {}, L1 {}, x{} per level, {:?} keys, {:.0}% overwritten",
        c.flushes,
        mib(c.flush_bytes),
        c.picker.l0_trigger,
        mib(c.picker.level1_bytes),
        c.picker.multiplier,
        c.pattern,
        c.overwrite * 100.0
    );
    let _ = writeln!(text, "flushed            {}", mib(r.flushed_bytes));
    let _ = writeln!(
        text,
        "compacted          {} in {} compactions",
        mib(r.compacted_bytes),
        r.compactions
    );
    let _ = writeln!(text, "write amplification {:.2}", r.write_amplification);
    let _ = writeln!(text, "space amplification {:.3}", r.space_amplification);
    let _ = writeln!(text, "most L0 tables      {}", r.max_l0_tables);
    for (i, (files, bytes)) in r.levels.iter().enumerate() {
        if *files > 0 {
            let _ = writeln!(text, "  L{i}: {files} tables, {}", mib(*bytes));
        }
    }
    Output {
        text,
        json: json!({
            "flushes": c.flushes, "flush_bytes": c.flush_bytes, "flushed_bytes": r.flushed_bytes,
            "compacted_bytes": r.compacted_bytes, "compactions": r.compactions,
            "write_amplification": r.write_amplification, "space_amplification": r.space_amplification,
            "max_l0_tables": r.max_l0_tables, "levels": r.levels,
        }),
    }
}
