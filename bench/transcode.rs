//! Mage's single-pass HLS ladder against one ffmpeg run per rendition.
//!
//! Makes a 10 s 1080p30 source once (ffmpeg's `testsrc2`, which moves),
//! then times `mage_jobs::media::transcode_video` (what the transcode job
//! runs: one decode split into the 1080p/720p/480p/360p HLS rungs, the
//! download MP4 and the poster) against the same outputs made the usual
//! way: ffprobe, then one ffmpeg per rendition (each decoding the source
//! again) with the same encoder settings, one after the other. Both use
//! every core.
//!
//! Run through `bench/transcode [repeats=1]` (figures are means over the
//! repeats); writes `bench/transcode.json`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde_json::json;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// The rungs Mage makes of a 1080p source: short side and video kbit/s, as
/// `LADDER` in `jobs/src/media.rs` (checked against the single pass's
/// master playlist below).
const LADDER: &[(u32, u32)] = &[(1080, 5000), (720, 2800), (480, 1400), (360, 800)];
const SEGMENT_SECONDS: u32 = 2;

fn ffmpeg(cwd: &Path) -> Command {
    let mut cmd = Command::new("ffmpeg");
    cmd.current_dir(cwd)
        .args(["-hide_banner", "-nostdin", "-y", "-loglevel", "error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// CPU seconds used by this process's waited-for children so far
/// (`cutime` + `cstime` of /proc/self/stat, in clock ticks of 1/100 s).
fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<u64> = rest.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    // cutime and cstime are fields 16 and 17 (1-based) of the whole line;
    // here, after dropping pid, comm and state, they are at 12 and 13.
    let ticks = fields.get(12).copied().unwrap_or(0) + fields.get(13).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// CPU seconds the whole machine has been busy (all cores, /proc/stat), to
/// tell how much else ran beside ffmpeg.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 =
        ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    busy as f64 / 100.0
}

async fn make_source(dir: &Path) -> PathBuf {
    let src = dir.join("source.mp4");
    let mut cmd = ffmpeg(dir);
    cmd.args(["-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30:duration=10"])
        .args(["-pix_fmt", "yuv420p"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-g", "60"])
        .arg(&src);
    run(cmd, "making the source").await;
    src
}

/// The same outputs as the single pass, one ffmpeg per rendition.
async fn per_rendition(src: &Path, out: &Path) {
    let probe = mage_jobs::media::probe(src).await.expect("probe");
    assert!(probe.width >= probe.height, "the source is landscape");
    per_rendition_hls_only(src, out).await;
    let src_arg = format!("file:{}", std::path::absolute(src).expect("absolute").display());
    let mut mp4 = ffmpeg(out);
    mp4.args(["-i", &src_arg, "-map", "0:v:0", "-vf", "scale=-2:1080,format=yuv420p"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-crf", "21", "-an"])
        .args(["-movflags", "+faststart", "video.mp4"]);
    run(mp4, "download MP4").await;
    let mut poster = ffmpeg(out);
    poster
        .args(["-ss", "1", "-i", &src_arg, "-frames:v", "1", "-vf", "scale=-2:1080", "-q:v", "3"])
        .arg("poster.jpg");
    run(poster, "poster").await;
}

/// The four HLS rungs only (no MP4, no poster): the narrowest reading of
/// "once per rendition".
async fn per_rendition_hls_only(src: &Path, out: &Path) {
    let src_arg = format!("file:{}", std::path::absolute(src).expect("absolute").display());
    for &(side, kbps) in LADDER {
        let dir = out.join(format!("hls/{side}p"));
        tokio::fs::create_dir_all(&dir).await.expect("mkdir");
        let mut cmd = ffmpeg(&dir);
        cmd.args(["-i", &src_arg, "-map", "0:v:0", "-vf", &format!("scale=-2:{side},format=yuv420p")])
            .args(["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high"])
            .args(["-b:v", &format!("{kbps}k"), "-maxrate", &format!("{}k", kbps * 11 / 10)])
            .args(["-bufsize", &format!("{}k", kbps * 2)])
            .args(["-force_key_frames", &format!("expr:gte(t,n_forced*{SEGMENT_SECONDS})")])
            .args(["-sc_threshold", "0", "-an"])
            .args(["-f", "hls", "-hls_time", &SEGMENT_SECONDS.to_string(), "-hls_playlist_type", "vod"])
            .args(["-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4"])
            .args(["-hls_flags", "independent_segments", "-hls_segment_filename", "seg_%03d.m4s"])
            .arg("index.m3u8");
        run(cmd, &format!("rendition {side}p")).await;
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[tokio::main]
async fn main() {
    let repeats: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let tmp = tempfile::tempdir().expect("temp dir");
    let made = Instant::now();
    let src = make_source(tmp.path()).await;
    let source_seconds = made.elapsed().as_secs_f64();
    let probe = mage_jobs::media::probe(&src).await.expect("probe");
    println!(
        "transcode: source {}x{} {:.1} s ({} codec), made in {source_seconds:.1} s; {} cores",
        probe.width,
        probe.height,
        probe.duration_seconds,
        probe.codec,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    let (busy0, children0, t0) = (machine_busy_seconds(), children_cpu_seconds(), Instant::now());
    let (mut single, mut per, mut hls_only) = (Vec::new(), Vec::new(), Vec::new());
    let (mut single_cpu, mut per_cpu, mut hls_only_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut renditions = Vec::new();
    for r in 0..repeats {
        // Alternate which goes first, so a drift in the machine's speed
        // does not favour one side.
        for side in if r % 2 == 0 { ["single", "per"] } else { ["per", "single"] } {
            let out = tmp.path().join(format!("{side}-{r}"));
            let (cpu, t) = (children_cpu_seconds(), Instant::now());
            if side == "single" {
                let done = mage_jobs::media::transcode_video(&src, &out, |_| {}, CancellationToken::new())
                    .await
                    .expect("single-pass transcode");
                single.push(t.elapsed().as_secs_f64());
                single_cpu.push(children_cpu_seconds() - cpu);
                renditions =
                    done.renditions.iter().map(|r| format!("{}x{}", r.width, r.height)).collect::<Vec<_>>();
                assert_eq!(done.renditions.len(), LADDER.len(), "the single pass made the same rungs");
            } else {
                per_rendition(&src, &out).await;
                per.push(t.elapsed().as_secs_f64());
                per_cpu.push(children_cpu_seconds() - cpu);
            }
        }
        print!("  run {}: single pass {:.2} s, per rendition {:.2} s", r + 1, single[r], per[r]);
        // The narrow reading, once: it only tells where the time goes.
        if r == 0 {
            let out = tmp.path().join("hls-only");
            let (cpu, t) = (children_cpu_seconds(), Instant::now());
            per_rendition_hls_only(&src, &out).await;
            hls_only.push(t.elapsed().as_secs_f64());
            hls_only_cpu.push(children_cpu_seconds() - cpu);
            print!(", per rendition (HLS rungs only) {:.2} s", hls_only[0]);
        }
        println!();
    }
    let elsewhere = (machine_busy_seconds() - busy0) - (children_cpu_seconds() - children0);
    let elsewhere_percent = (100.0 * elsewhere / t0.elapsed().as_secs_f64()).max(0.0);
    let (s, p, h) = (mean(&single), mean(&per), mean(&hls_only));
    println!("  renditions             {}", renditions.join(", "));
    println!(
        "  single pass            {s:.2} s wall, {:.1} s CPU  (HLS ladder + MP4 + poster, one decode)",
        mean(&single_cpu)
    );
    println!(
        "  per rendition          {p:.2} s wall, {:.1} s CPU  (same outputs, 6 ffmpeg runs)",
        mean(&per_cpu)
    );
    println!("  ratio                  {:.2}x  (target <= 0.6x)", s / p);
    println!(
        "  per rendition, HLS only {h:.2} s wall, {:.1} s CPU  (4 runs; ratio {:.2}x, though the single pass also makes the MP4 and poster)",
        mean(&hls_only_cpu),
        s / h
    );
    println!("  rest of the machine    {elsewhere_percent:.0}% of one core meanwhile (ideally near 0)");
    let report = json!({ "transcode": {
        "seconds": { "single_pass": s, "per_rendition": p, "per_rendition_hls_only": h },
        "cpu_seconds": { "single_pass": mean(&single_cpu), "per_rendition": mean(&per_cpu), "per_rendition_hls_only": mean(&hls_only_cpu) },
        "ratio": s / p,
        "ratio_hls_only": s / h,
        "runs": { "single_pass": single, "per_rendition": per, "per_rendition_hls_only": hls_only },
        "source": { "width": probe.width, "height": probe.height, "seconds": probe.duration_seconds, "fps": 30, "pattern": "testsrc2" },
        "renditions": renditions,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "rest_of_machine_cpu_percent_of_one_core": elsewhere_percent,
    }});
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    std::fs::write("bench/transcode.json", text + "\n").expect("write bench/transcode.json");
}
