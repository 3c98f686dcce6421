//! What a model would have made, as ffmpeg test patterns: a PNG for image
//! models, a short H.264 MP4 for video models, sized from the input.

use std::path::Path;

use serde_json::Value;

/// Video outputs are capped at this many seconds so tests stay quick.
const MAX_VIDEO_SECONDS: u32 = 2;
const MAX_SIDE: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) video: bool,
    pub(super) width: u32,
    pub(super) height: u32,
    /// Frames of a video (1 for an image).
    pub(super) frames: u32,
    pub(super) fps: u32,
}

impl Plan {
    pub(super) fn file_name(&self) -> &'static str {
        if self.video { "output.mp4" } else { "output.png" }
    }

    pub(super) fn content_type(&self) -> &'static str {
        if self.video { "video/mp4" } else { "image/png" }
    }
}

/// Video when the model's name says so (`video`, `wan`, `i2v`, `t2v`) or
/// the input asks for frames or a duration; otherwise an image.
pub(super) fn plan(model: &str, input: &Value) -> Plan {
    let name = model.to_lowercase();
    let frames_asked = ["num_frames", "frames", "duration"].iter().any(|k| !input[*k].is_null());
    let video = frames_asked || ["video", "wan", "i2v", "t2v"].iter().any(|k| name.contains(k));
    let number = |key: &str| {
        let v = &input[key];
        v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).filter(|n| n.is_finite() && *n > 0.0)
    };
    let (width, height) = match (number("width"), number("height")) {
        (Some(w), Some(h)) => (w as u32, h as u32),
        _ => {
            let (default_w, default_h) = if video { (854, 480) } else { (1024, 1024) };
            let long = match input["resolution"].as_str() {
                Some("480p") => 854,
                Some("720p") => 1280,
                Some("1080p") => 1920,
                _ => default_w.max(default_h),
            };
            match input["aspect_ratio"].as_str().and_then(ratio) {
                Some((rw, rh)) if rw >= rh => (long, long * rh / rw),
                Some((rw, rh)) => (long * rw / rh, long),
                None if input["resolution"].is_string() => (long, long * 9 / 16),
                None => (default_w, default_h),
            }
        }
    };
    // H.264 in yuv420p wants even sides.
    let side = |n: u32| (n.clamp(16, MAX_SIDE) + 1) & !1;
    let fps = number("fps").or_else(|| number("frames_per_second")).map_or(16, |f| f as u32).clamp(1, 60);
    let frames = if video {
        let asked = number("num_frames")
            .or_else(|| number("frames"))
            .map(|f| f as u32)
            .or_else(|| number("duration").map(|d| (d * f64::from(fps)) as u32))
            .unwrap_or(fps * 3 / 2);
        asked.clamp(1, fps * MAX_VIDEO_SECONDS)
    } else {
        1
    };
    Plan { video, width: side(width), height: side(height), frames, fps }
}

/// `16:9` → (16, 9).
fn ratio(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once(':')?;
    let (w, h) = (w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

/// Renders `plan` into `dir` and returns the file's bytes.
pub(super) async fn render(dir: &Path, id: &str, plan: &Plan) -> Result<Vec<u8>, String> {
    let path = dir.join(format!("{id}-{}", plan.file_name()));
    let source = format!("testsrc=size={}x{}:rate={}", plan.width, plan.height, plan.fps);
    let mut cmd = tokio::process::Command::new("ffmpeg");
    cmd.args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", &source]);
    let frames = plan.frames.to_string();
    cmd.args(["-frames:v", &frames]);
    if plan.video {
        cmd.args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ]);
    }
    let out = cmd.arg(&path).kill_on_drop(true).output().await.map_err(|e| format!("ffmpeg: {e}"))?;
    if !out.status.success() {
        return Err(format!("ffmpeg: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let bytes = tokio::fs::read(&path).await.map_err(|e| format!("reading the output: {e}"))?;
    let _ = tokio::fs::remove_file(&path).await;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn models_and_inputs_choose_the_output() {
        let flux = plan("black-forest-labs/flux-schnell", &json!({"prompt": "a cat"}));
        assert_eq!((flux.video, flux.width, flux.height, flux.frames), (false, 1024, 1024, 1));
        let sized = plan("black-forest-labs/flux-dev", &json!({"width": 513, "height": 300}));
        assert_eq!((sized.width, sized.height), (514, 300));
        let wide = plan("black-forest-labs/flux-dev", &json!({"aspect_ratio": "16:9"}));
        assert_eq!((wide.width, wide.height), (1024, 576));
        let wan = plan("wan-video/wan-2.2-t2v-fast", &json!({"prompt": "waves"}));
        assert_eq!((wan.video, wan.width, wan.height, wan.frames, wan.fps), (true, 854, 480, 24, 16));
        let i2v = plan("wavespeedai/wan-2.1-i2v-480p", &json!({"num_frames": 81, "resolution": "720p"}));
        assert_eq!((i2v.video, i2v.width, i2v.height, i2v.frames), (true, 1280, 720, 32));
        let asked = plan("someone/generator", &json!({"duration": 1}));
        assert_eq!((asked.video, asked.frames, asked.file_name()), (true, 16, "output.mp4"));
    }
}
