//! The apply rules on their own: a shard's records in a `BTreeMap`, no
//! disk, no Raft. Unit tests of each rule, and a model of append +
//! receipts + deliver checked against random operation sequences (with
//! the fan-out's repeats and replays).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use missive_engine::keys::ConversationId;
use missive_raft::storage::record_source::Records;

use super::{run, Effects};
use crate::command::{
    Command, ConversationKind, Delivery, MessageKind, NewMessage, Outcome, RejectCode,
};
use crate::ids::{DeviceId, Eseq, Seq, Useq, UserId};
use crate::records::{
    self, head_key, outbox_head_key, outbox_key, receipt_key, user_conv_key, user_head_key, Head,
    OutboxEntry, OutboxHead, Receipt, UserConv, UserHead,
};

const CONV: ConversationId = ConversationId(77);
const STAMP: u64 = 1_700_000_000_000_000;

/// A shard's committed records, and a clock for the leader's stamps
/// (shared with the rule families' own tests).
#[derive(Default)]
pub(super) struct Shard {
    pub(super) kv: BTreeMap<Vec<u8>, Vec<u8>>,
    stamp: u64,
    /// The key ranges this shard owns (`Records::owns`): none by default,
    /// so every event goes through the outbox as on a shard that holds
    /// none of its recipients.
    owned: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Shard {
    /// Applies one command as one state-machine call; commits its writes.
    pub(super) fn apply(&mut self, cmd: Command) -> (Outcome, Effects) {
        self.stamp += 1;
        let mut fx = Effects::default();
        let mut rec = Records::over(&self.kv).owning(&self.owned);
        let out = run(&mut rec, &mut fx, STAMP + self.stamp, &cmd).unwrap();
        for (k, v) in rec.into_writes() {
            match v {
                Some(v) => self.kv.insert(k, v),
                None => self.kv.remove(&k),
            };
        }
        (out, fx)
    }

    /// A shard that holds the data of `users` (and of no other user).
    fn holding(users: &[u64]) -> Shard {
        let owned = users
            .iter()
            .map(|u| {
                // Every key of a user's own data starts with the head key
                // minus its one-byte suffix (keyspace, slot, user).
                let mut lo = user_head_key(UserId(*u));
                lo.pop();
                let hi = missive_engine::keys::prefix_successor(&lo);
                (lo, hi)
            })
            .collect();
        Shard {
            owned,
            ..Shard::default()
        }
    }

    pub(super) fn out(&mut self, cmd: Command) -> Outcome {
        self.apply(cmd).0
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Option<T> {
        self.kv
            .get(key)
            .map(|v| records::decode("test", v).unwrap())
    }

    /// `CONV`'s record.
    fn conversation(&self) -> records::Conversation {
        let v = self.kv.get(&records::conversation_key(CONV)).unwrap();
        records::decode_conversation(v).unwrap()
    }

    /// `user`'s view of `CONV`.
    fn user_conv(&self, user: u64) -> UserConv {
        let v = self.kv.get(&user_conv_key(UserId(user), CONV)).unwrap();
        records::decode_user_conv(v).unwrap()
    }
}

fn group(members: &[u64]) -> Command {
    Command::CreateConversation {
        conv: CONV,
        kind: ConversationKind::Group,
        name: "g".into(),
        creator: UserId(members[0]),
        members: members.iter().map(|u| UserId(*u)).collect(),
        max_members: 5,
    }
}

fn send(sender: u64, cid: &str) -> Command {
    Command::AppendMessage {
        conv: CONV,
        sender: UserId(sender),
        device: DeviceId(1),
        client_msg_id: cid.into(),
        kind: MessageKind::Text,
        body: b"hi".to_vec(),
        expires_at: None,
    }
}

fn reply(sender: u64, cid: &str, to: u64, expires_at: Option<u64>) -> Command {
    Command::Post(NewMessage {
        conv: CONV,
        sender: UserId(sender),
        device: DeviceId(1),
        client_msg_id: cid.into(),
        kind: MessageKind::Text,
        body: b"re".to_vec(),
        expires_at,
        reply_to: (to > 0).then_some(Seq(to)),
    })
}

/// The seq index entry of message `seq` of `CONV`.
fn indexed(s: &Shard, seq: u64) -> Option<records::Indexed> {
    let v = s.kv.get(&records::seq_key(CONV, Seq(seq)))?;
    Some(records::decode_indexed(v).unwrap())
}

/// The stored message `seq` of `CONV`, through the seq index.
fn stored(s: &Shard, seq: u64) -> Option<records::Message> {
    let ix = indexed(s, seq)?;
    let v = s.kv.get(&records::msg_key(CONV, ix.ts))?;
    Some(records::decode_message(v).unwrap())
}

fn change(actor: u64, add: &[u64], remove: &[u64]) -> Command {
    Command::ChangeMembers {
        conv: CONV,
        actor: UserId(actor),
        add: add.iter().map(|u| UserId(*u)).collect(),
        remove: remove.iter().map(|u| UserId(*u)).collect(),
        promote: Vec::new(),
        rename: None,
        max_members: 5,
    }
}

fn code(o: &Outcome) -> Option<RejectCode> {
    match o {
        Outcome::Rejected { code, .. } => Some(*code),
        _ => None,
    }
}

fn seq(o: &Outcome) -> u64 {
    match o {
        Outcome::Appended { seq, .. } => seq.0,
        other => panic!("not appended: {other:?}"),
    }
}

#[test]
fn only_members_send_and_only_admins_change_a_group() {
    let mut s = Shard::default();
    assert_eq!(
        code(&s.out(send(1, "a"))),
        Some(RejectCode::NoSuchConversation)
    );
    assert_eq!(s.out(group(&[1, 2, 3])), Outcome::Created { created: true });
    // Creating it again is idempotent.
    assert_eq!(
        s.out(group(&[1, 2, 3])),
        Outcome::Created { created: false }
    );
    assert_eq!(code(&s.out(send(9, "a"))), Some(RejectCode::NotAMember));
    assert_eq!(seq(&s.out(send(2, "a"))), 1);
    // A member who is not an admin cannot add; they can leave.
    assert_eq!(
        code(&s.out(change(2, &[4], &[]))),
        Some(RejectCode::Forbidden)
    );
    assert!(matches!(
        s.out(change(2, &[], &[2])),
        Outcome::MembersChanged {
            version: 2,
            seq: Seq(2),
            ..
        }
    ));
    assert_eq!(code(&s.out(send(2, "b"))), Some(RejectCode::NotAMember));
    // Past the limit is invalid, and changes nothing.
    assert_eq!(
        code(&s.out(change(1, &[4, 5, 6, 7], &[]))),
        Some(RejectCode::Invalid)
    );
    // The last admin leaving promotes the lowest member left.
    s.out(change(1, &[], &[1]));
    let c = s.conversation();
    assert_eq!(c.members, vec![UserId(3)]);
    assert_eq!(c.admins, vec![UserId(3)]);
}

#[test]
fn a_direct_conversation_has_two_members_and_one_per_pair() {
    let mut s = Shard::default();
    let direct = |members: &[u64]| Command::CreateConversation {
        conv: CONV,
        kind: ConversationKind::Direct,
        name: String::new(),
        creator: UserId(1),
        members: members.iter().map(|u| UserId(*u)).collect(),
        max_members: 250,
    };
    assert_eq!(code(&s.out(direct(&[2, 3]))), Some(RejectCode::Invalid));
    assert_eq!(s.out(direct(&[2])), Outcome::Created { created: true });
    assert_eq!(code(&s.out(direct(&[3]))), Some(RejectCode::Conflict));
    assert_eq!(
        code(&s.out(change(1, &[3], &[]))),
        Some(RejectCode::Invalid)
    );
}

#[test]
fn a_resend_answers_the_original_and_writes_nothing() {
    let mut s = Shard::default();
    s.out(group(&[1, 2]));
    let first = s.out(send(1, "c-1"));
    let before = s.kv.clone();
    let (again, fx) = s.apply(send(1, "c-1"));
    let (
        Outcome::Appended {
            ts: t1,
            seq: s1,
            duplicate: false,
        },
        Outcome::Appended {
            ts: t2,
            seq: s2,
            duplicate: true,
        },
    ) = (first, again)
    else {
        panic!("not a duplicate");
    };
    assert_eq!((t1, s1), (t2, s2));
    assert_eq!(s.kv, before, "a resend changed the store");
    assert!(fx.fresh.is_empty());
    // Another sender's same id is another message.
    assert_eq!(seq(&s.out(send(2, "c-1"))), 2);
}

#[test]
fn receipts_only_rise_never_past_the_newest_message_and_read_implies_delivered() {
    let mut s = Shard::default();
    s.out(group(&[1, 2]));
    for i in 0..3 {
        s.out(send(1, &format!("m{i}")));
    }
    let receipt = |user, delivered: Option<u64>, read: Option<u64>| Command::SetReceipt {
        conv: CONV,
        user: UserId(user),
        delivered: delivered.map(Seq),
        read: read.map(Seq),
    };
    assert_eq!(
        s.out(receipt(2, Some(9), None)),
        Outcome::Receipt {
            delivered: Seq(3),
            read: Seq(0)
        }
    );
    assert_eq!(
        s.out(receipt(2, Some(1), Some(2))),
        Outcome::Receipt {
            delivered: Seq(3),
            read: Seq(2)
        }
    );
    let (o, fx) = s.apply(receipt(2, Some(1), Some(1)));
    assert_eq!(
        o,
        Outcome::Receipt {
            delivered: Seq(3),
            read: Seq(2)
        }
    );
    assert!(fx.fresh.is_empty(), "an unchanged receipt is no event");
    // Sending marks everything before as read by the sender.
    let r: Receipt = s.get(&receipt_key(CONV, UserId(1))).unwrap();
    assert_eq!((r.delivered, r.read), (Seq(3), Seq(3)));
    assert_eq!(
        code(&s.out(receipt(9, Some(1), None))),
        Some(RejectCode::NotAMember)
    );
}

#[test]
fn every_event_is_an_outbox_entry_with_the_members_as_recipients() {
    let mut s = Shard::default();
    let (_, fx) = s.apply(group(&[1, 2]));
    assert_eq!(fx.fresh.len(), 1, "the creation is an event");
    let (_, fx) = s.apply(send(1, "a"));
    let f = &fx.fresh[0];
    assert_eq!((f.conv, f.eseq), (CONV, Eseq(2)));
    assert_eq!(f.entry.recipients, vec![UserId(1), UserId(2)]);
    let stored: OutboxEntry = s.get(&outbox_key(CONV, Eseq(2))).unwrap();
    assert_eq!(stored, f.entry);
    let head: OutboxHead = s.get(&outbox_head_key(CONV)).unwrap();
    assert_eq!((head.last, head.done), (Eseq(2), Eseq(0)));
    // OutboxDone deletes up to the mark, never past the last entry.
    s.out(Command::OutboxDone {
        done: vec![(CONV, Eseq(9))],
    });
    let head: OutboxHead = s.get(&outbox_head_key(CONV)).unwrap();
    assert_eq!((head.last, head.done), (Eseq(2), Eseq(2)));
    assert!(!s.kv.contains_key(&outbox_key(CONV, Eseq(1))));
    assert!(!s.kv.contains_key(&outbox_key(CONV, Eseq(2))));
}

/// The inbox deliveries of outbox entries, one per recipient, in order.
fn deliveries(fresh: &[crate::outbox_feed::Fresh]) -> Vec<Delivery> {
    fresh
        .iter()
        .flat_map(|f| {
            f.entry.recipients.iter().map(|u| Delivery {
                user: *u,
                conv: f.conv,
                eseq: f.eseq,
                event: f.entry.event.clone(),
                at: f.entry.at,
            })
        })
        .collect()
}

#[test]
fn a_repeated_delivery_is_skipped() {
    let mut s = Shard::default();
    s.out(group(&[1, 2]));
    let (_, fx) = s.apply(send(1, "a"));
    let items = deliveries(&fx.fresh);
    let (o, fx) = s.apply(Command::Deliver {
        items: items.clone(),
    });
    assert_eq!(
        o,
        Outcome::Delivered {
            applied: 2,
            skipped: 0
        }
    );
    assert_eq!(fx.notices.len(), 2);
    let (o, fx) = s.apply(Command::Deliver { items });
    assert_eq!(
        o,
        Outcome::Delivered {
            applied: 0,
            skipped: 2
        }
    );
    assert!(fx.notices.is_empty());
    let head: UserHead = s.get(&user_head_key(UserId(2))).unwrap();
    assert_eq!(head.useq, Useq(1));
    let uc = s.user_conv(2);
    assert_eq!((uc.last_seq, uc.read, uc.eseq), (Seq(1), Seq(0), Eseq(2)));
    // The sender's own message counts as read in their view.
    let uc = s.user_conv(1);
    assert_eq!(uc.unread(), 0);
}

/// The deliveries of `CONV`'s outbox entries (eseq, entry), one per
/// recipient, in order: what the fan-out worker sends for them.
fn items_of(entries: &[(u64, OutboxEntry)]) -> Vec<Delivery> {
    entries
        .iter()
        .flat_map(|(eseq, e)| {
            e.recipients.iter().map(move |u| Delivery {
                user: *u,
                conv: CONV,
                eseq: Eseq(*eseq),
                event: e.event.clone(),
                at: e.at,
            })
        })
        .collect()
}

/// The eseqs in `user`'s inbox, in useq order (all of `CONV`).
fn inbox_eseqs(s: &Shard, user: u64) -> Vec<u64> {
    let head: UserHead = s.get(&user_head_key(UserId(user))).unwrap_or_default();
    (1..=head.useq.0)
        .map(|u| {
            let e: records::InboxEvent = s.get(&records::inbox_key(UserId(user), Useq(u))).unwrap();
            e.eseq.0
        })
        .collect()
}

#[test]
fn an_event_reaches_the_users_of_its_own_shard_in_its_own_batch() {
    // Users 1 and 2 live on the conversation's shard, 3 elsewhere.
    let mut s = Shard::holding(&[1, 2]);
    let (_, created) = s.apply(group(&[1, 2, 3]));
    let told: Vec<_> = created.notices.iter().map(|n| (n.user, n.useq)).collect();
    assert_eq!(told, vec![(UserId(1), Useq(1)), (UserId(2), Useq(1))]);
    assert_eq!(created.fresh.len(), 1);
    assert_eq!(created.fresh[0].entry.recipients, vec![UserId(3)]);
    let head: OutboxHead = s.get(&outbox_head_key(CONV)).unwrap();
    assert_eq!((head.last, head.done), (Eseq(1), Eseq(0)));
    // While 3's copy waits, the next event goes through the outbox for
    // everyone: nobody may get an event of the conversation before an
    // earlier one still waiting for them.
    let (_, sent) = s.apply(send(1, "a"));
    assert!(sent.notices.is_empty());
    let all = vec![UserId(1), UserId(2), UserId(3)];
    assert_eq!(sent.fresh[0].entry.recipients, all);
    // The worker delivers both, in order, and marks them done.
    let mut items = deliveries(&created.fresh);
    items.extend(deliveries(&sent.fresh));
    s.out(Command::Deliver { items });
    s.out(Command::OutboxDone {
        done: vec![(CONV, Eseq(2))],
    });
    // Drained: the next event is in 1's and 2's inboxes in its own batch.
    let (_, fx) = s.apply(send(2, "b"));
    let told: Vec<_> = fx.notices.iter().map(|n| (n.user, n.event.eseq)).collect();
    assert_eq!(told, vec![(UserId(1), Eseq(3)), (UserId(2), Eseq(3))]);
    assert_eq!(fx.fresh[0].entry.recipients, vec![UserId(3)]);
    assert_eq!(inbox_eseqs(&s, 1), vec![1, 2, 3]);
    assert_eq!(inbox_eseqs(&s, 2), vec![1, 2, 3]);
    assert_eq!(inbox_eseqs(&s, 3), vec![1, 2]);
    // A local copy counts like a delivered one: unread for the reader,
    // read for the sender.
    assert_eq!(s.user_conv(1).unread(), 1);
    assert_eq!(s.user_conv(2).unread(), 0);
}

#[test]
fn on_a_shard_holding_every_member_nothing_is_fanned_out() {
    let mut s = Shard::holding(&[1, 2]);
    let (_, fx) = s.apply(group(&[1, 2]));
    assert!(fx.fresh.is_empty());
    let (_, fx) = s.apply(send(1, "a"));
    assert!(fx.fresh.is_empty());
    assert_eq!(fx.notices.len(), 2);
    assert_eq!(fx.local, 2, "counted for /metrics");
    let head: OutboxHead = s.get(&outbox_head_key(CONV)).unwrap();
    assert_eq!((head.last, head.done), (Eseq(2), Eseq(2)));
    let outbox_tag = missive_engine::keys::Keyspace::Outbox as u8;
    let entries =
        s.kv.keys()
            .filter(|k| k.first() == Some(&outbox_tag) && *k != &outbox_head_key(CONV))
            .count();
    assert_eq!(entries, 0, "no outbox entry is written");
    assert_eq!(inbox_eseqs(&s, 2), vec![1, 2]);
    assert_eq!(s.user_conv(2).unread(), 1);
    // A resend is answered from dedup and delivers nothing again.
    let (_, fx) = s.apply(send(1, "a"));
    assert!(fx.notices.is_empty());
    assert_eq!(fx.local, 0);
    assert_eq!(inbox_eseqs(&s, 2), vec![1, 2]);
}

#[derive(Debug, Clone)]
enum Step {
    /// A member sends with a client id (repeats are resends).
    Send { sender: u64, cid: u8 },
    /// A member reads up to a seq.
    Read { user: u64, read: u64 },
    /// The fan-out delivers the next `n` outbox entries, repeating the
    /// `replay` before them, and then maybe writes `OutboxDone`.
    Fanout { n: usize, replay: usize, done: bool },
    /// Which members live on the conversation's shard changes (bit i:
    /// user i + 1): data written before local delivery existed, a restore
    /// into another shard count, a future split.
    Move { mask: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..=3, 0u8..6).prop_map(|(sender, cid)| Step::Send { sender, cid }),
        1 => (1u64..=3, 0u64..12).prop_map(|(user, read)| Step::Read { user, read }),
        3 => (0usize..4, 0usize..3, any::<bool>())
            .prop_map(|(n, replay, done)| Step::Fanout { n, replay, done }),
        1 => (0u8..8).prop_map(|mask| Step::Move { mask }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whichever members live on the conversation's shard: at every step
    /// each inbox holds the conversation's events in eseq order, and once
    /// the fan-out has caught up every member holds every event once.
    #[test]
    fn local_delivery_keeps_every_inbox_complete_and_in_order(
        mask in 0u8..8,
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let local = |mask: u8| -> Vec<u64> { (1..=3u64).filter(|u| mask & (1 << (u - 1)) != 0).collect() };
        let mut s = Shard::holding(&local(mask));
        // Who got or must get each eseq, from the effects: an outbox
        // entry's recipients and the inboxes written at once.
        let mut owed: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        // Outbox entries in eseq order; how many the fan-out delivered.
        let mut queue: Vec<(u64, OutboxEntry)> = Vec::new();
        let mut delivered = 0usize;
        let note = |fx: &Effects, owed: &mut BTreeMap<u64, Vec<u64>>, queue: &mut Vec<(u64, OutboxEntry)>| {
            for f in &fx.fresh {
                owed.entry(f.eseq.0).or_default().extend(f.entry.recipients.iter().map(|u| u.0));
                queue.push((f.eseq.0, f.entry.clone()));
            }
            for n in &fx.notices {
                owed.entry(n.event.eseq.0).or_default().push(n.user.0);
            }
        };
        let (_, fx) = s.apply(group(&[1, 2, 3]));
        note(&fx, &mut owed, &mut queue);
        let fan = |s: &mut Shard, queue: &[(u64, OutboxEntry)], from: usize, to: usize| {
            let items = items_of(&queue[from..to]);
            if !items.is_empty() {
                s.apply(Command::Deliver { items })
            } else {
                (Outcome::Done, Effects::default())
            }
        };
        for st in steps {
            let fx = match st {
                Step::Send { sender, cid } => s.apply(send(sender, &cid.to_string())).1,
                Step::Read { user, read } => s.apply(Command::SetReceipt {
                    conv: CONV,
                    user: UserId(user),
                    delivered: None,
                    read: Some(Seq(read)),
                }).1,
                Step::Fanout { n, replay, done } => {
                    let from = delivered.saturating_sub(replay);
                    let to = (delivered + n).min(queue.len());
                    let (_, fx) = fan(&mut s, &queue, from, to);
                    prop_assert!(fx.fresh.is_empty());
                    delivered = delivered.max(to);
                    if done && delivered > 0 {
                        s.out(Command::OutboxDone { done: vec![(CONV, Eseq(queue[delivered - 1].0))] });
                    }
                    // Its notices are the entries' recipients, counted
                    // when the entries were written.
                    Effects::default()
                }
                Step::Move { mask } => {
                    s.owned = Shard::holding(&local(mask)).owned;
                    Effects::default()
                }
            };
            note(&fx, &mut owed, &mut queue);
            for u in 1..=3u64 {
                let got = inbox_eseqs(&s, u);
                prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "user {} got {:?}", u, got);
            }
        }
        // The fan-out catches up.
        let (_, fx) = fan(&mut s, &queue, delivered, queue.len());
        prop_assert!(fx.fresh.is_empty());
        for u in 1..=3u64 {
            let want: Vec<u64> = owed.iter().filter(|(_, us)| us.contains(&u)).map(|(e, _)| *e).collect();
            prop_assert_eq!(inbox_eseqs(&s, u), want);
        }
        // Every event was owed to every member, exactly once.
        for (eseq, us) in &owed {
            let mut us = us.clone();
            us.sort_unstable();
            prop_assert_eq!(us, vec![1, 2, 3], "eseq {}", eseq);
        }
    }
}

#[test]
fn a_cluster_map_command_is_refused_on_a_data_shard() {
    let mut s = Shard::default();
    let o = s.out(Command::ForgetNode { node: 1 });
    assert_eq!(code(&o), Some(RejectCode::Invalid));
    assert!(s.kv.is_empty());
}

// ---------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
enum Op {
    /// A member sends with a client id (repeats are resends).
    Send { sender: u64, cid: u8 },
    /// A member raises their watermarks.
    Receipt {
        user: u64,
        delivered: Option<u64>,
        read: Option<u64>,
    },
    /// The fan-out delivers the oldest `n` undelivered events (a prefix,
    /// as the worker does), maybe repeating the `replay` before them.
    Deliver { n: usize, replay: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..=3, 0u8..6).prop_map(|(sender, cid)| Op::Send { sender, cid }),
        2 => (1u64..=3, proptest::option::of(0u64..12), proptest::option::of(0u64..12))
            .prop_map(|(user, delivered, read)| Op::Receipt { user, delivered, read }),
        2 => (0usize..4, 0usize..3).prop_map(|(n, replay)| Op::Deliver { n, replay }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn append_receipts_and_deliver_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut s = Shard::default();
        s.out(group(&[1, 2, 3]));
        // The model.
        let mut seqs: HashMap<(u64, u8), u64> = HashMap::new();
        let mut last_seq = 0u64;
        let mut receipts: HashMap<u64, (u64, u64)> = HashMap::new();
        // Every event the shard emitted, in eseq order; those delivered.
        let mut events: Vec<(u64, OutboxEntry)> = Vec::new();
        let mut delivered = 0usize;
        let mut inbox: HashMap<u64, Vec<u64>> = HashMap::new();
        let (_, fx) = s.apply(group(&[1, 2, 3]));
        prop_assert!(fx.fresh.is_empty());
        let created: OutboxEntry = s.get(&outbox_key(CONV, Eseq(1))).unwrap();
        events.push((1, created));
        for op in ops {
            match op {
                Op::Send { sender, cid } => {
                    let (o, fx) = s.apply(send(sender, &cid.to_string()));
                    let Outcome::Appended { seq: Seq(seq), duplicate, .. } = o else {
                        return Err(TestCaseError::fail(format!("{o:?}")));
                    };
                    match seqs.get(&(sender, cid)) {
                        Some(&want) => {
                            prop_assert!(duplicate);
                            prop_assert_eq!(seq, want);
                            prop_assert!(fx.fresh.is_empty());
                        }
                        None => {
                            prop_assert!(!duplicate);
                            last_seq += 1;
                            prop_assert_eq!(seq, last_seq);
                            seqs.insert((sender, cid), seq);
                            let r = receipts.entry(sender).or_default();
                            *r = (r.0.max(seq), r.1.max(seq));
                            prop_assert_eq!(fx.fresh.len(), 1);
                            events.extend(fx.fresh.iter().map(|f| (f.eseq.0, f.entry.clone())));
                        }
                    }
                }
                Op::Receipt { user, delivered: d, read } => {
                    let (o, fx) = s.apply(Command::SetReceipt {
                        conv: CONV,
                        user: UserId(user),
                        delivered: d.map(Seq),
                        read: read.map(Seq),
                    });
                    let old = receipts.get(&user).copied().unwrap_or_default();
                    let r = old.1.max(read.unwrap_or(0)).min(last_seq);
                    let dd = old.0.max(d.unwrap_or(0)).max(r).min(last_seq);
                    prop_assert_eq!(&o, &Outcome::Receipt { delivered: Seq(dd), read: Seq(r) });
                    prop_assert_eq!(fx.fresh.len(), usize::from((dd, r) != old));
                    events.extend(fx.fresh.iter().map(|f| (f.eseq.0, f.entry.clone())));
                    receipts.insert(user, (dd, r));
                }
                Op::Deliver { n, replay } => {
                    let from = delivered.saturating_sub(replay);
                    let to = (delivered + n).min(events.len());
                    let items = items_of(&events[from..to]);
                    if items.is_empty() {
                        continue;
                    }
                    let total = items.len() as u64;
                    let repeats: u64 = events[from..delivered.max(from)]
                        .iter()
                        .map(|(_, e)| e.recipients.len() as u64)
                        .sum();
                    let (o, _) = s.apply(Command::Deliver { items });
                    prop_assert_eq!(o, Outcome::Delivered { applied: total - repeats, skipped: repeats });
                    for (eseq, e) in &events[delivered.max(from)..to] {
                        for u in &e.recipients {
                            inbox.entry(u.0).or_default().push(*eseq);
                        }
                    }
                    delivered = delivered.max(to);
                }
            }
        }
        // The store agrees with the model.
        let head: Head = s.get(&head_key(CONV)).unwrap_or_default();
        prop_assert_eq!(head.seq, Seq(last_seq));
        for (user, (d, r)) in &receipts {
            let got: Receipt = s.get(&receipt_key(CONV, UserId(*user))).unwrap_or_default();
            prop_assert_eq!((got.delivered, got.read), (Seq(*d), Seq(*r)));
        }
        for user in 1..=3u64 {
            // Each user's inbox holds every delivered event once, in order.
            let want = inbox.get(&user).cloned().unwrap_or_default();
            let uh: UserHead = s.get(&user_head_key(UserId(user))).unwrap_or_default();
            prop_assert_eq!(uh.useq, Useq(want.len() as u64));
            let mut got = Vec::new();
            for useq in 1..=uh.useq.0 {
                let e: records::InboxEvent = s.get(&records::inbox_key(UserId(user), Useq(useq))).unwrap();
                got.push(e.eseq.0);
            }
            prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn a_reply_names_a_message_the_conversation_holds() {
    let mut s = Shard::default();
    s.out(group(&[1, 2, 3]));
    assert_eq!(seq(&s.out(send(1, "a"))), 1);
    // A plain post has no target; a reply stores its target.
    assert_eq!(seq(&s.out(reply(2, "b", 0, None))), 2);
    assert_eq!(seq(&s.out(reply(2, "c", 1, None))), 3);
    assert_eq!(stored(&s, 3).unwrap().reply_to, Some(Seq(1)));
    assert_eq!(stored(&s, 2).unwrap().reply_to, None);
    assert_eq!(stored(&s, 1).unwrap().body, b"hi");
    // Nothing there yet, nothing ever, or not a member's to answer.
    for to in [4, 99] {
        assert_eq!(
            code(&s.out(reply(2, &format!("x{to}"), to, None))),
            Some(RejectCode::NoSuchMessage)
        );
    }
    assert_eq!(
        code(&s.out(reply(9, "y", 1, None))),
        Some(RejectCode::NotAMember)
    );
    // A system message cannot be answered.
    let Outcome::MembersChanged { seq: sys, .. } = s.out(change(1, &[4], &[])) else {
        panic!("not changed");
    };
    assert_eq!(
        code(&s.out(reply(2, "z", sys.0, None))),
        Some(RejectCode::NoSuchMessage)
    );
    // A refused reply stores nothing: the next message takes the next seq.
    assert_eq!(seq(&s.out(send(1, "d"))), sys.0 + 1);
}

#[test]
fn an_expired_message_cannot_be_answered_but_a_resend_of_its_reply_can() {
    let mut s = Shard::default();
    s.out(group(&[1, 2]));
    // Expires two stamps from now.
    s.out(reply(1, "a", 0, Some(STAMP + s.stamp + 3)));
    let first = s.out(reply(2, "b", 1, None));
    assert_eq!(seq(&first), 2);
    s.out(send(1, "c"));
    // Message 1 has expired now.
    assert_eq!(
        code(&s.out(reply(2, "d", 1, None))),
        Some(RejectCode::NoSuchMessage)
    );
    // A resend of the reply that was stored answers as the original did.
    let again = s.out(reply(2, "b", 1, None));
    assert!(matches!(
        again,
        Outcome::Appended {
            seq: Seq(2),
            duplicate: true,
            ..
        }
    ));
}

#[test]
fn every_post_keeps_one_index_entry_and_odd_message_versions_are_refused() {
    let mut s = Shard::default();
    s.out(group(&[1, 2]));
    for i in 0..5 {
        s.out(reply(1, &format!("m{i}"), 0, None));
    }
    let index: Vec<&Vec<u8>> =
        s.kv.keys()
            .filter(|k| k.starts_with(&records::seq_key(CONV, Seq(0))[..12]))
            .collect();
    assert_eq!(index.len(), 5, "one seq index entry per message");
    // Version 1 values are pinned by chat/tests/it/formats.rs ("message");
    // an unknown version or an empty value is refused.
    assert!(records::decode_message(&[9, 1, 2]).is_err());
    assert!(records::decode_message(&[]).is_err());
}

#[test]
fn a_reply_is_decided_from_the_index_not_from_what_retention_left() {
    // One replica's retention may already hide or drop a message another
    // still holds (local clocks, own compactions); the reply rule must
    // answer the same on both.
    let run = |drop_record: bool| {
        let mut s = Shard::default();
        s.out(group(&[1, 2]));
        s.out(reply(1, "a", 0, Some(STAMP + 1_000)));
        if drop_record {
            let ix = indexed(&s, 1).unwrap();
            s.kv.remove(&records::msg_key(CONV, ix.ts));
        }
        s.out(reply(2, "b", 1, None))
    };
    assert_eq!(run(false), run(true));
    assert_eq!(seq(&run(true)), 2);
}

const WINDOW: u64 = 100;

fn edit(actor: u64, seq: u64, body: &str) -> Command {
    Command::Edit {
        conv: CONV,
        actor: UserId(actor),
        seq: Seq(seq),
        body: body.as_bytes().to_vec(),
        window_micros: WINDOW,
    }
}

fn unsend(actor: u64, seq: u64, admins_may: bool) -> Command {
    Command::Unsend {
        conv: CONV,
        actor: UserId(actor),
        seq: Seq(seq),
        window_micros: WINDOW,
        admins_may,
    }
}

fn react(user: u64, seq: u64, emoji: &str, add: bool) -> Command {
    Command::React {
        conv: CONV,
        user: UserId(user),
        seq: Seq(seq),
        emoji: emoji.into(),
        add,
    }
}

fn changed(o: &Outcome) -> bool {
    match o {
        Outcome::MessageChanged { changed, .. } => *changed,
        other => panic!("not a change: {other:?}"),
    }
}

/// The events queued in `CONV`'s outbox, oldest first.
fn outbox(s: &Shard) -> Vec<records::EventKind> {
    let head: OutboxHead = s.get(&outbox_head_key(CONV)).unwrap_or_default();
    (1..=head.last.0)
        .filter_map(|e| s.get::<OutboxEntry>(&outbox_key(CONV, Eseq(e))))
        .map(|e| e.event)
        .collect()
}

#[test]
fn only_the_sender_edits_and_only_within_the_window() {
    let mut s = Shard::default();
    s.out(group(&[1, 2, 3]));
    s.out(send(1, "a"));
    assert_eq!(code(&s.out(edit(2, 1, "x"))), Some(RejectCode::Forbidden));
    assert_eq!(code(&s.out(edit(4, 1, "x"))), Some(RejectCode::NotAMember));
    assert_eq!(
        code(&s.out(edit(1, 9, "x"))),
        Some(RejectCode::NoSuchMessage)
    );
    assert_eq!(code(&s.out(edit(1, 1, ""))), Some(RejectCode::Invalid));
    // The system message of the creation is nobody's to edit.
    s.out(change(1, &[4], &[]));
    assert_eq!(
        code(&s.out(edit(1, 2, "x"))),
        Some(RejectCode::NoSuchMessage)
    );
    let (out, fx) = s.apply(edit(1, 1, "fixed"));
    assert!(changed(&out));
    assert_eq!(fx.changed, vec![(CONV, Seq(1))], "caches learn of it");
    s.out(edit(1, 1, "fixed again"));
    let m = stored(&s, 1).unwrap();
    assert_eq!(m.body, b"fixed again");
    assert_eq!(m.edits, 2);
    assert!(m.edited_at.is_some());
    assert!(m.prior.is_empty(), "prior bodies are not kept by default");
    // Not unread: the members' views do not count it (see deliver), and
    // the event says what changed.
    assert!(matches!(
        outbox(&s).last(),
        Some(records::EventKind::Edited { seq: Seq(1), .. })
    ));
    s.stamp += WINDOW;
    assert_eq!(code(&s.out(edit(1, 1, "late"))), Some(RejectCode::TooLate));
}

#[test]
fn unsend_leaves_a_tombstone_that_no_rule_finds_again() {
    let mut s = Shard::default();
    s.out(group(&[1, 2, 3]));
    s.out(send(2, "a"));
    s.out(react(3, 1, "👍", true));
    assert_eq!(
        code(&s.out(unsend(3, 1, true))),
        Some(RejectCode::Forbidden)
    );
    assert!(changed(&s.out(unsend(2, 1, false))));
    let m = stored(&s, 1).unwrap();
    assert!(m.body.is_empty() && m.reactions.is_empty());
    assert_eq!(m.unsent.map(|u| u.by), Some(UserId(2)));
    assert!(indexed(&s, 1).unwrap().unsent);
    assert!(
        !s.kv.contains_key(&records::reactions_key(CONV, Seq(1))),
        "its reactions go with it"
    );
    assert!(!changed(&s.out(unsend(2, 1, false))), "again: a no-op");
    assert_eq!(
        code(&s.out(edit(2, 1, "x"))),
        Some(RejectCode::NoSuchMessage)
    );
    assert_eq!(
        code(&s.out(react(3, 1, "👍", true))),
        Some(RejectCode::NoSuchMessage)
    );
    assert_eq!(
        code(&s.out(reply(3, "r", 1, None))),
        Some(RejectCode::NoSuchMessage)
    );
    // Out of the sender's window, only an admin (if allowed) may.
    s.out(send(2, "b"));
    s.stamp += WINDOW;
    assert_eq!(code(&s.out(unsend(2, 2, true))), Some(RejectCode::TooLate));
    assert_eq!(
        code(&s.out(unsend(1, 2, false))),
        Some(RejectCode::Forbidden)
    );
    assert!(
        changed(&s.out(unsend(1, 2, true))),
        "user 1 created the group"
    );
    assert_eq!(stored(&s, 2).unwrap().unsent.map(|u| u.by), Some(UserId(1)));
}

#[test]
fn reactions_are_a_set_per_user_and_emoji_with_bounds() {
    let mut s = Shard::default();
    s.out(group(&[1, 2, 3]));
    s.out(send(1, "a"));
    assert!(changed(&s.out(react(2, 1, "👍", true))));
    assert!(!changed(&s.out(react(2, 1, "👍", true))), "already there");
    assert!(changed(&s.out(react(3, 1, "👍", true))));
    assert!(changed(&s.out(react(3, 1, "🎉", true))));
    assert!(!changed(&s.out(react(2, 1, "🎉", false))), "never added");
    let m = stored(&s, 1).unwrap();
    let got: Vec<(String, Vec<u64>)> = m
        .reactions
        .iter()
        .map(|r| (r.emoji.to_string(), r.users.iter().map(|u| u.0).collect()))
        .collect();
    assert_eq!(got, [("👍".into(), vec![2, 3]), ("🎉".into(), vec![3])]);
    assert!(changed(&s.out(react(3, 1, "🎉", false))));
    assert_eq!(
        stored(&s, 1).unwrap().reactions.len(),
        1,
        "an emoji nobody uses goes"
    );
    assert_eq!(
        code(&s.out(react(2, 1, "", true))),
        Some(RejectCode::Invalid)
    );
    assert_eq!(
        code(&s.out(react(2, 1, "a b", true))),
        Some(RejectCode::Invalid)
    );
    for i in 0..crate::command::MAX_EMOJIS_PER_USER - 1 {
        assert!(changed(&s.out(react(2, 1, &format!("e{i}"), true))));
    }
    assert_eq!(
        code(&s.out(react(2, 1, "one-more", true))),
        Some(RejectCode::Invalid),
        "per user bound"
    );
    // A member who left reacts no more.
    s.out(change(3, &[], &[3]));
    assert_eq!(
        code(&s.out(react(3, 1, "👍", false))),
        Some(RejectCode::NotAMember)
    );
    // Delivered to user 2's inbox, the reactions (and their removals)
    // count nothing: unread are the two messages (the text, the system
    // message of user 3 leaving), whatever the reactions did.
    let items: Vec<Delivery> = outbox(&s)
        .into_iter()
        .enumerate()
        .map(|(i, event)| Delivery {
            user: UserId(2),
            conv: CONV,
            eseq: Eseq(i as u64 + 1),
            event,
            at: STAMP,
        })
        .collect();
    assert!(items.len() > 10, "message, reactions, membership");
    s.out(Command::Deliver { items });
    let uc = s.user_conv(2);
    assert_eq!((uc.unread(), uc.last_seq), (2, Seq(2)));
}

#[test]
fn changes_are_decided_from_the_index_not_from_what_retention_left() {
    // As for replies: a replica whose retention already dropped the
    // message record must answer every change exactly as one that still
    // holds it, and queue the same events.
    let run = |drop_record: bool| {
        let mut s = Shard::default();
        s.out(group(&[1, 2]));
        s.out(reply(1, "a", 0, Some(STAMP + 1_000)));
        if drop_record {
            let ix = indexed(&s, 1).unwrap();
            s.kv.remove(&records::msg_key(CONV, ix.ts));
        }
        let outs = vec![
            s.out(react(2, 1, "👍", true)),
            s.out(react(2, 1, "👍", true)),
            s.out(edit(1, 1, "x")),
            s.out(unsend(1, 1, false)),
        ];
        (outs, outbox(&s), indexed(&s, 1))
    };
    assert_eq!(run(false), run(true));
}

fn pin(actor: u64, seq: u64, pin: bool) -> Command {
    Command::Pin {
        conv: CONV,
        actor: UserId(actor),
        seq: Seq(seq),
        pin,
    }
}

#[test]
fn pins_are_a_bounded_list_of_held_messages_and_an_unsend_unpins() {
    let mut s = Shard::default();
    s.out(group(&[1, 2]));
    for i in 0..3 {
        s.out(send(1, &format!("m{i}")));
    }
    assert!(changed(&s.out(pin(2, 1, true))));
    assert!(!changed(&s.out(pin(2, 1, true))), "already pinned");
    assert!(changed(&s.out(pin(1, 2, true))));
    assert_eq!(code(&s.out(pin(3, 3, true))), Some(RejectCode::NotAMember));
    assert_eq!(
        code(&s.out(pin(2, 9, true))),
        Some(RejectCode::NoSuchMessage)
    );
    let pins: records::Pins = s.get(&records::pins_key(CONV)).unwrap();
    let seqs: Vec<u64> = pins.list.iter().map(|p| p.seq.0).collect();
    assert_eq!(seqs, [2, 1], "most recently pinned first");
    assert!(matches!(
        outbox(&s).last(),
        Some(records::EventKind::Pinned {
            seq: Seq(2),
            pinned: true,
            ..
        })
    ));
    s.out(unsend(1, 2, false));
    let pins: records::Pins = s.get(&records::pins_key(CONV)).unwrap();
    assert_eq!(pins.list.len(), 1, "the unsent message left the pins");
    assert!(changed(&s.out(pin(1, 1, false))));
    assert!(!changed(&s.out(pin(1, 1, false))), "not pinned any more");
    assert!(
        !s.kv.contains_key(&records::pins_key(CONV)),
        "an empty list is no record"
    );
    // The bound.
    for i in 0..crate::command::MAX_PINS {
        s.out(send(1, &format!("p{i}")));
        assert!(changed(&s.out(pin(1, 4 + i as u64, true))));
    }
    s.out(send(1, "one more"));
    let last = 4 + crate::command::MAX_PINS as u64;
    assert_eq!(code(&s.out(pin(1, last, true))), Some(RejectCode::Invalid));
}

#[test]
fn a_block_stops_the_pairs_direct_messages_both_ways_until_unblocked() {
    let (a, b) = (UserId(1), UserId(2));
    let pair = crate::ids::direct_id(a, b);
    let mut s = Shard::default();
    let direct = |creator: UserId, peer: UserId| Command::CreateConversation {
        conv: pair,
        kind: ConversationKind::Direct,
        name: String::new(),
        creator,
        members: vec![peer],
        max_members: 5,
    };
    let block = |blocker: UserId, target: UserId, block: bool| Command::Block {
        pair,
        blocker,
        target,
        block,
    };
    let post = |sender: UserId, cid: &str| {
        Command::Post(NewMessage {
            conv: pair,
            sender,
            device: DeviceId(1),
            client_msg_id: cid.into(),
            kind: MessageKind::Text,
            body: b"hi".to_vec(),
            expires_at: None,
            reply_to: None,
        })
    };
    // Blocked before they ever talked: no direct conversation either way.
    assert_eq!(s.out(block(a, b, true)), Outcome::Done);
    assert_eq!(code(&s.out(direct(b, a))), Some(RejectCode::Blocked));
    assert_eq!(code(&s.out(direct(a, b))), Some(RejectCode::Blocked));
    assert_eq!(s.out(block(a, b, false)), Outcome::Done);
    assert_eq!(s.out(direct(b, a)), Outcome::Created { created: true });
    assert!(matches!(s.out(post(b, "1")), Outcome::Appended { .. }));
    // Blocked while talking: neither sends; the conversation is still
    // found (creating it again is idempotent).
    s.out(block(a, b, true));
    assert_eq!(code(&s.out(post(b, "2"))), Some(RejectCode::Blocked));
    assert_eq!(code(&s.out(post(a, "3"))), Some(RejectCode::Blocked));
    assert_eq!(s.out(direct(b, a)), Outcome::Created { created: false });
    // Only the blocker's inbox hears of it.
    let last = s.get::<OutboxHead>(&outbox_head_key(pair)).unwrap().last;
    let entry: OutboxEntry = s.get(&outbox_key(pair, last)).unwrap();
    assert_eq!(entry.recipients, [a]);
    assert_eq!(
        entry.event,
        records::EventKind::Blocked {
            user: b,
            blocked: true
        }
    );
    // Both block, one unblocks: still blocked; both unblock: talking again.
    s.out(block(b, a, true));
    s.out(block(a, b, false));
    assert_eq!(code(&s.out(post(a, "4"))), Some(RejectCode::Blocked));
    s.out(block(b, a, false));
    assert!(matches!(s.out(post(a, "5")), Outcome::Appended { .. }));
    // A block names the pair's own conversation, and another user.
    let wrong = Command::Block {
        pair: CONV,
        blocker: a,
        target: b,
        block: true,
    };
    assert_eq!(code(&s.out(wrong)), Some(RejectCode::Invalid));
    assert_eq!(code(&s.out(block(a, a, true))), Some(RejectCode::Invalid));
}

#[test]
fn delivering_a_block_keeps_the_blockers_own_list() {
    let mut s = Shard::default();
    let deliver = |blocked: bool, eseq: u64| Command::Deliver {
        items: vec![Delivery {
            user: UserId(1),
            conv: CONV,
            eseq: Eseq(eseq),
            event: records::EventKind::Blocked {
                user: UserId(2),
                blocked,
            },
            at: STAMP,
        }],
    };
    s.out(deliver(true, 1));
    let key = records::blocked_key(UserId(1), UserId(2));
    assert!(s.get::<records::BlockedUser>(&key).is_some());
    s.out(deliver(false, 2));
    assert!(s.get::<records::BlockedUser>(&key).is_none());
}

#[test]
fn hiding_is_for_one_member_and_their_devices_only() {
    let mut s = Shard::default();
    s.out(group(&[1, 2]));
    s.out(send(1, "a"));
    let hide = |user: u64, seq: u64| Command::Hide {
        conv: CONV,
        user: UserId(user),
        seq: Seq(seq),
    };
    assert!(changed(&s.out(hide(2, 1))));
    assert!(!changed(&s.out(hide(2, 1))), "already hidden");
    assert_eq!(code(&s.out(hide(3, 1))), Some(RejectCode::NotAMember));
    assert_eq!(code(&s.out(hide(2, 7))), Some(RejectCode::NoSuchMessage));
    assert!(s
        .kv
        .contains_key(&records::hidden_key(CONV, UserId(2), Seq(1))));
    assert!(!s
        .kv
        .contains_key(&records::hidden_key(CONV, UserId(1), Seq(1))));
    let head: OutboxHead = s.get(&outbox_head_key(CONV)).unwrap();
    let entry: OutboxEntry = s.get(&outbox_key(CONV, head.last)).unwrap();
    assert_eq!(entry.recipients, [UserId(2)], "only the hider's devices");
    // A tombstone can be hidden too.
    s.out(unsend(1, 1, false));
    assert!(!changed(&s.out(hide(2, 1))));
    assert!(changed(&s.out(hide(1, 1))));
}

// ---------------------------------------------------------------------------
// Mentions, settings (history visibility, edit history, retention), erasure.

/// A `Send` of `sender`'s message `cid` mentioning `mentions`, with the
/// node's default retention `keep` and the sender's own `expires_at`.
fn send_with(
    sender: u64,
    cid: &str,
    mentions: &[u64],
    keep: Option<u64>,
    expires_at: Option<u64>,
) -> Command {
    Command::Send(crate::command::SendMessage {
        message: NewMessage {
            conv: CONV,
            sender: UserId(sender),
            device: DeviceId(1),
            client_msg_id: cid.into(),
            kind: MessageKind::Text,
            body: format!("hi from {sender}").into_bytes(),
            expires_at,
            reply_to: None,
        },
        mentions: mentions.iter().map(|u| UserId(*u)).collect(),
        default_retention_micros: keep,
    })
}

fn mention(sender: u64, cid: &str, mentions: &[u64]) -> Command {
    send_with(sender, cid, mentions, None, None)
}

fn sent(o: &Outcome) -> (u64, Option<u64>, Vec<UserId>) {
    match o {
        Outcome::Sent {
            seq,
            expires_at,
            mentions,
            ..
        } => (seq.0, *expires_at, mentions.clone()),
        other => panic!("not sent: {other:?}"),
    }
}

fn configure(
    actor: u64,
    history: Option<crate::command::HistoryVisibility>,
    keep_edits: Option<bool>,
    retention: Option<crate::command::Retention>,
) -> Command {
    Command::Configure {
        conv: CONV,
        actor: UserId(actor),
        history,
        keep_edits,
        retention,
    }
}

impl Shard {
    /// Applies `cmd`, then delivers every event it queued (one `Deliver`
    /// per event, as the fan-out would).
    fn apply_and_deliver(&mut self, cmd: Command) -> Outcome {
        let (out, fx) = self.apply(cmd);
        for f in &fx.fresh {
            let items = deliveries(std::slice::from_ref(f));
            self.out(Command::Deliver { items });
        }
        out
    }
}

#[test]
fn mentions_count_for_members_until_read_or_unsent() {
    let mut s = Shard::default();
    s.apply_and_deliver(group(&[1, 2, 3]));
    // 9 is no member and 1 is the sender: only 2 and 3 count.
    let (first, _, kept) = sent(&s.apply_and_deliver(mention(1, "a", &[2, 3, 9, 1, 2])));
    assert_eq!(kept, vec![UserId(2), UserId(3)]);
    assert_eq!(stored(&s, first).unwrap().mentions, kept);
    let (second, _, _) = sent(&s.apply_and_deliver(mention(1, "b", &[2])));
    assert_eq!(s.user_conv(2).unread_mentions(), 2);
    assert_eq!(s.user_conv(3).unread_mentions(), 1);
    assert_eq!(s.user_conv(1).unread_mentions(), 0);
    // Reading past the first mention drops it, not the second.
    s.apply_and_deliver(Command::SetReceipt {
        conv: CONV,
        user: UserId(2),
        delivered: None,
        read: Some(Seq(first)),
    });
    assert_eq!(s.user_conv(2).mentions, vec![Seq(second)]);
    // An unsent message mentions nobody any more.
    s.apply_and_deliver(unsend(1, second, false));
    assert_eq!(s.user_conv(2).unread_mentions(), 0);
    // 3 sends: everything before counts as read, their mention too.
    s.apply_and_deliver(send(3, "c"));
    assert_eq!(s.user_conv(3).unread_mentions(), 0);
    // Too many mentions are refused whole.
    let many: Vec<u64> = (1..=51).collect();
    assert_eq!(
        code(&s.out(mention(1, "d", &many))),
        Some(RejectCode::Invalid)
    );
}

#[test]
fn settings_are_a_groups_admins_or_either_direct_members() {
    use crate::command::{HistoryVisibility, Retention};
    let mut s = Shard::default();
    s.out(group(&[1, 2]));
    assert_eq!(
        code(&s.out(configure(2, None, Some(true), None))),
        Some(RejectCode::Forbidden)
    );
    assert_eq!(
        code(&s.out(configure(9, None, Some(true), None))),
        Some(RejectCode::NotAMember)
    );
    assert_eq!(
        code(&s.out(configure(1, None, None, Some(Retention::Days(0))))),
        Some(RejectCode::Invalid)
    );
    let out = s.out(configure(
        1,
        Some(HistoryVisibility::Joined),
        None,
        Some(Retention::Days(7)),
    ));
    assert!(matches!(out, Outcome::Configured { changed: true, .. }));
    let c = s.conversation();
    assert_eq!(c.settings.history, HistoryVisibility::Joined);
    assert_eq!(c.settings.retention, Retention::Days(7));
    assert!(!c.settings.keep_edits, "a field not given keeps its value");
    assert!(matches!(
        outbox(&s).last(),
        Some(records::EventKind::Configured { by: UserId(1), .. })
    ));
    // The same again changes nothing and tells nobody.
    let before = outbox(&s).len();
    let out = s.out(configure(1, Some(HistoryVisibility::Joined), None, None));
    assert!(matches!(out, Outcome::Configured { changed: false, .. }));
    assert_eq!(outbox(&s).len(), before);
}

#[test]
fn retention_stamps_each_new_message_like_a_disappearing_one() {
    use crate::command::Retention;
    const DAY: u64 = 86_400_000_000;
    let mut s = Shard::default();
    s.out(group(&[1, 2]));
    let node_default = |sender: u64, cid: &str, keep: Option<u64>, expires: Option<u64>| {
        send_with(sender, cid, &[], keep, expires)
    };
    // The node's default applies until the conversation sets its own.
    let (seq, exp, _) = sent(&s.out(node_default(1, "a", Some(3 * DAY), None)));
    let ts = indexed(&s, seq).unwrap().ts;
    assert_eq!(exp, Some(ts + 3 * DAY));
    assert_eq!(indexed(&s, seq).unwrap().expires_at, exp);
    assert_eq!(stored(&s, seq).unwrap().expires_at, exp);
    s.out(configure(1, None, None, Some(Retention::Days(1))));
    let (seq, exp, _) = sent(&s.out(node_default(1, "b", Some(3 * DAY), None)));
    assert_eq!(exp, Some(indexed(&s, seq).unwrap().ts + DAY));
    // A sender's own sooner expiry wins.
    let soon = STAMP + 1000;
    let (_, exp, _) = sent(&s.out(node_default(1, "c", Some(3 * DAY), Some(soon))));
    assert_eq!(exp, Some(soon));
    s.out(configure(1, None, None, Some(Retention::Forever)));
    let (_, exp, _) = sent(&s.out(node_default(1, "d", Some(3 * DAY), None)));
    assert_eq!(exp, None);
    // The earlier messages keep the expiry they were sent with.
    assert_eq!(
        indexed(&s, 1).unwrap().expires_at,
        Some(indexed(&s, 1).unwrap().ts + 3 * DAY)
    );
}

#[test]
fn edits_keep_prior_bodies_only_where_the_conversation_says() {
    use crate::command::MAX_PRIOR_BODIES;
    let mut s = Shard::default();
    s.out(group(&[1, 2]));
    s.out(send(1, "a"));
    s.out(edit(1, 1, "discarded"));
    s.out(configure(1, None, Some(true), None));
    for n in 0..MAX_PRIOR_BODIES + 2 {
        s.out(edit(1, 1, &format!("v{n}")));
    }
    let m = stored(&s, 1).unwrap();
    // "discarded" (and "v0") went: the bound drops the oldest.
    assert_eq!(m.prior.len(), MAX_PRIOR_BODIES, "bounded, oldest dropped");
    assert_eq!(m.prior[0].body, b"v1");
    assert_eq!(
        m.prior.last().unwrap().body,
        format!("v{}", MAX_PRIOR_BODIES).into_bytes()
    );
    assert_eq!(m.body, format!("v{}", MAX_PRIOR_BODIES + 1).into_bytes());
    // Unsending removes every body, the prior ones too.
    s.out(unsend(1, 1, false));
    assert!(stored(&s, 1).unwrap().prior.is_empty());
}

#[test]
fn with_joined_history_a_new_member_neither_sees_nor_touches_older_messages() {
    use crate::command::HistoryVisibility;
    let mut s = Shard::default();
    s.apply_and_deliver(group(&[1, 2]));
    s.out(configure(1, Some(HistoryVisibility::Joined), None, None));
    s.apply_and_deliver(send(1, "old")); // seq 1
    s.apply_and_deliver(change(1, &[3], &[])); // seq 2: the system message
    let c = s.conversation();
    assert_eq!(c.joined, vec![(UserId(3), Seq(1))]);
    assert!(!c.sees(UserId(3), Seq(1)) && c.sees(UserId(3), Seq(2)));
    assert!(c.sees(UserId(2), Seq(1)), "founders see everything");
    // 3 cannot react to, pin or answer what came before them…
    for cmd in [
        react(3, 1, "👍", true),
        pin(3, 1, true),
        reply(3, "r", 1, None),
    ] {
        assert_eq!(code(&s.out(cmd)), Some(RejectCode::NoSuchMessage));
    }
    // …and is not told when others change it.
    let (_, fx) = s.apply(react(2, 1, "👍", true));
    assert_eq!(fx.fresh[0].entry.recipients, vec![UserId(1), UserId(2)]);
    // Re-added, a member joins again from then on.
    s.out(change(1, &[], &[3]));
    assert!(s.conversation().joined.is_empty());
    s.out(send(1, "while away")); // seq 4
    s.out(change(1, &[3], &[])); // seq 5
    assert_eq!(s.conversation().joined, vec![(UserId(3), Seq(4))]);
    // With shared history everything is visible again.
    s.out(configure(1, Some(HistoryVisibility::Shared), None, None));
    assert!(s.conversation().sees(UserId(3), Seq(1)));
}

#[test]
fn erasure_tombstones_only_the_users_messages_and_takes_their_records() {
    let mut s = Shard::default();
    s.out(group(&[1, 2]));
    s.out(send(2, "a")); // 1
    s.out(send(1, "b")); // 2
    s.out(send(2, "c")); // 3
    s.out(react(1, 3, "👍", true));
    let erase = |after: u64, upto: u64| Command::EraseMessages {
        conv: CONV,
        user: UserId(2),
        after: Seq(after),
        upto: Seq(upto),
    };
    assert_eq!(
        code(&s.out(erase(0, crate::command::MAX_ERASE_SPAN + 1))),
        Some(RejectCode::Invalid)
    );
    let (out, fx) = s.apply(erase(0, 2));
    assert_eq!(
        out,
        Outcome::Erased {
            removed: 1,
            receipts: 1
        }
    );
    assert_eq!(fx.changed, vec![(CONV, Seq(1))]);
    assert_eq!(
        s.out(erase(2, 10)),
        Outcome::Erased {
            removed: 1,
            receipts: 0
        }
    );
    for seq in [1, 3] {
        let m = stored(&s, seq).unwrap();
        assert!(m.body.is_empty() && m.reactions.is_empty() && m.unsent.is_some());
    }
    assert_eq!(stored(&s, 2).unwrap().body, b"hi", "others' messages stay");
    assert!(!s.kv.contains_key(&receipt_key(CONV, UserId(2))));
    // Again: nothing left to remove.
    assert_eq!(
        s.out(erase(0, 3)),
        Outcome::Erased {
            removed: 0,
            receipts: 0
        }
    );
    // The user's own shard: profile, devices, push targets, blocks.
    s.out(Command::SetProfile {
        user: UserId(2),
        display_name: "Bo".into(),
    });
    s.out(Command::RegisterDevice {
        user: UserId(2),
        device: DeviceId(5),
        name: "phone".into(),
        platform: "ios".into(),
    });
    s.out(Command::SetPushToken {
        user: UserId(2),
        device: DeviceId(5),
        token: Some("tok".into()),
    });
    let out = s.out(Command::EraseUser {
        user: UserId(2),
        devices: vec![DeviceId(5), DeviceId(6)],
        blocked: vec![UserId(1)],
    });
    assert_eq!(
        out,
        Outcome::Erased {
            removed: 3,
            receipts: 0
        }
    );
    assert!(!s.kv.contains_key(&records::profile_key(UserId(2))));
    assert!(!s.kv.contains_key(&crate::push::push_devices_key(UserId(2))));
    assert!(!s
        .kv
        .contains_key(&records::push_key(UserId(2), DeviceId(5))));
}

fn use_ticket(id: u8, expires_secs: u64) -> Command {
    Command::UseTicket {
        user: UserId(1),
        ticket: [id; 16],
        expires_secs,
    }
}

fn rejected(o: &Outcome) -> Option<RejectCode> {
    match o {
        Outcome::Rejected { code, .. } => Some(*code),
        _ => None,
    }
}

#[test]
fn a_ticket_is_redeemed_once_and_forgotten_after_it_expires() {
    let mut s = Shard::default();
    let now = (STAMP + 1) / 1_000_000;
    assert_eq!(s.out(use_ticket(1, now + 30)), Outcome::Done);
    assert_eq!(
        rejected(&s.out(use_ticket(1, now + 30))),
        Some(RejectCode::Conflict)
    );
    // Another ticket, and the same id for another user, are their own.
    assert_eq!(s.out(use_ticket(2, now + 30)), Outcome::Done);
    let other = Command::UseTicket {
        user: UserId(2),
        ticket: [1; 16],
        expires_secs: now + 30,
    };
    assert_eq!(s.out(other), Outcome::Done);
    // An expired ticket is refused; once past their expiry the redeemed
    // ids leave the record.
    assert_eq!(
        rejected(&s.out(use_ticket(3, now - 1))),
        Some(RejectCode::TooLate)
    );
    s.stamp += 31 * 1_000_000;
    assert_eq!(s.out(use_ticket(4, now + 90)), Outcome::Done);
    let uses: records::TicketUses = s.get(&records::ticket_uses_key(UserId(1))).unwrap();
    assert_eq!(uses.used, vec![([4; 16], now + 90)]);
}

#[test]
fn revocations_cover_the_devices_named_or_all_but_the_asking_one() {
    let mut s = Shard::default();
    let revoke = |scope| Command::RevokeSessions {
        user: UserId(1),
        scope,
    };
    let read = |s: &Shard| -> records::Revocations {
        s.get(&records::revocations_key(UserId(1))).unwrap()
    };
    let t0 = (STAMP + 1) / 1_000_000;
    s.out(revoke(crate::command::RevokeScope::Devices(vec![
        DeviceId(2),
    ])));
    let r = read(&s);
    assert!(r.revokes(DeviceId(2), t0) && r.revokes(DeviceId(2), t0 - 100));
    assert!(!r.revokes(DeviceId(2), t0 + 1), "a newer token of device 2");
    assert!(!r.revokes(DeviceId(1), t0), "another device");
    // Ten seconds later device 1 logs out the others: device 2's token of
    // then goes too, device 1's stays.
    s.stamp += 10 * 1_000_000;
    s.out(revoke(crate::command::RevokeScope::AllBut(Some(DeviceId(
        1,
    )))));
    let r = read(&s);
    assert!(r.revokes(DeviceId(2), t0 + 10) && r.revokes(DeviceId(3), t0 + 5));
    assert!(!r.revokes(DeviceId(1), t0 + 10));
    assert!(r.devices.is_empty(), "covered entries dropped: {r:?}");
    // Device 1 revoked on its own later; a further "others" from device 1
    // keeps that revocation.
    s.stamp += 10 * 1_000_000;
    s.out(revoke(crate::command::RevokeScope::Devices(vec![
        DeviceId(1),
    ])));
    s.stamp += 10 * 1_000_000;
    s.out(revoke(crate::command::RevokeScope::AllBut(Some(DeviceId(
        1,
    )))));
    let r = read(&s);
    assert!(r.revokes(DeviceId(1), t0 + 20), "{r:?}");
    assert!(!r.revokes(DeviceId(1), t0 + 21));
    // An operator's: every device.
    s.out(revoke(crate::command::RevokeScope::AllBut(None)));
    assert!(read(&s).revokes(DeviceId(1), t0 + 30));
    assert_eq!(
        rejected(&s.out(revoke(crate::command::RevokeScope::Devices(vec![])))),
        Some(RejectCode::Invalid)
    );
}

mod media {
    use super::*;
    use crate::media::records::{
        chunk_key, decode_chunk, object_key, upload_key, Object, Upload, UploadState, CHUNK,
    };

    const UP: u64 = 0xfeed;
    const OWNER: UserId = UserId(1);

    fn append(offset: u64, bytes: Vec<u8>) -> Command {
        Command::AppendUpload {
            upload: UP,
            owner: OWNER,
            offset,
            bytes: bytes.into(),
        }
    }

    fn code(o: Outcome) -> RejectCode {
        match o {
            Outcome::Rejected { code, .. } => code,
            o => panic!("not refused: {o:?}"),
        }
    }

    fn chunk(s: &Shard, i: u32) -> Option<Vec<u8>> {
        s.kv.get(&chunk_key(UP, i))
            .map(|v| decode_chunk(v).unwrap().to_vec())
    }

    #[test]
    fn uploads_take_bytes_in_order_within_chunks_and_only_from_their_owner() {
        let mut s = Shard::default();
        let len = CHUNK + 10;
        let create = Command::CreateUpload {
            upload: UP,
            owner: OWNER,
            length: len,
            mime: "image/png".into(),
            name: "a.png".into(),
        };
        assert!(matches!(s.out(create.clone()), Outcome::Upload(_)));
        assert_eq!(
            code(s.out(create)),
            RejectCode::Conflict,
            "an id is never reused"
        );
        // Not the owner: the same refusal as no upload at all.
        let stranger = Command::AppendUpload {
            upload: UP,
            owner: UserId(2),
            offset: 0,
            bytes: vec![1].into(),
        };
        assert_eq!(code(s.out(stranger)), RejectCode::NoSuchMedia);
        assert_eq!(code(s.out(append(5, vec![1]))), RejectCode::OffsetMismatch);
        // Two appends into one chunk concatenate.
        assert!(matches!(s.out(append(0, vec![1; 100])), Outcome::Upload(_)));
        assert!(matches!(
            s.out(append(100, vec![2; 50])),
            Outcome::Upload(_)
        ));
        let c0 = chunk(&s, 0).unwrap();
        assert_eq!((c0.len(), c0[99], c0[100]), (150, 1, 2));
        // An append may not cross into the next chunk.
        let cross = append(150, vec![3; CHUNK as usize]);
        assert_eq!(code(s.out(cross)), RejectCode::Invalid);
        let fill = append(150, vec![3; CHUNK as usize - 150]);
        assert!(matches!(s.out(fill), Outcome::Upload(_)));
        // Nor pass the declared length.
        assert_eq!(code(s.out(append(CHUNK, vec![4; 11]))), RejectCode::Invalid);
        let Outcome::Upload(u) = s.out(append(CHUNK, vec![4; 10])) else {
            panic!()
        };
        assert_eq!(u.received, len);
        assert_eq!(chunk(&s, 1), Some(vec![4; 10]));
    }

    #[test]
    fn the_first_upload_of_a_hash_stores_it_and_later_ones_drop_their_chunks() {
        let mut s = Shard::default();
        let hash = [9u8; 32];
        for (up, owner) in [(UP, OWNER), (UP + 1, UserId(2))] {
            s.out(Command::CreateUpload {
                upload: up,
                owner,
                length: 3,
                mime: "text/plain".into(),
                name: String::new(),
            });
            s.out(Command::AppendUpload {
                upload: up,
                owner,
                offset: 0,
                bytes: vec![7, 8, 9].into(),
            });
            let stored = s.out(Command::StoreObject {
                hash,
                upload: up,
                size: 3,
                mime: "text/plain".into(),
                image: None,
                thumbs: vec![(96, serde_bytes::ByteBuf::from(vec![up as u8]))],
                owner,
            });
            assert_eq!(stored, Outcome::Stored { upload: UP }, "the first wins");
            let thumb =
                s.kv.get(&crate::media::records::thumb_key(&hash, 96))
                    .unwrap();
            assert_eq!(
                decode_chunk(thumb).unwrap(),
                [UP as u8],
                "the first's thumbnails"
            );
            let keep = up == UP;
            let finish = Command::FinishUpload {
                upload: up,
                owner,
                hash,
                keep,
            };
            assert!(matches!(s.out(finish.clone()), Outcome::Upload(_)));
            // Idempotent.
            assert!(matches!(s.out(finish), Outcome::Upload(_)));
            let u: Upload = s.get(&upload_key(up)).unwrap();
            assert_eq!(u.state, UploadState::Finished { hash, kept: keep });
            assert_eq!(s.kv.contains_key(&chunk_key(up, 0)), keep);
        }
        let o: Object = s.get(&object_key(&hash)).unwrap();
        assert_eq!((o.upload, o.size), (UP, 3));
        assert_eq!(o.uploaders, [OWNER, UserId(2)]);
        // Another hash for a finished upload is refused.
        let other = Command::FinishUpload {
            upload: UP,
            owner: OWNER,
            hash: [1; 32],
            keep: true,
        };
        assert_eq!(code(s.out(other)), RejectCode::Conflict);
        // Used since the cutoff (stored again): not deleted.
        let del = |cut| Command::DeleteObject {
            hash,
            unused_since: cut,
        };
        let Outcome::ObjectDeleted { deleted, .. } = s.out(del(o.last_used)) else {
            panic!()
        };
        assert!(!deleted);
        assert!(s.kv.contains_key(&object_key(&hash)));
        let Outcome::ObjectDeleted {
            deleted, upload, ..
        } = s.out(del(o.last_used + 1))
        else {
            panic!()
        };
        assert!(deleted && upload == UP);
        assert!(!s.kv.contains_key(&object_key(&hash)));
        assert!(!s
            .kv
            .contains_key(&crate::media::records::thumb_key(&hash, 96)));
        s.out(Command::DropUpload { upload: UP });
        assert!(!s.kv.contains_key(&chunk_key(UP, 0)));
        assert!(!s.kv.contains_key(&upload_key(UP)));
    }

    #[test]
    fn an_unfinished_upload_cannot_finish() {
        let mut s = Shard::default();
        s.out(Command::CreateUpload {
            upload: UP,
            owner: OWNER,
            length: 3,
            mime: "text/plain".into(),
            name: String::new(),
        });
        s.out(append(0, vec![1]));
        let finish = Command::FinishUpload {
            upload: UP,
            owner: OWNER,
            hash: [1; 32],
            keep: true,
        };
        assert_eq!(code(s.out(finish)), RejectCode::Invalid);
    }
}
