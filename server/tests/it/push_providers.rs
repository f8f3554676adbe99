//! Push through APNs and FCM themselves, against fakes of both on
//! loopback (HTTP/2 over TLS, a test CA, provider tokens checked; see
//! `common::fake_push`): each platform gets its own payload without the
//! message's content, previews only where a conversation allows them and
//! never once it is encrypted, invalid tokens reported by the provider
//! remove the device's target, and a failing or slow provider is retried
//! until it takes the notification — once per device.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use common::fake_push::{self, ApnsAccount, Fake, Got, TestCa};
use common::{config, start, token, Http};
use missive_server::config::{ApnsSection, FcmSection};
use missive_server::Config;

/// A config under `dir` whose push goes to `apns` and `fcm`.
fn with_providers(
    dir: &std::path::Path,
    ca: &TestCa,
    account: &ApnsAccount,
    apns: &Fake,
    fcm: (&Fake, std::path::PathBuf),
) -> Config {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let mut c = config(&dir.join("node"));
    c.push.ca_file = Some(ca.write(&keys));
    c.push.apns = Some(ApnsSection {
        key_file: account.write(&keys),
        key_id: account.key_id.clone(),
        team_id: account.team_id.clone(),
        topic: account.topic.clone(),
        endpoint: apns.url.clone(),
    });
    c.push.fcm = Some(FcmSection {
        service_account_file: fcm.1,
        endpoint: fcm.0.url.clone(),
    });
    c
}

/// Registers device `device` of `user` on `platform` with push `token`.
async fn device(
    c: &Config,
    srv: std::net::SocketAddr,
    user: u64,
    device: u64,
    platform: &str,
    tok: &str,
) {
    let h = Http::new(srv, token(c, user, device));
    let (s, v) = h
        .post("/v1/devices", json!({"name": tok, "platform": platform}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = h.put("/v1/devices/push", json!({"token": tok})).await;
    assert_eq!(s, 200, "{v}");
}

fn for_token<'a>(log: &'a [Got], tok: &str) -> Vec<&'a Got> {
    log.iter().filter(|g| g.token == tok).collect()
}

fn header(g: &Got, name: &str) -> String {
    g.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_and_fcm_get_their_own_payloads_and_unregistered_tokens_are_dropped() {
    let ca = TestCa::new();
    let account = ApnsAccount::new();
    let dir = tempfile::tempdir().unwrap();
    let apns = fake_push::apns(
        &ca,
        &account,
        Arc::new(|tok, _| match tok {
            "apns-gone" => (410, Duration::ZERO),
            _ => (200, Duration::ZERO),
        }),
    )
    .await;
    let (fcm, sa) = fake_push::fcm(
        &ca,
        dir.path(),
        Arc::new(|tok, _| match tok {
            "fcm-gone" => (404, Duration::ZERO),
            _ => (200, Duration::ZERO),
        }),
    )
    .await;
    let c = with_providers(dir.path(), &ca, &account, &apns, (&fcm, sa));
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    let (s, v) = alice
        .put("/v1/users/me", json!({"display_name": "Alice"}))
        .await;
    assert_eq!(s, 200, "{v}");
    device(&c, srv.addr(), 2, 1, "ios", "apns-ok").await;
    device(&c, srv.addr(), 2, 2, "android", "fcm-ok").await;
    device(&c, srv.addr(), 2, 3, "iOS", "apns-gone").await;
    device(&c, srv.addr(), 2, 4, "android", "fcm-gone").await;
    // No webhook gateway: a web device has no provider.
    device(&c, srv.addr(), 2, 5, "web", "web-1").await;
    let conv = alice.direct(2).await;
    alice.send(&conv, "m1", "the secret plan").await;

    apns.until("both APNs devices tried", |l| {
        !for_token(l, "apns-ok").is_empty() && !for_token(l, "apns-gone").is_empty()
    })
    .await;
    fcm.until("both FCM devices tried", |l| {
        !for_token(l, "fcm-ok").is_empty() && !for_token(l, "fcm-gone").is_empty()
    })
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    {
        let log = apns.log.lock().unwrap();
        let g = for_token(&log, "apns-ok")[0].clone();
        assert_eq!(header(&g, "apns-topic"), account.topic);
        assert_eq!(header(&g, "apns-push-type"), "alert");
        assert_eq!(header(&g, "apns-priority"), "10");
        assert_eq!(header(&g, "apns-collapse-id"), conv);
        let exp: u64 = header(&g, "apns-expiration").parse().unwrap();
        assert!(exp > now + 3_600, "expires with push.max_age_secs: {exp}");
        let aps = &g.body["aps"];
        assert_eq!(
            aps["alert"],
            json!({"loc-key": "MISSIVE_NEW_MESSAGE"}),
            "{}",
            g.body
        );
        assert_eq!(aps["badge"], 1);
        assert_eq!(aps["thread-id"], conv.as_str());
        assert_eq!(aps["mutable-content"], 1);
        assert_eq!(g.body["missive"]["conv"], conv.as_str());
        assert_eq!(g.body["missive"]["seq"], 1);
        assert!(!g.body.to_string().contains("secret"), "{}", g.body);
    }
    {
        let log = fcm.log.lock().unwrap();
        let g = for_token(&log, "fcm-ok")[0].clone();
        let m = &g.body["message"];
        assert_eq!(m["data"]["conv"], conv.as_str());
        assert_eq!(m["data"]["seq"], "1");
        assert_eq!(m["data"]["badge"], "1");
        assert_eq!(m["android"]["collapse_key"], conv.as_str());
        assert_eq!(m["android"]["priority"], "HIGH");
        assert!(m["android"].get("notification").is_none(), "{m}");
        assert!(!g.body.to_string().contains("secret"), "{}", g.body);
    }

    // Previews on: the second message shows its sender and text. The
    // unregistered tokens were removed at the first answer.
    let (s, v) = alice
        .put(
            &format!("/v1/conversations/{conv}/settings"),
            json!({"push_previews": true}),
        )
        .await;
    assert_eq!((s, &v["push_previews"]), (200, &json!(true)), "{v}");
    let (_, info) = alice.get(&format!("/v1/conversations/{conv}")).await;
    assert_eq!(info["push_previews"], true, "{info}");
    alice.send(&conv, "m2", "lunch at noon?").await;
    apns.until("m2 on APNs", |l| for_token(l, "apns-ok").len() == 2)
        .await;
    fcm.until("m2 on FCM", |l| for_token(l, "fcm-ok").len() == 2)
        .await;
    {
        let log = apns.log.lock().unwrap();
        let g = for_token(&log, "apns-ok")[1].clone();
        assert_eq!(
            g.body["aps"]["alert"],
            json!({"title": "Alice", "body": "lunch at noon?"})
        );
        assert_eq!(g.body["aps"]["badge"], 2);
        assert_eq!(for_token(&log, "apns-gone").len(), 1, "410 removed it");
        let ids: Vec<String> = for_token(&log, "apns-ok")
            .iter()
            .map(|g| header(g, "apns-id"))
            .collect();
        assert_ne!(ids[0], ids[1], "one apns-id per event");
    }
    {
        let log = fcm.log.lock().unwrap();
        let g = for_token(&log, "fcm-ok")[1].clone();
        let n = &g.body["message"]["android"]["notification"];
        assert_eq!(
            (&n["title"], &n["body"], &n["tag"], &n["notification_count"]),
            (
                &json!("Alice"),
                &json!("lunch at noon?"),
                &json!(conv),
                &json!(2)
            ),
            "{}",
            g.body
        );
        assert_eq!(
            for_token(&log, "fcm-gone").len(),
            1,
            "UNREGISTERED removed it"
        );
    }
    assert_eq!(
        *fcm.tokens_issued.lock().unwrap(),
        1,
        "one access token serves every send"
    );

    // Encrypting the conversation turns previews off for good.
    let settings = format!("/v1/conversations/{conv}/settings");
    let (s, v) = alice.put(&settings, json!({"encrypted": true})).await;
    assert_eq!(s, 200, "{v}");
    let (_, info) = alice.get(&format!("/v1/conversations/{conv}")).await;
    assert_eq!(
        (&info["encrypted"], &info["push_previews"]),
        (&json!(true), &json!(false)),
        "{info}"
    );
    let (s, v) = alice.put(&settings, json!({"push_previews": true})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("encrypted")),
        "{v}"
    );

    let m = common::metrics(srv.addr()).await;
    let count = |p: &str, o: &str| {
        common::metric(
            &m,
            &format!("missive_push_notifications_total{{provider=\"{p}\",outcome=\"{o}\"}}"),
        )
    };
    for p in ["apns", "fcm"] {
        assert_eq!(count(p, "sent"), Some(2.0), "{p}: {m}");
        assert_eq!(count(p, "token_removed"), Some(1.0), "{p}: {m}");
    }
    assert_eq!(count("none", "no_provider"), Some(2.0), "{m}");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_slow_providers_are_retried_until_each_device_took_it_once() {
    let ca = TestCa::new();
    let account = ApnsAccount::new();
    let dir = tempfile::tempdir().unwrap();
    // APNs: unavailable, then rate limited, then slow but fine.
    let apns = fake_push::apns(
        &ca,
        &account,
        Arc::new(|_, before| match before {
            0 => (503, Duration::ZERO),
            1 => (429, Duration::ZERO),
            _ => (200, Duration::from_millis(400)),
        }),
    )
    .await;
    // FCM: an internal error once, then fine.
    let (fcm, sa) = fake_push::fcm(
        &ca,
        dir.path(),
        Arc::new(|_, before| match before {
            0 => (500, Duration::ZERO),
            _ => (200, Duration::ZERO),
        }),
    )
    .await;
    let mut c = with_providers(dir.path(), &ca, &account, &apns, (&fcm, sa));
    c.push.retry_min_ms = 100;
    c.push.retry_max_ms = 300;
    let srv = start(c.clone()).await;
    let alice = Http::new(srv.addr(), token(&c, 1, 1));
    device(&c, srv.addr(), 2, 1, "ios", "phone").await;
    device(&c, srv.addr(), 2, 2, "android", "tablet").await;
    let conv = alice.direct(2).await;
    alice.send(&conv, "m1", "one").await;
    alice.send(&conv, "m2", "two").await;
    apns.until("both events accepted by APNs", |l| {
        l.iter().filter(|g| g.status == 200).count() == 2
    })
    .await;
    fcm.until("both events accepted by FCM", |l| {
        l.iter().filter(|g| g.status == 200).count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, fake, tries) in [("apns", &apns, 3), ("fcm", &fcm, 2)] {
        let log = fake.log.lock().unwrap();
        let mut ids: Vec<&String> = log.iter().map(|g| &g.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 2, "{name}: two events, one device");
        for id in ids {
            let of: Vec<u16> = log
                .iter()
                .filter(|g| &g.id == id)
                .map(|g| g.status)
                .collect();
            assert_eq!(of.len(), tries, "{name} {id}: {of:?}");
            assert_eq!(
                of.iter().filter(|s| **s == 200).count(),
                1,
                "{name} {id}: accepted once: {of:?}"
            );
        }
    }
    let m = common::metrics(srv.addr()).await;
    let retried = |p: &str| {
        common::metric(
            &m,
            &format!("missive_push_notifications_total{{provider=\"{p}\",outcome=\"retried\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(retried("apns") >= 2.0 && retried("fcm") >= 1.0, "{m}");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_provider_key_stops_the_start_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("AuthKey.p8");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let mut c = config(&dir.path().join("node"));
    c.push.apns = Some(ApnsSection {
        key_file: key,
        key_id: "KEY1234567".into(),
        team_id: "TEAM123456".into(),
        topic: "chat.missive.test".into(),
        endpoint: ApnsSection::production(),
    });
    let e = missive_server::start(c.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("push.apns.key_file"), "{e}");
    let mut c = config(&dir.path().join("node2"));
    c.push.fcm = Some(FcmSection {
        service_account_file: dir.path().join("missing.json"),
        endpoint: FcmSection::production(),
    });
    let e = missive_server::start(c).await.unwrap_err().to_string();
    assert!(e.contains("missing.json"), "{e}");
}
