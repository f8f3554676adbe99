//! The index against the messages it indexes: random sends, edits,
//! unsends, expiries, flushes and compactions on a real LSM (the chat
//! retention rule, a test clock), then every query answered three ways —
//! by the index (`query::search`), by a brute-force scan of the
//! conversation's stored messages, and by a model of what was sent — which
//! must agree exactly, page by page. Finally every posting left must be
//! backed by a visible message holding its term, and every such term must
//! have its posting.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;

use missive_engine::keys::{ConversationId, Timestamp};
use missive_engine::lsm::{Direction, Lsm, LsmOptions, WriteBatch};
use missive_raft::storage::record_source::Records;

use super::postings;
use super::query::{search, Cursor, Filters, ShardSearch};
use super::tokenize;
use crate::apply::{indexed_terms, run, Effects};
use crate::command::{Command, ConversationKind, MessageKind, NewMessage, Outcome, SendMessage};
use crate::ids::{DeviceId, Seq, UserId};
use crate::records;

const CONV: ConversationId = ConversationId(4242);
const START: u64 = 1_700_000_000_000_000;
const WORDS: &[&str] = &[
    "apple",
    "apricot",
    "Äpfel",
    "banana",
    "café",
    "CAFE",
    "東京都",
    "京都",
    "hello",
    "help",
    "ok",
];

/// A shard: an LSM with the chat retention rule on a clock the test moves.
struct Shard {
    lsm: Lsm,
    now: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

impl Shard {
    fn new() -> Shard {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(START));
        let clock = Arc::clone(&now);
        let lsm = Lsm::open(
            dir.path(),
            LsmOptions {
                background: false,
                retention: Some(crate::retention::message_retention()),
                clock: Some(Arc::new(move || Timestamp(clock.load(Ordering::SeqCst)))),
                ..LsmOptions::default()
            },
        )
        .unwrap();
        Shard {
            lsm,
            now,
            _dir: dir,
        }
    }

    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    /// Applies `cmd` at the next µs, as one batch.
    fn apply(&self, cmd: Command) -> Outcome {
        let stamp = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fx = Effects::default();
        let mut rec = Records::over(&self.lsm);
        let out = run(&mut rec, &mut fx, stamp, &cmd).unwrap();
        let mut b = WriteBatch::new();
        for (k, v) in rec.into_writes() {
            match v {
                Some(v) => b.put(k, v),
                None => b.delete(k),
            };
        }
        self.lsm.apply(&b, None).unwrap();
        out
    }
}

#[derive(Debug, Clone)]
enum Op {
    Send {
        sender: u64,
        words: Vec<usize>,
        text: bool,
        expires_in: Option<u64>,
    },
    Edit {
        pick: usize,
        words: Vec<usize>,
        text: bool,
    },
    Unsend {
        pick: usize,
    },
    Wait(u64),
    Flush,
    Compact,
}

fn words() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..WORDS.len(), 1..4)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1..=2u64, words(), prop::bool::weighted(0.8), prop::option::weighted(0.3, 1..50u64))
            .prop_map(|(sender, words, text, expires_in)| Op::Send { sender, words, text, expires_in }),
        2 => (any::<usize>(), words(), prop::bool::weighted(0.8))
            .prop_map(|(pick, words, text)| Op::Edit { pick, words, text }),
        1 => any::<usize>().prop_map(|pick| Op::Unsend { pick }),
        1 => (1..40u64).prop_map(Op::Wait),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
    ]
}

fn body(words: &[usize]) -> String {
    words
        .iter()
        .map(|w| WORDS[*w])
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the model holds of one message.
#[derive(Debug, Clone)]
struct Sent {
    ts: u64,
    body: String,
    text: bool,
    expires_at: Option<u64>,
    unsent: bool,
}

/// Whether `body`'s terms satisfy `q`.
fn satisfies(body: &str, q: &tokenize::QueryTerms) -> bool {
    let terms: BTreeSet<String> = tokenize::terms(body).into_iter().collect();
    q.exact.iter().all(|t| terms.contains(t))
        && q.prefix
            .as_ref()
            .is_none_or(|p| terms.iter().any(|t| t.starts_with(p.as_str())))
}

/// Every page of user 1's search for `text`, concatenated (ts of each hit).
fn by_index(s: &Shard, text: &str, page: u32) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let q = ShardSearch {
            user: UserId(1),
            convs: vec![CONV],
            terms: tokenize::query(text),
            filters: Filters::default(),
            after,
            limit: page,
        };
        let hits = search(&s.lsm, &q).unwrap();
        out.extend(hits.iter().map(|h| h.ts));
        if hits.len() < page as usize {
            return out;
        }
        let last = hits.last().unwrap();
        after = Some(Cursor {
            ts: last.ts,
            conv: last.conv,
        });
    }
}

/// The same search by reading every stored message of the conversation.
fn by_scan(s: &Shard, text: &str) -> Vec<u64> {
    let q = tokenize::query(text);
    s.lsm
        .latest(CONV, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|m| {
            let msg = records::decode_message(&m.value).unwrap();
            let body = std::str::from_utf8(&msg.body).ok()?;
            (!indexed_terms(&msg).is_empty() && satisfies(body, &q)).then_some(m.ts.0)
        })
        .collect()
}

/// The same search over what the model says was sent.
fn by_model(model: &BTreeMap<u64, Sent>, now: u64, text: &str) -> Vec<u64> {
    let q = tokenize::query(text);
    let mut out: Vec<u64> = model
        .values()
        .filter(|m| m.text && !m.unsent && m.expires_at.is_none_or(|at| at > now))
        .filter(|m| satisfies(&m.body, &q))
        .map(|m| m.ts)
        .collect();
    out.sort_unstable_by(|a, b| b.cmp(a));
    out
}

fn queries() -> Vec<String> {
    let mut q: Vec<String> = WORDS.iter().map(|w| format!("{w} ")).collect();
    q.extend(
        [
            "ap",
            "he",
            "caf",
            "Apfel ",
            "hello ap",
            "cafe banana ",
            "東京 ",
            "京",
        ]
        .map(String::from),
    );
    q
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_index_answers_what_a_scan_of_the_messages_does(ops in prop::collection::vec(op(), 1..60)) {
        let s = Shard::new();
        let created = s.apply(Command::CreateConversation {
            conv: CONV,
            kind: ConversationKind::Group,
            name: "g".into(),
            creator: UserId(1),
            members: vec![UserId(1), UserId(2)],
            max_members: 10,
        });
        let ok = matches!(created, Outcome::Created { .. });
        prop_assert!(ok, "create refused");
        let mut model: BTreeMap<u64, Sent> = BTreeMap::new();
        let mut n = 0u64;
        for op in ops {
            match op {
                Op::Send { sender, words, text, expires_in } => {
                    n += 1;
                    let b = body(&words);
                    let expires_at = expires_in.map(|d| s.now() + d);
                    let m = SendMessage {
                        message: NewMessage {
                            conv: CONV,
                            sender: UserId(sender),
                            device: DeviceId(1),
                            client_msg_id: format!("m{n}"),
                            kind: MessageKind::Text,
                            body: b.clone().into_bytes(),
                            expires_at,
                            reply_to: None,
                        },
                        mentions: Vec::new(),
                        default_retention_micros: None,
                    };
                    let cmd = if text { Command::SendText(m) } else { Command::Send(m) };
                    let Outcome::Sent { ts, seq, .. } = s.apply(cmd) else {
                        panic!("send refused");
                    };
                    model.insert(seq.0, Sent { ts, body: b, text, expires_at, unsent: false });
                }
                Op::Edit { pick, words, text } if !model.is_empty() => {
                    let seq = *model.keys().nth(pick % model.len()).unwrap();
                    let sender = records::decode_indexed(
                        &s.lsm.get(&records::seq_key(CONV, Seq(seq))).unwrap().unwrap(),
                    )
                    .unwrap()
                    .sender;
                    let b = body(&words);
                    let (conv, actor, seq_, body_, window_micros) =
                        (CONV, sender, Seq(seq), b.clone().into_bytes(), u64::MAX);
                    let cmd = if text {
                        Command::EditText { conv, actor, seq: seq_, body: body_, window_micros }
                    } else {
                        Command::Edit { conv, actor, seq: seq_, body: body_, window_micros }
                    };
                    if let Outcome::MessageChanged { changed: true, .. } = s.apply(cmd) {
                        let m = model.get_mut(&seq).unwrap();
                        m.body = b;
                        m.text = text;
                    }
                }
                Op::Unsend { pick } if !model.is_empty() => {
                    let seq = *model.keys().nth(pick % model.len()).unwrap();
                    let out = s.apply(Command::Unsend {
                        conv: CONV,
                        actor: UserId(1),
                        seq: Seq(seq),
                        window_micros: u64::MAX,
                        admins_may: true,
                    });
                    if let Outcome::MessageChanged { changed: true, .. } = out {
                        model.get_mut(&seq).unwrap().unsent = true;
                    }
                }
                Op::Wait(d) => {
                    s.now.fetch_add(d, Ordering::SeqCst);
                }
                Op::Flush => s.lsm.flush().unwrap(),
                Op::Compact => s.lsm.compact_full().unwrap(),
                _ => {}
            }
        }
        let now = s.now();
        for q in queries() {
            let want = by_model(&model, now, &q);
            prop_assert_eq!(&by_scan(&s, &q), &want, "scan for {:?}", q);
            prop_assert_eq!(&by_index(&s, &q, 100), &want, "index for {:?}", q);
            prop_assert_eq!(&by_index(&s, &q, 2), &want, "index paged for {:?}", q);
        }
        // Every indexed term of a sealed bucket's message has its bit, and
        // every bit is backed by a message holding its term, unless that
        // message has expired (a posting lives until its last message
        // expires).
        s.lsm.compact_full().unwrap();
        let open = postings::open_from(
            records::decode::<records::Head>(
                "head",
                &s.lsm.get(&records::head_key(CONV)).unwrap().unwrap_or_default(),
            )
            .unwrap_or_default()
            .seq,
        );
        let lo = postings::conversation_postings(CONV);
        let hi = postings::end_of(&lo);
        let mut found: BTreeSet<(Vec<u8>, u64)> = BTreeSet::new();
        for (k, v) in s.lsm.scan(&lo, Some(&hi), Direction::Forward, usize::MAX).unwrap() {
            let (t, bucket) = postings::decode_key(&k).unwrap();
            for seq in postings::decode(&v).unwrap().seqs(bucket) {
                found.insert((t.to_vec(), seq.0));
            }
        }
        let mut want = BTreeSet::new();
        for m in s.lsm.latest(CONV, usize::MAX).unwrap() {
            let msg = records::decode_message(&m.value).unwrap();
            if msg.seq < open {
                for t in indexed_terms(&msg) {
                    want.insert((t.into_bytes(), msg.seq.0));
                }
            }
        }
        prop_assert!(want.is_subset(&found), "missing {:?}", want.difference(&found).collect::<Vec<_>>());
        for (t, seq) in found.difference(&want) {
            let expired = model
                .get(seq)
                .is_some_and(|m| m.expires_at.is_some_and(|at| at <= now));
            prop_assert!(expired, "stray bit: {:?} seq {}", String::from_utf8_lossy(t), seq);
        }
        let c = super::check::conversation(&s.lsm, CONV).unwrap();
        prop_assert!(c.missing.is_empty() && c.stale.is_empty(), "{:?}", c);
    }
}

/// A shard holding `CONV`, a group of users 1 and 2.
fn group_of_two() -> Shard {
    let s = Shard::new();
    s.apply(Command::CreateConversation {
        conv: CONV,
        kind: ConversationKind::Group,
        name: "g".into(),
        creator: UserId(1),
        members: vec![UserId(1), UserId(2)],
        max_members: 10,
    });
    s
}

/// User 1 sends `body` as text (client message id `c{i}`): its (ts, seq).
fn send_text(s: &Shard, i: usize, body: &str) -> (u64, Seq) {
    let out = s.apply(Command::SendText(SendMessage {
        message: NewMessage {
            conv: CONV,
            sender: UserId(1),
            device: DeviceId(1),
            client_msg_id: format!("c{i}"),
            kind: MessageKind::Text,
            body: body.as_bytes().to_vec(),
            expires_at: None,
            reply_to: None,
        },
        mentions: Vec::new(),
        default_retention_micros: None,
    }));
    let Outcome::Sent { ts, seq, .. } = out else {
        panic!("{out:?}");
    };
    (ts, seq)
}

/// The check finds a lost bit, a stray one and a version-1 posting; the
/// repair command puts the index back to what the messages say, and
/// repeats change nothing.
#[test]
fn the_check_finds_differences_and_the_repair_removes_them() {
    let s = group_of_two();
    let send = |i: usize, body: &str| send_text(&s, i, body);
    let mut ts = Vec::new();
    let mut last = Seq::ZERO;
    for (i, body) in ["apple pie", "banana split", "apple banana"]
        .iter()
        .enumerate()
    {
        let (t, seq) = send(i, body);
        ts.push(t);
        last = seq;
    }
    // Fill the bucket so that the three are sealed.
    let mut i = 3;
    while !postings::seals(last) {
        last = send(i, "filler").1;
        i += 1;
    }
    let range = super::check::CheckIndex {
        lo: postings::conversation_postings(CONV)[..3].to_vec(),
        hi: None,
    };
    let clean = super::check::check(&s.lsm, &range).unwrap();
    assert_eq!(clean.convs.len(), 1);
    let postings_before = clean.convs[0].postings;
    assert!(postings_before > 0);
    assert!(clean.convs[0].missing.is_empty() && clean.convs[0].stale.is_empty());
    assert_eq!(by_index(&s, "banana ", 10), vec![ts[2], ts[1]]);
    // Damage: the second message loses its "banana" bit, the first gains
    // a stray "cherry" one, and a version-1 posting is left behind.
    let seq_of = |t: u64| {
        records::decode_message(&s.lsm.get(&records::msg_key(CONV, t)).unwrap().unwrap())
            .unwrap()
            .seq
    };
    let banana = postings::posting_key(CONV, b"banana", postings::bucket_of(seq_of(ts[1])));
    let mut p = postings::decode(&s.lsm.get(&banana).unwrap().unwrap()).unwrap();
    p.bits &= !postings::bit(seq_of(ts[1]));
    let mut stray = postings::Posting::default();
    stray.add(seq_of(ts[0]), None, true);
    let mut b = WriteBatch::new();
    b.put(banana, postings::encode(&p).unwrap());
    b.put(
        postings::posting_key(CONV, b"cherry", postings::bucket_of(seq_of(ts[0]))),
        postings::encode(&stray).unwrap(),
    );
    b.put(
        postings::legacy::posting_key(CONV, "pie", ts[2]),
        postings::legacy::encode(&postings::LegacyPosting::default()).unwrap(),
    );
    s.lsm.apply(&b, None).unwrap();
    assert_eq!(
        by_index(&s, "banana ", 10),
        vec![ts[2]],
        "the lost bit hides a message"
    );
    let found = super::check::conversation(&s.lsm, CONV).unwrap();
    assert_eq!(found.missing, vec![ts[1]]);
    assert_eq!(
        found.stale,
        vec![("cherry".to_string(), ts[0]), ("pie".to_string(), ts[2])]
    );
    // A stray posting the message does back is kept.
    let mut drop = found.stale.clone();
    drop.push(("apple".to_string(), ts[0]));
    let repair = Command::RepairIndex {
        conv: CONV,
        reindex: found.missing.clone(),
        drop: drop.clone(),
    };
    assert_eq!(
        s.apply(repair.clone()),
        Outcome::Reindexed {
            written: 1,
            dropped: 2
        }
    );
    let after = super::check::conversation(&s.lsm, CONV).unwrap();
    assert!(
        after.missing.is_empty() && after.stale.is_empty(),
        "{after:?}"
    );
    assert_eq!(after.postings, postings_before);
    assert_eq!(
        s.apply(repair),
        Outcome::Reindexed {
            written: 0,
            dropped: 0
        }
    );
    assert_eq!(by_index(&s, "banana ", 10), vec![ts[2], ts[1]]);
    assert_eq!(by_index(&s, "cherry ", 10), Vec::<u64>::new());
}

/// A restore's `RaiseHeads` that carries the head past the open bucket's
/// end seals that bucket: its messages stay found, and the check is clean.
#[test]
fn raising_the_head_past_a_bucket_seals_it() {
    let s = group_of_two();
    let mut ts = Vec::new();
    for (i, body) in ["apple pie", "apple tart"].iter().enumerate() {
        let (t, seq) = send_text(&s, i, body);
        assert_eq!(postings::open_from(seq), Seq::ZERO, "the bucket is open");
        ts.push(t);
    }
    let raised = Seq(2 * postings::BUCKET + 1);
    assert_eq!(
        s.apply(Command::RaiseHeads {
            conv: CONV,
            seq: raised,
            eseq: crate::ids::Eseq(0),
        }),
        Outcome::Done
    );
    assert!(postings::open_from(raised) > Seq(postings::BUCKET));
    assert_eq!(by_index(&s, "apple ", 10), vec![ts[1], ts[0]]);
    assert_eq!(by_index(&s, "apple ", 1), vec![ts[1], ts[0]]);
    let c = super::check::conversation(&s.lsm, CONV).unwrap();
    assert!(c.missing.is_empty() && c.stale.is_empty(), "{c:?}");
    assert!(c.postings > 0);
}
