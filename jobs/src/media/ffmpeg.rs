//! Running ffmpeg: the command every run shares, its progress lines, its
//! exit and the tail of its stderr for the logs.

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio_util::sync::CancellationToken;

use super::*;

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

/// Options before `-i` (and before ffprobe's input) for every run whose
/// input a user may have supplied: only local files can be opened, so a
/// playlist or a reference inside the file cannot make ffmpeg fetch a URL
/// or open another protocol.
pub(crate) const USER_INPUT_OPTIONS: [&str; 2] = ["-protocol_whitelist", "file"];

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

pub(super) async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut Option<tokio::io::Lines<R>>,
) -> Option<String> {
    match lines {
        Some(l) => l.next_line().await.ok().flatten(),
        None => None,
    }
}

/// `out_time_us=…` of ffmpeg's `-progress` output (`out_time_ms` is in
/// microseconds too, despite its name); `N/A` before the first frame.
pub(super) fn out_time_us(line: &str) -> Option<u64> {
    let value = line.strip_prefix("out_time_us=").or_else(|| line.strip_prefix("out_time_ms="))?;
    value.trim().parse::<i64>().ok().map(|v| v.max(0).unsigned_abs())
}

/// The last [`STDERR_TAIL_BYTES`] of ffmpeg's stderr, as text.
pub(super) async fn stderr_tail(mut stderr: ChildStderr) -> String {
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

/// Deletes a file that may not exist. Other failures are only logged: the
/// caller is already on its way out with a better error.
pub(crate) async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not delete a partial output");
    }
}
