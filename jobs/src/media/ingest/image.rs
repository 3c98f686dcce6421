//! Images: the size from the header, then a decode under limits, the
//! orientation applied, a clean re-encode and a thumbnail.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Write};
use std::path::Path;

use ::image::codecs::jpeg::JpegEncoder;
use ::image::codecs::png::PngEncoder;
use ::image::{
    DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageError, ImageFormat, ImageReader,
    Limits, Rgb, RgbImage,
};
use tokio_util::sync::CancellationToken;

use super::{Format, IngestError, Ingested, THUMBNAIL_MAX_SIDE};
use crate::backend::MediaKind;
use crate::media::MediaError;

const JPEG_QUALITY: u8 = 90;
const THUMBNAIL_QUALITY: u8 = 80;

/// Bytes per pixel of the widest picture the accepted formats decode to
/// (16-bit RGBA PNG).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// What a decoder may hold besides the picture: ICC and EXIF blocks, PNG
/// text chunks, the JPEG decoder's copy of the file.
const DECODER_HEADROOM: u64 = 64 << 20;

const UNREADABLE: &str = "The image could not be read; it may be damaged or incomplete.";

pub(super) async fn ingest_image(
    input: &Path,
    format: Format,
    limits: &super::IngestLimits,
    out_dir: &Path,
    cancel: &CancellationToken,
) -> Result<Ingested, IngestError> {
    let (input, out) = (input.to_path_buf(), out_dir.to_path_buf());
    let max_pixels = limits.max_image_pixels;
    // Decoding and encoding are CPU-bound for up to seconds: off the runtime.
    let clean = tokio::task::spawn_blocking(move || clean(&input, format, max_pixels, &out))
        .await
        .map_err(|e| MediaError::Io(std::io::Error::other(e)))??;
    if cancel.is_cancelled() {
        return Err(IngestError::Canceled);
    }
    let mut files = vec![clean.image.to_owned(), "thumb.jpg".to_owned()];
    files.sort();
    Ok(Ingested {
        kind: MediaKind::Image,
        content_type: format.content_type(),
        width: clean.width,
        height: clean.height,
        duration_seconds: None,
        image: Some(clean.image.into()),
        thumbnail: "thumb.jpg".into(),
        poster: None,
        video: None,
        files,
    })
}

struct Clean {
    width: u32,
    height: u32,
    image: &'static str,
}

fn clean(input: &Path, format: Format, max_pixels: u64, out_dir: &Path) -> Result<Clean, IngestError> {
    let (image_format, name) = match format {
        Format::Jpeg => (ImageFormat::Jpeg, "image.jpg"),
        Format::Png => (ImageFormat::Png, "image.png"),
        // No lossy WebP encoder here, and a lossless one makes files larger
        // than PNG's.
        Format::Webp => (ImageFormat::WebP, "image.png"),
        other => return Err(IngestError::Rejected(format!("{} is not an image format.", other.name()))),
    };
    let mut img = decode(input, image_format, max_pixels)?;
    std::fs::create_dir_all(out_dir).map_err(MediaError::from)?;
    let (icc, orientation) = (img.icc, img.orientation);
    img.picture.apply_orientation(orientation);
    let picture = img.picture;
    let mut file = BufWriter::new(File::create(out_dir.join(name)).map_err(MediaError::from)?);
    let written = if image_format == ImageFormat::Jpeg {
        let mut encoder = JpegEncoder::new_with_quality(&mut file, JPEG_QUALITY);
        keep_icc(&mut encoder, icc);
        picture.write_with_encoder(encoder)
    } else {
        let mut encoder = PngEncoder::new(&mut file);
        keep_icc(&mut encoder, icc);
        picture.write_with_encoder(encoder)
    };
    written.map_err(encode_failed)?;
    file.flush().map_err(MediaError::from)?;
    write_thumbnail(&picture, &out_dir.join("thumb.jpg"))?;
    Ok(Clean { width: picture.width(), height: picture.height(), image: name })
}

struct Decoded {
    picture: DynamicImage,
    orientation: ::image::metadata::Orientation,
    icc: Option<Vec<u8>>,
}

/// The picture, unless its header declares more than `max_pixels`: that
/// is refused before a single pixel buffer is allocated, so a few bytes
/// declaring a gigantic image cost nothing. The decode itself runs under
/// `image`'s limits too, in case a decoder allocates more than its header
/// promised.
fn decode(input: &Path, format: ImageFormat, max_pixels: u64) -> Result<Decoded, IngestError> {
    let mut limits = Limits::default();
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL).saturating_add(DECODER_HEADROOM));
    let file = File::open(input).map_err(MediaError::from)?;
    let mut reader = ImageReader::with_format(BufReader::new(file), format);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| unreadable(e, max_pixels))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(IngestError::Rejected(format!(
            "The image is {width}×{height} pixels; the most allowed is {} megapixels.",
            megapixels(max_pixels)
        )));
    }
    if width == 0 || height == 0 {
        return Err(IngestError::Rejected(UNREADABLE.into()));
    }
    // Broken metadata does not make a broken picture: it is dropped anyway.
    let orientation = decoder.orientation().unwrap_or(::image::metadata::Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let picture = DynamicImage::from_decoder(decoder).map_err(|e| unreadable(e, max_pixels))?;
    Ok(Decoded { picture, orientation, icc })
}

/// Writes `thumb.jpg` from a JPEG (a video's poster).
pub(super) fn thumbnail_from_jpeg(src: &Path, dest: &Path, max_pixels: u64) -> Result<(), IngestError> {
    let decoded = decode(src, ImageFormat::Jpeg, max_pixels)?;
    write_thumbnail(&decoded.picture, dest)
}

/// A JPEG whose longest side is at most [`THUMBNAIL_MAX_SIDE`]; smaller
/// pictures keep their size. Transparency is laid on white, as a page
/// would show it.
fn write_thumbnail(picture: &DynamicImage, dest: &Path) -> Result<(), IngestError> {
    let small = if picture.width().max(picture.height()) > THUMBNAIL_MAX_SIDE {
        picture.thumbnail(THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE)
    } else {
        picture.clone()
    };
    let rgba = small.to_rgba8();
    let on_white = |c: u8, a: u8| ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a))) / 255) as u8;
    let rgb = RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y);
        Rgb([on_white(p[0], p[3]), on_white(p[1], p[3]), on_white(p[2], p[3])])
    });
    let mut file = BufWriter::new(File::create(dest).map_err(MediaError::from)?);
    JpegEncoder::new_with_quality(&mut file, THUMBNAIL_QUALITY)
        .write_image(rgb.as_raw(), rgb.width(), rgb.height(), ExtendedColorType::Rgb8)
        .map_err(encode_failed)?;
    file.flush().map_err(MediaError::from)?;
    Ok(())
}

/// The colour profile is not personal data, and without it a wide-gamut
/// photo would look washed out.
fn keep_icc(encoder: &mut impl ImageEncoder, icc: Option<Vec<u8>>) {
    if let Some(icc) = icc
        && let Err(e) = encoder.set_icc_profile(icc)
    {
        tracing::debug!(error = %e, "the ICC profile of an upload was dropped");
    }
}

fn unreadable(e: ImageError, max_pixels: u64) -> IngestError {
    match e {
        ImageError::Limits(_) => IngestError::Rejected(format!(
            "The image is too large to process; the most allowed is {} megapixels.",
            megapixels(max_pixels)
        )),
        ImageError::IoError(e)
            if !matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::InvalidData | ErrorKind::InvalidInput
            ) =>
        {
            IngestError::Failed(e.into())
        }
        other => {
            tracing::debug!(error = %other, "an upload is not a readable image");
            IngestError::Rejected(UNREADABLE.into())
        }
    }
}

fn encode_failed(e: ImageError) -> IngestError {
    match e {
        ImageError::IoError(e) => IngestError::Failed(e.into()),
        other => IngestError::Failed(MediaError::Failed {
            user_message: "The image could not be processed.".into(),
            detail: other.to_string(),
        }),
    }
}

fn megapixels(pixels: u64) -> String {
    if pixels.is_multiple_of(1_000_000) {
        (pixels / 1_000_000).to_string()
    } else {
        format!("{:.1}", pixels as f64 / 1e6)
    }
}
