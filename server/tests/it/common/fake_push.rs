//! Fake APNs and FCM on loopback, as strict as the real ones where it
//! matters to us: HTTP/2 over TLS (a test CA made here, which the server
//! trusts through `push.ca_file`), provider tokens checked (APNs: an ES256
//! JWT from the configured key, key id and team; FCM: an OAuth access
//! token that its own token endpoint issued for an RS256 assertion from
//! the service account), and answers a test scripts per request: accept,
//! fail, delay, or reject the token.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokio_rustls::rustls;

/// The test CA and the server certificate it signed (for 127.0.0.1).
pub struct TestCa {
    /// The CA's certificate, PEM: what `push.ca_file` holds.
    pub ca_pem: String,
    tls: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A new CA and a server certificate for `127.0.0.1` and `localhost`.
    pub fn new() -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "missive test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        // The crate's one provider (ring), as reqwest's client uses.
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        // HTTP/2 only, as APNs: a client that cannot speak it fails here.
        tls.alpn_protocols = vec![b"h2".to_vec()];
        TestCa {
            ca_pem: ca_cert.pem(),
            tls: Arc::new(tls),
        }
    }

    /// Writes the CA certificate under `dir`; its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("test-ca.pem");
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }

    /// Serves `app` over HTTP/2 + TLS on an ephemeral loopback port; its
    /// base URL.
    pub async fn serve(&self, app: Router) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://127.0.0.1:{}", l.local_addr().unwrap().port());
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.tls));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .http2_only()
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                        .await;
                });
            }
        });
        url
    }
}

/// One notification a fake received.
#[derive(Debug, Clone)]
pub struct Got {
    /// The device token it was for.
    pub token: String,
    /// What makes a resend recognisable: APNs' `apns-id`; for FCM the
    /// data's `event_id` and the token.
    pub id: String,
    /// The status answered.
    pub status: u16,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The request's JSON body.
    pub body: Value,
}

/// Decides a fake's answer from the token and how many requests with the
/// same id came before: (status, delay before answering).
pub type Script = Arc<dyn Fn(&str, usize) -> (u16, Duration) + Send + Sync>;

/// What a fake received so far.
pub type Log = Arc<Mutex<Vec<Got>>>;

/// A running fake provider.
pub struct Fake {
    /// Its base URL.
    pub url: String,
    /// What it received.
    pub log: Log,
    /// FCM: access tokens issued.
    pub tokens_issued: Arc<Mutex<u32>>,
}

impl Fake {
    /// Received notifications answered `status`.
    pub fn answered(&self, status: u16) -> Vec<Got> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.status == status)
            .cloned()
            .collect()
    }

    /// Waits (up to 20 s) until `ok` holds of the log.
    pub async fn until(&self, what: &str, ok: impl Fn(&[Got]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if ok(&self.log.lock().unwrap()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiting for {what}: {:?}",
                self.log
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|g| (&g.token, &g.id, g.status))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Asks `script` for the answer to `got` (given the requests with its id
/// before it), waits its delay, logs it with that status; the status.
async fn answer(log: &Log, script: &Script, mut got: Got) -> u16 {
    let before = log
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.id == got.id)
        .count();
    let (status, delay) = script(&got.token, before);
    tokio::time::sleep(delay).await;
    got.status = status;
    log.lock().unwrap().push(got);
    status
}

/// The APNs key, ids and topic a fake APNs accepts.
pub struct ApnsAccount {
    /// The auth key (P-256, PKCS#8 PEM): the `.p8` file.
    pub key_pem: String,
    public_pem: String,
    /// Key id.
    pub key_id: String,
    /// Team id.
    pub team_id: String,
    /// Bundle id.
    pub topic: String,
}

impl ApnsAccount {
    /// A new key for team `TEAM123456`, app `chat.missive.test`.
    pub fn new() -> ApnsAccount {
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        ApnsAccount {
            key_pem: k.serialize_pem(),
            public_pem: k.public_key_pem(),
            key_id: "KEY1234567".into(),
            team_id: "TEAM123456".into(),
            topic: "chat.missive.test".into(),
        }
    }

    /// Writes the key under `dir`; its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join(format!("AuthKey_{}.p8", self.key_id));
        std::fs::write(&p, &self.key_pem).unwrap();
        p
    }
}

/// Starts a fake APNs for `account`, answering by `script`.
pub async fn apns(ca: &TestCa, account: &ApnsAccount, script: Script) -> Fake {
    #[derive(Clone)]
    struct S {
        log: Log,
        script: Script,
        key: DecodingKey,
        key_id: String,
        team_id: String,
        topic: String,
    }
    async fn push(
        State(s): State<S>,
        UrlPath(token): UrlPath<String>,
        version: Version,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        let reason = |r: &str| Json(json!({ "reason": r }));
        assert_eq!(version, Version::HTTP_2, "APNs speaks only HTTP/2");
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        // The provider token: ES256 by the configured key, kid, iss, iat.
        let jwt = h("authorization");
        let Some(jwt) = jwt.strip_prefix("bearer ") else {
            return (StatusCode::FORBIDDEN, reason("MissingProviderToken"));
        };
        let mut v = Validation::new(Algorithm::ES256);
        v.required_spec_claims = ["iss".to_string()].into();
        v.validate_exp = false;
        v.set_issuer(&[&s.team_id]);
        let ok = jsonwebtoken::decode::<Value>(jwt, &s.key, &v)
            .ok()
            .filter(|d| {
                d.header.kid.as_deref() == Some(s.key_id.as_str()) && d.claims["iat"].is_u64()
            });
        if ok.is_none() {
            return (StatusCode::FORBIDDEN, reason("InvalidProviderToken"));
        }
        if h("apns-topic") != s.topic {
            return (StatusCode::BAD_REQUEST, reason("DeviceTokenNotForTopic"));
        }
        if h("apns-push-type") != "alert" || h("apns-id").is_empty() {
            return (StatusCode::BAD_REQUEST, reason("BadRequest"));
        }
        let got = Got {
            token,
            id: h("apns-id"),
            status: 0,
            headers,
            body,
        };
        let status = answer(&s.log, &s.script, got).await;
        let why = match status {
            200 => "",
            410 => "Unregistered",
            400 => "BadDeviceToken",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            _ => "InternalServerError",
        };
        (StatusCode::from_u16(status).unwrap(), reason(why))
    }
    let log: Log = Arc::default();
    let state = S {
        log: Arc::clone(&log),
        script,
        key: DecodingKey::from_ec_pem(account.public_pem.as_bytes()).unwrap(),
        key_id: account.key_id.clone(),
        team_id: account.team_id.clone(),
        topic: account.topic.clone(),
    };
    let app = Router::new()
        .route("/3/device/{token}", post(push))
        .with_state(state);
    Fake {
        url: ca.serve(app).await,
        log,
        tokens_issued: Arc::default(),
    }
}

/// The test service account's RSA key (made once for these tests, never
/// used anywhere else).
const FCM_KEY: &str = include_str!("../../data/fcm-test-key.pem");
const FCM_PUBLIC: &str = include_str!("../../data/fcm-test-key.pub.pem");
/// The fake FCM's project.
pub const FCM_PROJECT: &str = "missive-test";

/// Starts a fake FCM (its OAuth token endpoint included), answering
/// sends by `script`; writes the service-account file for it under
/// `dir`: (the fake, the file).
pub async fn fcm(ca: &TestCa, dir: &Path, script: Script) -> (Fake, PathBuf) {
    #[derive(Clone)]
    struct S {
        log: Log,
        script: Script,
        key: DecodingKey,
        issued: Arc<Mutex<u32>>,
        token_uri: Arc<Mutex<String>>,
    }
    async fn token(State(s): State<S>, body: String) -> (StatusCode, Json<Value>) {
        let form: Vec<(&str, &str)> = body.split('&').filter_map(|p| p.split_once('=')).collect();
        let field = |n: &str| form.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        if field("grant_type") != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "unsupported_grant_type"})),
            );
        }
        let aud = s.token_uri.lock().unwrap().clone();
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[&aud]);
        v.set_issuer(&["push@missive-test.iam.gserviceaccount.com"]);
        let ok = field("assertion")
            .and_then(|a| jsonwebtoken::decode::<Value>(a, &s.key, &v).ok())
            .filter(|d| d.claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging");
        if ok.is_none() {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant"})),
            );
        }
        let mut n = s.issued.lock().unwrap();
        *n += 1;
        (
            StatusCode::OK,
            Json(json!({
                "access_token": format!("ya29.test-{n}"),
                "expires_in": 3599,
                "token_type": "Bearer",
            })),
        )
    }
    async fn send(
        State(s): State<S>,
        UrlPath(project): UrlPath<String>,
        version: Version,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        assert_eq!(version, Version::HTTP_2);
        let err = |code: u16, status: &str, detail: Option<&str>| {
            let mut e = json!({"error": {"code": code, "status": status, "message": status}});
            if let Some(d) = detail {
                e["error"]["details"] = json!([{
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": d,
                }]);
            }
            (StatusCode::from_u16(code).unwrap(), Json(e))
        };
        let issued = *s.issued.lock().unwrap();
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let known = (1..=issued).any(|n| bearer == format!("Bearer ya29.test-{n}"));
        if !known {
            return err(401, "UNAUTHENTICATED", None);
        }
        if project != FCM_PROJECT {
            return err(403, "PERMISSION_DENIED", None);
        }
        let m = &body["message"];
        let token = m["token"].as_str().unwrap_or("").to_string();
        // FCM refuses data values that are not strings.
        if m["data"]
            .as_object()
            .is_none_or(|d| d.values().any(|v| !v.is_string()))
        {
            return err(400, "INVALID_ARGUMENT", None);
        }
        let got = Got {
            id: format!("{}@{token}", m["data"]["event_id"].as_str().unwrap_or("")),
            token,
            status: 0,
            headers,
            body: body.clone(),
        };
        let status = answer(&s.log, &s.script, got).await;
        match status {
            200 => (
                StatusCode::OK,
                Json(json!({"name": format!("projects/{FCM_PROJECT}/messages/1")})),
            ),
            404 => err(404, "NOT_FOUND", Some("UNREGISTERED")),
            429 => err(429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED")),
            503 => err(503, "UNAVAILABLE", Some("UNAVAILABLE")),
            _ => err(500, "INTERNAL", Some("INTERNAL")),
        }
    }
    let log: Log = Arc::default();
    let issued: Arc<Mutex<u32>> = Arc::default();
    let token_uri: Arc<Mutex<String>> = Arc::default();
    let state = S {
        log: Arc::clone(&log),
        script,
        key: DecodingKey::from_rsa_pem(FCM_PUBLIC.as_bytes()).unwrap(),
        issued: Arc::clone(&issued),
        token_uri: Arc::clone(&token_uri),
    };
    let app = Router::new()
        .route("/token", post(token))
        .route("/v1/projects/{project}/messages:send", post(send))
        .with_state(state);
    let url = ca.serve(app).await;
    *token_uri.lock().unwrap() = format!("{url}/token");
    let sa = json!({
        "type": "service_account",
        "project_id": FCM_PROJECT,
        "private_key_id": "0123456789abcdef",
        "private_key": FCM_KEY,
        "client_email": "push@missive-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": format!("{url}/token"),
    });
    let path = dir.join("fcm-service-account.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&sa).unwrap()).unwrap();
    (
        Fake {
            url,
            log,
            tokens_issued: issued,
        },
        path,
    )
}

/// A script: every request succeeds at once.
pub fn accept_all() -> Script {
    Arc::new(|_, _| (200, Duration::ZERO))
}
