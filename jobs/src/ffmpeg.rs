//! Running ffmpeg: progress from `-progress pipe:1`, a bounded tail of
//! stderr for the logs, and cancellation that kills the process (and waits
//! for it) rather than leaving it to finish on its own.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

const STDERR_TAIL: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FfmpegError {
    #[error("ffmpeg exited with {status}: {stderr}")]
    Exit { status: String, stderr: String },
    #[error("cancelled")]
    Canceled,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Runs `ffmpeg <args>` (the `-progress pipe:1 -nostats` flags are added
/// here). `duration_us` turns `out_time_us` into a percentage, reported
/// below 100 until the process has exited successfully. `pid` receives the
/// process id while it runs.
pub async fn run(
    args: Vec<OsString>,
    duration_us: Option<u64>,
    mut on_progress: impl FnMut(u8) + Send,
    cancel: CancellationToken,
    pid: Option<Arc<AtomicU32>>,
) -> Result<(), FfmpegError> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-progress", "pipe:1", "-nostats"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // If this task is dropped (worker shutdown, panic), ffmpeg goes too.
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    if let (Some(slot), Some(id)) = (&pid, child.id()) {
        slot.store(id, Ordering::Release);
    }
    let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("ffmpeg stdout"))?;
    let mut stderr = child.stderr.take().ok_or_else(|| std::io::Error::other("ffmpeg stderr"))?;
    let stderr_task = tokio::spawn(async move {
        let mut tail: VecDeque<u8> = VecDeque::with_capacity(STDERR_TAIL);
        let mut buf = [0u8; 1024];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            for b in &buf[..n] {
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(*b);
            }
        }
        String::from_utf8_lossy(&tail.into_iter().collect::<Vec<_>>()).trim().to_owned()
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut last = 0u8;
    let outcome = loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = child.kill().await;
                break Err(FfmpegError::Canceled);
            }
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    let Some(us) = line.strip_prefix("out_time_us=").and_then(|v| v.trim().parse::<i64>().ok()) else {
                        continue;
                    };
                    if let Some(total) = duration_us.filter(|t| *t > 0) {
                        let pct = ((us.max(0) as u64).saturating_mul(100) / total).min(99) as u8;
                        if pct > last {
                            last = pct;
                            on_progress(pct);
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    let status = child.wait().await?;
                    if status.success() {
                        break Ok(());
                    }
                    let stderr = stderr_task.await.unwrap_or_default();
                    break Err(FfmpegError::Exit { status: status.to_string(), stderr });
                }
            }
        }
    };
    if let Some(slot) = &pid {
        slot.store(0, Ordering::Release);
    }
    if outcome.is_ok() {
        on_progress(100);
    }
    outcome
}
