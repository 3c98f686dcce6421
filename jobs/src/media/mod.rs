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
//!
//! Uploads go through [`ingest()`] first: it decides what a file is from its
//! bytes, refuses what is unsafe or too large, and writes clean copies.

mod ffmpeg;
mod image;
mod ingest;
mod video;

pub(crate) use ffmpeg::{
    Exit, USER_INPUT_OPTIONS, ffmpeg_command, ffmpeg_input, remove_quietly, spawn_logged, supervise,
};
pub use image::transcode_image;
pub use ingest::{IngestError, IngestLimits, Ingested, THUMBNAIL_MAX_SIDE, ingest};
pub use video::transcode_video;

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use tokio::process::Command;

pub(crate) const FFMPEG: &str = "ffmpeg";
pub(crate) const FFPROBE: &str = "ffprobe";

/// How much of ffmpeg's stderr is kept for error details: the cause is at
/// the end, and a runaway log must not grow without bound.
pub(crate) const STDERR_TAIL_BYTES: usize = 4096;

/// Segment length. Keyframes are forced on this grid so every rung cuts its
/// segments at the same instants and players can switch between rungs.
pub(super) const SEGMENT_SECONDS: u32 = 2;

/// Where the poster frame is taken, unless the clip is shorter than twice
/// this (then its middle): the first frames of generated video are often
/// still forming.
pub(super) const POSTER_AT_SECONDS: f64 = 1.0;

pub(super) const IMAGE_POSTER_MAX_HEIGHT: u32 = 720;

/// Short side and video bitrate (kbit/s) of each rung, largest first: the
/// usual rates for H.264 at 24-30 fps. maxrate is 1.1x (what the master
/// playlist announces as BANDWIDTH), bufsize 2x.
pub(super) const LADDER: &[(u32, u32)] = &[(1080, 5000), (720, 2800), (480, 1400), (360, 800)];

/// Bitrate of the single rung of a source smaller than the smallest rung.
pub(super) const SMALL_RUNG_KBPS: u32 = 500;

pub(super) const AUDIO_KBPS: u32 = 128;

pub(super) const BROKEN: &str = "The file is not a video or image we can read.";
pub(super) const NO_PICTURE: &str = "The file has no picture in it.";

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

/// A rung of the ladder as `transcode_video` wrote it: its `playlist` is
/// relative to `out_dir` until the job stores it.
pub use mage_domain::output::Rendition;

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
    let json = probe_json(path, None).await?;
    parse_probe(&json).ok_or_else(|| MediaError::Broken(BROKEN.into()))
}

/// ffprobe's JSON (`-show_streams -show_format`) of a file it can read.
/// `demuxer` (`-f`) skips format detection: the file is read as that
/// format or not at all.
pub(crate) async fn probe_json(path: &Path, demuxer: Option<&str>) -> Result<Value, MediaError> {
    tokio::fs::metadata(path).await?;
    let mut cmd = Command::new(FFPROBE);
    cmd.args(["-v", "error", "-print_format", "json", "-show_streams", "-show_format"])
        .args(USER_INPUT_OPTIONS);
    if let Some(format) = demuxer {
        cmd.args(["-f", format]);
    }
    let out = cmd.arg(ffmpeg_input(path)?).stdin(Stdio::null()).kill_on_drop(true).output().await?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        tracing::debug!(path = %path.display(), stderr = %stderr.trim(), "ffprobe rejected a file");
        return Err(MediaError::Broken(BROKEN.into()));
    }
    serde_json::from_slice(&out.stdout).map_err(|_| MediaError::Broken(BROKEN.into()))
}

pub(super) fn parse_probe(json: &Value) -> Option<Probe> {
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

#[cfg(test)]
mod tests {
    use super::ffmpeg::*;
    use super::video::*;

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
