//! A video into an HLS ladder and a download MP4, in one ffmpeg run.

use std::path::Path;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::ffmpeg::*;
use super::*;

/// One rung of the ladder as ffmpeg is asked to make it; the exact size
/// and bandwidth are read back from the master playlist.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Rung {
    pub(super) name: String,
    pub(super) short_side: u32,
    pub(super) kbps: u32,
}

pub(super) fn ladder(width: u32, height: u32) -> Vec<Rung> {
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
pub(super) fn scale_filter(width: u32, height: u32, short_side: u32) -> String {
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
    transcode_video_as(input, None, out_dir, progress, cancel).await
}

/// [`transcode_video`] reading `input` as the given ffmpeg demuxer (`-f`)
/// when there is one, instead of letting ffmpeg guess the format.
pub(crate) async fn transcode_video_as(
    input: &Path,
    demuxer: Option<&str>,
    out_dir: &Path,
    progress: impl Fn(u8) + Send + Sync,
    cancel: CancellationToken,
) -> Result<TranscodeOutput, MediaError> {
    let src = probe_json(input, demuxer).await?;
    let src = parse_probe(&src).ok_or_else(|| MediaError::Broken(BROKEN.into()))?;
    if !src.has_video || src.width == 0 || src.height == 0 {
        return Err(MediaError::Broken(NO_PICTURE.into()));
    }
    if cancel.is_cancelled() {
        return Err(MediaError::Canceled);
    }
    let cmd = video_command(input, demuxer, out_dir, &src)?;
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
pub(super) fn video_command(
    input: &Path,
    demuxer: Option<&str>,
    out_dir: &Path,
    src: &Probe,
) -> std::io::Result<Command> {
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
    cmd.args(USER_INPUT_OPTIONS);
    if let Some(format) = demuxer {
        cmd.args(["-f", format]);
    }
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
pub(super) async fn remux_top_rung(
    out_dir: &Path,
    rung: &str,
    cancel: &CancellationToken,
) -> Result<(), MediaError> {
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
pub(super) fn playlist_parts(playlist: &str) -> Option<Vec<String>> {
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

pub(super) fn audio_args(cmd: &mut Command, has_audio: bool) {
    if has_audio {
        cmd.args(["-c:a", "aac", "-b:a", &format!("{AUDIO_KBPS}k"), "-ac", "2"]);
    } else {
        cmd.arg("-an");
    }
}

/// Renditions of a master playlist, in its order.
pub(super) fn parse_master(text: &str) -> Vec<Rendition> {
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
pub(super) fn attributes(list: &str) -> Vec<(&str, &str)> {
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
pub(super) async fn list_files(root: &Path, dir: &str, out: &mut Vec<String>) -> std::io::Result<()> {
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

pub(super) async fn remove_video_outputs(out_dir: &Path) {
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
