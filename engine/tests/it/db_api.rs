//! The standalone `Db` as a library user meets it: durability chosen per
//! write, keys of the wrong shape refused, the borrowing visitors agreeing
//! with the copying reads, and the small preset.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on failure"
)]

use std::time::Duration;

use missive_engine::io::FaultFsControl;
use missive_engine::keys::{message_key, ConversationId, Keyspace, Timestamp};
use missive_engine::lsm::{Db, DbOptions, Direction, MessageRange, WriteBatch, WriteOptions};
use missive_engine::Error;

fn on_fault_fs(ctl: &FaultFsControl) -> DbOptions {
    let mut opts = DbOptions::small();
    opts.log.fs = Some(ctl.fs());
    opts
}

fn put(key: &[u8], value: &[u8]) -> WriteBatch {
    let mut b = WriteBatch::new();
    b.put(key, value);
    b
}

/// A write without sync is acknowledged once written, before any fdatasync
/// covers it: with every sync held up for seconds, it returns, is visible,
/// and a power cut right after takes it back. Had it waited for the sync,
/// the sync would have finished before the cut and the write survived.
#[test]
fn a_write_without_sync_is_acknowledged_before_its_fdatasync() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = FaultFsControl::new();
    let db = Db::open(tmp.path(), on_fault_fs(&ctl)).unwrap();
    ctl.set_sync_delay(Duration::from_secs(2));
    db.write_with(&put(b"k", b"not synced"), WriteOptions { sync: false })
        .unwrap();
    assert_eq!(db.get(b"k").unwrap(), Some(b"not synced".to_vec()));
    ctl.crash();
    drop(db);
    ctl.set_sync_delay(Duration::ZERO);
    let db = Db::open(tmp.path(), on_fault_fs(&ctl)).unwrap();
    assert_eq!(db.get(b"k").unwrap(), None, "the power cut took it back");
}

/// A synced write after unsynced ones makes them durable with it: its
/// fdatasync covers the log up to it.
#[test]
fn a_synced_write_makes_the_unsynced_ones_before_it_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = FaultFsControl::new();
    let db = Db::open(tmp.path(), on_fault_fs(&ctl)).unwrap();
    for i in 0..10u8 {
        db.write_with(&put(&[b'a', i], &[i]), WriteOptions { sync: false })
            .unwrap();
    }
    db.write(&put(b"b", b"synced")).unwrap();
    ctl.crash();
    drop(db);
    let db = Db::open(tmp.path(), on_fault_fs(&ctl)).unwrap();
    for i in 0..10u8 {
        assert_eq!(db.get(&[b'a', i]).unwrap(), Some(vec![i]));
    }
    assert_eq!(db.get(b"b").unwrap(), Some(b"synced".to_vec()));
}

/// A key in the message keyspace that is not a message key would be
/// stored and never returned by the conversation reads: the whole batch is
/// refused, nothing of it written. Other keys are anyone's.
#[test]
fn a_message_keyspace_key_of_the_wrong_length_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path(), DbOptions::small()).unwrap();
    let conv = ConversationId(7);
    let good = message_key(conv, Timestamp(100));
    let mut short = good.to_vec();
    short.pop();
    let mut b = WriteBatch::new();
    b.put(good, b"fine").put(&short, b"misshapen");
    match db.write(&b) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("19-byte"), "{msg}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(db.get(&good).unwrap(), None, "nothing of the batch landed");
    assert!(db.latest(conv, 10).unwrap().is_empty());

    let mut b = WriteBatch::new();
    b.delete(&short);
    assert!(matches!(db.write(&b), Err(Error::InvalidArgument(_))));

    // A blob reference: nothing would keep its file across the replay.
    let mut b = WriteBatch::new();
    b.put(good, b"fine").put_blob_ref(
        b"chunk",
        &missive_engine::lsm::BlobRef {
            file: 1,
            offset: 24,
            len: 10,
            crc: 0,
        },
    );
    match db.write(&b) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("blob reference"), "{msg}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(db.get(&good).unwrap(), None, "nothing of the batch landed");

    let mut b = WriteBatch::new();
    b.put(good, b"fine")
        .put([Keyspace::User as u8, 1, 2], b"any shape");
    db.write(&b).unwrap();
    assert_eq!(db.latest(conv, 10).unwrap().len(), 1);
    assert_eq!(
        db.get(&[Keyspace::User as u8, 1, 2]).unwrap(),
        Some(b"any shape".to_vec())
    );
}

/// The visitors see what the copying reads return, in the same order, and
/// stop when told to.
#[test]
fn visitors_stream_what_the_copying_reads_return() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path(), DbOptions::small()).unwrap();
    let conv = ConversationId(3);
    let mut b = WriteBatch::new();
    for ts in 1..=40u64 {
        b.put(message_key(conv, Timestamp(ts * 10)), ts.to_be_bytes());
    }
    b.put(message_key(ConversationId(4), Timestamp(5)), b"other");
    db.write(&b).unwrap();
    // Half in a table, half in the memtable: the merge is exercised too.
    db.flush().unwrap();
    let mut b = WriteBatch::new();
    for ts in 41..=60u64 {
        b.put(message_key(conv, Timestamp(ts * 10)), ts.to_be_bytes());
    }
    b.delete(message_key(conv, Timestamp(200)));
    db.write(&b).unwrap();

    let collect = |range: MessageRange, limit: usize| {
        let mut got = Vec::new();
        db.visit_messages(conv, range, |ts, v| {
            got.push((ts, v.to_vec()));
            got.len() < limit
        })
        .unwrap();
        got
    };
    let flat = |v: Vec<missive_engine::lsm::StoredMessage>| {
        v.into_iter().map(|m| (m.ts, m.value)).collect::<Vec<_>>()
    };
    assert_eq!(
        collect(MessageRange::Latest, 25),
        flat(db.latest(conv, 25).unwrap())
    );
    assert_eq!(collect(MessageRange::Latest, usize::MAX).len(), 59);
    assert_eq!(
        collect(MessageRange::Before(Timestamp(305)), 7),
        flat(db.before(conv, Timestamp(305), 7).unwrap())
    );
    assert_eq!(
        collect(MessageRange::After(Timestamp(150)), 9),
        flat(db.after(conv, Timestamp(150), 9).unwrap())
    );
    assert!(collect(MessageRange::Before(Timestamp(0)), 5).is_empty());

    let lo = message_key(conv, Timestamp(600));
    let hi = message_key(conv, Timestamp(0));
    let mut keys = Vec::new();
    db.visit(&lo, Some(&hi), Direction::Forward, |k, _| {
        keys.push(k.to_vec());
        keys.len() < 12
    })
    .unwrap();
    let scanned: Vec<Vec<u8>> = db
        .scan(&lo, Some(&hi), Direction::Forward, 12)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, scanned);
}

/// The small preset does not preallocate its log segment.
#[test]
fn the_small_preset_keeps_the_log_small() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Db::open(tmp.path(), DbOptions::small()).unwrap();
    db.write(&put(b"k", b"v")).unwrap();
    let bytes: u64 = std::fs::read_dir(tmp.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(bytes < 1 << 20, "log files hold {bytes} bytes");
    drop(db);
    let db = Db::open(tmp.path(), DbOptions::small()).unwrap();
    assert_eq!(db.get(b"k").unwrap(), Some(b"v".to_vec()));
}
