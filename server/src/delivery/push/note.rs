//! One notification, before a provider shapes it for its platform.

use serde::Serialize;

use crate::wire::Id;

/// What one notification says, whatever the provider. The webhook
/// provider sends it as its JSON body; APNs and FCM map it onto their
/// payloads (see `apns` and `fcm`).
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// The recipient.
    pub user: Id,
    /// Their device.
    pub device: Id,
    /// The device's platform, as registered ("" if it never registered).
    pub platform: String,
    /// The device's push token.
    pub token: String,
    /// The conversation.
    pub conv: Id,
    /// The message's seq.
    pub seq: u64,
    /// Who sent it.
    pub sender: Id,
    /// The event's position in the user's stream (a sync cursor below it
    /// fetches it).
    pub useq: u64,
    /// When the event happened, µs.
    pub at: u64,
    /// The event's id, `user:useq` (the same for every device).
    pub event_id: String,
    /// Notifications of one conversation replace each other on the
    /// device (APNs `apns-collapse-id`, FCM `collapse_key`).
    pub collapse_key: String,
    /// The user's unread messages over all their conversations (the app
    /// icon's badge).
    pub badge: u64,
    /// What the lock screen may show: only for a conversation whose
    /// members turned `push_previews` on, never for an encrypted one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<Preview>,
}

/// A message's preview in a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preview {
    /// The sender's display name (their id if they set none).
    pub title: String,
    /// The start of the message's text, at most [`PREVIEW_CHARS`]
    /// characters (an ellipsis marks a cut).
    pub body: String,
}

/// The longest preview body, in characters: what a lock screen shows,
/// and far below APNs' 4 KiB payload limit even in 4-byte characters.
pub const PREVIEW_CHARS: usize = 180;

impl Preview {
    /// The preview of a message `text` from `title`.
    pub fn new(title: String, text: &str) -> Preview {
        let mut body: String = text.chars().take(PREVIEW_CHARS).collect();
        if body.len() < text.len() {
            body.push('…');
        }
        Preview { title, body }
    }
}

/// What one send came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The provider took it.
    Ok,
    /// The token is no longer valid: stop using it.
    Gone,
    /// Try again later (why, for the dead letter).
    Retry(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_is_cut_at_a_character_boundary_and_says_so() {
        let short = Preview::new("ann".into(), "hi");
        assert_eq!(short.body, "hi");
        let long = "é".repeat(PREVIEW_CHARS + 5);
        let p = Preview::new("ann".into(), &long);
        assert_eq!(p.body.chars().count(), PREVIEW_CHARS + 1);
        assert!(p.body.ends_with('…'));
    }
}
