//! A small key/value application for the runtime's own unit tests: the
//! runtime must work for any [`App`], not only the chat domain's.

use serde::{Deserialize, Serialize};

use missive_engine::keys::Slot;

use crate::app::{App, ClusterCommand, ClusterOutcome};
use crate::cluster::slots::SlotMap;
use crate::error::{Error, Result};
use crate::ids::ShardId;
use crate::storage::record_source::Records;

/// Puts and deletes of slot-prefixed keys (`[keyspace][slot u16 BE]…`).
#[derive(Debug, Default)]
pub(crate) struct Kv;

/// [`Kv`]'s commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum KvCommand {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
    Cluster(ClusterCommand),
}

/// [`Kv`]'s outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum KvOutcome {
    Done,
    Refused(String),
    Cluster(ClusterOutcome),
}

fn slot_of(key: &[u8]) -> Option<Slot> {
    Some(Slot(u16::from_be_bytes(key.get(1..3)?.try_into().ok()?)))
}

impl App for Kv {
    type Command = KvCommand;
    type Outcome = KvOutcome;
    type Effects = ();

    fn cluster(cmd: ClusterCommand) -> KvCommand {
        KvCommand::Cluster(cmd)
    }
    fn as_cluster(cmd: &KvCommand) -> Option<ClusterCommand> {
        match cmd {
            KvCommand::Cluster(c) => Some(c.clone()),
            _ => None,
        }
    }
    fn cluster_outcome(outcome: ClusterOutcome) -> KvOutcome {
        KvOutcome::Cluster(outcome)
    }
    fn as_cluster_outcome(outcome: &KvOutcome) -> Option<ClusterOutcome> {
        match outcome {
            KvOutcome::Cluster(c) => Some(c.clone()),
            _ => None,
        }
    }
    fn misrouted(message: String) -> KvOutcome {
        KvOutcome::Refused(format!("misrouted: {message}"))
    }
    fn shard_of(&self, slots: &SlotMap, cmd: &KvCommand) -> Result<ShardId> {
        match cmd {
            KvCommand::Put { key, .. } | KvCommand::Delete { key } => slot_of(key)
                .map(|s| slots.shard_of_slot(s))
                .ok_or_else(|| Error::InvalidArgument("short key".into())),
            KvCommand::Cluster(_) => Ok(ShardId::DIRECTORY),
        }
    }
    fn slots_of(&self, cmd: &KvCommand) -> Vec<missive_engine::keys::Slot> {
        match cmd {
            KvCommand::Put { key, .. } | KvCommand::Delete { key } => {
                slot_of(key).into_iter().collect()
            }
            KvCommand::Cluster(_) => Vec::new(),
        }
    }
    fn is_misrouted(outcome: &KvOutcome) -> bool {
        matches!(outcome, KvOutcome::Refused(m) if m.starts_with("misrouted"))
    }
    fn is_system(_: &KvCommand) -> bool {
        false
    }
    fn bulk_bytes(cmd: &KvCommand) -> usize {
        match cmd {
            KvCommand::Put { value, .. } => value.len(),
            _ => 0,
        }
    }
    fn take_bulk(cmd: &mut KvCommand) -> Option<(&'static [u8], bytes::Bytes)> {
        match cmd {
            KvCommand::Put { value, .. } => Some((b"", bytes::Bytes::from(std::mem::take(value)))),
            _ => None,
        }
    }
    fn put_bulk(cmd: &mut KvCommand, bytes: bytes::Bytes) {
        if let KvCommand::Put { value, .. } = cmd {
            *value = bytes.to_vec();
        }
    }
    fn apply(
        &self,
        _shard: ShardId,
        records: &mut Records<'_>,
        _stamp_micros: u64,
        cmd: &KvCommand,
        _effects: &mut (),
    ) -> Result<KvOutcome> {
        match cmd {
            KvCommand::Put { key, value } => {
                match records.bulk_ref().filter(|r| r.len as usize == value.len()) {
                    Some(r) => records.put_blob_ref(key.clone(), r, value.clone()),
                    None => records.put(key.clone(), value.clone()),
                }
            }
            KvCommand::Delete { key } => records.delete(key.clone()),
            KvCommand::Cluster(_) => return Ok(KvOutcome::Refused("misrouted".into())),
        }
        Ok(KvOutcome::Done)
    }
    fn applied(&self, _shard: ShardId, _effects: ()) {}
    fn installed(&self, _shard: ShardId) {}
}
