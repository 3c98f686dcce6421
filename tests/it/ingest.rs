//! Uploads through the whole path: createUpload → PUT → completeUpload →
//! the ingest worker → READY (clean files) or REJECTED (nothing kept),
//! against real PostgreSQL, Redis, ffmpeg and local storage.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::TestApp;
use serde_json::{Value, json};

const CREATE_UPLOAD: &str =
    "mutation($i: CreateUploadInput!) { createUpload(input: $i) { url asset { id } } }";
const ASSET: &str = "query($id: ID!) { asset(id: $id) {
    id kind status error contentType width height durationSeconds url thumbnailUrl posterUrl hlsUrl } }";

/// Uploads `bytes` as a user would and completes it; the asset's id.
pub async fn upload(
    app: &TestApp,
    token: &str,
    filename: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> String {
    let res = app
        .gql(
            CREATE_UPLOAD,
            json!({ "i": { "filename": filename, "contentType": content_type, "byteSize": bytes.len() } }),
            Some(token),
        )
        .await;
    let id =
        res["data"]["createUpload"]["asset"]["id"].as_str().unwrap_or_else(|| panic!("{res}")).to_owned();
    let url = res["data"]["createUpload"]["url"].as_str().expect("url").to_owned();
    let put = reqwest::Client::new().put(&url).body(bytes).send().await.expect("PUT");
    assert_eq!(put.status(), 200);
    let done = app
        .gql("mutation($id: ID!) { completeUpload(id: $id) { status } }", json!({ "id": id }), Some(token))
        .await;
    assert_eq!(done["data"]["completeUpload"]["status"], "PROCESSING", "{done}");
    id
}

/// The asset once it is READY or REJECTED.
pub async fn settled(app: &TestApp, token: &str, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let res = app.gql(ASSET, json!({ "id": id }), Some(token)).await;
        let asset = res["data"]["asset"].clone();
        if asset["status"] == "READY" || asset["status"] == "REJECTED" {
            return asset;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "still {asset} after 3 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ffmpeg(args: &[&str], dest: &Path) {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .arg(dest)
        .output()
        .await
        .expect("ffmpeg runs");
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn fetch(url: &str) -> Vec<u8> {
    let res = reqwest::get(url).await.expect("GET");
    assert_eq!(res.status(), 200, "{url}");
    res.bytes().await.expect("body").to_vec()
}

fn stored_under(app: &TestApp, dir: &str) -> usize {
    walk(&app.media_dir().join(dir))
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_photo_with_gps_tags_becomes_a_clean_upright_image() {
    let app = TestApp::start().await;
    let _workers = app.start_workers().await;
    let (token, _) = app.register("photo@example.com").await;
    let dir = tempfile::tempdir().expect("dir");
    // A noisy 3000×2000 photo: about 3 MB, as phones send.
    let plain = dir.path().join("plain.jpg");
    ffmpeg(
        &["-f", "lavfi", "-i", "testsrc2=s=3000x2000,noise=alls=40:allf=t", "-frames:v", "1", "-q:v", "2"],
        &plain,
    )
    .await;
    let plain = std::fs::read(plain).expect("jpeg");
    let marker = b"MAGE-GPS-48.51N-2.24E";
    let photo = [&plain[..2], &mage_fakes::fixtures::exif_app1(marker), &plain[2..]].concat();
    assert!(photo.len() > 1_500_000, "{} bytes", photo.len());

    let id = upload(&app, &token, "IMG_0001.JPG", "image/jpeg", photo).await;
    let asset = settled(&app, &token, &id).await;
    assert_eq!(asset["status"], "READY", "{asset}");
    assert_eq!(asset["kind"], "IMAGE");
    assert_eq!(asset["contentType"], "image/jpeg");
    assert_eq!(
        (asset["width"].as_i64(), asset["height"].as_i64()),
        (Some(2000), Some(3000)),
        "turned upright"
    );
    let clean = fetch(asset["url"].as_str().expect("url")).await;
    assert_eq!(&clean[..3], [0xff, 0xd8, 0xff]);
    assert!(!contains(&clean, b"Exif") && !contains(&clean, marker), "EXIF and GPS are gone");
    let thumb = fetch(asset["thumbnailUrl"].as_str().expect("thumbnail")).await;
    assert!(thumb.len() < clean.len() / 4);
    // The raw upload goes just after the asset is marked READY.
    let start = Instant::now();
    while stored_under(&app, "uploads") > 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the raw upload is deleted once clean");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uploaded_1080p_video_becomes_a_playable_hls_ladder() {
    let app = TestApp::start().await;
    let hls = uploaded_video_plays(&app).await;
    assert!(hls.starts_with(&app.url("/media/assets/")), "{hls}");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_bucket_the_bytes_go_straight_to_it_and_the_ladder_plays_from_it() {
    let s3 = mage_domain::testing::TestS3::start().await;
    let app = TestApp::start_with_storage(s3.storage()).await;
    let hls = uploaded_video_plays(&app).await;
    let bucket = s3.settings().base_url.expect("base url");
    assert!(hls.starts_with(&format!("{bucket}/assets/")), "{hls} is not in the bucket");
    assert_eq!(stored_under(&app, ""), 0, "nothing went through the local folder");
}

/// Uploads a 10 s 1080p video with sound, waits for READY, checks it and
/// plays its HLS ladder over HTTP with ffprobe; the master playlist's URL.
async fn uploaded_video_plays(app: &TestApp) -> String {
    let _workers = app.start_workers().await;
    let (token, _) = app.register("video@example.com").await;
    let dir = tempfile::tempdir().expect("dir");
    let src = dir.path().join("lesson.mp4");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=1920x1080:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440",
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ],
        &src,
    )
    .await;
    let id = upload(app, &token, "lesson.mp4", "video/mp4", std::fs::read(&src).expect("mp4")).await;
    let asset = settled(app, &token, &id).await;
    assert_eq!(asset["status"], "READY", "{asset}");
    assert_eq!(asset["kind"], "VIDEO");
    assert_eq!((asset["width"].as_i64(), asset["height"].as_i64()), (Some(1920), Some(1080)));
    let seconds = asset["durationSeconds"].as_f64().expect("duration");
    assert!((seconds - 10.0).abs() < 0.5, "{seconds}");
    let hls = asset["hlsUrl"].as_str().expect("hls").to_owned();
    let master = String::from_utf8(fetch(&hls).await).expect("playlist");
    assert!(master.contains("#EXT-X-STREAM-INF") && master.contains("1080"), "{master}");
    fetch(asset["posterUrl"].as_str().expect("poster")).await;
    // ffprobe plays the ladder over HTTP, as a player would.
    let probe = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", &hls])
        .output()
        .await
        .expect("ffprobe");
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    let played: f64 = String::from_utf8_lossy(&probe.stdout).trim().parse().expect("duration");
    assert!((played - 10.0).abs() < 0.6, "{played}");
    hls
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_files_are_rejected_with_a_reason_and_nothing_is_kept() {
    let app = TestApp::start().await;
    let _workers = app.start_workers().await;
    let (token, _) = app.register("evil@example.com").await;
    // A ZIP named .png.
    let mut zip = b"PK\x03\x04".to_vec();
    zip.extend([0u8; 200]);
    // A text HLS playlist that would read a local file, named .mp4.
    let playlist =
        b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n".to_vec();
    // A truncated MP4.
    let dir = tempfile::tempdir().expect("dir");
    let src = dir.path().join("cut.mp4");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=640x360:rate=25",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ],
        &src,
    )
    .await;
    let mut cut = std::fs::read(&src).expect("mp4");
    cut.truncate(cut.len() / 3);

    for (name, kind, bytes, reason) in [
        ("cat.png", "image/png", zip, "ZIP"),
        ("clip.mp4", "video/mp4", playlist, "not an image or a video"),
        ("cut.mp4", "video/mp4", cut, "could not be read"),
    ] {
        let id = upload(&app, &token, name, kind, bytes).await;
        let asset = settled(&app, &token, &id).await;
        assert_eq!(asset["status"], "REJECTED", "{name}: {asset}");
        let error = asset["error"].as_str().expect("error");
        assert!(error.contains(reason), "{name}: {error}");
        assert_eq!(asset["url"], Value::Null);
    }
    assert_eq!(stored_under(&app, "uploads") + stored_under(&app, "assets"), 0, "no bytes left behind");
    let used = app.gql("{ assets(first: 10) { edges { node { status } } } }", json!({}), Some(&token)).await;
    assert_eq!(used["data"]["assets"]["edges"].as_array().expect("edges").len(), 3);
    let mut conn = app.conn().await;
    let bytes = crate::support::scalar_i64(&mut conn, "SELECT storage_used_bytes AS n FROM users").await;
    assert_eq!(bytes, 0, "rejected uploads give their quota back");
}

#[tokio::test(flavor = "multi_thread")]
async fn asset_updated_follows_an_upload_to_ready_then_completes() {
    use crate::support::ws::{connect_signed_in, recv, subscribe};
    let app = TestApp::start().await;
    let _workers = app.start_workers().await;
    let (token, _) = app.register("live@example.com").await;
    let dir = tempfile::tempdir().expect("dir");
    let png = dir.path().join("p.png");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=640x480", "-frames:v", "1"], &png).await;
    let bytes = std::fs::read(&png).expect("png");
    let res = app
        .gql(
            CREATE_UPLOAD,
            json!({ "i": { "filename": "p.png", "contentType": "image/png", "byteSize": bytes.len() } }),
            Some(&token),
        )
        .await;
    let id = res["data"]["createUpload"]["asset"]["id"].as_str().expect("id").to_owned();
    let url = res["data"]["createUpload"]["url"].as_str().expect("url").to_owned();

    let mut ws = connect_signed_in(app.addr, Some(&token)).await;
    subscribe(
        &mut ws,
        "a",
        "subscription($id: ID!) { assetUpdated(id: $id) { id status width thumbnailUrl } }",
        json!({ "id": id }),
    )
    .await;
    let first = recv(&mut ws).await.expect("first");
    assert_eq!(first["payload"]["data"]["assetUpdated"]["status"], "AWAITING_UPLOAD", "{first}");

    reqwest::Client::new().put(&url).body(bytes).send().await.expect("PUT");
    app.gql("mutation($id: ID!) { completeUpload(id: $id) { status } }", json!({ "id": id }), Some(&token))
        .await;
    let mut seen = Vec::new();
    loop {
        let msg = recv(&mut ws).await.expect("socket open");
        match msg["type"].as_str() {
            Some("next") => {
                let a = &msg["payload"]["data"]["assetUpdated"];
                seen.push(a["status"].as_str().expect("status").to_owned());
                if a["status"] == "READY" {
                    assert_eq!(a["width"], 640, "{msg}");
                    assert!(a["thumbnailUrl"].is_string());
                }
            }
            Some("complete") => break,
            _ => panic!("unexpected {msg}"),
        }
    }
    assert_eq!(seen.last().map(String::as_str), Some("READY"), "{seen:?}");
    assert!(seen.iter().all(|s| s == "PROCESSING" || s == "READY"), "{seen:?}");

    // Another user's asset: NOT_FOUND, as in queries.
    let (other, _) = app.register("peek@example.com").await;
    let mut ws = connect_signed_in(app.addr, Some(&other)).await;
    subscribe(&mut ws, "b", "subscription($id: ID!) { assetUpdated(id: $id) { id } }", json!({ "id": id }))
        .await;
    let refused = recv(&mut ws).await.expect("error");
    assert_eq!(refused["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND", "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweeper_expires_unfinished_uploads_and_applies_retention() {
    let app = TestApp::start().await;
    let (token, _) = app.register("sweep@example.com").await;
    let core = mage_domain::core::Core::new(
        app.pool.clone(),
        app.redis.redis(),
        app.queues.clone(),
        app.storage.clone(),
    );
    let used = || async {
        let mut conn = app.conn().await;
        crate::support::scalar_i64(&mut conn, "SELECT storage_used_bytes AS n FROM users").await
    };

    // Bytes sent but never completed: after the hour they go.
    let res = app
        .gql(
            CREATE_UPLOAD,
            json!({ "i": { "filename": "a.png", "contentType": "image/png", "byteSize": 4 } }),
            Some(&token),
        )
        .await;
    let stale = res["data"]["createUpload"]["asset"]["id"].as_str().expect("id").to_owned();
    let url = res["data"]["createUpload"]["url"].as_str().expect("url").to_owned();
    reqwest::Client::new().put(&url).body(vec![1u8; 4]).send().await.expect("PUT");
    // A READY one, for retention.
    let workers = app.start_workers().await;
    let dir = tempfile::tempdir().expect("dir");
    let png = dir.path().join("p.png");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=s=320x240", "-frames:v", "1"], &png).await;
    let kept = upload(&app, &token, "p.png", "image/png", std::fs::read(&png).expect("png")).await;
    assert_eq!(settled(&app, &token, &kept).await["status"], "READY");
    drop(workers);
    assert!(used().await > 4);

    let mut conn = app.conn().await;
    let soon = chrono::Utc::now() + chrono::Duration::minutes(61);
    mage_domain::assets::sweep(&core, &mut conn, soon, Some(30)).await.expect("sweep");
    let asset = app.gql(ASSET, json!({ "id": stale }), Some(&token)).await;
    assert_eq!(asset["data"]["asset"]["status"], "REJECTED", "{asset}");
    assert!(asset["data"]["asset"]["error"].as_str().expect("error").contains("within an hour"));
    assert_eq!(stored_under(&app, "uploads"), 0);
    let ready = app.gql(ASSET, json!({ "id": kept }), Some(&token)).await;
    assert!(ready["data"]["asset"]["url"].is_string(), "within retention: kept");

    let later = chrono::Utc::now() + chrono::Duration::days(31);
    mage_domain::assets::sweep(&core, &mut conn, later, Some(30)).await.expect("sweep");
    let ready = app.gql(ASSET, json!({ "id": kept }), Some(&token)).await;
    assert_eq!(ready["data"]["asset"]["url"], Value::Null, "past retention: the bytes are gone");
    assert_eq!(stored_under(&app, "assets"), 0);
    assert_eq!(used().await, 0, "and the quota is free again");
}
