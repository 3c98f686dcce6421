//! Probing and transcoding. One ffmpeg process decodes the source once and
//! writes the whole HLS ladder, the poster and a faststart MP4: decoding
//! once is most of the saving over one ffmpeg run per rendition.

use std::ffi::OsString;
use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::ffmpeg::{self, FfmpegError};

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The source is not a playable media file; the message is fit for the user.
    #[error("{0}")]
    Broken(String),
    #[error("transcode failed: {detail}")]
    Failed { user_message: String, detail: String },
    #[error("cancelled")]
    Canceled,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub width: u32,
    pub height: u32,
    pub duration_seconds: f64,
    pub fps: f64,
    pub codec: String,
    pub has_video: bool,
}

/// Reads the first video stream of `path` with ffprobe.
pub async fn probe(path: &Path) -> Result<Probe, MediaError> {
    let out = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_streams", "-show_format"])
        .arg(path)
        .output()
        .await?;
    let broken = || MediaError::Broken("The rendered file is not a readable video or image.".into());
    if !out.status.success() {
        tracing::warn!(stderr = %String::from_utf8_lossy(&out.stderr).trim(), "ffprobe rejected the source");
        return Err(broken());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| broken())?;
    let stream = v["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["codec_type"] == "video"))
        .ok_or_else(broken)?;
    let width = stream["width"].as_u64().unwrap_or(0) as u32;
    let height = stream["height"].as_u64().unwrap_or(0) as u32;
    if width == 0 || height == 0 {
        return Err(broken());
    }
    let duration_seconds = v["format"]["duration"]
        .as_str()
        .or_else(|| stream["duration"].as_str())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    let fps = stream["avg_frame_rate"]
        .as_str()
        .and_then(|r| {
            let (n, d) = r.split_once('/')?;
            let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
            (d > 0.0).then_some(n / d)
        })
        .filter(|f| *f > 0.0)
        .unwrap_or(24.0);
    Ok(Probe {
        width,
        height,
        duration_seconds,
        fps,
        codec: stream["codec_name"].as_str().unwrap_or("").to_owned(),
        has_video: true,
    })
}

#[derive(Debug, Clone)]
pub struct Rendition {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Peak bits per second, as the master playlist announces it.
    pub bandwidth: u64,
    /// Relative to the output folder.
    pub playlist: String,
}

#[derive(Debug, Clone)]
pub struct TranscodeOutput {
    pub master_playlist: String,
    pub renditions: Vec<Rendition>,
    pub poster: String,
    pub mp4: String,
    pub width: u32,
    pub height: u32,
    pub duration_seconds: f64,
    /// Every file written, relative to the output folder.
    pub files: Vec<String>,
}

/// Files below `dir`, relative to it, sorted.
async fn list_files(dir: &Path) -> Result<Vec<String>, MediaError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let mut entries = tokio::fs::read_dir(&d).await?;
        while let Some(e) = entries.next_entry().await? {
            if e.file_type().await?.is_dir() {
                pending.push(e.path());
            } else if let Ok(rel) = e.path().strip_prefix(dir) {
                files.push(rel.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/"));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The ladder: (height, video kbit/s). Rungs above the source are skipped.
const LADDER: &[(u32, u64)] = &[(1080, 5000), (720, 2800), (480, 1400), (360, 800)];

/// Rungs for a source of `height`: every ladder rung not above it, or the
/// source size alone when it is smaller than every rung.
pub fn rungs(height: u32) -> Vec<(u32, u64)> {
    let r: Vec<(u32, u64)> = LADDER.iter().copied().filter(|(h, _)| *h <= height).collect();
    if r.is_empty() { vec![(height - height % 2, 600)] } else { r }
}

fn even_width(src_w: u32, src_h: u32, h: u32) -> u32 {
    let w = (f64::from(src_w) * f64::from(h) / f64::from(src_h)).round() as u32;
    w + w % 2
}

/// HLS ladder (TS segments of ~2 s, keyframes aligned across rungs), poster
/// and faststart MP4, all from one decode of `input`, into `out_dir`:
/// `hls/master.m3u8`, `hls/<rung>/index.m3u8` + segments, `poster.jpg`,
/// `video.mp4`. Sources from the synthetic renderer have no audio; audio,
/// when present, is dropped (generated clips are silent today).
pub async fn transcode_video(
    input: &Path,
    out_dir: &Path,
    progress: impl Fn(u8) + Send + Sync,
    cancel: CancellationToken,
) -> Result<TranscodeOutput, MediaError> {
    let p = probe(input).await?;
    let rungs = rungs(p.height);
    let n = rungs.len();
    let gop = (p.fps * 2.0).round().max(1.0) as u32;
    let poster_at = (p.duration_seconds / 2.0).min(1.0);

    let mut graph = format!("[0:v]split={}", n + 2);
    for i in 0..n {
        graph.push_str(&format!("[v{i}]"));
    }
    graph.push_str("[vp][vm]");
    for (i, (h, _)) in rungs.iter().enumerate() {
        graph.push_str(&format!(";[v{i}]scale=-2:{h}[o{i}]"));
    }
    let poster_h = p.height.min(720);
    graph.push_str(&format!(";[vp]select='gte(t\\,{poster_at:.3})',scale=-2:{poster_h}[op]"));

    let mut args: Vec<OsString> =
        vec!["-i".into(), input.as_os_str().to_owned(), "-filter_complex".into(), graph.into()];
    for i in 0..n {
        args.extend(["-map".into(), format!("[o{i}]").into()]);
    }
    for a in ["-an", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-sc_threshold", "0"] {
        args.push(a.into());
    }
    args.extend(["-g".into(), gop.to_string().into(), "-keyint_min".into(), gop.to_string().into()]);
    for (i, (_, kbps)) in rungs.iter().enumerate() {
        args.extend([
            format!("-b:v:{i}").into(),
            format!("{kbps}k").into(),
            format!("-maxrate:v:{i}").into(),
            format!("{}k", kbps * 107 / 100).into(),
            format!("-bufsize:v:{i}").into(),
            format!("{}k", kbps * 2).into(),
        ]);
    }
    let map: Vec<String> = rungs.iter().enumerate().map(|(i, (h, _))| format!("v:{i},name:{h}p")).collect();
    let hls = out_dir.join("hls");
    for a in [
        "-f",
        "hls",
        "-hls_time",
        "2",
        "-hls_playlist_type",
        "vod",
        "-hls_segment_type",
        "mpegts",
        "-hls_flags",
        "independent_segments",
        "-master_pl_name",
        "master.m3u8",
    ] {
        args.push(a.into());
    }
    args.extend(["-hls_segment_filename".into(), hls.join("%v").join("seg_%03d.ts").into_os_string()]);
    args.extend(["-var_stream_map".into(), map.join(" ").into()]);
    args.push(hls.join("%v").join("index.m3u8").into_os_string());
    // Poster.
    args.extend(["-map".into(), "[op]".into(), "-frames:v".into(), "1".into(), "-q:v".into(), "3".into()]);
    args.push(out_dir.join("poster.jpg").into_os_string());
    // Progressive MP4 at the source size, moov first so it plays while it loads.
    args.extend(["-map".into(), "[vm]".into(), "-an".into()]);
    for a in [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "21",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
    ] {
        args.push(a.into());
    }
    args.push(out_dir.join("video.mp4").into_os_string());

    let duration_us = (p.duration_seconds * 1_000_000.0) as u64;
    match ffmpeg::run(args, Some(duration_us), progress, cancel, None).await {
        Ok(()) => {}
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(out_dir).await;
            return Err(match e {
                FfmpegError::Canceled => MediaError::Canceled,
                FfmpegError::Io(e) => MediaError::Io(e),
                FfmpegError::Exit { status, stderr } => MediaError::Failed {
                    user_message: "The video could not be prepared for streaming.".into(),
                    detail: format!("ffmpeg {status}: {stderr}"),
                },
            });
        }
    }
    let renditions = rungs
        .iter()
        .map(|(h, kbps)| Rendition {
            name: format!("{h}p"),
            width: even_width(p.width, p.height, *h),
            height: *h,
            bandwidth: kbps * 1000 * 110 / 100,
            playlist: format!("hls/{h}p/index.m3u8"),
        })
        .collect();
    Ok(TranscodeOutput {
        master_playlist: "hls/master.m3u8".into(),
        renditions,
        poster: "poster.jpg".into(),
        mp4: "video.mp4".into(),
        width: p.width,
        height: p.height,
        duration_seconds: p.duration_seconds,
        files: list_files(out_dir).await?,
    })
}

#[derive(Debug, Clone)]
pub struct ImageOutput {
    pub image: String,
    pub poster: String,
    pub width: u32,
    pub height: u32,
    pub files: Vec<String>,
}

/// A PNG at full size and a JPEG poster at most 720 px high.
pub async fn transcode_image(input: &Path, out_dir: &Path) -> Result<ImageOutput, MediaError> {
    let p = probe(input).await?;
    let poster_h = p.height.min(720);
    let args: Vec<OsString> = vec![
        "-i".into(),
        input.as_os_str().to_owned(),
        "-filter_complex".into(),
        format!("[0:v]split=2[a][b];[b]scale=-2:{poster_h}[p]").into(),
        "-map".into(),
        "[a]".into(),
        "-frames:v".into(),
        "1".into(),
        out_dir.join("image.png").into_os_string(),
        "-map".into(),
        "[p]".into(),
        "-frames:v".into(),
        "1".into(),
        "-q:v".into(),
        "3".into(),
        out_dir.join("poster.jpg").into_os_string(),
    ];
    ffmpeg::run(args, None, |_| {}, CancellationToken::new(), None).await.map_err(|e| match e {
        FfmpegError::Canceled => MediaError::Canceled,
        FfmpegError::Io(e) => MediaError::Io(e),
        FfmpegError::Exit { status, stderr } => MediaError::Failed {
            user_message: "The image could not be prepared.".into(),
            detail: format!("ffmpeg {status}: {stderr}"),
        },
    })?;
    Ok(ImageOutput {
        image: "image.png".into(),
        poster: "poster.jpg".into(),
        width: p.width,
        height: p.height,
        files: list_files(out_dir).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_never_upscales() {
        assert_eq!(rungs(720).iter().map(|r| r.0).collect::<Vec<_>>(), vec![720, 480, 360]);
        assert_eq!(rungs(1080).len(), 4);
        assert_eq!(rungs(241), vec![(240, 600)]);
        assert_eq!(even_width(1280, 720, 480), 854);
    }
}
