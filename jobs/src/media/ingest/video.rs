//! Videos: read as the container their bytes say, checked (one video
//! stream, length, size), then transcoded like a generated video.

use std::path::Path;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Format, IngestError, IngestLimits, Ingested};
use crate::backend::MediaKind;
use crate::media::{MediaError, TranscodeOutput, parse_probe, probe_json, video::transcode_video_as};

const UNREADABLE: &str = "The file could not be read as a video; it may be damaged or incomplete.";

pub(super) async fn ingest_video(
    input: &Path,
    format: Format,
    limits: &IngestLimits,
    out_dir: &Path,
    progress: &(impl Fn(u8) + Send + Sync),
    cancel: &CancellationToken,
) -> Result<Ingested, IngestError> {
    // Naming the demuxer keeps ffmpeg from guessing: a file that only
    // claims to be an MP4 is read as one or not at all, never as a
    // playlist or another format that opens further files.
    let demuxer = demuxer(format);
    let json = probe_json(input, Some(demuxer)).await.map_err(unreadable)?;
    check(&json, limits)?;
    if cancel.is_cancelled() {
        return Err(IngestError::Canceled);
    }
    // 100 only once the thumbnail is written too (the caller sends it).
    let on_percent = |p: u8| progress(p.min(99));
    let t = transcode_video_as(input, Some(demuxer), out_dir, on_percent, cancel.clone())
        .await
        .map_err(unreadable)?;

    check_complete(out_dir, &t).await?;

    let (poster, thumb) = (out_dir.join(&t.poster), out_dir.join("thumb.jpg"));
    let max_pixels = u64::from(limits.max_long_side) * u64::from(limits.max_short_side);
    tokio::task::spawn_blocking(move || super::image::thumbnail_from_jpeg(&poster, &thumb, max_pixels))
        .await
        .map_err(|e| MediaError::Io(std::io::Error::other(e)))?
        .map_err(|e| match e {
            // Our own ffmpeg wrote the poster: not the user's fault.
            IngestError::Rejected(why) => IngestError::Failed(MediaError::Failed {
                user_message: "The video could not be processed.".into(),
                detail: format!("the poster could not be read back: {why}"),
            }),
            other => other,
        })?;
    if cancel.is_cancelled() {
        return Err(IngestError::Canceled);
    }
    let mut files = t.files.clone();
    files.push("thumb.jpg".into());
    files.sort();
    Ok(Ingested {
        kind: MediaKind::Video,
        content_type: format.content_type(),
        width: t.width,
        height: t.height,
        duration_seconds: Some(t.duration_seconds),
        image: None,
        thumbnail: "thumb.jpg".into(),
        poster: Some(t.poster.clone()),
        video: Some(t),
        files,
    })
}

/// A cut file whose index (`moov`) comes first still probes at its full
/// length, and ffmpeg transcodes what is there without failing: what the
/// top rung holds tells. Some slack for the last frame's length and a
/// stream that starts late.
async fn check_complete(out_dir: &Path, t: &TranscodeOutput) -> Result<(), IngestError> {
    let Some(top) = t.renditions.first() else { return Ok(()) };
    let playlist = tokio::fs::read_to_string(out_dir.join(&top.playlist)).await.map_err(MediaError::from)?;
    let transcoded: f64 = playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|l| l.split(',').next()?.trim().parse::<f64>().ok())
        .sum();
    if transcoded < t.duration_seconds * 0.9 - 0.5 {
        tracing::debug!(transcoded, declared = t.duration_seconds, "an uploaded video ends early");
        return Err(IngestError::Rejected(UNREADABLE.into()));
    }
    Ok(())
}

fn demuxer(format: Format) -> &'static str {
    match format {
        Format::Webm | Format::Matroska => "matroska",
        _ => "mov",
    }
}

/// A file ffmpeg cannot read is the user's problem; everything else
/// (ffmpeg missing, a failed write, an encoder error) is ours.
fn unreadable(e: MediaError) -> IngestError {
    match e {
        MediaError::Broken(_) => IngestError::Rejected(UNREADABLE.into()),
        MediaError::Canceled => IngestError::Canceled,
        other => IngestError::Failed(other),
    }
}

/// One video stream, a length within the limit and a picture within the
/// box, from ffprobe's JSON.
fn check(json: &Value, limits: &IngestLimits) -> Result<(), IngestError> {
    let probe = parse_probe(json).ok_or_else(|| IngestError::Rejected(UNREADABLE.into()))?;
    let streams = json.get("streams").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let videos =
        streams.iter().filter(|s| s.get("codec_type").and_then(Value::as_str) == Some("video")).count();
    match videos {
        0 => return Err(IngestError::Rejected("The file has no picture in it, only sound.".into())),
        1 => {}
        n => {
            return Err(IngestError::Rejected(format!(
                "The video has {n} picture tracks; only videos with one are accepted."
            )));
        }
    }
    if !probe.has_video || probe.width == 0 || probe.height == 0 {
        return Err(IngestError::Rejected(UNREADABLE.into()));
    }
    let seconds = probe.duration_seconds;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(IngestError::Rejected(UNREADABLE.into()));
    }
    if seconds > limits.max_seconds {
        return Err(IngestError::Rejected(format!(
            "The video is {} long; the most allowed is {}.",
            duration(seconds),
            duration(limits.max_seconds)
        )));
    }
    let (long, short) = (probe.width.max(probe.height), probe.width.min(probe.height));
    if long > limits.max_long_side || short > limits.max_short_side {
        return Err(IngestError::Rejected(format!(
            "The video is {}×{} pixels; the most allowed is {}×{}.",
            probe.width, probe.height, limits.max_long_side, limits.max_short_side
        )));
    }
    Ok(())
}

/// "8.5 seconds", "1 second", "12 minutes 5 seconds", "10 minutes".
pub(super) fn duration(seconds: f64) -> String {
    let plural = |n: u64, unit: &str| if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") };
    if seconds < 60.0 {
        let tenths = (seconds * 10.0).round() / 10.0;
        if tenths.fract() == 0.0 { plural(tenths as u64, "second") } else { format!("{tenths:.1} seconds") }
    } else {
        let total = seconds.round() as u64;
        let (m, s) = (total / 60, total % 60);
        if s == 0 { plural(m, "minute") } else { format!("{} {}", plural(m, "minute"), plural(s, "second")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_words() {
        assert_eq!(duration(1.0), "1 second");
        assert_eq!(duration(8.46), "8.5 seconds");
        assert_eq!(duration(600.0), "10 minutes");
        assert_eq!(duration(725.2), "12 minutes 5 seconds");
        assert_eq!(duration(61.0), "1 minute 1 second");
    }
}
