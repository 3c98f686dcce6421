//! Generations made from the user's own photo, end to end: upload, ingest,
//! `synth-edit` and `synth-i2v` on the synthetic backend, charged what
//! `quote` said.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::ingest::{settled, upload};
use crate::support::TestApp;
use serde_json::{Value, json};

const CREATE: &str =
    "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id cost inputs { id } } }";
const QUOTE: &str = "query($i: CreateGenerationInput!) { quote(input: $i) }";
const GENERATION: &str = "query($id: ID!) { generation(id: $id) { status error
    output { imageUrl videoUrl hlsUrl width height durationSeconds } inputs { id status } } }";

async fn finished(app: &TestApp, token: &str, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let res = app.gql(GENERATION, json!({ "id": id }), Some(token)).await;
        let g = res["data"]["generation"].clone();
        if matches!(g["status"].as_str(), Some("SUCCEEDED" | "FAILED" | "CANCELED")) {
            return g;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "still {g}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first picture of `input` (ffmpeg input arguments: a file or URL
/// after `-i`) as 16×16 gray pixels.
async fn thumbprint(input: &[&str]) -> Vec<u8> {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(input)
        .args(["-frames:v", "1"])
        .args(["-vf", "scale=16:16,format=gray", "-f", "rawvideo", "-"])
        .output()
        .await
        .expect("ffmpeg");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), 256);
    out.stdout
}

fn mean_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len() as f64
}

async fn balance(app: &TestApp, token: &str) -> i64 {
    let res = app.gql("{ me { credits { balance } } }", json!({}), Some(token)).await;
    res["data"]["me"]["credits"]["balance"].as_i64().expect("balance")
}

pub(crate) async fn make_photo(dir: &Path) -> Vec<u8> {
    let path = dir.join("photo.jpg");
    // Bands of colour, left to right: a photo whose downscale says where it is.
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi"])
        .args(["-i", "smptebars=s=1280x720", "-frames:v", "1", "-q:v", "2"])
        .arg(&path)
        .output()
        .await
        .expect("ffmpeg");
    assert!(out.status.success());
    std::fs::read(path).expect("photo")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_photo_is_edited_and_animated_and_charged_what_was_quoted() {
    let app = TestApp::start().await;
    let _workers = app.start_workers().await;
    let (token, _) = app.register("photos@example.com").await;
    let dir = tempfile::tempdir().expect("dir");
    let photo = make_photo(dir.path()).await;
    let asset = upload(&app, &token, "bars.jpg", "image/jpeg", photo).await;
    let ready = settled(&app, &token, &asset).await;
    assert_eq!(ready["status"], "READY", "{ready}");
    let original = thumbprint(&["-i", ready["url"].as_str().expect("url")]).await;

    let before = balance(&app, &token).await;
    let edit = json!({ "model": "synth-edit", "prompt": "black and white", "resolution": "R480P",
                       "inputs": [asset], "idempotencyKey": "edit-1" });
    let animate = json!({ "model": "synth-i2v", "prompt": "slow zoom", "resolution": "R480P",
                          "durationSeconds": 3, "inputs": [asset] });
    let mut quoted = 0;
    let mut ids = Vec::new();
    for input in [&edit, &animate] {
        let q = app.gql(QUOTE, json!({ "i": input }), Some(&token)).await;
        let price = q["data"]["quote"].as_i64().unwrap_or_else(|| panic!("{q}"));
        let created = app.gql(CREATE, json!({ "i": input }), Some(&token)).await;
        let g = &created["data"]["createGeneration"];
        assert_eq!(g["cost"], price, "{created}");
        assert_eq!(g["inputs"][0]["id"], asset.as_str());
        quoted += price;
        ids.push(g["id"].as_str().expect("id").to_owned());
    }

    // The same request again is the same generation; the same key with
    // other inputs is refused.
    let again = app.gql(CREATE, json!({ "i": edit }), Some(&token)).await;
    assert_eq!(again["data"]["createGeneration"]["id"], ids[0].as_str(), "{again}");
    let mut other = edit.clone();
    other["inputs"] = json!([]);
    let refused = app.gql(CREATE, json!({ "i": other }), Some(&token)).await;
    assert_eq!(crate::support::code(&refused), "CONFLICT", "{refused}");

    let edited = finished(&app, &token, &ids[0]).await;
    assert_eq!(edited["status"], "SUCCEEDED", "{edited}");
    let out = &edited["output"];
    assert_eq!((out["width"].as_i64(), out["height"].as_i64()), (Some(854), Some(480)));
    let edited_print = thumbprint(&["-i", out["imageUrl"].as_str().expect("image")]).await;
    assert!(mean_diff(&edited_print, &original) > 5.0, "the edit changed the photo");

    let animated = finished(&app, &token, &ids[1]).await;
    assert_eq!(animated["status"], "SUCCEEDED", "{animated}");
    let out = &animated["output"];
    let seconds = out["durationSeconds"].as_f64().expect("duration");
    assert!((seconds - 3.0).abs() < 0.3, "{seconds}");
    let first = thumbprint(&["-i", out["hlsUrl"].as_str().expect("hls")]).await;
    let near = mean_diff(&first, &original);
    assert!(near < 12.0, "the first frame is the photo: {near}");
    let unrelated = thumbprint(&["-f", "lavfi", "-i", "testsrc2=s=1280x720"]).await;
    let far = mean_diff(&first, &unrelated);
    assert!(far > 2.0 * near, "and not any picture: {far} vs {near}");

    assert_eq!(balance(&app, &token).await, before - quoted, "the balance dropped by the quotes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_input_keeps_its_bytes_until_its_generation_is_done() {
    let app = TestApp::start().await;
    let (token, _) = app.register("keep@example.com").await;
    let dir = tempfile::tempdir().expect("dir");
    let workers = app.start_workers().await;
    let asset = upload(&app, &token, "bars.jpg", "image/jpeg", make_photo(dir.path()).await).await;
    assert_eq!(settled(&app, &token, &asset).await["status"], "READY");
    drop(workers);

    // Queued with no worker running, then the input is deleted.
    let input = json!({ "model": "synth-edit", "prompt": "sepia", "resolution": "R480P", "inputs": [asset] });
    let created = app.gql(CREATE, json!({ "i": input }), Some(&token)).await;
    let id =
        created["data"]["createGeneration"]["id"].as_str().unwrap_or_else(|| panic!("{created}")).to_owned();
    let del = app
        .gql("mutation($id: ID!) { deleteAsset(id: $id) { id } }", json!({ "id": asset }), Some(&token))
        .await;
    assert_eq!(del["data"]["deleteAsset"]["id"], asset.as_str(), "{del}");
    let gone =
        app.gql("query($id: ID!) { asset(id: $id) { id } }", json!({ "id": asset }), Some(&token)).await;
    assert_eq!(gone["data"]["asset"], Value::Null, "hidden from its owner at once");
    // Nor can a new generation use it.
    let again = app.gql(CREATE, json!({ "i": input }), Some(&token)).await;
    assert_eq!(crate::support::code(&again), "NOT_FOUND", "{again}");

    let _workers = app.start_workers().await;
    let g = finished(&app, &token, &id).await;
    assert_eq!(g["status"], "SUCCEEDED", "rendered from the kept bytes: {g}");
    assert_eq!(g["inputs"][0]["id"], asset.as_str(), "the generation still shows its input");
}
