//! Outgoing webhooks, delivered to a receiver that checks their Standard
//! Webhooks signatures with the `standardwebhooks` package (support::receiver).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::support::receiver::Receiver;

/// The harness itself: what Rust signs by the spec, the package accepts; a
/// tampered body it refuses; and the receiver answers its script, then its
/// status.
#[tokio::test(flavor = "multi_thread")]
async fn receiver_verifies_with_the_standardwebhooks_package() {
    let receiver = Receiver::start().await;
    let (old, new) = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2VjcmV0LW9mLXRoZS1yZWNlaXZlci10ZXN0");
    receiver.configure(json!({ "secrets": [old, new], "script": [500], "status": 200 })).await;
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let body = r#"{"type":"generation.completed","data":{"id":"g1"}}"#;
    let post = |id: &str, signature: String, body: &str| {
        http.post(receiver.url("/hooks/mage"))
            .header("webhook-id", id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };

    let scripted = post("msg_1", sign(new, "msg_1", now, body), body).await.expect("POST");
    assert_eq!(scripted.status(), 500);
    assert_eq!(scripted.headers()["content-length"], "21");
    assert_eq!(scripted.json::<serde_json::Value>().await.expect("JSON"), json!({ "error": "scripted" }));

    let tampered = body.replace("g1", "g2");
    let res = post("msg_2", sign(new, "msg_2", now, body), &tampered).await.expect("POST");
    assert_eq!(res.status(), 200);

    // During a rotation both signatures go out; the first no longer matches.
    let both = format!(
        "{} {}",
        sign("whsec_dW5rbm93bi1zZWNyZXQ=", "msg_3", now, body),
        sign(old, "msg_3", now, body)
    );
    let res = post("msg_3", both.clone(), body).await.expect("POST");
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<serde_json::Value>().await.expect("JSON"), json!({ "ok": true }));

    let got = receiver.wait_answered(3, Duration::from_secs(5)).await;
    let summary: Vec<_> =
        got.iter().map(|r| (r.id.as_deref(), r.verified, r.verified_with, r.status)).collect();
    assert_eq!(
        summary,
        [
            (Some("msg_1"), true, Some(1), Some(500)),
            (Some("msg_2"), false, None, Some(200)),
            (Some("msg_3"), true, Some(0), Some(200)),
        ]
    );
    assert_eq!(got[0].path, "/hooks/mage");
    assert_eq!(got[0].json()["data"]["id"], "g1");
    assert_eq!(got[1].body, tampered);
    assert_eq!(got[0].timestamp, Some(now.to_string()));
    assert!(got[0].received_at <= got[0].answered_at.expect("answered"));
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].headers["content-type"], "application/json");
    assert_eq!(got[2].signature, Some(both));

    // A held answer is recorded on arrival; its status comes with the answer.
    receiver.configure(json!({ "secrets": [new], "hang_seconds": 2 })).await;
    let held = tokio::spawn(post("msg_4", sign(new, "msg_4", now, body), body));
    let arrived = receiver.wait_for(4, Duration::from_secs(5)).await;
    assert_eq!((arrived[3].verified, arrived[3].status, arrived[3].answered_at), (true, None, None));
    let answered = receiver.wait_answered(4, Duration::from_secs(10)).await;
    assert_eq!(answered[3].status, Some(200));
    assert!(answered[3].answered_at.expect("answered") - answered[3].received_at >= 2.0);
    assert_eq!(held.await.expect("task").expect("POST").status(), 200);
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed by the
/// base64 part of a `whsec_` secret, written from the spec on purpose rather
/// than with Mage's signer.
fn sign(secret: &str, id: &str, timestamp: u64, body: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.trim_start_matches("whsec_")).expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}
