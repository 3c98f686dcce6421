//! Upload ingest against the real `image` decoders, ffprobe and ffmpeg.
//! Every fixture is made here: by ffmpeg, by the image crate, or byte by
//! byte.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::metadata::Orientation;
use image::{
    DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageReader, Rgb, RgbImage, Rgba, RgbaImage,
};
use mage_jobs::backend::MediaKind;
use mage_jobs::media::{self, IngestError, IngestLimits, Ingested};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);

async fn ingest_with(
    input: &Path,
    declared: MediaKind,
    limits: &IngestLimits,
    out: &Path,
) -> Result<Ingested, IngestError> {
    let run = media::ingest(input, declared, limits, out, |_| {}, CancellationToken::new());
    tokio::time::timeout(LIMIT, run).await.expect("ingest within the limit")
}

async fn ingest(input: &Path, declared: MediaKind, out: &Path) -> Result<Ingested, IngestError> {
    ingest_with(input, declared, &IngestLimits::default(), out).await
}

/// The reason of a rejection, after checking nothing was left behind.
fn rejected(res: Result<Ingested, IngestError>, out: &Path) -> String {
    let reason = match res {
        Err(IngestError::Rejected(reason)) => reason,
        other => panic!("expected Rejected, got {other:?}"),
    };
    assert!(!reason.is_empty() && !reason.contains('/'), "a reason for the user: {reason}");
    let left = if out.exists() { names_under(out) } else { Vec::new() };
    assert!(left.is_empty(), "nothing is left in out_dir: {left:?}");
    reason
}

/// Files under `dir`, relative and `/`-separated, sorted.
fn names_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for entry in std::fs::read_dir(dir.join(&rel)).expect("fixture") {
            let entry = entry.expect("fixture");
            let child = rel.join(entry.file_name());
            if entry.file_type().expect("fixture").is_dir() {
                todo.push(child);
            } else {
                out.push(child.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn dimensions(path: &Path) -> (u32, u32) {
    ImageReader::open(path)
        .expect("fixture")
        .with_guessed_format()
        .expect("fixture")
        .into_dimensions()
        .expect("fixture")
}

/// Left half red, right half blue.
fn halves(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(
        width,
        height,
        |x, _| if x < width / 2 { Rgb([220, 20, 20]) } else { Rgb([20, 20, 220]) },
    )
}

#[tokio::test]
async fn a_jpeg_loses_its_exif_and_gps_and_is_turned_upright() {
    let dir = TempDir::new().unwrap();
    let marker = b"MAGE-SECRET-GPS-TRAIL";
    let mut plain = Vec::new();
    JpegEncoder::new_with_quality(&mut plain, 95).encode_image(&halves(800, 400)).unwrap();
    let app1 = mage_fakes::fixtures::exif_app1(marker);
    let photo = [&plain[..2], &app1, &plain[2..]].concat();
    let src = dir.path().join("photo.jpg");
    std::fs::write(&src, &photo).unwrap();
    // The fixture is what it claims: EXIF a decoder reads, GPS inside.
    let mut decoder = ImageReader::open(&src).unwrap().into_decoder().unwrap();
    assert_eq!(decoder.orientation().unwrap(), Orientation::Rotate90);
    assert!(contains(&photo, b"Exif\0\0") && contains(&photo, marker));

    let out = dir.path().join("out");
    let got = ingest(&src, MediaKind::Image, &out).await.unwrap();
    assert_eq!(got.kind, MediaKind::Image);
    assert_eq!(got.content_type, "image/jpeg");
    assert_eq!((got.width, got.height), (400, 800), "width and height swapped by the orientation");
    assert_eq!(got.image.as_deref(), Some("image.jpg"));
    assert_eq!(got.thumbnail, "thumb.jpg");
    assert_eq!((got.poster.as_ref(), got.video.as_ref(), got.duration_seconds), (None, None, None));
    assert_eq!(got.files, ["image.jpg", "thumb.jpg"]);
    assert_eq!(names_under(&out), got.files);

    let clean = std::fs::read(out.join("image.jpg")).unwrap();
    assert_eq!(&clean[..3], [0xff, 0xd8, 0xff], "still a JPEG");
    assert!(!contains(&clean, b"Exif"), "no EXIF left");
    assert!(!contains(&clean, marker), "no GPS left");
    assert!(!contains(&clean, &2405u32.to_be_bytes()), "no GPS latitude left");
    let mut decoder = ImageReader::open(out.join("image.jpg")).unwrap().into_decoder().unwrap();
    assert_eq!(decoder.orientation().unwrap(), Orientation::NoTransforms);
    let upright = DynamicImage::from_decoder(decoder).unwrap().to_rgb8();
    assert_eq!(upright.dimensions(), (400, 800));
    // Turned clockwise: the left (red) half is now on top.
    let top = upright.get_pixel(200, 200);
    let bottom = upright.get_pixel(200, 600);
    assert!(top[0] > 150 && top[2] < 100, "top is red: {top:?}");
    assert!(bottom[2] > 150 && bottom[0] < 100, "bottom is blue: {bottom:?}");
    assert_eq!(dimensions(&out.join("thumb.jpg")), (160, 320));
}

#[tokio::test]
async fn a_png_stays_a_png_and_its_thumbnail_is_small() {
    let dir = TempDir::new().unwrap();
    let picture = RgbaImage::from_fn(500, 300, |x, y| {
        Rgba([(x % 256) as u8, (y % 256) as u8, 90, if x < 250 { 255 } else { 0 }])
    });
    let src = dir.path().join("upload.bin");
    picture.save_with_format(&src, image::ImageFormat::Png).unwrap();
    let out = dir.path().join("out");
    let got = ingest(&src, MediaKind::Image, &out).await.unwrap();
    assert_eq!((got.content_type, got.width, got.height), ("image/png", 500, 300));
    assert_eq!(got.image.as_deref(), Some("image.png"));
    assert_eq!(got.files, ["image.png", "thumb.jpg"]);
    let clean = image::open(out.join("image.png")).unwrap().to_rgba8();
    assert_eq!(clean, picture, "PNG is lossless: the same pixels, alpha included");
    let thumb = image::open(out.join("thumb.jpg")).unwrap().to_rgb8();
    assert_eq!(thumb.dimensions(), (320, 192));
    let see_through = thumb.get_pixel(300, 100);
    assert!(see_through.0.iter().all(|c| *c > 230), "transparency is laid on white: {see_through:?}");
}

#[tokio::test]
async fn a_webp_becomes_a_png() {
    let dir = TempDir::new().unwrap();
    let picture = halves(64, 48);
    let mut bytes = Vec::new();
    WebPEncoder::new_lossless(&mut bytes)
        .write_image(picture.as_raw(), 64, 48, ExtendedColorType::Rgb8)
        .unwrap();
    let src = dir.path().join("a.webp");
    std::fs::write(&src, &bytes).unwrap();
    let out = dir.path().join("out");
    let got = ingest(&src, MediaKind::Image, &out).await.unwrap();
    assert_eq!((got.content_type, got.width, got.height), ("image/webp", 64, 48));
    assert_eq!(got.image.as_deref(), Some("image.png"));
    assert_eq!(&std::fs::read(out.join("image.png")).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(image::open(out.join("image.png")).unwrap().to_rgb8(), picture);
    assert_eq!(dimensions(&out.join("thumb.jpg")), (64, 48), "a small picture is not enlarged");
}

#[tokio::test]
async fn a_zip_named_png_is_rejected() {
    let dir = TempDir::new().unwrap();
    // A stored (uncompressed) one-file ZIP: local header, data, central
    // directory, end record.
    let name = b"notes.txt";
    let data = b"not a picture";
    let mut zip = b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
    zip.extend([0u8; 4]); // crc-32, unchecked here
    zip.extend((data.len() as u32).to_le_bytes());
    zip.extend((data.len() as u32).to_le_bytes());
    zip.extend((name.len() as u16).to_le_bytes());
    zip.extend(0u16.to_le_bytes());
    zip.extend(name);
    zip.extend(data);
    zip.extend(b"PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    let src = dir.path().join("holiday.png");
    std::fs::write(&src, &zip).unwrap();
    let out = dir.path().join("out");
    let reason = rejected(ingest(&src, MediaKind::Image, &out).await, &out);
    assert!(reason.contains("ZIP archive"), "{reason}");
}

/// `/proc/self/status`'s VmHWM (peak resident memory) in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("fixture");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).expect("fixture").parse::<u64>().expect("fixture") * 1024
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[tokio::test]
async fn a_png_declaring_60000_by_60000_pixels_is_rejected_without_allocating_it() {
    let dir = TempDir::new().unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(60_000u32.to_be_bytes());
    ihdr.extend(60_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB: 10.8 GB decoded
    png_chunk(&mut png, b"IHDR", &ihdr);
    // A zlib stream with one stored block of zeros: the start of the rows.
    let zeros = [0u8; 900];
    let mut idat = vec![0x78, 0x01, 0x01];
    idat.extend((zeros.len() as u16).to_le_bytes());
    idat.extend((!(zeros.len() as u16)).to_le_bytes());
    idat.extend(zeros);
    idat.extend([0u8; 4]); // adler-32, never reached
    png_chunk(&mut png, b"IDAT", &idat);
    png_chunk(&mut png, b"IEND", &[]);
    assert!(png.len() < 1100, "about 1 KB: {}", png.len());
    let src = dir.path().join("bomb.png");
    std::fs::write(&src, &png).unwrap();

    let out = dir.path().join("out");
    let before = peak_rss();
    let res = ingest(&src, MediaKind::Image, &out).await;
    let grown = peak_rss().saturating_sub(before);
    let reason = rejected(res, &out);
    assert!(reason.contains("60000×60000") && reason.contains("40 megapixels"), "{reason}");
    assert!(grown < 64 << 20, "peak memory grew by {} MB", grown >> 20);
}

#[tokio::test]
async fn the_pixel_limit_comes_from_the_limits() {
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("a.png");
    halves(500, 300).save_with_format(&src, image::ImageFormat::Png).unwrap();
    let out = dir.path().join("out");
    let limits = IngestLimits { max_image_pixels: 100_000, ..IngestLimits::default() };
    let reason = rejected(ingest_with(&src, MediaKind::Image, &limits, &out).await, &out);
    assert!(reason.contains("500×300") && reason.contains("0.1 megapixels"), "{reason}");
}

#[tokio::test]
async fn a_truncated_image_is_rejected() {
    let dir = TempDir::new().unwrap();
    let mut bytes = Vec::new();
    PngEncoder::new(Cursor::new(&mut bytes))
        .write_image(halves(300, 200).as_raw(), 300, 200, ExtendedColorType::Rgb8)
        .unwrap();
    bytes.truncate(bytes.len() / 2);
    let src = dir.path().join("cut.png");
    std::fs::write(&src, &bytes).unwrap();
    let out = dir.path().join("out");
    let reason = rejected(ingest(&src, MediaKind::Image, &out).await, &out);
    assert!(reason.contains("could not be read"), "{reason}");
}

async fn ffmpeg(args: &[&str], dest: &Path) {
    let status = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .arg(dest)
        .status()
        .await
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg {args:?}");
}

/// A clip of `testsrc2` in H.264.
async fn clip(dest: &Path, size: &str, seconds: &str, extra: &[&str]) {
    let source = format!("testsrc2=s={size}:rate=25");
    let mut args = vec!["-f", "lavfi", "-i", &source, "-t", seconds];
    args.extend(["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]);
    args.extend(extra);
    ffmpeg(&args, dest).await;
}

#[tokio::test]
async fn a_1080p_mp4_becomes_an_hls_ladder_with_poster_and_thumbnail() {
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("upload.mp4");
    clip(&src, "1920x1080", "2", &[]).await;
    let out = dir.path().join("out");
    let seen = std::sync::Mutex::new(Vec::new());
    let limits = IngestLimits::default();
    let run = media::ingest(
        &src,
        MediaKind::Video,
        &limits,
        &out,
        |p| seen.lock().unwrap().push(p),
        CancellationToken::new(),
    );
    let got = tokio::time::timeout(LIMIT, run).await.unwrap().unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(seen.iter().filter(|p| **p == 100).count(), 1, "100 once, last: {seen:?}");
    assert_eq!(seen.last(), Some(&100));

    assert_eq!((got.kind, got.content_type), (MediaKind::Video, "video/mp4"));
    assert_eq!((got.width, got.height), (1920, 1080));
    assert!((got.duration_seconds.unwrap() - 2.0).abs() < 0.2, "{:?}", got.duration_seconds);
    assert_eq!(
        (got.image.as_deref(), got.poster.as_deref(), got.thumbnail.as_str()),
        (None, Some("poster.jpg"), "thumb.jpg")
    );
    let video = got.video.as_ref().unwrap();
    let rungs: Vec<&str> = video.renditions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(rungs, ["1080p", "720p", "480p", "360p"]);
    assert_eq!(names_under(&out), got.files, "files lists exactly what was written");
    for name in ["hls/master.m3u8", "poster.jpg", "thumb.jpg", "video.mp4", "hls/1080p/index.m3u8"] {
        assert!(got.files.iter().any(|f| f == name), "{name} in {:?}", got.files);
    }
    let master = media::probe(&out.join(&video.master_playlist)).await.unwrap();
    assert_eq!((master.width, master.height), (1920, 1080));
    assert_eq!(dimensions(&out.join("poster.jpg")), (1920, 1080));
    assert_eq!(dimensions(&out.join("thumb.jpg")), (320, 180));
}

#[tokio::test]
async fn a_truncated_mp4_is_rejected() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("out");
    // A camera writes the index (moov) last: a cut upload has none. With
    // the index first, the file claims its full length and half is there.
    for (name, extra) in [("moov-last.mp4", &[][..]), ("moov-first.mp4", &["-movflags", "+faststart"][..])] {
        let whole = dir.path().join(name);
        clip(&whole, "320x240", "4", extra).await;
        let bytes = std::fs::read(&whole).unwrap();
        let src = dir.path().join("cut.mp4");
        std::fs::write(&src, &bytes[..bytes.len() / 2]).unwrap();
        let reason = rejected(ingest(&src, MediaKind::Video, &out).await, &out);
        assert!(reason.contains("could not be read as a video"), "{name}: {reason}");
    }
}

/// Sets a file's access time well into the past, so that reading it moves
/// the access time (relatime updates an access time older than the
/// modification time).
fn age_access_time(path: &Path) -> SystemTime {
    let past = SystemTime::now() - Duration::from_secs(3 * 86_400);
    let file = std::fs::File::options().write(true).open(path).expect("fixture");
    file.set_times(std::fs::FileTimes::new().set_accessed(past)).expect("fixture");
    std::fs::metadata(path).expect("fixture").accessed().expect("fixture")
}

#[tokio::test]
async fn a_playlist_named_mp4_reads_no_other_file() {
    let dir = TempDir::new().unwrap();
    // A file the playlist points at, named so ffmpeg's HLS demuxer would
    // open it: its access time tells whether anything read it.
    let canary = dir.path().join("canary.mp4");
    std::fs::write(&canary, b"secret").unwrap();
    let canary_seen = age_access_time(&canary);
    let playlist = format!(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{}\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
        canary.display()
    );
    let src = dir.path().join("movie.mp4");
    std::fs::write(&src, &playlist).unwrap();
    let out = dir.path().join("out");
    let reason = rejected(ingest(&src, MediaKind::Video, &out).await, &out);
    assert!(reason.contains("not an image or a video"), "{reason}");
    assert_eq!(
        std::fs::metadata(&canary).unwrap().accessed().unwrap(),
        canary_seen,
        "nothing read the canary"
    );

    // The same playlist behind an MP4 signature passes the sniffing, and
    // is then read as an MP4 (which it is not), never as a playlist.
    let disguised =
        [b"\x00\x00\x00\x14ftypisom\x00\x00\x02\x00isom".as_slice(), playlist.as_bytes()].concat();
    std::fs::write(&src, &disguised).unwrap();
    let reason = rejected(ingest(&src, MediaKind::Video, &out).await, &out);
    assert!(reason.contains("could not be read as a video"), "{reason}");
    assert_eq!(
        std::fs::metadata(&canary).unwrap().accessed().unwrap(),
        canary_seen,
        "nothing read the canary"
    );
}

#[tokio::test]
async fn content_of_the_other_kind_than_declared_is_rejected() {
    let dir = TempDir::new().unwrap();
    let video = dir.path().join("photo.jpg");
    clip(&video, "320x240", "1", &["-f", "mp4"]).await;
    let out = dir.path().join("out");
    let reason = rejected(ingest(&video, MediaKind::Image, &out).await, &out);
    assert!(reason.contains("video") && reason.contains("an image was expected"), "{reason}");

    let picture = dir.path().join("clip.mp4");
    halves(64, 48).save_with_format(&picture, image::ImageFormat::Png).unwrap();
    let reason = rejected(ingest(&picture, MediaKind::Video, &out).await, &out);
    assert!(reason.contains("image") && reason.contains("a video was expected"), "{reason}");
}

#[tokio::test]
async fn videos_beyond_the_limits_are_rejected() {
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("long.webm");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=320x240:rate=10",
            "-t",
            "3",
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
        ],
        &src,
    )
    .await;
    let out = dir.path().join("out");
    let short = IngestLimits { max_seconds: 1.0, ..IngestLimits::default() };
    let reason = rejected(ingest_with(&src, MediaKind::Video, &short, &out).await, &out);
    assert_eq!(reason, "The video is 3 seconds long; the most allowed is 1 second.");

    let small_box = IngestLimits { max_long_side: 300, max_short_side: 200, ..IngestLimits::default() };
    let reason = rejected(ingest_with(&src, MediaKind::Video, &small_box, &out).await, &out);
    assert!(reason.contains("320×240") && reason.contains("300×200"), "{reason}");

    // Within the limits, the same WebM is taken.
    let got = ingest(&src, MediaKind::Video, &out).await.unwrap();
    assert_eq!((got.content_type, got.width, got.height), ("video/webm", 320, 240));
}
