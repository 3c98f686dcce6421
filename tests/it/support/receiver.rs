//! The endpoint of the webhook tests: tests/webhook-receiver/receiver.py, a
//! Python server that checks each delivery's Standard Webhooks signature with
//! the `standardwebhooks` package, an implementation that is not Mage's. It
//! runs under `MAGE_TEST_WEBHOOK_PYTHON` (a virtualenv that `scripts/test`
//! makes from tests/webhook-receiver/requirements.txt).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhook-receiver/receiver.py");

/// One request the receiver got on a path other than `/_control`, as it
/// recorded it on arrival.
#[derive(Debug, Clone, Deserialize)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// The `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.
    pub id: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    /// Every header, names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// Whether `standardwebhooks` accepted the request under any configured
    /// secret; `verified_with` is the index of the first that did.
    pub verified: bool,
    pub verified_with: Option<usize>,
    /// The code answered; `None` while the answer is still held back
    /// (`hang_seconds`).
    pub status: Option<u16>,
    /// Epoch seconds.
    pub received_at: f64,
    pub answered_at: Option<f64>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {}", self.body))
    }
}

/// A receiver of the test's own on an ephemeral port, killed when dropped.
pub struct Receiver {
    pub port: u16,
    http: reqwest::Client,
    _child: tokio::process::Child,
}

fn python() -> String {
    std::env::var("MAGE_TEST_WEBHOOK_PYTHON").unwrap_or_else(|_| {
        panic!(
            "MAGE_TEST_WEBHOOK_PYTHON is not set: the webhook tests need a Python with the standardwebhooks \
             package. Run them through scripts/test, which installs it, or set MAGE_TEST_WEBHOOK_PYTHON to \
             a Python where `pip install --require-hashes -r tests/webhook-receiver/requirements.txt` ran"
        )
    })
}

/// Proves, once per test process, that the verifier is the real library:
/// it accepts what it signed and refuses tampered bodies, other secrets and
/// stale timestamps (receiver.py --self-test).
async fn self_test(python: &str) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let out = tokio::process::Command::new(python)
            .arg(SCRIPT)
            .arg("--self-test")
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run MAGE_TEST_WEBHOOK_PYTHON={python:?} ({e})"));
        assert!(
            out.status.success(),
            "the webhook receiver's self-test failed under MAGE_TEST_WEBHOOK_PYTHON={python:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
}

impl Receiver {
    pub async fn start() -> Receiver {
        let python = python();
        self_test(&python).await;
        let mut child = tokio::process::Command::new(&python)
            .arg(SCRIPT)
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Tracebacks land in the test's output.
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the webhook receiver with MAGE_TEST_WEBHOOK_PYTHON={python:?} ({e})")
            });
        let stdout = child.stdout.take().expect("receiver stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!("the webhook receiver (MAGE_TEST_WEBHOOK_PYTHON={python:?}) said nothing in 20 s")
            })
            .expect("read the receiver's stdout");
        let port = first
            .as_deref()
            .and_then(|l| l.strip_prefix("listening "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the webhook receiver (MAGE_TEST_WEBHOOK_PYTHON={python:?}) did not start: its first line \
                     was {first:?} (its errors are above)"
                )
            });
        let http =
            reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("client");
        Receiver { port, http, _child: child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Replaces the configuration: `{"secrets": ["whsec_..."], "script":
    /// [500, 500], "status": 200, "hang_seconds": 0, "location": null}`, any
    /// key left out at that default (no secrets, no script, 200).
    pub async fn configure(&self, cfg: Value) {
        let res = self.http.post(self.url("/_control")).json(&cfg).send().await.expect("POST /_control");
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        assert!(status.is_success(), "the webhook receiver refused {cfg}: {status} {body}");
    }

    /// Every request received so far, in arrival order.
    pub async fn received(&self) -> Vec<Received> {
        let res = self.http.get(self.url("/_control/received")).send().await.expect("GET /_control/received");
        assert!(res.status().is_success(), "GET /_control/received: {}", res.status());
        res.json().await.expect("the receiver's record")
    }

    /// The requests received once there are at least `n` (some perhaps not
    /// answered yet); panics with what came after `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        self.wait_until(n, limit, |_| true).await
    }

    /// Like [`Receiver::wait_for`], once the first `n` are also answered.
    pub async fn wait_answered(&self, n: usize, limit: Duration) -> Vec<Received> {
        self.wait_until(n, limit, |r| r.iter().take(n).all(|r| r.status.is_some())).await
    }

    async fn wait_until(
        &self,
        n: usize,
        limit: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received().await;
            if got.len() >= n && done(&got) {
                return got;
            }
            assert!(
                start.elapsed() < limit,
                "the webhook receiver got {} of {n} requests in {limit:?}: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
