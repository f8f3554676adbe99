//! Fuzz entry points into the server's decoders of what users and peers
//! send (cargo feature `fuzzing`; the targets in `fuzz/` call these; hidden
//! from the docs, not a stable API). Whatever the bytes: no panic, and a
//! refusal carries one of the documented codes with a message that names
//! no internal type.

use std::sync::OnceLock;

use crate::config::Config;
use crate::delivery::presence::Signal;
use crate::error::ApiError;

/// The codes a malformed frame or body may be refused with.
const INPUT_CODES: &[&str] = &[
    "malformed_frame",
    "unknown_frame_type",
    "malformed_json",
    "invalid",
    "too_large",
    "unsupported_media_type",
    "bad_request",
];

fn check_refusal(e: &ApiError) {
    assert!(
        INPUT_CODES.contains(&e.code),
        "undocumented code {}",
        e.code
    );
    assert!(
        e.status.is_client_error(),
        "{} answered {}",
        e.code,
        e.status
    );
    // serde's "did not match any variant of untagged enum Raw" and our
    // crate paths; a field name the client sent may be echoed back.
    for leak in ["untagged enum", "missive_"] {
        assert!(!e.message.contains(leak), "{:?} names {leak}", e.message);
    }
}

/// A WebSocket text frame, parsed as a session parses it.
pub fn ws_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = crate::edge::ws::fuzz_parse(text) {
        check_refusal(&e);
    }
}

/// An HTTP request body (the first byte picks the route), through the
/// route's extractor and checks.
pub fn http_body(data: &[u8]) {
    static RT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    let Some(rt) = RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().ok())
    else {
        return;
    };
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    if let Err(e) = rt.block_on(crate::edge::http::fuzz_body(pick, body.to_vec())) {
        check_refusal(&e);
    }
}

/// A configuration file, read and checked as `missived --config` does.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = toml::from_str::<Config>(text) {
        if c.validate().is_ok() {
            let _ = c.shards();
        }
    }
}

/// A cluster signal (presence, typing, revocation) as a peer sends it:
/// what decodes re-encodes to the same bytes' meaning.
pub fn signal(data: &[u8]) {
    if let Some(s) = Signal::decode(data) {
        let again = s.encode();
        assert_eq!(Signal::decode(&again).map(|s| s.encode()), Some(again));
    }
}
