//! Media storage on a real S3-protocol server (s3s-fs, started per test by
//! `TestS3`): presigned uploads, capped streamed writes, multipart uploads,
//! prefix deletes, and a video generation whose HLS ladder is played from
//! the bucket's public URL.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use mage_domain::storage::{Storage, Streamed};
use mage_domain::testing::TestS3;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::TestApp;

const MIB: usize = 1024 * 1024;

/// `n` bytes that differ from one offset to the next, so a misplaced part
/// shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

async fn read_back(storage: &Storage, key: &str) -> Vec<u8> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("back");
    storage.get_to_file(key, &path).await.unwrap_or_else(|e| panic!("get {key}: {e}"));
    std::fs::read(&path).expect("read back")
}

async fn public_get(url: &str) -> (StatusCode, Vec<u8>) {
    let res = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = res.status();
    (status, res.bytes().await.expect("body").to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_presigned_put_lands_under_the_prefix_and_can_be_read_and_deleted() {
    let s3 = TestS3::start().await;
    let storage = s3.storage();
    let http = reqwest::Client::new();
    // Characters that object_store escapes when it builds a path from a
    // string, but not when it parses one.
    for key in ["uploads/u1/photo.png", "uploads/u1/my photo (1).png", "uploads/u1/v~2 [draft] #1.png"] {
        let body = pattern(300_000);
        let url = storage
            .signed_put_url(key, Duration::from_secs(300))
            .await
            .expect("sign")
            .expect("a bucket signs uploads");
        assert!(url.starts_with(s3.endpoint()), "{url}");
        let res = http.put(&url).body(body.clone()).send().await.expect("PUT");
        assert!(
            res.status().is_success(),
            "{key}: {} {}",
            res.status(),
            res.text().await.unwrap_or_default()
        );

        assert_eq!(storage.head(key).await.expect("head"), Some(body.len() as u64), "{key}");
        assert!(read_back(&storage, key).await == body, "{key}");
        // Stored under the prefix: the public URL Mage hands out serves it.
        let (status, got) = public_get(&storage.public_url("http://unused", key)).await;
        assert_eq!(status, StatusCode::OK, "{key}");
        assert!(got == body, "{key}");

        storage.delete(key).await.expect("delete");
        assert_eq!(storage.head(key).await.expect("head"), None, "{key}");
        storage.delete(key).await.expect("deleting a missing object is not an error");
    }
}

/// The server checks signatures: a URL signed for one key does not upload
/// another, and a wrong secret signs nothing usable.
#[tokio::test(flavor = "multi_thread")]
async fn a_presigned_url_is_good_for_its_own_key_only() {
    let s3 = TestS3::start().await;
    let storage = s3.storage();
    let http = reqwest::Client::new();
    let url = storage
        .signed_put_url("uploads/u1/a.png", Duration::from_secs(300))
        .await
        .expect("sign")
        .expect("url");
    let other = url.replacen("/a.png?", "/b.png?", 1);
    assert_ne!(other, url);
    let res = http.put(&other).body("x").send().await.expect("PUT");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(storage.head("uploads/u1/b.png").await.expect("head"), None);

    let mut aws = s3.aws_config();
    for (name, value) in &mut aws {
        if *name == "AWS_SECRET_ACCESS_KEY" {
            *value = "not-the-secret".into();
        }
    }
    let forged = Storage::with_aws_config(&s3.settings(), aws).expect("storage");
    let url = forged
        .signed_put_url("uploads/u1/a.png", Duration::from_secs(300))
        .await
        .expect("sign")
        .expect("url");
    let res = http.put(&url).body("x").send().await.expect("PUT");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(storage.head("uploads/u1/a.png").await.expect("head"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_put_stores_all_of_it_or_nothing() {
    let s3 = TestS3::start().await;
    let storage = s3.storage();
    // 20 MiB in 1 MiB chunks: two full 8 MiB parts and a short last one.
    let body = pattern(20 * MIB);
    let chunks = || stream::iter(body.chunks(MIB).map(|c| Ok::<_, std::io::Error>(c.to_vec().into())));

    let key = "uploads/u1/exact.mp4";
    let stored = storage.put_stream(key, chunks(), body.len() as u64).await.expect("put");
    assert_eq!(stored, Streamed::Stored(body.len() as u64));
    assert_eq!(storage.head(key).await.expect("head"), Some(body.len() as u64));
    assert!(read_back(&storage, key).await == body);

    // Past the cap after two parts went up: they are dropped with the upload.
    let key = "uploads/u1/over.mp4";
    let stored = storage.put_stream(key, chunks(), 17 * MIB as u64).await.expect("put");
    assert_eq!(stored, Streamed::TooLarge);
    assert_eq!(storage.head(key).await.expect("head"), None);

    // The client goes away halfway.
    let key = "uploads/u1/cut.mp4";
    let cut = stream::iter(body.chunks(MIB).take(10).map(|c| Ok(c.to_vec().into())))
        .chain(stream::iter([Err(std::io::Error::other("connection reset"))]));
    let stored = storage.put_stream(key, cut, body.len() as u64).await.expect("put");
    assert!(matches!(stored, Streamed::Interrupted(_)), "{stored:?}");
    assert_eq!(storage.head(key).await.expect("head"), None);

    // Small and empty bodies are one short part, or none.
    for len in [1, 0] {
        let key = format!("uploads/u1/small-{len}.png");
        let small = stream::iter([Ok::<_, std::io::Error>(pattern(len).into())]);
        assert_eq!(storage.put_stream(&key, small, 10).await.expect("put"), Streamed::Stored(len as u64));
        assert_eq!(storage.head(&key).await.expect("head"), Some(len as u64));
    }

    assert_eq!(s3.incomplete_uploads(), 0, "no multipart upload is left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_big_file_goes_up_in_parts_and_comes_back_whole() {
    let s3 = TestS3::start().await;
    let storage = s3.storage();
    let tmp = tempfile::tempdir().expect("tempdir");
    let big = pattern(16 * MIB + 3 * 8 * MIB + 17);
    std::fs::write(tmp.path().join("big.mp4"), &big).expect("write");
    let key = "generations/g/video.mp4";
    storage.put_file(key, &tmp.path().join("big.mp4")).await.expect("put_file");
    assert_eq!(storage.head(key).await.expect("head"), Some(big.len() as u64));
    assert!(read_back(&storage, key).await == big);
    assert_eq!(s3.incomplete_uploads(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn put_dir_uploads_a_tree_and_delete_prefix_removes_only_that_folder() {
    let s3 = TestS3::start().await;
    let storage = s3.storage();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path();
    let files: [(&str, &[u8]); 3] =
        [("video.mp4", b"mp4"), ("hls/720p/index.m3u8", b"#EXTM3U"), ("hls/720p/seg-0.m4s", b"segment")];
    for (rel, bytes) in files {
        std::fs::create_dir_all(src.join(rel).parent().expect("parent")).expect("mkdir");
        std::fs::write(src.join(rel), bytes).expect("write");
    }
    let keys = storage.put_dir("generations/x/", src).await.expect("put_dir");
    assert_eq!(
        keys,
        ["generations/x/hls/720p/index.m3u8", "generations/x/hls/720p/seg-0.m4s", "generations/x/video.mp4"]
    );
    for (rel, bytes) in files {
        let (status, got) =
            public_get(&storage.public_url("http://unused", &format!("generations/x/{rel}"))).await;
        assert_eq!((status, got.as_slice()), (StatusCode::OK, bytes), "{rel}");
    }
    // A sibling whose name extends the prefix is not below it.
    storage.put_file("generations/xy/poster.png", &src.join("video.mp4")).await.expect("put");

    assert_eq!(storage.delete_prefix("generations/x/").await.expect("delete"), 3);
    for key in &keys {
        assert_eq!(storage.head(key).await.expect("head"), None, "{key}");
    }
    assert_eq!(storage.head("generations/xy/poster.png").await.expect("head"), Some(3));
    // With the slash only: s3s-fs keeps the emptied folder `generations/x`
    // and fails (500) a DELETE of that name, which S3 answers with 204.
    assert_eq!(storage.delete_prefix("generations/x/").await.expect("delete"), 0);
    assert_eq!(storage.delete_prefix("generations/xy/poster.png").await.expect("delete"), 1);
    assert_eq!(storage.head("generations/xy/poster.png").await.expect("head"), None);
}

const CREATE: &str = "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id } }";
const GENERATION: &str =
    "query($id: ID!) { generation(id: $id) { status error output { hlsUrl videoUrl posterUrl } } }";

/// Mage renders, transcodes and uploads to the bucket; players read the
/// ladder from the bucket's public URL.
#[tokio::test(flavor = "multi_thread")]
async fn a_video_generation_with_bucket_storage_plays_from_the_bucket() {
    let s3 = TestS3::start().await;
    let app = TestApp::start_with_storage(s3.storage()).await;
    let _workers = app.start_workers().await;
    let (token, _) = app.register("bucket@example.com").await;
    let input = json!({ "model": "synth-video", "prompt": "a harbour at night", "resolution": "R480P",
                        "durationSeconds": 2 });
    let created = app.gql(CREATE, json!({ "i": input }), Some(&token)).await;
    let id =
        created["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("{created}")).to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    let g = loop {
        let res = app.gql(GENERATION, json!({ "id": id }), Some(&token)).await;
        let g = res["data"]["generation"].clone();
        if matches!(g["status"].as_str(), Some("SUCCEEDED" | "FAILED" | "CANCELED")) {
            break g;
        }
        assert!(Instant::now() < deadline, "still not finished: {res}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(g["status"], "SUCCEEDED", "{g}");

    let bucket_media = s3.settings().base_url.expect("base url");
    let hls = g["output"]["hlsUrl"].as_str().expect("hlsUrl");
    assert!(hls.starts_with(&format!("{bucket_media}/generations/{id}/")), "{hls} is not in the bucket");
    let (status, master) = public_get(hls).await;
    assert_eq!(status, StatusCode::OK);
    let master = String::from_utf8(master).expect("text");
    assert!(master.contains("#EXT-X-STREAM-INF"), "{master}");
    for url in [g["output"]["videoUrl"].as_str(), g["output"]["posterUrl"].as_str()] {
        let url = url.expect("url");
        assert!(url.starts_with(&bucket_media), "{url}");
        assert_eq!(public_get(url).await.0, StatusCode::OK, "{url}");
    }

    let probe = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-protocol_whitelist", "http,tcp,hls,file"])
        .args(["-show_entries", "format=duration", "-of", "default=nw=1:nk=1", hls])
        .output()
        .await
        .expect("ffprobe");
    let duration: f64 = String::from_utf8_lossy(&probe.stdout).trim().parse().unwrap_or(0.0);
    assert!(
        (duration - 2.0).abs() < 0.6,
        "ffprobe read {duration} s from {hls}: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    // Local storage was not used.
    assert_eq!(std::fs::read_dir(app.media_dir()).expect("media dir").count(), 0);
}
