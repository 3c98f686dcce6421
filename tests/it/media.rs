//! `/media` end to end: the local media store served by the real router,
//! with byte ranges, HLS content types, caching, CORS, and nothing outside
//! the media folder.

use std::path::Path;
use std::time::Duration;

use crate::support::TestApp;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "generations/0191d2c4-7a47-7c1e-9d1a-0a1b2c3d4e5f";

/// 100 bytes whose value is their offset, so a range is easy to check.
fn bytes() -> Vec<u8> {
    (0..100u8).collect()
}

fn put(root: &Path, key: &str, body: &[u8]) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, body).expect("write");
}

fn header(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers.get(&name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} in {headers:?}"))
}

/// Sends `target` as it is (reqwest would resolve `..` before sending);
/// returns the status code.
async fn raw_get(app: &TestApp, target: &str) -> u16 {
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    let req = format!("GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", app.addr);
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut res = Vec::new();
    tcp.read_to_end(&mut res).await.expect("read");
    let res = String::from_utf8_lossy(&res);
    let status = res.split_whitespace().nth(1).unwrap_or_else(|| panic!("no status line: {res}"));
    status.parse().expect("status code")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_file_with_its_type_length_and_caching() {
    let app = TestApp::start().await;
    put(app.media_dir(), &format!("{KEY}/video.mp4"), &bytes());
    let res = app.http.get(app.url(&format!("/media/{KEY}/video.mp4"))).send().await.expect("GET");
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(header(&h, header::CONTENT_TYPE), "video/mp4");
    assert_eq!(header(&h, header::CONTENT_LENGTH), "100");
    assert_eq!(header(&h, header::ACCEPT_RANGES), "bytes");
    assert_eq!(header(&h, header::CACHE_CONTROL), "public, max-age=31536000, immutable");
    assert_eq!(header(&h, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    let last_modified = header(&h, header::LAST_MODIFIED).to_owned();
    assert_eq!(res.bytes().await.expect("body").as_ref(), bytes().as_slice());

    // Revalidation: unchanged since then.
    let res = app
        .http
        .get(app.url(&format!("/media/{KEY}/video.mp4")))
        .header(header::IF_MODIFIED_SINCE, last_modified)
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(res.headers(), header::CACHE_CONTROL), "public, max-age=31536000, immutable");
}

#[tokio::test(flavor = "multi_thread")]
async fn byte_ranges() {
    let app = TestApp::start().await;
    put(app.media_dir(), &format!("{KEY}/video.mp4"), &bytes());
    let url = app.url(&format!("/media/{KEY}/video.mp4"));
    let get = |range: &'static str| app.http.get(&url).header(header::RANGE, range).send();

    let res = get("bytes=10-19").await.expect("GET");
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(res.headers(), header::CONTENT_RANGE), "bytes 10-19/100");
    assert_eq!(header(res.headers(), header::CONTENT_LENGTH), "10");
    assert_eq!(header(res.headers(), header::CONTENT_TYPE), "video/mp4");
    assert_eq!(res.bytes().await.expect("body").as_ref(), &bytes()[10..20]);

    // The last 5 bytes.
    let res = get("bytes=-5").await.expect("GET");
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(res.headers(), header::CONTENT_RANGE), "bytes 95-99/100");
    assert_eq!(res.bytes().await.expect("body").as_ref(), &bytes()[95..]);

    // From an offset to the end.
    let res = get("bytes=90-").await.expect("GET");
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.bytes().await.expect("body").as_ref(), &bytes()[90..]);

    for unsatisfiable in ["bytes=100-", "bytes=200-300"] {
        let res = get(unsatisfiable).await.expect("GET");
        assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{unsatisfiable}");
        assert_eq!(header(res.headers(), header::CONTENT_RANGE), "bytes */100", "{unsatisfiable}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hls_files_get_their_types_and_playlists_a_short_cache() {
    let app = TestApp::start().await;
    for (file, content_type, cache) in [
        ("hls/master.m3u8", "application/vnd.apple.mpegurl", "public, max-age=300"),
        ("hls/720p/index.m3u8", "application/vnd.apple.mpegurl", "public, max-age=300"),
        ("hls/720p/init.mp4", "video/mp4", "public, max-age=31536000, immutable"),
        ("hls/720p/seg-00001.m4s", "video/iso.segment", "public, max-age=31536000, immutable"),
        ("hls/720p/seg-00001.ts", "video/mp2t", "public, max-age=31536000, immutable"),
        ("poster.jpg", "image/jpeg", "public, max-age=31536000, immutable"),
        ("poster.png", "image/png", "public, max-age=31536000, immutable"),
        // Not media: never served as something a browser would run.
        ("notes.html", "application/octet-stream", "public, max-age=3600"),
    ] {
        let key = format!("{KEY}/{file}");
        put(app.media_dir(), &key, b"#EXTM3U\n");
        let res = app.http.get(app.url(&format!("/media/{key}"))).send().await.expect("GET");
        assert_eq!(res.status(), StatusCode::OK, "{file}");
        assert_eq!(header(res.headers(), header::CONTENT_TYPE), content_type, "{file}");
        assert_eq!(header(res.headers(), header::CACHE_CONTROL), cache, "{file}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn head_answers_like_get_without_a_body() {
    let app = TestApp::start().await;
    put(app.media_dir(), &format!("{KEY}/hls/index.m3u8"), &bytes());
    let res = app.http.head(app.url(&format!("/media/{KEY}/hls/index.m3u8"))).send().await.expect("HEAD");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(res.headers(), header::CONTENT_LENGTH), "100");
    assert_eq!(header(res.headers(), header::CONTENT_TYPE), "application/vnd.apple.mpegurl");
    assert!(res.bytes().await.expect("body").is_empty());

    let res = app.http.head(app.url(&format!("/media/{KEY}/none.mp4"))).send().await.expect("HEAD");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_files_folders_and_other_methods() {
    let app = TestApp::start().await;
    put(app.media_dir(), &format!("{KEY}/video.mp4"), &bytes());
    for path in [
        "/media/nope.mp4",
        &format!("/media/{KEY}/nope.mp4"),
        "/media",
        "/media/",
        &format!("/media/{KEY}"),
        &format!("/media/{KEY}/"),
    ] {
        let res = app.http.get(app.url(path)).send().await.expect("GET");
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        let cache =
            res.headers().get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(!cache.contains("immutable"), "{path}: a 404 must not be cached for good ({cache})");
    }
    let res = app.http.post(app.url(&format!("/media/{KEY}/video.mp4"))).send().await.expect("POST");
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_outside_the_media_folder_is_reachable() {
    let app = TestApp::start().await;
    // A real file next to the media folder, so a traversal would find it.
    let media = app.media_dir().to_path_buf();
    let name = format!("{}-secret.txt", media.file_name().and_then(|n| n.to_str()).expect("name"));
    let secret = media.parent().expect("parent").join(&name);
    std::fs::write(&secret, b"secret").expect("write");
    let _cleanup = Cleanup(secret.clone());
    put(&media, "a/b.mp4", &bytes());
    assert_eq!(raw_get(&app, "/media/a/b.mp4").await, 200);

    for target in [
        format!("/media/../{name}"),
        format!("/media/a/../../{name}"),
        format!("/media/%2e%2e/{name}"),
        format!("/media/..%2f{name}"),
        format!("/media/a%2f..%2f..%2f{name}"),
        format!("/media/{}", secret.display()),
        format!("/media/%2F{}", secret.display().to_string().trim_start_matches('/').replace('/', "%2F")),
        "/media/../../../../../../etc/passwd".to_owned(),
        "/media/a/%00.mp4".to_owned(),
    ] {
        let status = raw_get(&app, &target).await;
        assert!(matches!(status, 400 | 404), "{target}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn web_players_on_other_origins_may_read_ranges() {
    let app = TestApp::start().await;
    put(app.media_dir(), &format!("{KEY}/video.mp4"), &bytes());
    let url = app.url(&format!("/media/{KEY}/video.mp4"));
    let res = app
        .http
        .get(&url)
        .header(header::ORIGIN, "https://player.example.com")
        .header(header::RANGE, "bytes=0-9")
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(res.headers(), header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
    let exposed = header(res.headers(), header::ACCESS_CONTROL_EXPOSE_HEADERS).to_ascii_lowercase();
    assert!(exposed.contains("content-range"), "{exposed}");

    // The preflight of a request with a Range header.
    let res = app
        .http
        .request(reqwest::Method::OPTIONS, &url)
        .header(header::ORIGIN, "https://player.example.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "range")
        .send()
        .await
        .expect("OPTIONS");
    assert!(res.status().is_success(), "{}", res.status());
    let allowed = header(res.headers(), header::ACCESS_CONTROL_ALLOW_HEADERS).to_ascii_lowercase();
    assert!(allowed.contains("range"), "{allowed}");
}

/// The request timeout bounds the time to the response headers, not the
/// download: a client slower than the timeout still gets every byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_download_slower_than_the_request_timeout_completes() {
    let app = TestApp::start_with(|s| s.request_timeout = Duration::from_secs(1)).await;
    let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    put(app.media_dir(), &format!("{KEY}/video.mp4"), &big);
    let mut res = app.http.get(app.url(&format!("/media/{KEY}/video.mp4"))).send().await.expect("GET");
    assert_eq!(res.status(), StatusCode::OK);
    let mut got = Vec::with_capacity(big.len());
    let mut paused = false;
    while let Some(chunk) = res.chunk().await.expect("the body is not cut") {
        got.extend_from_slice(&chunk);
        if !paused {
            paused = true;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    assert_eq!(got.len(), big.len());
    assert!(got == big);
}

/// With a bucket, `mage serve` serves no media: clients read the bucket's
/// public URL.
#[tokio::test(flavor = "multi_thread")]
async fn no_media_route_when_storage_is_a_bucket() {
    let app = TestApp::start().await;
    let storage = mage_domain::storage::Storage::new(&mage_domain::config::StorageSettings {
        media_dir: app.media_dir().to_path_buf(),
        url: Some("s3://mage-test-bucket/media".into()),
        base_url: Some("https://cdn.example.com/media".into()),
    })
    .expect("bucket storage (built lazily, no request made)");
    assert!(storage.local_root().is_none());
    assert_eq!(
        storage.public_url(&app.settings.public_url, &format!("{KEY}/video.mp4")),
        format!("https://cdn.example.com/media/{KEY}/video.mp4")
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let core = mage_domain::core::Core::new(app.pool.clone(), app.redis.redis(), app.queues.clone(), storage);
    let state = mage_api::AppState::new(core, app.settings.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mage_api::serve_on(listener, state, async move {
        let _ = rx.await;
    }));
    put(app.media_dir(), &format!("{KEY}/video.mp4"), &bytes());
    let res = app.http.get(format!("http://{addr}/media/{KEY}/video.mp4")).send().await.expect("GET");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app.http.get(format!("http://{addr}/healthz")).send().await.expect("GET");
    assert_eq!(res.status(), StatusCode::OK);
    let _ = tx.send(());
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `MAGE_MEDIA_RETENTION_DAYS`: media of generations finished longer ago are
/// deleted and shown as expired; newer ones and everything else stay.
#[tokio::test(flavor = "multi_thread")]
async fn media_retention_deletes_old_outputs_only_and_marks_them_expired() {
    let app = TestApp::start().await;
    let _workers = app.start_workers().await;
    let (token, _) = app.register("keep@example.com").await;
    const CREATE: &str = "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id } }";
    const GET: &str = "query($id: ID!) { generation(id: $id) { status mediaExpiredAt output { imageUrl } } }";
    let mut ids = Vec::new();
    for prompt in ["old", "new"] {
        let input = serde_json::json!({"model": "synth-image", "prompt": prompt, "resolution": "R480P"});
        let res = app.gql(CREATE, serde_json::json!({"i": input}), Some(&token)).await;
        ids.push(
            res["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("{res}")).to_owned(),
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for id in &ids {
        loop {
            let res = app.gql(GET, serde_json::json!({"id": id}), Some(&token)).await;
            if res["data"]["generation"]["status"] == "SUCCEEDED" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{res}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let folder = |id: &str| app.media_dir().join("generations").join(id);
    assert!(folder(&ids[0]).exists() && folder(&ids[1]).exists());
    app.sql(&format!(
        "UPDATE generations SET finished_at = now() - interval '31 days' WHERE id = '{}'",
        ids[0]
    ))
    .await;
    let keep = std::time::Duration::from_secs(30 * 86_400);
    assert_eq!(mage_jobs::expire_media_once(&app.pool, &app.storage, keep).await.expect("retention"), 1);
    assert_eq!(mage_jobs::expire_media_once(&app.pool, &app.storage, keep).await.expect("retention"), 0);
    let old = app.gql(GET, serde_json::json!({"id": ids[0]}), Some(&token)).await;
    let g = &old["data"]["generation"];
    assert_eq!(g["status"], "SUCCEEDED", "{old}");
    assert!(g["output"].is_null() && g["mediaExpiredAt"].is_string(), "{old}");
    assert!(
        !folder(&ids[0]).exists() || std::fs::read_dir(folder(&ids[0])).map(|d| d.count()).unwrap_or(0) == 0
    );
    let new = app.gql(GET, serde_json::json!({"id": ids[1]}), Some(&token)).await;
    assert!(new["data"]["generation"]["output"]["imageUrl"].is_string(), "{new}");
    assert!(folder(&ids[1]).exists());
}
