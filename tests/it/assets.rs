//! Staged uploads against real PostgreSQL, Redis and local storage: the
//! signed PUT route, the size cap, completeUpload's checks, the quota under
//! concurrency, deletion, and generations' inputs.

use crate::support::{TestApp, code};
use serde_json::{Value, json};

const CREATE_UPLOAD: &str = "mutation($i: CreateUploadInput!) { createUpload(input: $i) {
    url method headers { name value } expiresAt
    asset { id kind status filename contentType byteSize error url } } }";

const COMPLETE: &str = "mutation($id: ID!) { completeUpload(id: $id) { id status error byteSize } }";

async fn create_upload(app: &TestApp, token: &str, filename: &str, content_type: &str, size: usize) -> Value {
    app.gql(
        CREATE_UPLOAD,
        json!({ "i": { "filename": filename, "contentType": content_type, "byteSize": size } }),
        Some(token),
    )
    .await
}

async fn put(url: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new().put(url).body(body).send().await.expect("PUT")
}

fn upload_file(app: &TestApp, asset_id: &str) -> std::path::PathBuf {
    app.media_dir().join("uploads").join(asset_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_put_to_the_signed_url_are_checked_by_complete_upload() {
    let app = TestApp::start().await;
    let (token, _) = app.register("up@example.com").await;
    let bytes = vec![7u8; 5000];
    let res = create_upload(&app, &token, "../../holiday.jpg", "image/jpeg", bytes.len()).await;
    let target = &res["data"]["createUpload"];
    assert_eq!(target["method"], "PUT", "{res}");
    assert_eq!(target["asset"]["status"], "AWAITING_UPLOAD");
    assert_eq!(target["asset"]["kind"], "IMAGE");
    assert_eq!(target["asset"]["filename"], "holiday.jpg", "only the last path segment is kept");
    assert_eq!(target["asset"]["url"], Value::Null);
    let id = target["asset"]["id"].as_str().expect("id").to_owned();
    let url = target["url"].as_str().expect("url").to_owned();

    // Before any byte: completeUpload says what is missing.
    let early = app.gql(COMPLETE, json!({ "id": id }), Some(&token)).await;
    assert_eq!(code(&early), "BAD_USER_INPUT", "{early}");

    // A forged signature or another asset's URL is refused.
    let forged = url.replace("signature=", "signature=00");
    assert_eq!(put(&forged, bytes.clone()).await.status(), 403);

    let res = put(&url, bytes.clone()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(std::fs::read(upload_file(&app, &id)).expect("stored"), bytes);
    // Raw bytes are never served.
    let raw = reqwest::get(app.url(&format!("/media/uploads/{id}"))).await.expect("GET");
    assert_eq!(raw.status(), 404);

    let done = app.gql(COMPLETE, json!({ "id": id }), Some(&token)).await;
    assert_eq!(done["data"]["completeUpload"]["status"], "PROCESSING", "{done}");
    // Twice is the same asset, and a second PUT is refused.
    let again = app.gql(COMPLETE, json!({ "id": id }), Some(&token)).await;
    assert_eq!(again["data"]["completeUpload"]["status"], "PROCESSING", "{again}");
    assert_eq!(put(&url, bytes).await.status(), 409);

    // Another user sees nothing of it.
    let (other, _) = app.register("other@example.com").await;
    let res = app.gql(COMPLETE, json!({ "id": id }), Some(&other)).await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");
    let res = app.gql("query($id: ID!) { asset(id: $id) { id } }", json!({ "id": id }), Some(&other)).await;
    assert_eq!(res["data"]["asset"], Value::Null, "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_larger_than_declared_is_rejected_and_nothing_is_kept() {
    let app = TestApp::start().await;
    let (token, _) = app.register("big@example.com").await;
    let used = || async {
        let mut conn = app.conn().await;
        crate::support::scalar_i64(&mut conn, "SELECT storage_used_bytes AS n FROM users").await
    };

    // Declared 1,000 bytes, sent 4,000 without a Content-Length: the stream
    // is cut at the first byte too many.
    let res = create_upload(&app, &token, "a.png", "image/png", 1000).await;
    let id = res["data"]["createUpload"]["asset"]["id"].as_str().expect("id").to_owned();
    let url = res["data"]["createUpload"]["url"].as_str().expect("url").to_owned();
    assert_eq!(used().await, 1000);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..4).map(|_| Ok(vec![1u8; 1000])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let res = reqwest::Client::new().put(&url).body(body).send().await.expect("PUT");
    assert_eq!(res.status(), 413);
    assert!(!upload_file(&app, &id).exists(), "nothing of it stored");
    let asset = app
        .gql("query($id: ID!) { asset(id: $id) { status error } }", json!({ "id": id }), Some(&token))
        .await;
    assert_eq!(asset["data"]["asset"]["status"], "REJECTED", "{asset}");
    assert!(asset["data"]["asset"]["error"].as_str().expect("error").contains("larger than the 1000 bytes"));
    assert_eq!(used().await, 0, "the quota is given back");

    // With a Content-Length over the declared size it is refused at once.
    let res = create_upload(&app, &token, "b.png", "image/png", 10).await;
    let url = res["data"]["createUpload"]["url"].as_str().expect("url").to_owned();
    assert_eq!(put(&url, vec![0u8; 11]).await.status(), 413);

    // Fewer bytes than declared: completeUpload rejects it and deletes them.
    let res = create_upload(&app, &token, "c.png", "image/png", 100).await;
    let id = res["data"]["createUpload"]["asset"]["id"].as_str().expect("id").to_owned();
    let url = res["data"]["createUpload"]["url"].as_str().expect("url").to_owned();
    assert_eq!(put(&url, vec![0u8; 60]).await.status(), 200);
    let done = app.gql(COMPLETE, json!({ "id": id }), Some(&token)).await;
    assert_eq!(done["data"]["completeUpload"]["status"], "REJECTED", "{done}");
    assert!(!upload_file(&app, &id).exists());
    assert_eq!(used().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_declarations_get_clear_errors() {
    let app = TestApp::start().await;
    let (token, _) = app.register("bad@example.com").await;
    let res = create_upload(&app, &token, "x.zip", "application/zip", 10).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    assert_eq!(res["errors"][0]["extensions"]["field"], "contentType");
    let res = create_upload(&app, &token, "x.png", "image/png", 21 * 1024 * 1024).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    assert_eq!(res["errors"][0]["extensions"]["field"], "byteSize");
    let res = create_upload(&app, &token, "", "image/png", 10).await;
    assert_eq!(res["errors"][0]["extensions"]["field"], "filename", "{res}");
    let res = app
        .gql(
            CREATE_UPLOAD,
            json!({ "i": { "filename": "x.png", "contentType": "image/png", "byteSize": 10 } }),
            None,
        )
        .await;
    assert_eq!(code(&res), "UNAUTHENTICATED", "{res}");
    assert_eq!(app.count("assets").await, 0, "nothing half-done");
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_uploads_cannot_pass_the_quota_together() {
    let app = TestApp::start_with(|s| {
        s.assets.quota_bytes = 10_000_000;
        s.assets.uploads_per_minute = 100;
    })
    .await;
    let (token, _) = app.register("quota@example.com").await;
    // Each 1 MB: 20 at once, only 10 fit.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (app_url, token) = (app.url("/graphql"), token.clone());
            tokio::spawn(async move {
                let body = json!({ "query": CREATE_UPLOAD, "variables": { "i": {
                    "filename": format!("{i}.mp4"), "contentType": "video/mp4", "byteSize": 1_000_000 } } });
                let res: Value = reqwest::Client::new()
                    .post(app_url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .expect("post")
                    .json()
                    .await
                    .expect("json");
                res
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let res = t.await.expect("task");
        if res["data"]["createUpload"].is_object() {
            ok += 1;
        } else {
            assert_eq!(code(&res), "QUOTA_EXCEEDED", "{res}");
            let ext = &res["errors"][0]["extensions"];
            assert_eq!(ext["limitBytes"], 10_000_000);
            assert!(ext["usedBytes"].as_i64().expect("usedBytes") > 9_000_000, "{res}");
            refused += 1;
        }
    }
    assert_eq!((ok, refused), (10, 10));
    assert_eq!(app.count("assets").await, 10);

    // Deleting one gives its bytes back at once.
    let list = app.gql("{ assets(first: 1) { edges { node { id } } } }", json!({}), Some(&token)).await;
    let id = list["data"]["assets"]["edges"][0]["node"]["id"].as_str().expect("id").to_owned();
    let del = app
        .gql("mutation($id: ID!) { deleteAsset(id: $id) { id } }", json!({ "id": id }), Some(&token))
        .await;
    assert_eq!(del["data"]["deleteAsset"]["id"], id.as_str(), "{del}");
    let res = create_upload(&app, &token, "again.mp4", "video/mp4", 1_000_000).await;
    assert!(res["data"]["createUpload"].is_object(), "{res}");
    let list = app.gql("{ assets(first: 50) { edges { node { id } } } }", json!({}), Some(&token)).await;
    assert_eq!(list["data"]["assets"]["edges"].as_array().expect("edges").len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_rate_limited_per_user() {
    let app = TestApp::start_with(|s| s.assets.uploads_per_minute = 3).await;
    let (token, _) = app.register("rate@example.com").await;
    for _ in 0..3 {
        let res = create_upload(&app, &token, "a.jpg", "image/jpeg", 10).await;
        assert!(res["data"]["createUpload"].is_object(), "{res}");
    }
    let res = create_upload(&app, &token, "a.jpg", "image/jpeg", 10).await;
    assert_eq!(code(&res), "RATE_LIMITED", "{res}");
}

#[tokio::test(flavor = "multi_thread")]
async fn models_say_what_they_take_and_generations_check_it() {
    let app = TestApp::start().await;
    let (token, _) = app.register("gen@example.com").await;
    let models = app.gql("{ models { id inputs } }", json!({}), None).await;
    let models = models["data"]["models"].as_array().expect("models").clone();
    let inputs_of = |id: &str| models.iter().find(|m| m["id"] == id).map(|m| m["inputs"].clone());
    assert_eq!(inputs_of("synth-edit"), Some(json!(["IMAGE"])));
    assert_eq!(inputs_of("synth-i2v"), Some(json!(["IMAGE"])));
    assert_eq!(inputs_of("synth-video"), Some(json!([])));

    const CREATE: &str =
        "mutation($i: CreateGenerationInput!) { createGeneration(input: $i) { id inputs { id } } }";
    let edit = |inputs: Value| {
        json!({ "i": { "model": "synth-edit", "prompt": "make it blue",
        "resolution": "R480P", "inputs": inputs } })
    };
    // Missing input.
    let res = app.gql(CREATE, edit(json!([])), Some(&token)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    assert_eq!(res["errors"][0]["extensions"]["field"], "inputs");
    // Another user's asset is as good as none.
    let (other, _) = app.register("other@example.com").await;
    let theirs = create_upload(&app, &other, "p.jpg", "image/jpeg", 10).await;
    let theirs = theirs["data"]["createUpload"]["asset"]["id"].clone();
    let res = app.gql(CREATE, edit(json!([theirs])), Some(&token)).await;
    assert_eq!(code(&res), "NOT_FOUND", "{res}");
    // One's own, not READY yet.
    let mine = create_upload(&app, &token, "p.jpg", "image/jpeg", 10).await;
    let mine = mine["data"]["createUpload"]["asset"]["id"].clone();
    let res = app.gql(CREATE, edit(json!([mine])), Some(&token)).await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    // An input to a text-only model.
    let res = app
        .gql(
            CREATE,
            json!({ "i": { "model": "synth-image", "prompt": "x", "resolution": "R480P", "inputs": [mine] } }),
            Some(&token),
        )
        .await;
    assert_eq!(code(&res), "BAD_USER_INPUT", "{res}");
    assert_eq!(app.count("generations").await, 0, "nothing created, nothing held");
    let credits = app.gql("{ me { credits { balance held } } }", json!({}), Some(&token)).await;
    assert_eq!(credits["data"]["me"]["credits"]["held"], 0);
}
