//! The ComfyUI backend with the user's input images, against the fake
//! ComfyUI: uploads before the prompt, names that never collide, and the
//! refusal of a prompt whose image the server does not have.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mage_fakes::comfyui::FakeComfy;
use mage_jobs::backend::comfyui::ComfyBackend;
use mage_jobs::backend::comfyui::workflow::Templates;
use mage_jobs::backend::{MediaKind, RenderBackend, RenderError, RenderEvent, RenderOutput, RenderRequest};
use mage_jobs::media;
use serde_json::Value;
use tempfile::TempDir;

const LIMIT: Duration = Duration::from_secs(60);

async fn setup() -> (FakeComfy, ComfyBackend) {
    let fake = FakeComfy::start().await;
    fake.set_step_delay(Duration::from_millis(2));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/comfyui");
    let templates = Templates::load(&dir).expect("the shipped templates load");
    let backend = ComfyBackend::new(&fake.url(), Arc::new(templates)).expect("a backend");
    (fake, backend)
}

fn request(work: &Path, workflow: &str, kind: MediaKind, inputs: &[&Path]) -> RenderRequest {
    RenderRequest {
        generation_id: uuid::Uuid::new_v4(),
        job_id: uuid::Uuid::new_v4().to_string(),
        model: "comfy-photo".into(),
        workflow: workflow.into(),
        kind,
        prompt: "the same scene at dusk".into(),
        negative_prompt: None,
        width: 832,
        height: 480,
        duration_seconds: (kind == MediaKind::Video).then_some(2),
        fps: 16,
        seed: 3,
        work_dir: work.join(uuid::Uuid::new_v4().to_string()),
        inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
        timeout: std::time::Duration::from_secs(600),
    }
}

async fn run(backend: &ComfyBackend, req: RenderRequest) -> Result<RenderOutput, RenderError> {
    tokio::time::timeout(LIMIT, async {
        let job = backend.submit(req).await?;
        let mut events = backend.events(&job);
        while let Some(ev) = events.next().await {
            if let RenderEvent::Finished(out) = ev? {
                return Ok(out);
            }
        }
        panic!("the events ended without an outcome");
    })
    .await
    .expect("render within the limit")
}

/// A JPEG from a lavfi source, at `dir/name`.
async fn jpeg(dir: &Path, name: &str, source: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("a folder for the picture");
    let path = dir.join(name);
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i", source])
        .args(["-frames:v", "1"])
        .arg(&path)
        .output()
        .await
        .expect("ffmpeg runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

/// What the submitted prompt's `LoadImage` nodes name.
fn loaded_images(fake: &FakeComfy, job_id: &str) -> Vec<String> {
    let submission = fake.submissions().into_iter().find(|s| s.prompt_id == job_id).expect("submitted");
    let nodes = submission.prompt.as_object().cloned().unwrap_or_default();
    nodes
        .values()
        .filter(|n| n["class_type"] == "LoadImage")
        .map(|n| n["inputs"]["image"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn image_edit_and_image_to_video_run_on_the_uploaded_photo() {
    let (fake, backend) = setup().await;
    let dir = TempDir::new().unwrap();
    let photo = jpeg(dir.path(), "photo.jpg", "testsrc2=s=640x480").await;
    let bytes = std::fs::read(&photo).unwrap();

    let cases = [("image-edit", MediaKind::Image, "png"), ("image-to-video", MediaKind::Video, "h264")];
    for (workflow, kind, codec) in cases {
        let req = request(dir.path(), workflow, kind, &[&photo]);
        let (gid, job_id) = (req.generation_id, req.job_id.clone());
        let out = run(&backend, req).await.unwrap_or_else(|e| panic!("{workflow}: {e}"));
        let p = media::probe(&out.files[0]).await.unwrap();
        assert_eq!((p.width, p.height, p.codec.as_str()), (832, 480, codec), "{workflow}");
        let name = format!("mage-{gid}-0.jpg");
        assert_eq!(loaded_images(&fake, &job_id), std::slice::from_ref(&name), "{workflow}");
        assert_eq!(fake.uploads().get(&name), Some(&bytes), "{workflow}: the photo's bytes were uploaded");
    }
}

#[tokio::test]
async fn generations_with_same_named_inputs_do_not_collide() {
    let (fake, backend) = setup().await;
    let dir = TempDir::new().unwrap();
    let a = jpeg(&dir.path().join("a"), "photo.jpg", "testsrc2=s=320x240").await;
    let b = jpeg(&dir.path().join("b"), "photo.jpg", "mandelbrot=s=320x240").await;
    let (ra, rb) = (
        request(dir.path(), "image-edit", MediaKind::Image, &[&a]),
        request(dir.path(), "image-edit", MediaKind::Image, &[&b]),
    );
    let (ja, jb) = (ra.job_id.clone(), rb.job_id.clone());
    let retry = RenderRequest { job_id: uuid::Uuid::new_v4().to_string(), ..ra.clone() };
    let (oa, ob) = tokio::join!(run(&backend, ra), run(&backend, rb));
    oa.unwrap();
    ob.unwrap();
    let uploads = fake.uploads();
    for (job, input) in [(&ja, &a), (&jb, &b)] {
        let names = loaded_images(&fake, job);
        assert_eq!(names.len(), 1);
        assert_eq!(uploads.get(&names[0]), Some(&std::fs::read(input).unwrap()), "{job} loads its own photo");
    }
    assert_ne!(loaded_images(&fake, &ja), loaded_images(&fake, &jb));

    // The next attempt of a generation replaces its own upload.
    let jr = retry.job_id.clone();
    run(&backend, retry).await.unwrap();
    assert_eq!(loaded_images(&fake, &jr), loaded_images(&fake, &ja));
    assert_eq!(fake.uploads().len(), 2, "{:?}", fake.uploads().keys());
}

#[tokio::test]
async fn the_fake_renames_on_a_clash_unless_told_to_overwrite() {
    let (fake, _) = setup().await;
    let http = reqwest::Client::new();
    let upload = |bytes: &'static [u8], overwrite: Option<&'static str>| {
        let http = http.clone();
        let url = format!("{}/upload/image", fake.url());
        async move {
            let part = reqwest::multipart::Part::bytes(bytes).file_name("photo.png");
            let mut form = reqwest::multipart::Form::new().part("image", part).text("type", "input");
            if let Some(o) = overwrite {
                form = form.text("overwrite", o);
            }
            let answer: Value = http.post(url).multipart(form).send().await.unwrap().json().await.unwrap();
            assert_eq!((&answer["subfolder"], &answer["type"]), (&Value::from(""), &Value::from("input")));
            answer["name"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(upload(b"one", None).await, "photo.png");
    assert_eq!(upload(b"two", None).await, "photo (1).png");
    assert_eq!(upload(b"two", None).await, "photo (1).png", "the same bytes are the same upload");
    assert_eq!(upload(b"three", Some("false")).await, "photo (2).png");
    assert_eq!(upload(b"four", Some("true")).await, "photo.png");
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 3);
    assert_eq!(uploads["photo.png"], b"four");
    // No image field: refused as ComfyUI does.
    let form = reqwest::multipart::Form::new().text("type", "input");
    let resp = http.post(format!("{}/upload/image", fake.url())).multipart(form).send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn a_prompt_naming_an_image_the_server_lacks_fails_with_the_nodes_message() {
    let (fake, backend) = setup().await;
    let dir = TempDir::new().unwrap();
    let photo = jpeg(dir.path(), "photo.jpg", "testsrc2=s=320x240").await;
    fake.discard_uploads(true);
    let req = request(dir.path(), "image-to-video", MediaKind::Video, &[&photo]);
    let gid = req.generation_id;
    match backend.submit(req).await {
        Err(RenderError::Failed { user_message, detail }) => {
            let expected = format!("LoadImage: image - Invalid image file: mage-{gid}-0.jpg");
            assert!(user_message.ends_with(&expected), "{user_message}");
            assert!(detail.contains("prompt_outputs_failed_validation"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(fake.submissions().is_empty(), "nothing was queued");

    // The refusal itself, as ComfyUI words it.
    let graph = serde_json::json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "nowhere.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    });
    let resp = reqwest::Client::new()
        .post(format!("{}/prompt", fake.url()))
        .json(&serde_json::json!({"prompt": graph}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
    let node = &body["node_errors"]["1"];
    assert_eq!(node["class_type"], "LoadImage");
    assert_eq!(node["dependent_outputs"], serde_json::json!(["2"]));
    assert_eq!(node["errors"][0]["type"], "custom_validation_failed");
    assert_eq!(node["errors"][0]["details"], "image - Invalid image file: nowhere.png");
}

#[tokio::test]
async fn input_counts_that_do_not_fit_the_template_fail_before_anything_is_sent() {
    let (fake, backend) = setup().await;
    let dir = TempDir::new().unwrap();
    let photo = jpeg(dir.path(), "photo.jpg", "testsrc2=s=320x240").await;
    let cases = [
        request(dir.path(), "image-edit", MediaKind::Image, &[]),
        request(dir.path(), "image-to-video", MediaKind::Video, &[&photo, &photo]),
        request(dir.path(), "text-to-image", MediaKind::Image, &[&photo]),
    ];
    for req in cases {
        let what = format!("{} with {} inputs", req.workflow, req.inputs.len());
        assert!(matches!(backend.submit(req).await, Err(RenderError::Failed { .. })), "{what}");
    }
    let not_an_image = dir.path().join("photo.png");
    std::fs::write(&not_an_image, "#EXTM3U\nfile:///etc/passwd\n").unwrap();
    let req = request(dir.path(), "image-edit", MediaKind::Image, &[&not_an_image]);
    assert!(matches!(backend.submit(req).await, Err(RenderError::Failed { .. })));
    assert!(fake.uploads().is_empty() && fake.submissions().is_empty());
}
