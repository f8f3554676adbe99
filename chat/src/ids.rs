//! The chat domain's identifiers.
//!
//! Each is a newtype over the u64 the client sends, so a user id cannot be
//! passed where a device id is meant. postcard encodes a newtype exactly as
//! the integer inside (a varint), so these types are also the stored
//! format. Conversations are the engine's `ConversationId` (its key layout
//! is built on them).

use serde::{Deserialize, Serialize};

/// A user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserId(pub u64);

/// One of a user's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId(pub u64);

pub use missive_engine::keys::ConversationId;
