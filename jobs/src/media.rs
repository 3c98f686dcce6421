//! ffprobe and ffmpeg: probing a rendered file and turning it into what
//! clients play.
//!
//! A video is transcoded by one ffmpeg process that decodes the source once
//! (decoding once is most of the saving over one run per rendition) and
//! writes, under `out_dir`:
//!
//! ```text
//! hls/master.m3u8             master playlist (BANDWIDTH, RESOLUTION, CODECS per rung)
//! hls/<rung>/index.m3u8       VOD media playlist of one rung ("720p", "480p", ...)
//! hls/<rung>/init*.mp4        its fMP4 (CMAF) init segment
//! hls/<rung>/seg_NNN.m4s      ~2 s segments, keyframe-aligned across rungs
//! poster.jpg                  a frame from 1 s in (the middle of shorter clips)
//! video.mp4                   the top rung remuxed (no second encode) into a faststart MP4, for download
//! ```
//!
//! The ladder holds every rung of 1080p/720p/480p/360p that is not larger
//! than the source (rungs count the short side, so portrait video gets the
//! same ladder), or the source size alone when it is smaller than 360p.
//! Audio, when the source has any, is encoded to AAC and muxed into every
//! rung and the MP4; the synthetic renderer's videos have none.

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio_util::sync::CancellationToken;

pub(crate) const FFMPEG: &str = "ffmpeg";
pub(crate) const FFPROBE: &str = "ffprobe";

/// How much of ffmpeg's stderr is kept for error details: the cause is at
/// the end, and a runaway log must not grow without bound.
pub(crate) const STDERR_TAIL_BYTES: usize = 4096;

/// Segment length. Keyframes are forced on this grid so every rung cuts its
/// segments at the same instants and players can switch between rungs.
const SEGMENT_SECONDS: u32 = 2;

/// Where the poster frame is taken, unless the clip is shorter than twice
/// this (then its middle): the first frames of generated video are often
/// still forming.
const POSTER_AT_SECONDS: f64 = 1.0;

const IMAGE_POSTER_MAX_HEIGHT: u32 = 720;

/// Short side and video bitrate (kbit/s) of each rung, largest first: the
/// usual rates for H.264 at 24-30 fps. maxrate is 1.1x (what the master
/// playlist announces as BANDWIDTH), bufsize 2x.
const LADDER: &[(u32, u32)] = &[(1080, 5000), (720, 2800), (480, 1400), (360, 800)];

/// Bitrate of the single rung of a source smaller than the smallest rung.
const SMALL_RUNG_KBPS: u32 = 500;

const AUDIO_KBPS: u32 = 128;

const BROKEN: &str = "The file is not a video or image we can read.";
const NO_PICTURE: &str = "The file has no picture in it.";

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The input is not usable media; the message is fit for the end user.
    #[error("broken media: {0}")]
    Broken(String),
    /// ffmpeg failed on input it could read: `user_message` is for the end
    /// user, `detail` (the tail of ffmpeg's stderr) for logs.
    #[error("media processing failed: {detail}")]
    Failed { user_message: String, detail: String },
    #[error("media processing canceled")]
    Canceled,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Of the first video stream; 0 without one.
    pub width: u32,
    pub height: u32,
    /// 0 for still images.
    pub duration_seconds: f64,
    pub has_video: bool,
    pub has_audio: bool,
    /// Codec of the first video stream (`h264`, `png`, ...), else of the
    /// first audio stream.
    pub codec: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendition {
    /// `720p`; also the rung's directory under `hls/`.
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Peak bits per second, as the master playlist announces it.
    pub bandwidth: u64,
    /// Media playlist, relative to `out_dir`: `hls/720p/index.m3u8`.
    pub playlist: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TranscodeOutput {
    /// `hls/master.m3u8`
    pub master_playlist: String,
    /// Largest first.
    pub renditions: Vec<Rendition>,
    /// `poster.jpg`
    pub poster: String,
    /// `video.mp4`
    pub mp4: String,
    /// Size of `video.mp4` and the poster (the top rung's).
    pub width: u32,
    pub height: u32,
    pub duration_seconds: f64,
    /// Every file written, relative to `out_dir`, `/`-separated, sorted.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOutput {
    /// `image.png`, at the source size.
    pub image: String,
    /// `poster.jpg`, at most 720 px high.
    pub poster: String,
    pub width: u32,
    pub height: u32,
    pub files: Vec<String>,
}

/// What ffprobe makes of a file. A file it cannot read, or one with neither
/// picture nor sound, is `Broken`; a missing file is `Io`.
pub async fn probe(path: &Path) -> Result<Probe, MediaError> {
    tokio::fs::metadata(path).await?;
    let out = Command::new(FFPROBE)
        .args(["-v", "error", "-print_format", "json", "-show_streams", "-show_format"])
        .arg(ffmpeg_input(path)?)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        tracing::debug!(path = %path.display(), stderr = %stderr.trim(), "ffprobe rejected a file");
        return Err(MediaError::Broken(BROKEN.into()));
    }
    let json: Value = serde_json::from_slice(&out.stdout).map_err(|_| MediaError::Broken(BROKEN.into()))?;
    parse_probe(&json).ok_or_else(|| MediaError::Broken(BROKEN.into()))
}

fn parse_probe(json: &Value) -> Option<Probe> {
    let streams = json.get("streams")?.as_array()?;
    let first_of =
        |kind: &str| streams.iter().find(|s| s.get("codec_type").and_then(Value::as_str) == Some(kind));
    // ffmpeg reads some text files as "video" (the tty demuxer): not a
    // picture anyone rendered.
    let video = first_of("video").filter(|s| {
        let codec = s.get("codec_name").and_then(Value::as_str).unwrap_or("");
        !matches!(codec, "ansi" | "bintext" | "xbin" | "idf")
    });
    let audio = first_of("audio");
    if video.is_none() && audio.is_none() {
        return None;
    }
    let dim = |key: &str| {
        video
            .and_then(|s| s.get(key))
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0)
    };
    let seconds = |v: Option<&Value>| v.and_then(Value::as_str).and_then(|s| s.parse::<f64>().ok());
    let duration = seconds(json.get("format").and_then(|f| f.get("duration")))
        .or_else(|| seconds(video.and_then(|s| s.get("duration"))))
        .filter(|d| d.is_finite() && *d > 0.0)
        .unwrap_or(0.0);
    let codec = video
        .or(audio)
        .and_then(|s| s.get("codec_name"))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    Some(Probe {
        width: dim("width"),
        height: dim("height"),
        duration_seconds: duration,
        has_video: video.is_some(),
        has_audio: audio.is_some(),
        codec,
    })
}

/// One rung of the ladder as ffmpeg is asked to make it; the exact size
/// and bandwidth are read back from the master playlist.
#[derive(Debug, PartialEq, Eq)]
struct Rung {
    name: String,
    short_side: u32,
    kbps: u32,
}

fn ladder(width: u32, height: u32) -> Vec<Rung> {
    let short = width.min(height);
    let mut rungs: Vec<Rung> = LADDER
        .iter()
        .filter(|(side, _)| *side <= short)
        .map(|&(side, kbps)| Rung { name: format!("{side}p"), short_side: side, kbps })
        .collect();
    if rungs.is_empty() {
        // H.264 in 4:2:0 needs even sizes.
        let side = (short & !1).max(2);
        rungs.push(Rung { name: format!("{side}p"), short_side: side, kbps: SMALL_RUNG_KBPS });
    }
    rungs
}

/// A `scale` to `short_side` that keeps the aspect ratio and makes the long
/// side even.
fn scale_filter(width: u32, height: u32, short_side: u32) -> String {
    if width >= height { format!("scale=-2:{short_side}") } else { format!("scale={short_side}:-2") }
}

/// Transcodes a video into the HLS ladder, the poster and the faststart MP4
/// (layout in the module docs) with one ffmpeg process. `progress` gets
/// non-decreasing percentages, 100 last. `cancel` kills ffmpeg; the outputs
/// written so far are deleted then, and when ffmpeg fails.
///
/// `out_dir` is created if missing; only the files of the layout are
/// written or deleted there, and `input` must not be one of them.
pub async fn transcode_video(
    input: &Path,
    out_dir: &Path,
    progress: impl Fn(u8) + Send + Sync,
    cancel: CancellationToken,
) -> Result<TranscodeOutput, MediaError> {
    let src = probe(input).await?;
    if !src.has_video || src.width == 0 || src.height == 0 {
        return Err(MediaError::Broken(NO_PICTURE.into()));
    }
    if cancel.is_cancelled() {
        return Err(MediaError::Canceled);
    }
    let cmd = video_command(input, out_dir, &src)?;
    tokio::fs::create_dir_all(out_dir.join("hls")).await?;
    let duration_us = (src.duration_seconds > 0.0).then_some((src.duration_seconds * 1e6) as u64);
    let exit = match spawn_logged(cmd, "transcoding a video") {
        Ok(child) => supervise(child, duration_us, &progress, &cancel).await,
        Err(e) => Err(e),
    };
    let failure = match exit {
        Ok(Exit::Done { status, .. }) if status.success() => None,
        Ok(Exit::Done { status, stderr }) => Some(MediaError::Failed {
            user_message: "The video could not be processed.".into(),
            detail: format!("ffmpeg {status}: {stderr}"),
        }),
        Ok(Exit::Canceled) => Some(MediaError::Canceled),
        Err(e) => Some(e.into()),
    };
    if let Some(e) = failure {
        remove_video_outputs(out_dir).await;
        return Err(e);
    }
    let top = &ladder(src.width, src.height)[0].name;
    if let Err(e) = remux_top_rung(out_dir, top, &cancel).await {
        remove_video_outputs(out_dir).await;
        return Err(e);
    }

    let master = tokio::fs::read_to_string(out_dir.join("hls/master.m3u8")).await?;
    let renditions = parse_master(&master);
    let Some((width, height)) = renditions.first().map(|r| (r.width, r.height)) else {
        remove_video_outputs(out_dir).await;
        return Err(MediaError::Failed {
            user_message: "The video could not be processed.".into(),
            detail: format!("the master playlist lists no renditions:\n{master}"),
        });
    };
    let mut files = vec!["poster.jpg".to_owned(), "video.mp4".to_owned()];
    list_files(out_dir, "hls", &mut files).await?;
    files.sort();
    progress(100);
    Ok(TranscodeOutput {
        master_playlist: "hls/master.m3u8".into(),
        renditions,
        poster: "poster.jpg".into(),
        mp4: "video.mp4".into(),
        width,
        height,
        duration_seconds: src.duration_seconds,
        files,
    })
}

/// The single ffmpeg run of [`transcode_video`].
fn video_command(input: &Path, out_dir: &Path, src: &Probe) -> std::io::Result<Command> {
    let rungs = ladder(src.width, src.height);
    let n = rungs.len();
    let top_scale = scale_filter(src.width, src.height, rungs[0].short_side);
    let poster_at = if src.duration_seconds >= 2.0 * POSTER_AT_SECONDS {
        POSTER_AT_SECONDS
    } else {
        src.duration_seconds / 2.0
    };

    // One decode feeds every output: the rungs and the poster (the MP4 is
    // the top rung, remuxed afterwards by `remux_top_rung`). The poster branch passes every frame up to `poster_at` and the image2
    // muxer (`-update 1`) overwrites the file with each, so it ends up
    // holding the frame at (or just before) `poster_at`, even for a clip of
    // a single frame.
    let mut graph = format!("[0:v:0]split={}", n + 1);
    for i in 0..n {
        graph.push_str(&format!("[s{i}]"));
    }
    graph.push_str("[sposter]");
    for (i, rung) in rungs.iter().enumerate() {
        let scale = scale_filter(src.width, src.height, rung.short_side);
        graph.push_str(&format!(";[s{i}]{scale},format=yuv420p[v{i}]"));
    }
    graph.push_str(&format!(";[sposter]select='lte(t,{poster_at:.3})',{top_scale}[poster]"));

    let mut cmd = ffmpeg_command(out_dir);
    cmd.arg("-i").arg(ffmpeg_input(input)?).args(["-filter_complex", &graph]);

    // The HLS ladder: one muxer, one variant per rung.
    for i in 0..n {
        cmd.args(["-map", &format!("[v{i}]")]);
        if src.has_audio {
            cmd.args(["-map", "0:a:0"]);
        }
    }
    cmd.args(["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high"]);
    for (i, rung) in rungs.iter().enumerate() {
        let k = rung.kbps;
        cmd.args([format!("-b:v:{i}"), format!("{k}k")]);
        cmd.args([format!("-maxrate:v:{i}"), format!("{}k", k * 11 / 10)]);
        cmd.args([format!("-bufsize:v:{i}"), format!("{}k", k * 2)]);
    }
    cmd.args(["-force_key_frames", &format!("expr:gte(t,n_forced*{SEGMENT_SECONDS})"), "-sc_threshold", "0"]);
    audio_args(&mut cmd, src.has_audio);
    let stream_map = rungs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if src.has_audio {
                format!("v:{i},a:{i},name:{}", r.name)
            } else {
                format!("v:{i},name:{}", r.name)
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    cmd.args(["-f", "hls", "-hls_time", &SEGMENT_SECONDS.to_string(), "-hls_playlist_type", "vod"]);
    cmd.args(["-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4"]);
    cmd.args(["-hls_flags", "independent_segments", "-hls_segment_filename", "hls/%v/seg_%03d.m4s"]);
    cmd.args(["-master_pl_name", "master.m3u8", "-var_stream_map", &stream_map, "hls/%v/index.m3u8"]);

    cmd.args(["-map", "[poster]", "-update", "1", "-q:v", "3", "poster.jpg"]);
    Ok(cmd)
}

/// The download MP4 is the top rung itself: its init segment and media
/// segments, read in playlist order through ffmpeg's `concat:` protocol (a
/// fragmented MP4 byte stream) and copied, not encoded again, into a
/// faststart MP4. A second H.264 encode at the top size cost about a third
/// of the whole transcode; the MP4 now has the top rung's bitrate and
/// picture, byte for byte what the player streams at that size.
async fn remux_top_rung(out_dir: &Path, rung: &str, cancel: &CancellationToken) -> Result<(), MediaError> {
    let dir = format!("hls/{rung}");
    let playlist = tokio::fs::read_to_string(out_dir.join(&dir).join("index.m3u8")).await?;
    let Some(parts) = playlist_parts(&playlist) else {
        return Err(MediaError::Failed {
            user_message: "The video could not be processed.".into(),
            detail: format!("the {rung} playlist names no init segment or no media segment:\n{playlist}"),
        });
    };
    let input = parts.iter().map(|p| format!("{dir}/{p}")).collect::<Vec<_>>().join("|");
    let mut cmd = ffmpeg_command(out_dir);
    cmd.arg("-i").arg(format!("concat:{input}"));
    cmd.args(["-map", "0", "-c", "copy", "-movflags", "+faststart", "video.mp4"]);
    match supervise(spawn_logged(cmd, "remuxing the top rung into the MP4")?, None, |_| {}, cancel).await? {
        Exit::Done { status, .. } if status.success() => Ok(()),
        Exit::Done { status, stderr } => Err(MediaError::Failed {
            user_message: "The video could not be processed.".into(),
            detail: format!("ffmpeg (MP4 remux) {status}: {stderr}"),
        }),
        Exit::Canceled => Err(MediaError::Canceled),
    }
}

/// The init segment (`#EXT-X-MAP:URI=...`) and then every media segment of
/// an fMP4 media playlist, as written there. Only names ffmpeg itself wrote
/// are accepted: plain file names, nothing that could reach another
/// directory or protocol through `concat:`.
fn playlist_parts(playlist: &str) -> Option<Vec<String>> {
    let plain = |name: &str| {
        !name.is_empty()
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let mut init = None;
    let mut parts = vec![String::new()];
    for line in playlist.lines().map(str::trim) {
        if let Some(map) = line.strip_prefix("#EXT-X-MAP:") {
            let uri = map.split(',').find_map(|a| a.strip_prefix("URI=")).map(|u| u.trim_matches('"'));
            init = Some(uri.filter(|u| plain(u))?.to_owned());
        } else if !line.is_empty() && !line.starts_with('#') {
            parts.push(plain(line).then(|| line.to_owned())?);
        }
    }
    parts[0] = init?;
    (parts.len() > 1).then_some(parts)
}

fn audio_args(cmd: &mut Command, has_audio: bool) {
    if has_audio {
        cmd.args(["-c:a", "aac", "-b:a", &format!("{AUDIO_KBPS}k"), "-ac", "2"]);
    } else {
        cmd.arg("-an");
    }
}

/// Normalises an image to `image.png` at its own size and writes a JPEG
/// poster at most 720 px high, in one ffmpeg process. Of a video, the first
/// frame is taken.
pub async fn transcode_image(input: &Path, out_dir: &Path) -> Result<ImageOutput, MediaError> {
    let src = probe(input).await?;
    if !src.has_video || src.width == 0 || src.height == 0 {
        return Err(MediaError::Broken(NO_PICTURE.into()));
    }
    let poster_height = src.height.min(IMAGE_POSTER_MAX_HEIGHT);
    let graph = format!("[0:v:0]split=2[img][p];[p]scale=-1:{poster_height}[poster]");
    let mut cmd = ffmpeg_command(out_dir);
    cmd.arg("-i").arg(ffmpeg_input(input)?).args(["-filter_complex", &graph]);
    cmd.args(["-map", "[img]", "-frames:v", "1", "-update", "1", "image.png"]);
    cmd.args(["-map", "[poster]", "-frames:v", "1", "-update", "1", "-q:v", "3", "poster.jpg"]);
    tokio::fs::create_dir_all(out_dir).await?;
    let exit = match spawn_logged(cmd, "transcoding an image") {
        Ok(child) => supervise(child, None, |_| {}, &CancellationToken::new()).await,
        Err(e) => Err(e),
    };
    let failure = match exit {
        Ok(Exit::Done { status, .. }) if status.success() => None,
        Ok(Exit::Done { status, stderr }) => Some(MediaError::Failed {
            user_message: "The image could not be processed.".into(),
            detail: format!("ffmpeg {status}: {stderr}"),
        }),
        Ok(Exit::Canceled) => Some(MediaError::Canceled),
        Err(e) => Some(e.into()),
    };
    if let Some(e) = failure {
        for name in ["image.png", "poster.jpg"] {
            remove_quietly(&out_dir.join(name)).await;
        }
        return Err(e);
    }
    Ok(ImageOutput {
        image: "image.png".into(),
        poster: "poster.jpg".into(),
        width: src.width,
        height: src.height,
        files: vec!["image.png".into(), "poster.jpg".into()],
    })
}

/// ffmpeg with what every run here shares. It runs in `cwd`, so outputs are
/// named relative to it and no path ever has to be escaped inside a
/// filtergraph. Progress goes to stdout (see [`supervise`]), errors to
/// stderr. Its own process group keeps a Ctrl-C aimed at the worker from
/// failing the render under it (the worker decides when its children stop),
/// and `kill_on_drop` stops it when whoever waits for it goes away.
pub(crate) fn ffmpeg_command(cwd: &Path) -> Command {
    let mut cmd = Command::new(FFMPEG);
    cmd.current_dir(cwd)
        .args(["-hide_banner", "-nostdin", "-y", "-loglevel", "error"])
        .args(["-progress", "pipe:1", "-nostats", "-stats_period", "0.5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    cmd
}

pub(crate) fn spawn_logged(mut cmd: Command, what: &str) -> std::io::Result<Child> {
    tracing::debug!(command = ?cmd.as_std(), "{what}");
    cmd.spawn()
}

/// An input path for ffmpeg running in another directory: made absolute,
/// and marked as a file so a name with a colon is not taken for a protocol.
pub(crate) fn ffmpeg_input(path: &Path) -> std::io::Result<OsString> {
    let mut s = OsString::from("file:");
    s.push(std::path::absolute(path)?);
    Ok(s)
}

/// How a supervised ffmpeg ended.
#[derive(Debug)]
pub(crate) enum Exit {
    /// It exited by itself; `stderr` is the tail of what it wrote there.
    Done { status: ExitStatus, stderr: String },
    /// `cancel` fired: it was killed and reaped.
    Canceled,
}

/// Waits for an ffmpeg started by [`ffmpeg_command`], turning its
/// `-progress` output into percentages of `duration_us` (non-decreasing and
/// at most 99: only the caller knows when its outputs are complete), and
/// kills it when `cancel` fires.
pub(crate) async fn supervise(
    mut child: Child,
    duration_us: Option<u64>,
    mut on_percent: impl FnMut(u8),
    cancel: &CancellationToken,
) -> std::io::Result<Exit> {
    let tail = child.stderr.take().map(|e| tokio::spawn(stderr_tail(e)));
    let mut lines = child.stdout.take().map(|o| BufReader::new(o).lines());
    let mut last = 0u8;
    let status = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                // SIGKILL and reap; ffmpeg starts no children of its own, so
                // nothing is left behind.
                if let Err(e) = child.kill().await {
                    tracing::warn!(error = %e, "could not kill ffmpeg");
                }
                if let Some(t) = tail {
                    t.abort();
                }
                return Ok(Exit::Canceled);
            }
            line = next_line(&mut lines), if lines.is_some() => match line {
                Some(line) => {
                    let Some(total) = duration_us.filter(|t| *t > 0) else { continue };
                    let percent = match out_time_us(&line) {
                        Some(done) => (done.saturating_mul(100) / total).min(99) as u8,
                        None if line.trim() == "progress=end" => 99,
                        None => continue,
                    };
                    if percent > last {
                        last = percent;
                        on_percent(percent);
                    }
                }
                None => lines = None,
            },
            status = child.wait() => break status?,
        }
    };
    let stderr = match tail {
        Some(t) => t.await.unwrap_or_default(),
        None => String::new(),
    };
    Ok(Exit::Done { status, stderr })
}

async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut Option<tokio::io::Lines<R>>,
) -> Option<String> {
    match lines {
        Some(l) => l.next_line().await.ok().flatten(),
        None => None,
    }
}

/// `out_time_us=…` of ffmpeg's `-progress` output (`out_time_ms` is in
/// microseconds too, despite its name); `N/A` before the first frame.
fn out_time_us(line: &str) -> Option<u64> {
    let value = line.strip_prefix("out_time_us=").or_else(|| line.strip_prefix("out_time_ms="))?;
    value.trim().parse::<i64>().ok().map(|v| v.max(0).unsigned_abs())
}

/// The last [`STDERR_TAIL_BYTES`] of ffmpeg's stderr, as text.
async fn stderr_tail(mut stderr: ChildStderr) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * STDERR_TAIL_BYTES {
                    kept.drain(..kept.len() - STDERR_TAIL_BYTES);
                }
            }
        }
    }
    if kept.len() > STDERR_TAIL_BYTES {
        kept.drain(..kept.len() - STDERR_TAIL_BYTES);
    }
    String::from_utf8_lossy(&kept).trim().to_owned()
}

/// Renditions of a master playlist, in its order.
fn parse_master(text: &str) -> Vec<Rendition> {
    let mut out = Vec::new();
    let mut pending: Option<(u64, u32, u32)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(list) = line.strip_prefix("#EXT-X-STREAM-INF:") {
            let (mut bandwidth, mut width, mut height) = (0, 0, 0);
            for (key, value) in attributes(list) {
                match key {
                    "BANDWIDTH" => bandwidth = value.parse().unwrap_or(0),
                    "RESOLUTION" => {
                        if let Some((w, h)) = value.split_once('x') {
                            width = w.parse().unwrap_or(0);
                            height = h.parse().unwrap_or(0);
                        }
                    }
                    _ => {}
                }
            }
            pending = Some((bandwidth, width, height));
        } else if !line.is_empty()
            && !line.starts_with('#')
            && let Some((bandwidth, width, height)) = pending.take()
        {
            let name = line.split('/').next().unwrap_or(line).to_owned();
            out.push(Rendition { name, width, height, bandwidth, playlist: format!("hls/{line}") });
        }
    }
    out
}

/// `KEY=value` pairs of an HLS attribute list; quoted values keep their
/// commas (`CODECS="avc1…,mp4a…"`) and lose their quotes.
fn attributes(list: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = list;
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let (value, tail) = quoted.split_once('"').unwrap_or((quoted, ""));
                (value, tail.strip_prefix(',').unwrap_or(tail))
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.push((key.trim(), value));
        rest = next;
    }
    out
}

/// Adds the files under `root/dir` as `/`-separated paths relative to
/// `root`.
async fn list_files(root: &Path, dir: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    let mut todo = vec![dir.to_owned()];
    while let Some(rel) = todo.pop() {
        let mut entries = tokio::fs::read_dir(root.join(&rel)).await?;
        while let Some(entry) = entries.next_entry().await? {
            let child = format!("{rel}/{}", entry.file_name().to_string_lossy());
            if entry.file_type().await?.is_dir() {
                todo.push(child);
            } else {
                out.push(child);
            }
        }
    }
    Ok(())
}

async fn remove_video_outputs(out_dir: &Path) {
    let hls = out_dir.join("hls");
    if let Err(e) = tokio::fs::remove_dir_all(&hls).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %hls.display(), error = %e, "could not delete partial HLS output");
    }
    for name in ["poster.jpg", "video.mp4"] {
        remove_quietly(&out_dir.join(name)).await;
    }
}

/// Deletes a file that may not exist. Other failures are only logged: the
/// caller is already on its way out with a better error.
pub(crate) async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not delete a partial output");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mp4_is_made_of_the_init_segment_then_the_media_segments_in_order() {
        let playlist = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:VOD\n\
                        #EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.000000,\nseg_000.m4s\n#EXTINF:1.500000,\n\
                        seg_001.m4s\n#EXT-X-ENDLIST\n";
        assert_eq!(playlist_parts(playlist).unwrap(), ["init.mp4", "seg_000.m4s", "seg_001.m4s"]);
        // Nothing but plain names from ffmpeg may reach `concat:`.
        assert_eq!(playlist_parts(&playlist.replace("seg_001.m4s", "../../etc/passwd")), None);
        assert_eq!(playlist_parts(&playlist.replace("seg_000.m4s", "a|b.m4s")), None);
        assert_eq!(playlist_parts(&playlist.replace("init.mp4", "http://x/init.mp4")), None);
        // No init segment or no media segment: no MP4.
        assert_eq!(playlist_parts(&playlist.replace("#EXT-X-MAP:URI=\"init.mp4\"\n", "")), None);
        assert_eq!(playlist_parts("#EXTM3U\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-ENDLIST\n"), None);
    }

    #[test]
    fn ladder_never_upscales_and_counts_the_short_side() {
        let names = |w, h| ladder(w, h).into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(1920, 1080), ["1080p", "720p", "480p", "360p"]);
        assert_eq!(names(1280, 720), ["720p", "480p", "360p"]);
        assert_eq!(names(720, 1280), ["720p", "480p", "360p"]);
        assert_eq!(names(854, 480), ["480p", "360p"]);
        assert_eq!(names(321, 241), ["240p"]);
        assert_eq!(scale_filter(720, 1280, 480), "scale=480:-2");
    }

    #[test]
    fn master_playlist_is_read_back() {
        let master = "#EXTM3U\n#EXT-X-VERSION:7\n\
            #EXT-X-STREAM-INF:BANDWIDTH=3080000,RESOLUTION=1280x720,CODECS=\"avc1.64001f,mp4a.40.2\"\n\
            720p/index.m3u8\n\n\
            #EXT-X-STREAM-INF:BANDWIDTH=1540000,RESOLUTION=854x480,CODECS=\"avc1.64001e\"\n480p/index.m3u8\n";
        let r = parse_master(master);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].name.as_str(), r[0].width, r[0].height, r[0].bandwidth),
            ("720p", 1280, 720, 3_080_000)
        );
        assert_eq!(r[1].playlist, "hls/480p/index.m3u8");
    }

    #[test]
    fn progress_lines() {
        assert_eq!(out_time_us("out_time_us=1500000"), Some(1_500_000));
        assert_eq!(out_time_us("out_time_ms=-20"), Some(0));
        assert_eq!(out_time_us("out_time_us=N/A"), None);
        assert_eq!(out_time_us("frame=3"), None);
    }
}
