//! Following one prediction to its end: webhook deliveries when there are
//! any, polls when there are none (always one right after subscribing, one
//! after every reconnection of the hub, and one whenever Replicate has been
//! quiet for `quiet`), then the outputs downloaded.

use std::path::PathBuf;

use futures_util::future::try_join_all;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::hub::{Hub, Subscription};
use super::prediction::{Seen, Status, Step, output_urls, user_error};
use super::*;

/// How long a follower waits for the hub to listen before polling anyway.
const HUB_WAIT: Duration = Duration::from_secs(2);
/// Polling without webhooks: from this, doubling…
const POLL_MIN: Duration = Duration::from_millis(500);
/// …up to this.
const POLL_MAX: Duration = Duration::from_secs(5);

pub(super) struct Follow {
    pub(super) client: Client,
    pub(super) job: RenderJob,
    pub(super) hub: Option<Arc<Hub>>,
    pub(super) quiet: Duration,
    pub(super) tx: mpsc::Sender<Event>,
}

/// What came from the hub.
enum Heard {
    Delivery(Value),
    /// The hub reconnected: deliveries may have been missed.
    Reconnected,
}

/// The next thing the hub says to this follower; never, without one.
async fn heard(sub: &mut Option<Subscription>) -> Heard {
    let Some(s) = sub else { return std::future::pending().await };
    tokio::select! {
        d = s.deliveries.recv() => match d {
            Some(v) => Heard::Delivery(v),
            None => std::future::pending().await,
        },
        changed = s.epoch.changed() => match changed {
            Ok(()) => Heard::Reconnected,
            Err(_) => std::future::pending().await,
        },
    }
}

impl Follow {
    pub(super) async fn run(self) {
        let end = self.follow().await;
        if let Some(ev) = end {
            let _ = self.tx.send(ev).await;
        }
    }

    /// `None` when the receiver went away (the job was cancelled or
    /// abandoned).
    async fn follow(&self) -> Option<Event> {
        let id = match find(&self.client, &self.job.id).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                return Some(Err(RenderError::Lost(format!(
                    "{}: no prediction of job {} (created before a crash, never recorded)",
                    self.client.base, self.job.id
                ))));
            }
            Err(e) => return Some(Err(e)),
        };
        if id != self.job.id && self.tx.send(Ok(RenderEvent::Located(id.clone()))).await.is_err() {
            return None;
        }
        let mut sub = self.hub.as_ref().map(|hub| hub.subscribe(&id));
        if let Some(s) = sub.as_mut() {
            s.ready(HUB_WAIT).await;
        }
        let webhooks = sub.is_some();
        let mut seen = Seen::default();
        let mut delay = POLL_MIN;
        // The first poll at once: what happened while nobody listened.
        let mut next_poll = Instant::now();
        loop {
            let prediction = tokio::select! {
                _ = self.tx.closed() => return None,
                _ = tokio::time::sleep_until(next_poll) => {
                    let got = self.client.get_json(&format!("/v1/predictions/{id}")).await;
                    next_poll = Instant::now() + if webhooks {
                        self.quiet
                    } else {
                        let d = delay;
                        delay = (delay * 2).min(POLL_MAX);
                        d
                    };
                    match got {
                        Ok(Some(p)) => p,
                        Ok(None) => {
                            return Some(Err(RenderError::Lost(format!(
                                "{}: Replicate knows no prediction {id}",
                                self.client.base
                            ))));
                        }
                        Err(e) => return Some(Err(e)),
                    }
                }
                heard = heard(&mut sub) => match heard {
                    Heard::Delivery(p) => {
                        next_poll = Instant::now() + self.quiet;
                        p
                    }
                    Heard::Reconnected => {
                        next_poll = Instant::now();
                        continue;
                    }
                },
            };
            if prediction["id"].as_str() != Some(id.as_str()) {
                continue;
            }
            match seen.observe(&prediction) {
                Step::Nothing => {}
                Step::Progress { stage, percent } => {
                    let ev = Ok(RenderEvent::Progress { stage: stage.to_owned(), percent });
                    if self.tx.send(ev).await.is_err() {
                        return None;
                    }
                }
                Step::End(status) => {
                    // A delivery or a poll may carry the end; a poll gives
                    // the full prediction either way.
                    return Some(self.end(&id, status, prediction, seen.percent()).await);
                }
            }
        }
    }

    async fn end(&self, id: &str, status: Status, prediction: Value, percent: u8) -> Event {
        match status {
            Status::Succeeded => {
                let ev =
                    Ok(RenderEvent::Progress { stage: status.stage().to_owned(), percent: percent.max(99) });
                let _ = self.tx.send(ev).await;
                let outputs = self.collect(id, &prediction).await?;
                let _ =
                    self.tx.send(Ok(RenderEvent::Progress { stage: "rendered".into(), percent: 100 })).await;
                Ok(RenderEvent::Finished(outputs))
            }
            Status::Failed => Err(RenderError::Failed {
                user_message: user_error(&prediction),
                detail: format!(
                    "{}: prediction {id} failed: {}",
                    self.client.base,
                    client::clip(&prediction["error"].to_string())
                ),
            }),
            Status::Canceled => Err(RenderError::Failed {
                user_message: "The render was canceled on Replicate.".into(),
                detail: format!(
                    "{}: prediction {id} was canceled on Replicate, not by Mage",
                    self.client.base
                ),
            }),
            // It never ran (its deadline passed while it waited for a GPU):
            // a new prediction may get one.
            Status::Aborted => Err(RenderError::Lost(format!(
                "{}: prediction {id} was aborted before it started",
                self.client.base
            ))),
            Status::Starting | Status::Processing => {
                Err(RenderError::Unavailable(format!("{}: prediction {id} has not ended", self.client.base)))
            }
        }
    }

    /// Downloads every output at once (Replicate deletes them an hour after
    /// the prediction), the primary one first.
    async fn collect(&self, id: &str, prediction: &Value) -> Result<RenderOutput, RenderError> {
        let urls = output_urls(&prediction["output"]);
        if urls.is_empty() || prediction["data_removed"].as_bool() == Some(true) {
            if prediction["data_removed"].as_bool() == Some(true) {
                return Err(RenderError::Lost(format!(
                    "{}: the outputs of {id} were removed",
                    self.client.base
                )));
            }
            return Err(RenderError::Failed {
                user_message: "The renderer produced nothing.".into(),
                detail: format!("{}: prediction {id} succeeded without an output URL", self.client.base),
            });
        }
        tokio::fs::create_dir_all(&self.job.work_dir).await?;
        let targets: Vec<(String, PathBuf)> = urls
            .iter()
            .enumerate()
            .map(|(n, url)| (url.clone(), self.job.work_dir.join(format!("output-{n}.{}", extension(url)))))
            .collect();
        let downloads = try_join_all(targets.iter().map(|(url, to)| self.client.download(url, to)));
        let done = tokio::select! {
            // Cancelled meanwhile: no files appear after the cancel.
            _ = self.tx.closed() => Err(RenderError::Canceled),
            done = downloads => done,
        };
        let done = match done {
            Ok(done) => done,
            Err(e) => {
                remove_all(&targets).await;
                return Err(e);
            }
        };
        if done.iter().any(|ok| !ok) {
            remove_all(&targets).await;
            return Err(RenderError::Lost(format!(
                "{}: the outputs of {id} are gone (Replicate keeps them an hour)",
                self.client.base
            )));
        }
        let files = targets.into_iter().map(|(_, p)| p).collect();
        match primary_first(files, self.job.kind) {
            Some(files) => {
                tracing::info!(prediction_id = %id, files = files.len(), "Replicate outputs downloaded");
                Ok(RenderOutput { files })
            }
            None => Err(RenderError::Failed {
                user_message: "The renderer produced nothing.".into(),
                detail: format!(
                    "{}: prediction {id} has no {:?} output among {urls:?}",
                    self.client.base, self.job.kind
                ),
            }),
        }
    }
}

async fn remove_all(targets: &[(String, PathBuf)]) {
    for (_, path) in targets {
        let _ = tokio::fs::remove_file(path).await;
    }
}

/// The file extension an output URL names (`…/output.mp4` → `mp4`), or
/// `bin`.
pub(super) fn extension(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default();
    match name.rsplit_once('.') {
        Some((_, ext)) if (1..=5).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            ext.to_ascii_lowercase()
        }
        _ => "bin".into(),
    }
}

const VIDEO_EXTS: &[&str] = &["mp4", "webm", "mov", "mkv", "gif"];
const IMAGE_EXTS: &[&str] = &["png", "jpg", "jpeg", "webp"];

/// The first file of the job's kind moved to the front.
pub(super) fn primary_first(mut files: Vec<PathBuf>, kind: MediaKind) -> Option<Vec<PathBuf>> {
    let exts = if kind == MediaKind::Video { VIDEO_EXTS } else { IMAGE_EXTS };
    let primary = files
        .iter()
        .position(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)))?;
    let p = files.remove(primary);
    files.insert(0, p);
    Some(files)
}

/// The prediction of a job: its id when the job is named by one; when it
/// is named by Mage's job id (the worker that created it died before
/// recording the prediction's id), the recent prediction whose webhook URL
/// carries `job=<that id>`. `None`: there is none.
pub(super) async fn find(client: &Client, job_id: &str) -> Result<Option<String>, RenderError> {
    if !is_mage_job_id(job_id) {
        return Ok(Some(job_id.to_owned()));
    }
    let mut page = client.get_json("/v1/predictions").await?;
    for _ in 0..LIST_PAGES {
        let Some(list) = page else { return Ok(None) };
        for p in list["results"].as_array().into_iter().flatten() {
            if p["webhook"].as_str().is_some_and(|w| names_job(w, job_id))
                && let Some(id) = p["id"].as_str()
            {
                tracing::info!(job_id, prediction_id = id, "found the prediction of an unrecorded job");
                return Ok(Some(id.to_owned()));
            }
        }
        let Some(next) = list["next"].as_str().filter(|n| !n.is_empty()) else { return Ok(None) };
        page = if client.owns(next) {
            client.get_url(next).await?
        } else {
            // Not sent anywhere with the token: the same page of the API.
            let path = next.find("/v1/").map(|i| &next[i..]).unwrap_or("/v1/predictions");
            client.get_json(path).await?
        };
    }
    Ok(None)
}

/// Mage names jobs with UUIDs; Replicate's prediction ids are not UUIDs.
pub(super) fn is_mage_job_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

/// Whether a webhook URL carries `job=<job_id>`.
pub(super) fn names_job(webhook: &str, job_id: &str) -> bool {
    reqwest::Url::parse(webhook)
        .map(|u| u.query_pairs().any(|(k, v)| k == "job" && v == job_id))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn output_names_keep_their_extension() {
        assert_eq!(extension("https://replicate.delivery/xezq/abc/output.mp4"), "mp4");
        assert_eq!(extension("https://x/d/out.PNG?sig=1"), "png");
        assert_eq!(extension("https://x/d/output"), "bin");
        assert_eq!(extension("https://x/d/a.b/c"), "bin");
        assert_eq!(extension("https://x/d/../../etc/passwd.x/../y"), "bin");
    }

    #[test]
    fn the_primary_output_comes_first_by_kind() {
        let files: Vec<PathBuf> = ["output-0.png", "output-1.mp4"].iter().map(PathBuf::from).collect();
        assert_eq!(primary_first(files.clone(), MediaKind::Video).unwrap()[0], PathBuf::from("output-1.mp4"));
        assert_eq!(primary_first(files, MediaKind::Image).unwrap()[0], PathBuf::from("output-0.png"));
        assert!(primary_first(vec![PathBuf::from("output-0.bin")], MediaKind::Image).is_none());
    }

    #[test]
    fn jobs_are_found_by_the_webhook_url() {
        let job = "2f1e1d36-6f0e-4a4e-9a57-3c2f0c5e9b11";
        assert!(is_mage_job_id(job));
        assert!(!is_mage_job_id("gm3qorzdhgbfurvjtvhg6dckhu"));
        let hook = format!("https://mage.example/webhooks/replicate?generation=g&job={job}");
        assert!(names_job(&hook, job));
        assert!(!names_job(&format!("{hook}0"), job));
        assert!(!names_job("https://mage.example/webhooks/replicate?generation=g", job));
        assert!(!names_job("not a url", job));
    }
}
