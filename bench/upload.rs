//! Uploads: PUT throughput through Mage against the disk, and the time from
//! `completeUpload` to READY against the transcode alone.
//!
//! 1. **PUT.** A release `mage serve` with local storage (MAGE_MEDIA_DIR a
//!    temporary folder on this machine's disk). A user asks `createUpload`
//!    for a `video/mp4` of N MB and PUTs the bytes to the returned `url`
//!    (Mage's own `PUT /uploads/{id}?expires=&signature=`), streamed from
//!    memory in 256 KiB slices with a Content-Length; timed from the first
//!    byte sent to the 200. The ceiling is the same bytes written the way
//!    object_store's `LocalFileSystem` multipart upload (what Mage stores
//!    through) writes them, in the same folder: a new `<key>#1` file, 8 MiB
//!    parts (Mage's part size) written at their offsets, then a rename onto
//!    the key, then an fsync of the file and its folder, as Mage does before
//!    answering 200 (a PUT is acknowledged once durable, as S3 does). Each
//!    file is deleted after its run, so every run starts from the same
//!    page cache (the pages of a just-deleted file free: without that, a
//!    run's speed depended on how much the kernel had to reclaim first);
//!    the two sides alternate which goes first, and each side's figure is
//!    its best run.
//! 2. **Ingest.** A 10 s 1080p30 MP4 (ffmpeg `testsrc2` + a sine tone,
//!    libx264 ultrafast) uploaded the same way; timed from `completeUpload`
//!    to `asset(id) { status }` answering READY (polled every 50 ms), with a
//!    `mage work` running. The baseline is the transcode alone:
//!    `mage_jobs::media::transcode_video` on the same file, what
//!    `bench/transcode` reports as Mage's figure.
//!
//! With `taskset` and two or more cores, `mage serve` runs on core 0 and
//! this driver on core 1 for the PUTs; for the ingest both the driver and
//! `mage work` use every core (as ffmpeg does in `bench/transcode`).
//!
//! Expects `DATABASE_URL` (a fresh, migrated database of its own),
//! `REDIS_URL` and `MAGE_REDIS_PREFIX`. Run through
//! `bench/upload [MB=200] [PUT repeats=5] [ingest repeats=1]`. Writes
//! `bench/upload.json`.

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cores, JWT_SECRET, Server, psql};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const USER: &str = "00000000-0000-4000-8000-000000300000";
const SEED_SQL: &str = "INSERT INTO users (id, email, password_hash, created_at) VALUES \
     ('00000000-0000-4000-8000-000000300000', 'upload@bench.invalid', 'not-a-password-hash', now());";

/// object_store's part size as Mage uses it (`CHUNK` in domain/src/storage).
const PART: usize = 8 * 1024 * 1024;
/// How the client hands the body to hyper.
const SEND_SLICE: usize = 256 * 1024;
const MB: f64 = 1_000_000.0;

const CREATE_UPLOAD: &str =
    "mutation($i: CreateUploadInput!) { createUpload(input: $i) { url asset { id } } }";
const COMPLETE: &str = "mutation($id: ID!) { completeUpload(id: $id) { status } }";
const STATUS: &str = "query($id: ID!) { asset(id: $id) { status error } }";

struct Client {
    http: reqwest::Client,
    graphql: String,
    token: String,
}

impl Client {
    async fn gql(&self, query: &str, variables: Value) -> Result<Value, String> {
        let res = self
            .http
            .post(&self.graphql)
            .bearer_auth(&self.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .map_err(|e| format!("GraphQL: {e}"))?;
        let body: Value = res.json().await.map_err(|e| format!("GraphQL answer: {e}"))?;
        if body.get("errors").is_some() {
            return Err(format!("GraphQL errors: {body}"));
        }
        Ok(body["data"].clone())
    }

    /// `createUpload` for `bytes`: the asset id and the URL to PUT to.
    async fn create(&self, filename: &str, size: usize) -> Result<(String, String), String> {
        let i = json!({ "filename": filename, "contentType": "video/mp4", "byteSize": size });
        let d = self.gql(CREATE_UPLOAD, json!({ "i": i })).await?;
        let id = d["createUpload"]["asset"]["id"].as_str().ok_or(format!("no asset id: {d}"))?;
        let url = d["createUpload"]["url"].as_str().ok_or(format!("no url: {d}"))?;
        Ok((id.to_owned(), url.to_owned()))
    }

    /// PUTs `bytes` to `url` in slices (no copy: each is a view of
    /// `bytes`); the seconds until the 200.
    async fn put(&self, url: &str, bytes: &Bytes) -> Result<f64, String> {
        let slices: Vec<Result<Bytes, std::io::Error>> = (0..bytes.len())
            .step_by(SEND_SLICE)
            .map(|at| Ok(bytes.slice(at..(at + SEND_SLICE).min(bytes.len()))))
            .collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(slices));
        let started = Instant::now();
        let res = self
            .http
            .put(url)
            .header("Content-Type", "video/mp4")
            .header("Content-Length", bytes.len())
            .body(body)
            .send()
            .await
            .map_err(|e| format!("PUT: {e}"))?;
        let seconds = started.elapsed().as_secs_f64();
        let status = res.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!("PUT answered {status}: {}", res.text().await.unwrap_or_default()));
        }
        Ok(seconds)
    }
}

/// The ceiling: `bytes` written as object_store's local multipart upload
/// writes them (see the module comment); the seconds it took.
fn write_like_object_store(dest: &Path, bytes: &[u8]) -> std::io::Result<f64> {
    let started = Instant::now();
    let staged = PathBuf::from(format!("{}#1", dest.display()));
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&staged)?;
    for (i, part) in bytes.chunks(PART).enumerate() {
        file.seek(SeekFrom::Start((i * PART) as u64))?;
        file.write_all(part)?;
    }
    std::fs::rename(&staged, dest)?;
    drop(file);
    std::fs::File::open(dest)?.sync_all()?;
    if let Some(dir) = dest.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Bytes that do not compress or repeat (as a video's do), made once.
fn payload(size: usize) -> Bytes {
    let mut v = vec![0u8; size];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for word in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
    Bytes::from(v)
}

fn fastest(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The filesystem holding `dir`, as `df` names it (device and type).
fn filesystem(dir: &Path) -> String {
    Command::new("df")
        .args(["--output=source,fstype"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.lines().nth(1).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")))
        .unwrap_or_else(|| "unknown".into())
}

async fn make_video(dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("source.mp4");
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-y", "-loglevel", "error"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30:duration=10"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=10"])
        .args(["-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest"])
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("ffmpeg: {e}"))?;
    if !out.status.success() {
        return Err(format!("making the source: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(src)
}

/// Uploads `video`, then times `completeUpload` → READY.
async fn ingest_once(client: &Client, video: &Bytes) -> Result<f64, String> {
    let (id, url) = client.create("source.mp4", video.len()).await?;
    client.put(&url, video).await?;
    let started = Instant::now();
    let d = client.gql(COMPLETE, json!({ "id": id })).await?;
    if d["completeUpload"]["status"] != "PROCESSING" {
        return Err(format!("completeUpload: {d}"));
    }
    loop {
        let d = client.gql(STATUS, json!({ "id": id })).await?;
        match d["asset"]["status"].as_str() {
            Some("READY") => return Ok(started.elapsed().as_secs_f64()),
            Some("REJECTED") => return Err(format!("the video was rejected: {d}")),
            _ if started.elapsed() > Duration::from_secs(600) => {
                return Err(format!("not READY after 10 minutes: {d}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn transcode_once(src: &Path, out: &Path) -> Result<f64, String> {
    let started = Instant::now();
    mage_jobs::media::transcode_video(src, out, |_| {}, CancellationToken::new())
        .await
        .map_err(|e| format!("transcode: {e}"))?;
    Ok(started.elapsed().as_secs_f64())
}

struct Args {
    mb: usize,
    put_repeats: usize,
    ingest_repeats: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default).max(1);
    let args = Args { mb: num(1, 200), put_repeats: num(2, 5), ingest_repeats: num(3, 1) };
    // Before any thread exists, so every thread inherits the pinning.
    let cores = Cores::pin_self();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let code = match runtime.block_on(bench(args, cores)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("upload: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn bench(args: Args, cores: Cores) -> Result<bool, String> {
    let db = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let redis_url = std::env::var("REDIS_URL").map_err(|_| "REDIS_URL is not set")?;
    let prefix = std::env::var("MAGE_REDIS_PREFIX").map_err(|_| "MAGE_REDIS_PREFIX is not set")?;
    let mage = std::env::var("MAGE_BIN").unwrap_or_else(|_| "target/release/mage".into());
    let log = std::env::var("MAGE_LOG").unwrap_or_else(|_| "warn".into());
    let load_before = common::load_average();
    let size = args.mb * 1_000_000;

    psql(&db, SEED_SQL)?;
    let tokens = mage_api::auth::Tokens::new(JWT_SECRET, Duration::from_secs(3600));
    let (token, _) = tokens
        .issue(USER.parse().map_err(|e| format!("user id: {e}"))?, uuid::Uuid::new_v4())
        .map_err(|e| format!("token: {e:?}"))?;

    // On the disk, not a tmpfs: the folder this is run from.
    let media = tempfile::Builder::new()
        .prefix("upload-bench-")
        .tempdir_in(std::env::current_dir().map_err(|e| format!("cwd: {e}"))?)
        .map_err(|e| format!("media dir: {e}"))?;
    let fs = filesystem(media.path());
    // Room for every PUT and the videos, above the defaults only when needed.
    let max_video = (500 * 1024 * 1024).max(size);
    let quota = (5_i64 << 30).max(((args.put_repeats + 1) * size + 200_000_000 * args.ingest_repeats) as i64);

    let addr = format!("127.0.0.1:{}", common::free_port());
    let public_url = format!("http://{addr}");
    let mut cmd = cores.server_command(&mage);
    cmd.arg("serve")
        .env("DATABASE_URL", &db)
        .env("REDIS_URL", &redis_url)
        .env("MAGE_REDIS_PREFIX", &prefix)
        .env("MAGE_ADDR", &addr)
        .env("MAGE_PUBLIC_URL", &public_url)
        .env("MAGE_JWT_SECRET", JWT_SECRET)
        .env("MAGE_MEDIA_DIR", media.path())
        .env("MAGE_MAX_VIDEO_BYTES", max_video.to_string())
        .env("MAGE_STORAGE_QUOTA_BYTES", quota.to_string())
        .env("MAGE_UPLOADS_PER_MINUTE", "1000")
        .env("MAGE_SKIP_MIGRATIONS", "true")
        .env("MAGE_LOG", &log);
    let mut server = Server::spawn("mage serve", cmd);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    server.wait_ready(&http, &format!("{public_url}/readyz")).await?;
    let client = Client { http, graphql: format!("{public_url}/graphql"), token };

    // 1. PUT through Mage against the same bytes written to the same folder.
    let bytes = payload(size);
    let ceiling_dir = media.path().join("ceiling");
    std::fs::create_dir_all(&ceiling_dir).map_err(|e| format!("{}: {e}", ceiling_dir.display()))?;
    // Warm-up: the connection, the server's pool, the folders.
    let (warm_id, url) = client.create("warm-up.mp4", size).await?;
    client.put(&url, &bytes).await?;
    let warm = ceiling_dir.join("warm-up");
    write_like_object_store(&warm, &bytes).map_err(|e| format!("ceiling: {e}"))?;
    let _ = std::fs::remove_file(&warm);
    let _ = std::fs::remove_file(media.path().join("uploads").join(&warm_id));
    let (mut through_mage, mut ceiling) = (Vec::new(), Vec::new());
    for r in 0..args.put_repeats {
        for side in if r % 2 == 0 { ["mage", "disk"] } else { ["disk", "mage"] } {
            if side == "mage" {
                let (id, url) = client.create(&format!("put-{r}.mp4"), size).await?;
                through_mage.push(client.put(&url, &bytes).await?);
                let stored = media.path().join("uploads").join(&id);
                std::fs::remove_file(&stored).map_err(|e| format!("{}: {e}", stored.display()))?;
            } else {
                let dest = ceiling_dir.join(format!("put-{r}"));
                let (data, written) = (bytes.clone(), dest.clone());
                let seconds = tokio::task::spawn_blocking(move || write_like_object_store(&written, &data))
                    .await
                    .map_err(|e| format!("ceiling task: {e}"))?
                    .map_err(|e| format!("ceiling: {e}"))?;
                ceiling.push(seconds);
                std::fs::remove_file(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
            }
        }
        println!(
            "  PUT run {}: Mage {:.0} MB/s, disk {:.0} MB/s",
            r + 1,
            size as f64 / MB / through_mage[r],
            size as f64 / MB / ceiling[r]
        );
    }
    drop(bytes);
    // The PUT bytes are not needed again: room for the videos.
    let _ = std::fs::remove_dir_all(media.path().join("uploads"));
    let _ = std::fs::remove_dir_all(&ceiling_dir);
    // The best run of each side: on a shared machine other work only ever
    // slows a sub-second run down, and by a different amount each time.
    let mage_mb_s = size as f64 / MB / fastest(&through_mage);
    let disk_mb_s = size as f64 / MB / fastest(&ceiling);

    // 2. completeUpload → READY against the transcode alone, on every core.
    if cores.pinned {
        let all = format!("0-{}", cores.count - 1);
        let pid = std::process::id().to_string();
        let unpinned = Command::new("taskset")
            .args(["-a", "-c", "-p", &all, &pid])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unpinned {
            return Err("could not unpin the driver for the transcodes".into());
        }
    }
    let work_dir = tempfile::tempdir_in(media.path()).map_err(|e| format!("work dir: {e}"))?;
    let made = Instant::now();
    let src = make_video(work_dir.path()).await?;
    let probe = mage_jobs::media::probe(&src).await.map_err(|e| format!("probe: {e}"))?;
    let video = Bytes::from(std::fs::read(&src).map_err(|e| format!("{}: {e}", src.display()))?);
    println!(
        "  video: {}x{} {:.1} s, {:.1} MB, made in {:.1} s",
        probe.width,
        probe.height,
        probe.duration_seconds,
        video.len() as f64 / MB,
        made.elapsed().as_secs_f64()
    );
    let mut cmd = Command::new(&mage);
    cmd.arg("work")
        .env("DATABASE_URL", &db)
        .env("REDIS_URL", &redis_url)
        .env("MAGE_REDIS_PREFIX", &prefix)
        .env("MAGE_MEDIA_DIR", media.path())
        .env("MAGE_SKIP_MIGRATIONS", "true")
        .env("MAGE_LOG", &log);
    let worker = Server::spawn("mage work", cmd);
    let (mut ingest, mut transcode) = (Vec::new(), Vec::new());
    for r in 0..args.ingest_repeats {
        for side in if r % 2 == 0 { ["transcode", "ingest"] } else { ["ingest", "transcode"] } {
            if side == "ingest" {
                ingest.push(ingest_once(&client, &video).await?);
            } else {
                let out = work_dir.path().join(format!("transcode-{r}"));
                transcode.push(transcode_once(&src, &out).await?);
                let _ = std::fs::remove_dir_all(&out);
            }
        }
        println!(
            "  ingest run {}: completeUpload→READY {:.2} s, transcode alone {:.2} s",
            r + 1,
            ingest[r],
            transcode[r]
        );
    }
    worker.stop();
    server.stop();
    let (ingest_s, transcode_s) = (mean(&ingest), mean(&transcode));

    let put_ratio = mage_mb_s / disk_mb_s;
    let ingest_ratio = ingest_s / transcode_s;
    println!(
        "upload: {} MB PUT {} times; {}",
        args.mb,
        args.put_repeats,
        cores.describe("mage serve", "this driver")
    );
    println!("  media folder           {} ({fs})", media.path().display());
    println!("  PUT through Mage       {mage_mb_s:.0} MB/s  (best of {})", args.put_repeats);
    println!(
        "  written to disk        {disk_mb_s:.0} MB/s  (best of {}; 8 MiB parts, rename, fsync: as Mage)",
        args.put_repeats
    );
    println!("  ratio                  {put_ratio:.2}x  (target >= 0.7x)");
    println!("  completeUpload→READY   {ingest_s:.2} s  (10 s 1080p, mage work)");
    println!("  transcode alone        {transcode_s:.2} s  (mage_jobs::media::transcode_video)");
    println!("  ratio                  {ingest_ratio:.2}x  (target <= 1.10x)");
    println!("  load average           {load_before} before, {} after", common::load_average());

    common::write_json(
        "bench/upload.json",
        &json!({ "upload": {
            "put_mb_per_s": { "mage": mage_mb_s, "disk_ceiling": disk_mb_s },
            "put_ratio": put_ratio,
            "ingest_seconds": { "mage": ingest_s, "transcode_alone": transcode_s },
            "ingest_ratio": ingest_ratio,
            "runs": {
                "put_seconds": { "mage": through_mage, "disk_ceiling": ceiling },
                "ingest_seconds": { "mage": ingest, "transcode_alone": transcode },
            },
            "put_bytes": size,
            "video": { "width": probe.width, "height": probe.height, "seconds": probe.duration_seconds, "bytes": video.len(), "encoder": "libx264 ultrafast", "pattern": "testsrc2 + sine" },
            "filesystem": fs,
            "cores": cores.count,
            "pinned": cores.pinned,
            "load_average_before": load_before,
        }}),
    );
    Ok(true)
}
