//! The playground: served by Mage with every asset, and usable in a real
//! (headless) Chromium with no internet access.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{TestApp, post_graphql, process, register_at};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn the_page_and_its_assets_come_from_mage() {
    let app = TestApp::start().await;
    let res = app.http.get(app.url("/graphql")).header("Accept", "text/html").send().await.expect("page");
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().expect("type").starts_with("text/html"));
    let html = res.text().await.expect("html");
    // Everything the page loads is a path on this server.
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let url = &html[i + attr.len()..];
            assert!(
                url.starts_with('/') || url.starts_with('#'),
                "external asset in the page: {}",
                &url[..url.len().min(80)]
            );
        }
    }
    let mut assets = 0;
    for (i, _) in html.match_indices("/playground-assets/") {
        let path: String = html[i..].chars().take_while(|c| *c != '"' && *c != '\'').collect();
        let res = app.http.get(app.url(&path)).send().await.expect("asset");
        assert_eq!(res.status(), 200, "{path}");
        assert!(res.bytes().await.expect("body").len() > 1000, "{path} looks empty");
        assets += 1;
    }
    assert!(assets >= 4, "expected the GraphiQL, React and CSS assets, found {assets}");
    let res = app.http.get(app.url("/playground-assets/nope.js")).send().await.expect("missing");
    assert_eq!(res.status(), 404);
}

/// Chromium, or None after saying why the browser test skips itself.
pub(crate) fn chromium_or_skip() -> Option<String> {
    let found = chromium();
    if found.is_none() {
        println!(
            "SKIPPED: no Chromium here (scripts/test installs Debian's chromium; set MAGE_CHROMIUM to use another)"
        );
    }
    found
}

fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("MAGE_CHROMIUM") {
        return Some(path);
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_owned)
}

pub(crate) struct Browser {
    child: Child,
    _profile: tempdir::Dir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempdir {
    /// A directory removed on drop (Chromium's throw-away profile).
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!("mage-chromium-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).expect("profile dir");
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Starts headless Chromium and returns it with the DevTools port.
pub(crate) fn launch(binary: &str) -> (Browser, u16) {
    let profile = tempdir::Dir::new();
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).expect("chromium did not open DevTools");
    let port = url
        .trim_start_matches("ws://")
        .split(['/', ':'])
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("DevTools port");
    (Browser { child, _profile: profile }, port)
}

/// A minimal Chrome DevTools Protocol client for one page.
pub(crate) struct Page {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
    /// The events (`Network.requestWillBeSent`, ...) seen while waiting for
    /// answers, oldest first.
    pub(crate) events: Vec<Value>,
}

impl Page {
    pub(crate) async fn open(port: u16) -> Self {
        let targets: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .expect("targets")
            .json()
            .await
            .expect("json");
        let url = targets
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("devtools socket");
        Self { ws, next_id: 0, events: Vec::new() }
    }

    pub(crate) async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send(Message::text(json!({ "id": id, "method": method, "params": params }).to_string()))
            .await
            .expect("send");
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("devtools answer")
                .expect("devtools open")
                .expect("devtools message");
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["id"] == id {
                    return v;
                }
                if v.get("method").is_some() {
                    self.events.push(v);
                }
            }
        }
    }

    pub(crate) async fn eval(&mut self, js: &str) -> Value {
        let v = self.call("Runtime.evaluate", json!({ "expression": js, "returnByValue": true })).await;
        v["result"]["result"]["value"].clone()
    }

    /// Polls `js` until it returns a string containing `needle`.
    pub(crate) async fn wait_for_text(&mut self, js: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.eval(js).await.as_str().unwrap_or_default().to_owned();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "{needle:?} never appeared; last saw: {text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Opens the playground with a query (and headers), runs it with the
    /// execute button, and returns the result pane's text once it shows
    /// `needle`.
    async fn run_in_playground(
        &mut self,
        base: &str,
        query: &str,
        headers: Option<&str>,
        needle: &str,
    ) -> String {
        let mut url = format!("{base}/graphql?query={}", encode(query));
        if let Some(h) = headers {
            url.push_str(&format!("&headers={}", encode(h)));
        }
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for_text("document.querySelector('.graphiql-execute-button') ? 'ready' : ''", "ready")
            .await;
        // The editor shows the query from the URL before it is run.
        self.wait_for_text(
            "document.querySelector('.graphiql-query-editor')?.innerText ?? ''",
            query.split_whitespace().nth(1).unwrap_or(query),
        )
        .await;
        self.eval("document.querySelector('.graphiql-execute-button').click()").await;
        self.wait_for_text("document.querySelector('.result-window')?.innerText ?? ''", needle).await
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn register_then_me_in_headless_chromium() {
    let Some(binary) = chromium_or_skip() else { return };
    let app = TestApp::start().await;
    let (browser, port) = launch(&binary);
    let mut page = Page::open(port).await;
    let base = format!("http://{}", app.addr);

    let text = page
        .run_in_playground(
            &base,
            "mutation { register(email: \"browser@example.com\", password: \"from the playground\") { token } }",
            None,
            "\"token\"",
        )
        .await;
    let token =
        text.split('"').skip_while(|s| *s != "token").nth(2).expect("token in the result pane").to_owned();

    let headers = json!({ "Authorization": format!("Bearer {token}") }).to_string();
    let text = page
        .run_in_playground(&base, "{ me { email credits { balance } } }", Some(&headers), "\"balance\"")
        .await;
    assert!(text.contains("browser@example.com"), "{text}");
    assert!(text.contains("\"balance\": 100"), "{text}");
    drop(browser);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_runs_over_the_websocket_in_headless_chromium() {
    let Some(binary) = chromium_or_skip() else { return };
    let app = TestApp::start().await;
    let (token, _) = app.register("live-browser@example.com").await;
    let (browser, port) = launch(&binary);
    let mut page = Page::open(port).await;
    let base = format!("http://{}", app.addr);
    let headers = json!({ "Authorization": format!("Bearer {token}") }).to_string();
    // The first event is the account as it stands.
    let text = page
        .run_in_playground(
            &base,
            "subscription { creditsChanged { balance held } }",
            Some(&headers),
            "\"balance\"",
        )
        .await;
    assert!(text.contains("\"balance\": 100"), "{text}");
    // A change made elsewhere reaches the open subscription.
    let res = app
        .gql(
            "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id } }",
            json!({ "i": { "model": "synth-video", "prompt": "from the browser test", "resolution": "R480P", "durationSeconds": 5 } }),
            Some(&token),
        )
        .await;
    assert!(res.get("errors").is_none(), "{res}");
    let text =
        page.wait_for_text("document.querySelector('.result-window')?.innerText ?? ''", "\"held\": 10").await;
    assert!(text.contains("\"balance\": 90"), "{text}");
    drop(browser);
}

/// The development checkout under a real `mage dev` (no Stripe keys): the
/// Pay button, clicked in Chromium, sends the signed event to Mage's own
/// webhook, the settle worker grants the pack, and `me` shows the credits.
#[tokio::test(flavor = "multi_thread")]
async fn the_dev_checkout_pay_button_turns_into_credits_under_mage_dev() {
    let Some(binary) = chromium_or_skip() else { return };
    let dev = process::Dev::start().await;
    let http = reqwest::Client::new();
    let (base, gql) = (dev.url(""), dev.url("/graphql"));
    let (token, _) = register_at(&http, &gql, "buyer@example.com").await;
    let res = post_graphql(
        &http,
        &gql,
        "mutation { createCheckout(productId: \"starter\") { url order { id status } } }",
        json!({}),
        Some(&token),
    )
    .await;
    let url = res["data"]["createCheckout"]["url"].as_str().unwrap_or_else(|| panic!("{res}")).to_owned();
    assert!(url.starts_with(&format!("{base}/dev/checkout/")), "{url}");

    let (browser, devtools) = launch(&binary);
    let mut page = Page::open(devtools).await;
    page.call("Page.navigate", json!({ "url": url })).await;
    page.wait_for_text("document.getElementById('pay') ? 'ready' : ''", "ready").await;
    page.eval("document.getElementById('pay').click()").await;
    // Back on the page, which refreshes until the worker has settled it.
    page.wait_for_text("document.getElementById('status')?.innerText ?? ''", "paid").await;
    let me = post_graphql(&http, &gql, "{ me { credits { balance } } }", json!({}), Some(&token)).await;
    assert_eq!(me["data"]["me"]["credits"]["balance"], 200, "{me}");
    let orders =
        post_graphql(&http, &gql, "{ orders { edges { node { status } } } }", json!({}), Some(&token)).await;
    assert_eq!(orders["data"]["orders"]["edges"][0]["node"]["status"], "PAID", "{orders}");
    drop(browser);
}
