//! The web app: served by Mage with every asset, and the whole journey of a
//! user and an admin on a fresh `mage dev` in headless Chromium, at desktop
//! and phone sizes: screenshots of each step (target/web-screenshots/),
//! axe-core on every page, and no request leaving the machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::playground::{Page, chromium_or_skip, launch};
use crate::support::process::Dev;
use crate::support::{TestApp, post_graphql, register_at};

#[tokio::test(flavor = "multi_thread")]
async fn the_app_and_its_files_come_from_mage() {
    let app = TestApp::start().await;
    let res = app.http.get(app.url("/")).send().await.expect("page");
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-security-policy"].to_str().expect("csp").contains("script-src 'self'"));
    let html = res.text().await.expect("html");
    let mut files = 0;
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let url: String = html[i + attr.len()..].chars().take_while(|c| *c != '"').collect();
            assert!(url.starts_with('/') || url.starts_with("data:"), "external asset in the page: {url}");
            if url.starts_with("/web/") {
                let res =
                    app.http.get(app.url(&url)).header("Accept-Encoding", "gzip").send().await.expect("file");
                assert_eq!(res.status(), 200, "{url}");
                assert_eq!(res.headers()["content-encoding"], "gzip", "{url} is compressed");
                assert!(res.headers().contains_key("etag"), "{url}");
                files += 1;
            }
        }
    }
    assert!(files >= 4, "the page loads its script, styles and modules from /web/: {files}");
    // Every route of the app is the page (a reload or a mail's link).
    for path in
        ["/signin", "/create", "/generations/abc", "/checkout/success?order=x", "/reset-password?token=t"]
    {
        let res = app.http.get(app.url(path)).send().await.expect("route");
        assert_eq!(res.status(), 200, "{path}");
        assert!(res.text().await.expect("html").contains("/web/js/app.js"), "{path}");
    }
    // A file comes again only when it changed.
    let res = app.http.get(app.url("/web/js/app.js")).send().await.expect("file");
    let etag = res.headers()["etag"].clone();
    assert_eq!(res.headers()["content-type"], "text/javascript; charset=utf-8");
    let res =
        app.http.get(app.url("/web/js/app.js")).header("If-None-Match", etag).send().await.expect("again");
    assert_eq!(res.status(), 304);
    let res = app.http.get(app.url("/web/vendor/hls.mjs")).send().await.expect("module");
    assert_eq!(res.headers()["content-type"], "text/javascript; charset=utf-8");
    for missing in ["/web/nope.js", "/web/vendor/update.sh", "/nope"] {
        assert_eq!(app.http.get(app.url(missing)).send().await.expect("missing").status(), 404, "{missing}");
    }
}

struct Viewport {
    name: &'static str,
    width: u32,
    height: u32,
    mobile: bool,
}

const DESKTOP: Viewport = Viewport { name: "desktop", width: 1280, height: 900, mobile: false };
const PHONE: Viewport = Viewport { name: "phone", width: 390, height: 844, mobile: true };

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_journey_in_chromium_on_a_desktop() {
    journey(DESKTOP).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_journey_in_chromium_on_a_phone() {
    journey(PHONE).await;
}

/// The page under test, with the checks every step makes.
struct App {
    page: Page,
    base: String,
    shots: PathBuf,
    step: u32,
    viewport: &'static str,
}

impl App {
    async fn eval(&mut self, js: &str) -> Value {
        let v = self
            .page
            .call(
                "Runtime.evaluate",
                json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(e) = v["result"].get("exceptionDetails") {
            panic!("{js} threw: {e}");
        }
        v["result"]["result"]["value"].clone()
    }

    /// Polls `js` until it is truthy; returns its value.
    async fn wait(&mut self, js: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v =
                self.eval(&format!("(() => {{ try {{ return {js}; }} catch {{ return null; }} }})()")).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText.slice(0, 2000)").await;
                self.shot("timeout").await;
                panic!("[{}] waited {limit:?} for {js}; the page says:\n{text}", self.viewport);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn go(&mut self, path: &str) {
        self.page.call("Page.navigate", json!({ "url": format!("{}{path}", self.base) })).await;
        let route = path.split('?').next().unwrap_or(path);
        self.wait(&format!("document.body.dataset.ready === {route:?}"), Duration::from_secs(30)).await;
    }

    /// Clicks an in-app link, as a person would.
    async fn follow(&mut self, href: &str) {
        self.eval(&format!("document.querySelector('a[href=\"{href}\"]').click()")).await;
        self.wait(&format!("document.body.dataset.ready === {href:?}"), Duration::from_secs(30)).await;
    }

    async fn shot(&mut self, what: &str) {
        self.step += 1;
        let v = self.page.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let data = v["result"]["data"].as_str().expect("screenshot");
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD.decode(data).expect("png");
        let path = self.shots.join(format!("{:02}-{what}.png", self.step));
        std::fs::write(&path, png).expect("write screenshot");
    }

    /// axe-core on the page as it is: no serious or critical violation.
    async fn axe(&mut self, what: &str) {
        let found = self
            .eval(
                r#"new Promise((ok, fail) => {
                    if (window.axe) return ok();
                    const s = document.createElement('script');
                    s.src = '/web/vendor/axe.min.js'; s.onload = ok; s.onerror = fail;
                    document.head.append(s);
                }).then(() => axe.run(document, { resultTypes: ['violations'] }))
                  .then((r) => JSON.stringify(r.violations
                    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
                    .map((v) => ({ id: v.id, impact: v.impact, help: v.help,
                                   nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ')) }))))"#,
            )
            .await;
        assert_eq!(found, "[]", "[{}] axe-core found on {what}: {found}", self.viewport);
        // Nothing wider than the screen: wide tables scroll inside their box.
        let overflow = self.eval("document.documentElement.scrollWidth - window.innerWidth").await;
        assert!(
            overflow.as_f64().unwrap_or(0.0) <= 1.0,
            "[{}] {what} is wider than the screen by {overflow} px",
            self.viewport
        );
    }

    async fn fill(&mut self, selector: &str, value: &str) {
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector:?}); e.value = {value:?}; \
             e.dispatchEvent(new Event('input', {{ bubbles: true }})); e.dispatchEvent(new Event('change', {{ bubbles: true }})); }})()"
        ))
        .await;
    }

    async fn click(&mut self, selector: &str) {
        self.eval(&format!("document.querySelector({selector:?}).click()")).await;
    }

    async fn credits_shown(&mut self) -> i64 {
        let text = self.wait("document.getElementById('balance')?.textContent.match(/\\d/) && document.getElementById('balance').textContent", Duration::from_secs(10)).await;
        text.as_str()
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("a number")
    }
}

async fn journey(viewport: Viewport) {
    let Some(binary) = chromium_or_skip() else { return };
    // One render at a time, so a generation queued behind another shows its
    // place in the queue.
    // Access tokens of 40 s: the app refreshes its session every 10 s or
    // so along the way, and must keep its live subscriptions.
    let dev =
        Dev::start_with(&[("MAGE_RENDER_CONCURRENCY", "1"), ("MAGE_ACCESS_TOKEN_TTL_SECONDS", "40")]).await;
    let base = dev.url("");
    let http = reqwest::Client::new();
    let photo = tempfile::tempdir().expect("dir");
    let photo_path = photo.path().join("lighthouse.png");
    let made = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=640x480", "-frames:v", "1"])
        .arg(&photo_path)
        .status()
        .expect("ffmpeg");
    assert!(made.success());

    let (_browser, port) = launch(&binary);
    let mut page = Page::open(port).await;
    for domain in ["Runtime.enable", "Network.enable", "Page.enable", "DOM.enable", "Log.enable"] {
        page.call(domain, json!({})).await;
    }
    page.call("Network.setCacheDisabled", json!({ "cacheDisabled": true })).await;
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": viewport.width, "height": viewport.height, "deviceScaleFactor": 1, "mobile": viewport.mobile }),
    )
    .await;
    page.call("Emulation.setTouchEmulationEnabled", json!({ "enabled": viewport.mobile })).await;
    if viewport.mobile {
        // Chromium plays HLS natively; on the phone run the app is made to
        // take the hls.js path, as it does in browsers without it.
        page.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": "const can = HTMLMediaElement.prototype.canPlayType; \
                HTMLMediaElement.prototype.canPlayType = function (t) { \
                  return /mpegurl/i.test(t) ? '' : can.call(this, t); };" }),
        )
        .await;
    }
    // The statistics' days are UTC days (MAGE_STATS_TZ); so are the page's.
    page.call("Emulation.setTimezoneOverride", json!({ "timezoneId": "UTC" })).await;
    let shots = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("web-screenshots")
        .join(viewport.name);
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshots dir");
    let mut app = App { page, base: base.clone(), shots: shots.clone(), step: 0, viewport: viewport.name };

    // Sign up, on a first load with an empty cache: its weight and time to
    // interactive.
    app.go("/signup").await;
    let first = app
        .eval(
            "JSON.stringify({ interactive: performance.getEntriesByName('mage:interactive')[0].startTime, \
             requests: performance.getEntriesByType('resource').length + 1, \
             bytes: performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation')) \
                .reduce((n, e) => n + e.transferSize, 0), \
             decoded: performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation')) \
                .reduce((n, e) => n + e.decodedBodySize, 0) })",
        )
        .await;
    let first: Value = serde_json::from_str(first.as_str().expect("json")).expect("figures");
    println!("[{}] first load: {first}", viewport.name);
    assert!(first["bytes"].as_f64().expect("bytes") < 100_000.0, "the first load stays small: {first}");
    app.shot("signup").await;
    app.axe("sign up").await;
    let email = format!("web-{}@example.com", viewport.name);
    app.fill("input[type=email]", &email).await;
    app.fill("input[type=password]", "correct horse battery").await;
    app.click("#signup").await;
    app.wait(
        "document.body.dataset.ready === '/create' && document.getElementById('quote')?.dataset.credits",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(app.credits_shown().await, 100, "the signup credits");
    app.shot("create").await;
    app.axe("create").await;

    // Buy a pack on the development checkout page; back in the app the
    // confirmation and the header show the new balance.
    app.follow("/billing").await;
    app.shot("billing").await;
    app.axe("billing").await;
    let pack = app
        .eval("Number(document.querySelector('#products article .quote').textContent.replace(/\\D/g, ''))")
        .await;
    let pack = pack.as_i64().expect("credits of the first product");
    app.click("#products button").await;
    app.wait(
        "location.pathname.startsWith('/dev/checkout/') && document.getElementById('pay')",
        Duration::from_secs(30),
    )
    .await;
    app.shot("checkout").await;
    app.click("#pay").await;
    app.wait(
        "document.body.dataset.ready === '/checkout/success' && document.getElementById('new-balance')",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(app.credits_shown().await, 100 + pack, "the balance rose by the pack");
    app.shot("paid").await;
    app.axe("checkout confirmation").await;

    // Someone else's long render holds the one render slot.
    let graphql = dev.url("/graphql");
    let (other, _) = register_at(&http, &graphql, &format!("busy-{}@example.com", viewport.name)).await;
    let res = post_graphql(
        &http,
        &graphql,
        "mutation { createGeneration(input: { model: \"synth-video\", prompt: \"a long one\", resolution: R1080P, durationSeconds: 10 }) { id } }",
        json!({}),
        Some(&other),
    )
    .await;
    assert!(res.get("errors").is_none(), "{res}");

    // Upload a photo and make it a video.
    app.go("/create?model=synth-i2v").await;
    app.wait("document.getElementById('file-0')", Duration::from_secs(10)).await;
    let doc = app.page.call("DOM.getDocument", json!({ "depth": -1 })).await;
    let root = doc["result"]["root"]["nodeId"].clone();
    let input = app.page.call("DOM.querySelector", json!({ "nodeId": root, "selector": "#file-0" })).await;
    app.page
        .call(
            "DOM.setFileInputFiles",
            json!({ "nodeId": input["result"]["nodeId"], "files": [photo_path.to_str().expect("path")] }),
        )
        .await;
    app.wait("document.getElementById('upload-status-0')?.dataset.ready", Duration::from_secs(60)).await;
    app.fill("#prompt", "The lighthouse slowly comes into view").await;
    app.wait("document.getElementById('quote')?.dataset.credits", Duration::from_secs(10)).await;
    app.shot("upload").await;
    app.axe("create with an upload").await;
    app.click("#generate").await;
    app.wait("document.body.dataset.ready?.startsWith('/generations/')", Duration::from_secs(30)).await;

    // Position, stage and progress move live, then the video plays.
    let mut seen: Vec<Value> = Vec::new();
    let (mut queued_shot, mut progress_shot) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let state = app
            .eval(
                "({ status: document.querySelector('main').dataset.status, \
                   position: document.getElementById('position')?.textContent ?? null, \
                   progress: document.getElementById('progress')?.value ?? null })",
            )
            .await;
        if seen.last() != Some(&state) {
            if state["status"] == "QUEUED" && state["position"].is_string() && !queued_shot {
                queued_shot = true;
                app.shot("queued").await;
                app.axe("a queued generation").await;
            }
            let p = state["progress"].as_f64().unwrap_or(0.0);
            if p > 0.0 && p < 100.0 && !progress_shot {
                progress_shot = true;
                app.shot("progress").await;
            }
            seen.push(state.clone());
        }
        if state["status"] == "SUCCEEDED" {
            break;
        }
        assert!(state["status"] != "FAILED" && Instant::now() < deadline, "the generation went: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("[{}] the generation page showed: {seen:?}", viewport.name);
    assert!(
        seen.iter().any(|s| s["position"].as_str().is_some_and(|p| p.contains("Position 1"))),
        "the queue position was shown: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s["progress"].as_f64().is_some_and(|p| p > 0.0 && p < 100.0)),
        "progress moved: {seen:?}"
    );
    let playing = app
        .wait(
            "(() => { const v = document.getElementById('video'); if (!v) return null; v.muted = true; \
             v.play().catch(() => {}); return v.currentTime > 0 && !v.paused && !v.ended \
             && (v.hls ? 'hls.js' : 'native'); })()",
            Duration::from_secs(30),
        )
        .await;
    println!("[{}] the HLS video plays ({playing})", viewport.name);
    if viewport.mobile {
        assert_eq!(playing, "hls.js");
    }
    app.shot("playing").await;
    app.axe("a finished generation").await;

    // An API key, its secret shown once.
    app.follow("/account").await;
    app.fill("#key-name", "Mobile app").await;
    app.click("#create-key").await;
    let secret = app.wait("document.getElementById('new-key')?.textContent", Duration::from_secs(10)).await;
    let res = post_graphql(&http, &graphql, "{ me { email } }", json!({}), secret.as_str()).await;
    assert_eq!(res["data"]["me"]["email"], email.as_str(), "the key works: {res}");
    app.shot("api-key").await;
    app.axe("account").await;

    app.follow("/history").await;
    app.wait(
        "document.querySelector('#history article[data-status=\"SUCCEEDED\"]')",
        Duration::from_secs(10),
    )
    .await;
    app.shot("history").await;
    app.axe("history").await;
    app.follow("/assets").await;
    app.wait("document.querySelector('#assets article[data-status=\"READY\"]')", Duration::from_secs(10))
        .await;
    app.shot("uploads").await;
    app.axe("uploads").await;

    // Made an admin, signed in again: today's generation is in the charts.
    let promoted = dev.mage("user").args(["promote", &email]).status().expect("mage user promote");
    assert!(promoted.success());
    app.click("header .who button").await;
    app.wait("document.body.dataset.ready === '/signin'", Duration::from_secs(10)).await;
    app.axe("sign in").await;
    app.fill("input[type=email]", &email).await;
    app.fill("input[type=password]", "correct horse battery").await;
    app.click("#signin").await;
    app.wait("document.body.dataset.ready === '/create'", Duration::from_secs(30)).await;
    app.follow("/admin").await;
    let today = chrono::Utc::now().date_naive();
    let created = app
        .wait(
            &format!("document.querySelector('#stats-table tr[data-day=\"{today}\"] td[data-col=\"generationsCreated\"]')?.textContent"),
            Duration::from_secs(30),
        )
        .await;
    let created: i64 = created.as_str().expect("text").trim().parse().expect("a count");
    assert!(created >= 2, "today's generations (ours and the other user's) are counted: {created}");
    app.wait("document.querySelectorAll('.uplot canvas').length >= 3", Duration::from_secs(10)).await;
    app.shot("admin-stats").await;
    app.axe("admin statistics").await;
    app.go("/admin?tab=queue").await;
    app.wait("document.querySelector('main table')", Duration::from_secs(10)).await;
    app.shot("admin-queue").await;
    app.axe("admin queue").await;

    // Grant the other user credits, and rename a model in the catalogue.
    let busy = format!("busy-{}@example.com", viewport.name);
    app.go("/admin?tab=users").await;
    app.wait("document.querySelector('#admin-panel[data-loaded]')", Duration::from_secs(10)).await;
    app.fill("#user-search-input", "busy-").await;
    app.click("#user-search-button").await;
    app.wait(
        "document.getElementById('users-status')?.textContent.includes('matching')",
        Duration::from_secs(10),
    )
    .await;
    let row = format!("#users-table tr[data-email=\"{busy}\"]");
    app.wait(&format!("document.querySelector({row:?})"), Duration::from_secs(10)).await;
    app.fill(&format!("{row} form.adjust input[name=amount]"), "25").await;
    app.fill(&format!("{row} form.adjust input[name=reason]"), "goodwill").await;
    app.click(&format!("{row} form.adjust button[value=grant]")).await;
    let entries = "{ creditEntries(first: 10) { nodes { kind amount memo } } }";
    // A fresh token: this dev server's tokens live 40 s, less than the
    // journey up to here on a loaded machine.
    let login = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }";
    let res =
        post_graphql(&http, &graphql, login, json!({ "e": busy, "p": crate::support::PASSWORD }), None).await;
    let other = res["data"]["login"]["token"].as_str().unwrap_or_else(|| panic!("login: {res}")).to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = post_graphql(&http, &graphql, entries, json!({}), Some(&other)).await;
        let grants: Vec<&Value> = res["data"]["creditEntries"]["nodes"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["kind"] == "GRANT" && e["amount"] == 25)
            .collect();
        if grants.len() == 1 {
            assert_eq!(grants[0]["memo"], "goodwill", "{res}");
            break;
        }
        if !grants.is_empty() || Instant::now() > deadline {
            let text = app.eval("document.body.innerText").await;
            app.shot("grant").await;
            panic!("[{}] one grant of 25: {res}; the page says {text}", viewport.name);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.shot("admin-users").await;
    app.axe("admin users").await;
    app.go("/admin?tab=catalog").await;
    app.wait("document.querySelector('button[data-edit-model=\"synth-image\"]')", Duration::from_secs(10))
        .await;
    app.click("button[data-edit-model=\"synth-image\"]").await;
    app.wait("document.getElementById('model-name')", Duration::from_secs(10)).await;
    app.fill("#model-name", "Quick picture").await;
    app.axe("the model editor").await;
    app.shot("admin-catalog").await;
    app.click("#model-save").await;
    app.wait("!document.getElementById('model-form') && document.querySelector('tr[data-model-id=\"synth-image\"]')?.textContent.includes('Quick picture')", Duration::from_secs(10)).await;
    app.go("/admin?tab=stripe").await;
    app.wait("document.querySelector('#admin-panel[data-loaded]')", Duration::from_secs(10)).await;
    app.axe("admin Stripe events").await;
    // The purchase's events, settled; replaying one changes nothing.
    app.fill("#stripe-status", "all").await;
    app.wait(
        "document.querySelector('#stripe-table tr[data-status=\"processed\"] button.replay')",
        Duration::from_secs(10),
    )
    .await;
    app.click("#stripe-table tr[data-status=\"processed\"] button.replay").await;
    app.wait(
        "[...document.querySelectorAll('.toast')].some((t) => t.textContent.includes('is processed'))",
        Duration::from_secs(10),
    )
    .await;
    let res = post_graphql(&http, &graphql, "{ models { id name } }", json!({}), None).await;
    assert!(
        res["data"]["models"]
            .as_array()
            .expect("models")
            .iter()
            .any(|m| m["id"] == "synth-image" && m["name"] == "Quick picture"),
        "{res}"
    );

    // The balance in the header is still live after the refreshes.
    let before = app.credits_shown().await;
    let token = app.eval("JSON.parse(localStorage.getItem('mage.session')).token").await;
    let me = post_graphql(&http, &graphql, "{ me { id } }", json!({}), token.as_str()).await;
    let res = post_graphql(
        &http,
        &graphql,
        "mutation($u: ID!) { grantCredits(userId: $u, amount: 5, reason: \"live\") { balance } }",
        json!({ "u": me["data"]["me"]["id"] }),
        token.as_str(),
    )
    .await;
    assert!(res.get("errors").is_none(), "{res}");
    app.wait(
        &format!("document.getElementById('balance').textContent.replace(/\\D/g, '') === '{}'", before + 5),
        Duration::from_secs(10),
    )
    .await;
    let refreshes = app
        .page
        .events
        .iter()
        .filter(|e| {
            e["method"] == "Network.requestWillBeSent"
                && e["params"]["request"]["postData"].as_str().is_some_and(|b| b.contains("refreshSession"))
        })
        .count();
    assert!(refreshes >= 1, "the session was refreshed along the way");
    println!("[{}] {refreshes} session refreshes", viewport.name);

    // Nothing the app did left the machine, and nothing threw.
    app.eval("1").await;
    let mut urls: Vec<String> = app
        .page
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent" || e["method"] == "Network.webSocketCreated")
        .filter_map(|e| {
            e["params"]["request"]["url"].as_str().or(e["params"]["url"].as_str()).map(str::to_owned)
        })
        .collect();
    urls.sort();
    urls.dedup();
    let away: Vec<&String> = urls
        .iter()
        .filter(|u| {
            let local = ["http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:http://127.0.0.1:"]
                .iter()
                .any(|p| u.starts_with(p));
            !local
        })
        .collect();
    assert!(away.is_empty(), "requests left the machine: {away:?}");
    assert!(urls.len() > 20, "the requests were seen: {}", urls.len());
    let thrown: Vec<&Value> =
        app.page.events.iter().filter(|e| e["method"] == "Runtime.exceptionThrown").collect();
    assert!(thrown.is_empty(), "the page threw: {thrown:?}");
    // Content-Security-Policy refusals and failed loads are logged errors.
    let logged: Vec<&Value> = app
        .page
        .events
        .iter()
        .filter(|e| e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
        .collect();
    assert!(logged.is_empty(), "the browser logged errors: {logged:?}");
    println!(
        "[{}] {} distinct URLs, all on this machine; screenshots in {}",
        viewport.name,
        urls.len(),
        shots.display()
    );
}

/// The first link to `page` in the development mailbox, for `email`.
async fn mailed_link(http: &reqwest::Client, dev: &Dev, email: &str, page: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let html = http.get(dev.url("/dev/mail")).send().await.expect("mailbox").text().await.expect("html");
        let link = html.split("<article").filter(|mail| mail.contains(email)).find_map(|mail| {
            let start = mail.find(&format!("href=\"{}", dev.url(&format!("/{page}?token="))))?;
            let rest = &mail[start + "href=\"".len()..];
            Some(rest[..rest.find('"')?].to_owned())
        });
        if let Some(link) = link {
            return link;
        }
        assert!(Instant::now() < deadline, "no {page} mail for {email}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mailed_links_open_the_app() {
    let Some(binary) = chromium_or_skip() else { return };
    let dev = Dev::start().await;
    let http = reqwest::Client::new();
    let (_browser, port) = launch(&binary);
    let mut page = Page::open(port).await;
    page.call("Runtime.enable", json!({})).await;
    let shots = std::env::temp_dir().join(format!("mage-web-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&shots).expect("dir");
    let mut app = App { page, base: dev.url(""), shots: shots.clone(), step: 0, viewport: "desktop" };
    let email = "links@example.com";
    register_at(&http, &dev.url("/graphql"), email).await;

    // The confirmation link of the welcome mail.
    let link = mailed_link(&http, &dev, email, "verify-email").await;
    app.go(link.trim_start_matches(&app.base).to_owned().as_str()).await;
    let said = app.wait("document.querySelector('main [role=status]')?.textContent.includes('is confirmed') && document.querySelector('main [role=status]').textContent", Duration::from_secs(10)).await;
    assert!(said.as_str().expect("text").contains(email), "{said}");
    app.axe("email confirmation").await;

    // Forgot the password: the mailed link sets a new one and signs in.
    app.go("/forgot-password").await;
    app.fill("input[type=email]", email).await;
    app.click("form button[type=submit]").await;
    app.wait("document.querySelector('form [role=status]')?.textContent", Duration::from_secs(10)).await;
    app.axe("forgotten password").await;
    let link = mailed_link(&http, &dev, email, "reset-password").await;
    app.go(link.trim_start_matches(&app.base).to_owned().as_str()).await;
    app.axe("new password").await;
    app.fill("input[type=password]", "a brand new passphrase").await;
    app.click("form button[type=submit]").await;
    app.wait("document.body.dataset.ready === '/create'", Duration::from_secs(30)).await;
    let res = post_graphql(
        &http,
        &dev.url("/graphql"),
        "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
        json!({ "e": email, "p": "a brand new passphrase" }),
        None,
    )
    .await;
    assert!(res["data"]["login"]["token"].is_string(), "the new password works: {res}");
    // The link works once.
    app.go(link.trim_start_matches(&app.base).to_owned().as_str()).await;
    app.fill("input[type=password]", "yet another passphrase").await;
    app.click("form button[type=submit]").await;
    let error = app.wait("document.querySelector('form .error')?.textContent", Duration::from_secs(10)).await;
    assert!(!error.as_str().expect("text").is_empty());
    let _ = std::fs::remove_dir_all(&shots);
}
