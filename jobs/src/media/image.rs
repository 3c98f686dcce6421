//! An image into a web-sized image and a poster.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::ffmpeg::*;
use super::*;

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
    cmd.args(USER_INPUT_OPTIONS).arg("-i").arg(ffmpeg_input(input)?).args(["-filter_complex", &graph]);
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
