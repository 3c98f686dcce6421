//! The synthetic backend and the transcoder against the real ffmpeg: no
//! mocks, every file here was written and read back by ffmpeg/ffprobe.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mage_jobs::backend::synthetic::{SyntheticBackend, WORKFLOW_BROKEN, WORKFLOW_IMAGE, WORKFLOW_VIDEO};
use mage_jobs::backend::{MediaKind, RenderBackend, RenderError, RenderEvent, RenderOutput, RenderRequest};
use mage_jobs::media::{self, MediaError};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// Far above what any test here needs, so a hang fails instead of blocking
/// the suite.
const LIMIT: Duration = Duration::from_secs(120);

fn request(
    work_dir: &Path,
    workflow: &str,
    kind: MediaKind,
    size: (u32, u32),
    seconds: u32,
    prompt: &str,
) -> RenderRequest {
    RenderRequest {
        generation_id: uuid::Uuid::new_v4(),
        job_id: uuid::Uuid::new_v4().to_string(),
        model: "synth".into(),
        workflow: workflow.into(),
        kind,
        prompt: prompt.into(),
        negative_prompt: None,
        width: size.0,
        height: size.1,
        duration_seconds: (kind == MediaKind::Video).then_some(seconds),
        fps: 24,
        seed: 42,
        work_dir: work_dir.to_path_buf(),
        inputs: Vec::new(),
        timeout: std::time::Duration::from_secs(600),
    }
}

/// Submits and drains the events: the progress percentages seen and how
/// the job ended.
async fn render(
    backend: &SyntheticBackend,
    req: RenderRequest,
) -> (Vec<u8>, Result<RenderOutput, RenderError>) {
    tokio::time::timeout(LIMIT, async {
        let job = match backend.submit(req).await {
            Ok(job) => job,
            Err(e) => return (Vec::new(), Err(e)),
        };
        let mut events = backend.events(&job);
        let mut percents = Vec::new();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(RenderEvent::Progress { stage, percent }) => {
                    assert_eq!(stage, "rendering");
                    percents.push(percent);
                }
                Ok(RenderEvent::Located(id)) => panic!("the synthetic backend names its own jobs: {id}"),
                Ok(RenderEvent::Finished(out)) => {
                    assert!(events.next().await.is_none(), "nothing comes after Finished");
                    return (percents, Ok(out));
                }
                Err(e) => {
                    assert!(events.next().await.is_none(), "nothing comes after an error");
                    return (percents, Err(e));
                }
            }
        }
        panic!("the events ended without an outcome");
    })
    .await
    .expect("render within the limit")
}

fn assert_non_decreasing(percents: &[u8]) {
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "progress went backwards: {percents:?}");
}

/// Top-level MP4 box types in file order.
fn top_level_boxes(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size32 = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned();
        let size = match size32 {
            0 => bytes.len() - at,
            1 => u64::from_be_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes")) as usize,
            n => n,
        };
        out.push(kind);
        if size < 8 {
            break;
        }
        at += size;
    }
    out
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("a readable directory")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn video_renders_at_720p_and_transcodes_to_an_hls_ladder() {
    let work = TempDir::new().unwrap();
    let backend = SyntheticBackend::new();
    let health = backend.health().await.unwrap();
    assert!(health.healthy, "{health:?}");

    let started = Instant::now();
    let req =
        request(work.path(), WORKFLOW_VIDEO, MediaKind::Video, (1280, 720), 5, "a lighthouse in a storm");
    let (percents, out) = render(&backend, req).await;
    let render_time = started.elapsed();
    let out = out.unwrap();
    assert_non_decreasing(&percents);
    assert_eq!(percents.last(), Some(&100), "{percents:?}");
    assert!(percents.len() >= 3, "progress along the way, not only 0 and 100: {percents:?}");
    let source = &out.files[0];
    assert_eq!(source, &work.path().join("render.mp4"));
    assert_eq!(sorted_names(work.path()), ["render.mp4"], "only the output stays in the work dir");
    let p = media::probe(source).await.unwrap();
    assert_eq!((p.width, p.height, p.has_video, p.codec.as_str()), (1280, 720, true, "h264"));
    assert!((p.duration_seconds - 5.0).abs() < 0.2, "{p:?}");
    assert!(!p.has_audio);

    let out_dir = work.path().join("out");
    let started = Instant::now();
    let seen = std::sync::Mutex::new(Vec::new());
    let t =
        media::transcode_video(source, &out_dir, |p| seen.lock().unwrap().push(p), CancellationToken::new())
            .await
            .unwrap();
    let transcode_time = started.elapsed();
    eprintln!("720p 5 s: render {render_time:.2?}, transcode {transcode_time:.2?}");

    let seen = seen.into_inner().unwrap();
    assert_non_decreasing(&seen);
    assert_eq!(seen.last(), Some(&100));
    let names: Vec<&str> = t.renditions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["720p", "480p", "360p"]);
    let sizes: Vec<(u32, u32)> = t.renditions.iter().map(|r| (r.width, r.height)).collect();
    assert_eq!(sizes, [(1280, 720), (854, 480), (640, 360)]);
    assert!(t.renditions.windows(2).all(|w| w[0].bandwidth > w[1].bandwidth), "{:?}", t.renditions);
    assert!(t.renditions.iter().all(|r| r.bandwidth > 0));
    assert_eq!((t.width, t.height), (1280, 720));
    assert!((t.duration_seconds - 5.0).abs() < 0.2);
    for f in &t.files {
        assert!(out_dir.join(f).is_file(), "{f} is listed but missing");
    }
    for r in &t.renditions {
        assert!(t.files.contains(&r.playlist), "{} not among {:?}", r.playlist, t.files);
        let playlist = std::fs::read_to_string(out_dir.join(&r.playlist)).unwrap();
        assert!(playlist.contains("#EXT-X-PLAYLIST-TYPE:VOD") && playlist.contains("#EXT-X-ENDLIST"));
        assert!(playlist.contains("#EXT-X-MAP:URI="), "fMP4 segments have an init segment");
        // Keyframes every 2 s: three segments of 2 + 2 + 1 s.
        assert_eq!(playlist.matches("#EXTINF:").count(), 3, "{playlist}");
    }

    let master_text = std::fs::read_to_string(out_dir.join(&t.master_playlist)).unwrap();
    assert!(master_text.contains("RESOLUTION=1280x720") && master_text.contains("RESOLUTION=640x360"));
    assert_eq!(master_text.matches("BANDWIDTH=").count(), 3);
    let master = media::probe(&out_dir.join(&t.master_playlist)).await.unwrap();
    assert!((master.duration_seconds - 5.0).abs() < 0.2, "{master:?}");
    assert_eq!((master.width, master.height), (1280, 720));

    let poster = media::probe(&out_dir.join(&t.poster)).await.unwrap();
    assert_eq!((poster.width, poster.height, poster.codec.as_str()), (1280, 720, "mjpeg"));
    let mp4 = media::probe(&out_dir.join(&t.mp4)).await.unwrap();
    assert_eq!((mp4.width, mp4.height, mp4.codec.as_str()), (1280, 720, "h264"));
    assert!((mp4.duration_seconds - 5.0).abs() < 0.2);
    let boxes = top_level_boxes(&std::fs::read(out_dir.join(&t.mp4)).unwrap());
    let moov = boxes.iter().position(|b| b == "moov").expect("a moov box");
    let mdat = boxes.iter().position(|b| b == "mdat").expect("an mdat box");
    assert!(moov < mdat, "faststart puts moov before mdat: {boxes:?}");
}

#[tokio::test]
async fn a_broken_workflow_fails_with_a_message_for_the_user() {
    let work = TempDir::new().unwrap();
    let backend = SyntheticBackend::new();
    let req = request(work.path(), WORKFLOW_BROKEN, MediaKind::Video, (640, 360), 2, "anything");
    let (_, out) = render(&backend, req).await;
    match out {
        Err(RenderError::Failed { user_message, detail }) => {
            assert!(!user_message.is_empty());
            assert!(!user_message.contains('/') && !user_message.contains("ffmpeg"), "{user_message}");
            assert!(
                detail.contains("mage_no_such_filter"),
                "ffmpeg's own complaint is in the detail: {detail}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(sorted_names(work.path()).is_empty(), "nothing is left behind");
    assert!(backend.running_pids().is_empty());
}

#[tokio::test]
async fn requests_the_backend_cannot_honour_fail_before_ffmpeg_runs() {
    let work = TempDir::new().unwrap();
    let backend = SyntheticBackend::new();
    for req in [
        request(work.path(), "comfy-sdxl", MediaKind::Image, (640, 360), 0, "x"),
        request(work.path(), WORKFLOW_IMAGE, MediaKind::Video, (640, 360), 2, "x"),
        request(work.path(), WORKFLOW_VIDEO, MediaKind::Video, (641, 360), 2, "x"),
        request(work.path(), WORKFLOW_VIDEO, MediaKind::Video, (640, 360), 0, "x"),
    ] {
        match backend.submit(req).await {
            Err(RenderError::Failed { user_message, .. }) => assert!(!user_message.is_empty()),
            other => panic!("expected Failed, got {other:?}"),
        }
    }
    assert!(backend.running_pids().is_empty());
}

#[tokio::test]
async fn cancel_kills_ffmpeg_and_removes_the_partial_video() {
    let work = TempDir::new().unwrap();
    // Paced to a fifth of real time: the 10 s of video would take 50 s.
    let backend = SyntheticBackend::with_slowdown(5.0);
    let req = request(work.path(), WORKFLOW_VIDEO, MediaKind::Video, (640, 360), 10, "never finished");
    let job = backend.submit(req).await.unwrap();
    let mut events = backend.events(&job);
    let pids = backend.running_pids();
    assert_eq!(pids.len(), 1);
    let pid = pids[0];
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());

    // Mid-render: ffmpeg has encoded part of the video.
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, events.next()).await.unwrap() {
            Some(Ok(RenderEvent::Progress { percent, .. })) => {
                seen.push(percent);
                if percent > 0 {
                    break;
                }
            }
            other => panic!("expected progress, got {other:?}"),
        }
    }
    assert!(seen[0] == 0 && *seen.last().unwrap() < 50, "{seen:?}");
    assert!(work.path().join("render.mp4").is_file());

    let started = Instant::now();
    backend.cancel(&job).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "cancel waits for the kill, not for the render");
    assert!(!proc_dir.exists(), "ffmpeg {pid} is gone (killed and reaped)");
    assert!(backend.running_pids().is_empty());
    assert!(sorted_names(work.path()).is_empty(), "no render.mp4 (or prompt file) is left");

    let rest: Vec<_> = tokio::time::timeout(LIMIT, events.collect::<Vec<_>>()).await.unwrap();
    match rest.last() {
        Some(Err(RenderError::Canceled)) => {}
        other => panic!("the events end with Canceled, got {other:?} (all: {rest:?})"),
    }
    assert!(rest.iter().all(|e| !matches!(e, Ok(RenderEvent::Finished(_)))));

    // Idempotent, and still answers Canceled afterwards.
    backend.cancel(&job).await.unwrap();
    let late: Vec<_> = backend.events(&job).collect().await;
    assert!(matches!(late.as_slice(), [Err(RenderError::Canceled)]), "{late:?}");
}

#[tokio::test]
async fn probing_garbage_says_broken() {
    let dir = TempDir::new().unwrap();
    let garbage = dir.path().join("clip.mp4");
    let bytes: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&garbage, bytes).unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a video\n").unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    for path in [&garbage, &text, &empty] {
        match media::probe(path).await {
            Err(MediaError::Broken(message)) => assert!(!message.is_empty() && !message.contains('/')),
            other => panic!("{}: expected Broken, got {other:?}", path.display()),
        }
    }
    match media::transcode_video(&garbage, &dir.path().join("out"), |_| {}, CancellationToken::new()).await {
        Err(MediaError::Broken(_)) => {}
        other => panic!("expected Broken, got {other:?}"),
    }
    assert!(!dir.path().join("out").exists(), "nothing is written for a broken source");
    assert!(matches!(media::probe(&dir.path().join("missing.mp4")).await, Err(MediaError::Io(_))));
}

#[tokio::test]
async fn prompts_with_every_awkward_character_render() {
    let work = TempDir::new().unwrap();
    let backend = SyntheticBackend::new();
    let prompt = "He said \"stop\" and 'left'; C:\\Users\\x\\ back\\slash\\\n\
                  ratio 16:9, 100% sure %{pts} %{eif\\:n\\:d} $(rm -rf /) [in] [out] {braces} ;,=\n\
                  emoji 🎨🚀 café Ωμέγα 日本語 עברית\t\ttabs\r\nand a very long unbroken word: \
                  Pneumonoultramicroscopicsilicovolcanoconiosis_Pneumonoultramicroscopicsilicovolcanoconiosis";
    let prompt = format!("{prompt} {}", "and more words ".repeat(120));
    assert!(prompt.chars().count() > 1800);
    let req = request(work.path(), WORKFLOW_VIDEO, MediaKind::Video, (854, 480), 1, &prompt);
    let (percents, out) = render(&backend, req).await;
    let out = out.unwrap();
    assert_eq!(percents.last(), Some(&100));
    let p = media::probe(&out.files[0]).await.unwrap();
    assert_eq!((p.width, p.height), (854, 480));
    assert_eq!(sorted_names(work.path()), ["render.mp4"]);
}

#[tokio::test]
async fn image_renders_and_transcodes() {
    let work = TempDir::new().unwrap();
    let backend = SyntheticBackend::new();
    let req =
        request(work.path(), WORKFLOW_IMAGE, MediaKind::Image, (1920, 1080), 0, "a red fox, oil painting");
    let (percents, out) = render(&backend, req).await;
    let out = out.unwrap();
    assert_eq!(percents, [0, 100]);
    assert_eq!(out.files, [work.path().join("render.png")]);
    let p = media::probe(&out.files[0]).await.unwrap();
    assert_eq!((p.width, p.height, p.codec.as_str()), (1920, 1080, "png"));

    let out_dir = work.path().join("out");
    let img = media::transcode_image(&out.files[0], &out_dir).await.unwrap();
    assert_eq!((img.width, img.height), (1920, 1080));
    assert_eq!(sorted_names(&out_dir), ["image.png", "poster.jpg"]);
    assert_eq!(img.files, ["image.png", "poster.jpg"]);
    let png = media::probe(&out_dir.join(&img.image)).await.unwrap();
    assert_eq!((png.width, png.height, png.codec.as_str()), (1920, 1080, "png"));
    let poster = media::probe(&out_dir.join(&img.poster)).await.unwrap();
    assert_eq!((poster.width, poster.height, poster.codec.as_str()), (1280, 720, "mjpeg"));
}

#[tokio::test]
async fn different_prompts_look_different() {
    let backend = SyntheticBackend::new();
    let mut images = Vec::new();
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    for (dir, prompt) in dirs.iter().zip(["a cat", "a dog", "a cat"]) {
        let req = request(dir.path(), WORKFLOW_IMAGE, MediaKind::Image, (320, 240), 0, prompt);
        let out = render(&backend, req).await.1.unwrap();
        images.push(std::fs::read(&out.files[0]).unwrap());
    }
    assert_ne!(images[0], images[1]);
    assert_eq!(images[0], images[2], "the same prompt and seed render the same picture");
}

#[tokio::test]
async fn transcode_cancel_stops_ffmpeg_and_cleans_up() {
    let work = TempDir::new().unwrap();
    let backend = SyntheticBackend::new();
    let req = request(work.path(), WORKFLOW_VIDEO, MediaKind::Video, (854, 480), 6, "to be cancelled");
    let source = render(&backend, req).await.1.unwrap().files.remove(0);
    let out_dir = work.path().join("out");
    let cancel = CancellationToken::new();
    let on_progress = {
        let cancel = cancel.clone();
        move |_| cancel.cancel()
    };
    let res = tokio::time::timeout(LIMIT, media::transcode_video(&source, &out_dir, on_progress, cancel))
        .await
        .unwrap();
    assert!(matches!(res, Err(MediaError::Canceled)), "{res:?}");
    assert!(sorted_names(&out_dir).is_empty(), "partial outputs are deleted: {:?}", sorted_names(&out_dir));
    assert!(source.exists(), "the source is not touched");
}

#[tokio::test]
async fn small_sources_with_audio_get_one_rung_with_sound() {
    let work = TempDir::new().unwrap();
    let source = work.path().join("small.mp4");
    let status = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=s=320x240:rate=25", "-f", "lavfi", "-i", "sine=f=440"])
        .args(["-t", "3", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"])
        .arg(&source)
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let p = media::probe(&source).await.unwrap();
    assert!(p.has_audio && p.has_video);

    let out_dir = work.path().join("out");
    let t = media::transcode_video(&source, &out_dir, |_| {}, CancellationToken::new()).await.unwrap();
    assert_eq!(t.renditions.len(), 1);
    assert_eq!(
        (t.renditions[0].name.as_str(), t.renditions[0].width, t.renditions[0].height),
        ("240p", 320, 240)
    );
    let master = std::fs::read_to_string(out_dir.join(&t.master_playlist)).unwrap();
    assert!(master.contains("mp4a"), "audio is muxed into the rung: {master}");
    let mp4 = media::probe(&out_dir.join(&t.mp4)).await.unwrap();
    assert!(mp4.has_audio);
    assert!(out_dir.join(&t.poster).is_file());
}
