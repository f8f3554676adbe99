//! Who is calling: signed tokens (JWT, HS256 only — the algorithm is fixed,
//! never read from the token), WebSocket tickets, and the Origin check.
//!
//! An access token names a user (`sub`) and a device (`dev`), both decimal
//! u64 strings, and carries `iss`, `aud`, `iat` and `exp`; `typ` is
//! "access". A ticket is the same with `typ` "ticket" and a lifetime of
//! seconds: browsers cannot set headers on a WebSocket, so they trade their
//! access token for a ticket over HTTP and put it in the upgrade's query
//! string, where a long-lived token would end up in logs. A ticket also
//! carries `jti`, 16 random bytes in hex, by which it is redeemed once
//! (`Command::UseTicket`, on the user's shard: once across the cluster).
//!
//! What is checked here is only the signature and the claims; whether a
//! token was revoked since it was issued is `revocation`'s question.

use std::path::Path;

use axum::http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use missive_chat::command::{DeviceId, UserId};

use crate::config::AuthSection;
use crate::error::{ApiError, Error, Result};

/// The claims of our tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, decimal.
    pub sub: String,
    /// The device id, decimal.
    pub dev: String,
    /// "access" or "ticket".
    pub typ: String,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
    /// A ticket's id: 32 hex digits (absent from access tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A token that checked out: who it names and its times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Who is calling.
    pub caller: Caller,
    /// When it was issued (seconds since the epoch).
    pub issued_at: u64,
    /// When it expires (seconds since the epoch).
    pub expires_at: u64,
    /// A ticket's id.
    pub id: Option<[u8; 16]>,
}

/// An authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
}

/// Signs and checks tokens.
pub struct Auth {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    cfg: AuthSection,
    /// The key that signs media download URLs: derived from the token
    /// secret (BLAKE3's key derivation, its own context string), so every
    /// node sharing the secret checks every node's URLs, and a URL's
    /// signature says nothing about the token key.
    media_key: [u8; 32],
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("issuer", &self.cfg.issuer)
            .finish_non_exhaustive()
    }
}

/// The file holding a generated secret, in the data directory.
pub const SECRET_FILE: &str = "auth.secret";

/// BLAKE3's key-derivation context for the media URL key.
const MEDIA_URL_CONTEXT: &str = "missive 2026-12 media download URL signatures v1";

/// Token kinds.
const ACCESS: &str = "access";
const TICKET: &str = "ticket";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Auth {
    /// Keys from the configured secret, or from `<data_dir>/auth.secret`
    /// (created with 32 random bytes on first use).
    pub fn load(cfg: &AuthSection, data_dir: &Path) -> Result<Auth> {
        let secret = match &cfg.secret {
            Some(s) if s.len() >= 16 => s.as_bytes().to_vec(),
            Some(_) => {
                return Err(Error::Config(
                    "auth.secret must be at least 16 bytes".into(),
                ))
            }
            None => load_or_create_secret(data_dir)?,
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&[&cfg.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        Ok(Auth {
            enc: EncodingKey::from_secret(&secret),
            dec: DecodingKey::from_secret(&secret),
            validation,
            cfg: cfg.clone(),
            media_key: blake3::derive_key(MEDIA_URL_CONTEXT, &secret),
        })
    }

    /// The key that signs media download URLs (`crate::media`).
    pub fn media_key(&self) -> [u8; 32] {
        self.media_key
    }

    fn mint(&self, who: Caller, typ: &str, ttl_secs: u64) -> Result<(String, u64), ApiError> {
        let iat = now_secs();
        let jti = if typ == TICKET {
            let mut raw = [0u8; 16];
            getrandom::fill(&mut raw).map_err(|e| ApiError::internal(&e))?;
            Some(raw.iter().map(|b| format!("{b:02x}")).collect())
        } else {
            None
        };
        let claims = Claims {
            sub: who.user.0.to_string(),
            dev: who.device.0.to_string(),
            typ: typ.into(),
            iss: self.cfg.issuer.clone(),
            aud: self.cfg.audience.clone(),
            iat,
            exp: iat + ttl_secs,
            jti,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .map_err(|e| ApiError::internal(&e))?;
        Ok((token, claims.exp))
    }

    /// An access token for `who` (`ttl_secs` or the configured lifetime);
    /// returns it with its expiry (seconds since the epoch).
    pub fn access_token(
        &self,
        who: Caller,
        ttl_secs: Option<u64>,
    ) -> Result<(String, u64), ApiError> {
        self.mint(who, ACCESS, ttl_secs.unwrap_or(self.cfg.token_ttl_secs))
    }

    /// A short-lived WebSocket ticket for `who`.
    pub fn ticket(&self, who: Caller) -> Result<(String, u64), ApiError> {
        self.mint(who, TICKET, self.cfg.ticket_ttl_secs)
    }

    fn verify(&self, token: &str, typ: &str) -> Result<Token, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_expired",
                    "the token has expired; get a new one",
                ),
                _ => ApiError::unauthorized(format!("the token is not valid here ({e})")),
            },
        )?;
        let c = data.claims;
        if c.typ != typ {
            return Err(ApiError::unauthorized(format!(
                "a {} token was given where a {typ} token is needed",
                c.typ
            )));
        }
        let user = c.sub.parse::<u64>().ok().filter(|u| *u != 0);
        let device = c.dev.parse::<u64>().ok();
        let caller = match (user, device) {
            (Some(u), Some(d)) => Caller {
                user: UserId(u),
                device: DeviceId(d),
            },
            _ => {
                return Err(ApiError::unauthorized(
                    "the token's sub and dev must be decimal ids (sub non-zero)",
                ))
            }
        };
        let id =
            match c.jti.as_deref() {
                None => None,
                Some(hex) => Some(parse_jti(hex).ok_or_else(|| {
                    ApiError::unauthorized("the token's jti must be 32 hex digits")
                })?),
            };
        Ok(Token {
            caller,
            issued_at: c.iat,
            expires_at: c.exp,
            id,
        })
    }

    /// The token in `Authorization: Bearer <access token>` (not checked
    /// for revocation: see `revocation`).
    pub fn from_headers(&self, headers: &HeaderMap) -> Result<Token, ApiError> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <token>'"))?;
        self.verify(token.trim(), ACCESS)
    }

    /// A WebSocket ticket, checked but not yet redeemed (see the module
    /// docs); one without an id (from an older build) is refused.
    pub fn from_ticket(&self, ticket: &str) -> Result<Token, ApiError> {
        let t = self.verify(ticket, TICKET)?;
        if t.id.is_none() {
            return Err(ApiError::unauthorized(
                "the ticket has no id; get a new one",
            ));
        }
        Ok(t)
    }

    /// Refuses a browser origin that is neither this server's own (the
    /// web client it serves) nor on `auth.allowed_origins`. No Origin
    /// header: not a browser, allowed.
    ///
    /// "This server's own" is an Origin whose host and port are the
    /// request's `Host`: a browser sets both itself (a page cannot forge
    /// them), so they match only for a page this server (or the proxy in
    /// front of it, under the same name) served. The scheme is not
    /// compared: behind a TLS-terminating proxy the page is `https://`
    /// while this server hears plain HTTP.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("");
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok());
        if self.cfg.allowed_origins.iter().any(|o| o == origin) || same_origin(origin, host) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("origin {origin:?} is not in auth.allowed_origins"),
            ))
        }
    }

    /// The settings these checks run on.
    pub fn config(&self) -> &AuthSection {
        &self.cfg
    }

    /// Whether `presented` is the configured admin secret (constant time).
    pub fn is_admin(&self, presented: &str) -> bool {
        match &self.cfg.admin_secret {
            Some(s) => {
                let (a, b) = (s.as_bytes(), presented.as_bytes());
                a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
            }
            None => false,
        }
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the authority in
/// `host` (the request's Host header), over http or https.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// 32 hex digits as 16 bytes.
fn parse_jti(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Reads the generated secret, creating it (0600) if absent.
fn load_or_create_secret(data_dir: &Path) -> Result<Vec<u8>> {
    let path = data_dir.join(SECRET_FILE);
    let io = |op: &'static str| {
        let p = path.display().to_string();
        move |source| Error::Io {
            op,
            path: p,
            source,
        }
    };
    match std::fs::read(&path) {
        Ok(b) if b.len() >= 16 => return Ok(b),
        Ok(_) => {
            return Err(Error::Config(format!(
                "{} is shorter than 16 bytes; delete it to generate a new secret",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read")(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(io("create"))?;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| Error::Config(format!("no randomness: {e}")))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        o.mode(0o600);
        let mut f = o.open(&tmp).map_err(io("create"))?;
        f.write_all(hex.as_bytes()).map_err(io("write"))?;
        f.sync_all().map_err(io("sync"))?;
    }
    std::fs::rename(&tmp, &path).map_err(io("rename"))?;
    Ok(hex.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn a_page_this_server_served_is_its_own_origin_and_nothing_else_is() {
        assert!(same_origin("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(same_origin("https://Chat.Example", Some("chat.example")));
        assert!(!same_origin(
            "http://127.0.0.1:8081",
            Some("127.0.0.1:8080")
        ));
        assert!(!same_origin("http://evil.example", Some("chat.example")));
        assert!(!same_origin(
            "http://chat.example.evil",
            Some("chat.example")
        ));
        assert!(!same_origin("null", Some("null")));
        assert!(!same_origin("ftp://chat.example", Some("chat.example")));
        assert!(!same_origin("http://chat.example", None));
        assert!(!same_origin("http://", Some("")));
    }
}
