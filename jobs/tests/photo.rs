//! The synthetic workflows that start from the user's photo, against the
//! real ffmpeg: the outputs are compared with the photo through small
//! downscales ffmpeg makes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use mage_jobs::backend::synthetic::{SyntheticBackend, WORKFLOW_ANIMATE, WORKFLOW_EDIT, WORKFLOW_IMAGE};
use mage_jobs::backend::{MediaKind, RenderBackend, RenderError, RenderEvent, RenderOutput, RenderRequest};
use mage_jobs::media;
use tempfile::TempDir;

const LIMIT: Duration = Duration::from_secs(120);

fn request(
    work_dir: &Path,
    workflow: &str,
    kind: MediaKind,
    prompt: &str,
    inputs: &[&Path],
) -> RenderRequest {
    RenderRequest {
        generation_id: uuid::Uuid::new_v4(),
        job_id: uuid::Uuid::new_v4().to_string(),
        model: "synth-photo".into(),
        workflow: workflow.into(),
        kind,
        prompt: prompt.into(),
        negative_prompt: None,
        width: 640,
        height: 360,
        duration_seconds: (kind == MediaKind::Video).then_some(3),
        fps: 24,
        seed: 7,
        work_dir: work_dir.to_path_buf(),
        inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
        timeout: std::time::Duration::from_secs(600),
    }
}

async fn render(backend: &SyntheticBackend, req: RenderRequest) -> Result<RenderOutput, RenderError> {
    tokio::time::timeout(LIMIT, async {
        let job = backend.submit(req).await?;
        let mut events = backend.events(&job);
        while let Some(ev) = events.next().await {
            match ev? {
                RenderEvent::Progress { .. } | RenderEvent::Located(_) => {}
                RenderEvent::Finished(out) => return Ok(out),
            }
        }
        panic!("the events ended without an outcome");
    })
    .await
    .expect("render within the limit")
}

/// Runs ffmpeg on `input` and returns the raw frame it writes to stdout.
async fn ffmpeg_raw(before_input: &[&str], input: &Path, filters: &str) -> Vec<u8> {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(before_input)
        .arg("-i")
        .arg(input)
        .args(["-vf", filters, "-frames:v", "1", "-f", "rawvideo", "-"])
        .output()
        .await
        .expect("ffmpeg runs");
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// 16×16 gray thumbnail of the frame at `at` seconds.
async fn thumb_at(path: &Path, at: f64) -> Vec<u8> {
    let at = format!("{at}");
    let t = ffmpeg_raw(&["-ss", &at], path, "scale=16:16:flags=area,format=gray").await;
    assert_eq!(t.len(), 256);
    t
}

/// 16×16 RGB thumbnail of what covers 640×360 in the picture (the crop
/// both workflows make).
async fn rgb_thumb(path: &Path) -> Vec<u8> {
    let filters = "scale=640:360:force_original_aspect_ratio=increase,crop=640:360,\
                   scale=16:16:flags=area,format=rgb24";
    let t = ffmpeg_raw(&[], path, filters).await;
    assert_eq!(t.len(), 768);
    t
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len() as f64
}

/// Writes a still from a lavfi source as a JPEG.
async fn still(dir: &Path, name: &str, source: &str) -> PathBuf {
    let path = dir.join(name);
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i", source])
        .args(["-frames:v", "1", "-q:v", "3"])
        .arg(&path)
        .output()
        .await
        .expect("ffmpeg runs");
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    path
}

/// A 4:3 "photo" (so both workflows crop it) and a picture unlike it.
async fn photos(dir: &Path) -> (PathBuf, PathBuf) {
    let photo = still(dir, "photo: 1.jpg", "testsrc2=s=960x720").await;
    let other = still(dir, "other.jpg", "mandelbrot=s=960x720:start_scale=0.5").await;
    (photo, other)
}

#[tokio::test]
async fn image_edit_transforms_the_photo_at_the_requested_size() {
    let dir = TempDir::new().unwrap();
    let (photo, _) = photos(dir.path()).await;
    let backend = SyntheticBackend::new();
    let before = rgb_thumb(&photo).await;
    for prompt in ["a watercolour of this", "make it pop", "black and white please"] {
        let work = dir.path().join(prompt.replace(' ', "-"));
        let out = render(&backend, request(&work, WORKFLOW_EDIT, MediaKind::Image, prompt, &[&photo])).await;
        let out = out.unwrap_or_else(|e| panic!("{prompt}: {e}"));
        assert_eq!(out.files, [work.join("render.png")]);
        let p = media::probe(&out.files[0]).await.unwrap();
        assert_eq!((p.width, p.height, p.codec.as_str()), (640, 360, "png"), "{prompt}");
        let after = rgb_thumb(&out.files[0]).await;
        let diff = mean_abs_diff(&before, &after);
        assert!(diff > 8.0, "{prompt}: the edit looks like the photo (mean diff {diff:.1})");
        if prompt.contains("black and white") {
            let colour = after.chunks(3).map(|px| px.iter().max().unwrap() - px.iter().min().unwrap());
            assert!(colour.max().unwrap() < 24, "{prompt}: not gray: {after:?}");
        }
    }
}

#[tokio::test]
async fn image_to_video_starts_from_the_photo_and_lasts_as_asked() {
    let dir = TempDir::new().unwrap();
    let (photo, other) = photos(dir.path()).await;
    let backend = SyntheticBackend::new();
    let work = dir.path().join("work");
    let req = request(&work, WORKFLOW_ANIMATE, MediaKind::Video, "slowly towards the sky", &[&photo]);
    let out = render(&backend, req).await.unwrap();
    assert_eq!(out.files, [work.join("render.mp4")]);
    let p = media::probe(&out.files[0]).await.unwrap();
    assert_eq!((p.width, p.height, p.codec.as_str()), (640, 360, "h264"));
    assert!((p.duration_seconds - 3.0).abs() < 0.15, "{p:?}");

    let first = thumb_at(&out.files[0], 0.0).await;
    let cover =
        "scale=640:360:force_original_aspect_ratio=increase,crop=640:360,scale=16:16:flags=area,format=gray";
    let photo_thumb = ffmpeg_raw(&[], &photo, cover).await;
    let other_thumb = ffmpeg_raw(&[], &other, cover).await;
    let near = mean_abs_diff(&first, &photo_thumb);
    let far = mean_abs_diff(&first, &other_thumb);
    eprintln!("first frame vs photo {near:.1}, vs another picture {far:.1}");
    assert!(near < 10.0, "the first frame is not the photo (mean diff {near:.1})");
    assert!(
        far > 3.0 * near && far > 20.0,
        "the comparison cannot tell pictures apart ({near:.1} vs {far:.1})"
    );
    let last = thumb_at(&out.files[0], 2.9).await;
    let moved = mean_abs_diff(&first, &last);
    assert!(moved > 4.0, "the photo does not move (mean diff {moved:.1})");
}

#[tokio::test]
async fn photo_workflows_refuse_the_wrong_number_of_inputs() {
    let dir = TempDir::new().unwrap();
    let (photo, other) = photos(dir.path()).await;
    let backend = SyntheticBackend::new();
    let work = dir.path().join("work");
    let cases = [
        request(&work, WORKFLOW_EDIT, MediaKind::Image, "x", &[]),
        request(&work, WORKFLOW_EDIT, MediaKind::Image, "x", &[&photo, &other]),
        request(&work, WORKFLOW_ANIMATE, MediaKind::Video, "x", &[]),
        request(&work, WORKFLOW_IMAGE, MediaKind::Image, "x", &[&photo]),
        request(&work, WORKFLOW_EDIT, MediaKind::Image, "x", &[&dir.path().join("gone.jpg")]),
        request(&work, WORKFLOW_EDIT, MediaKind::Video, "x", &[&photo]),
    ];
    for req in cases {
        let what = format!("{} with {:?} as {:?}", req.workflow, req.inputs, req.kind);
        match backend.submit(req).await {
            Err(RenderError::Failed { user_message, detail }) => {
                assert!(!user_message.contains('/'), "{what}: no paths for the user: {user_message}");
                eprintln!("{what}: {user_message} ({detail})");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(!work.exists(), "nothing ran");
}

#[tokio::test]
async fn a_broken_photo_fails_the_render() {
    let dir = TempDir::new().unwrap();
    let backend = SyntheticBackend::new();
    // A playlist naming a local file, with and without an image's name.
    for name in ["photo.jpg", "photo"] {
        let fake = dir.path().join(name);
        std::fs::write(&fake, b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n").unwrap();
        let work = dir.path().join(format!("work-{name}"));
        let req = request(&work, WORKFLOW_EDIT, MediaKind::Image, "x", &[&fake]);
        let err = render(&backend, req).await.unwrap_err();
        assert!(matches!(err, RenderError::Failed { .. }), "{name}: {err:?}");
        assert!(!work.join("render.png").exists(), "{name}");
    }
}
