//! Reading a Replicate prediction: its status, how far its logs say it is,
//! its output URLs and its error; and [`Seen`], which keeps the furthest
//! state a job reached, so a webhook that arrives late or out of order
//! never moves a generation backwards.

use serde_json::Value;

/// Only the end of long logs is read for the progress bar.
const LOG_TAIL: usize = 4096;
pub const USER_MESSAGE_MAX: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    /// Ended before it started (its `Cancel-After` deadline passed while it
    /// waited for a GPU).
    Aborted,
}

impl Status {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "starting" => Self::Starting,
            "processing" => Self::Processing,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            "aborted" => Self::Aborted,
            _ => return None,
        })
    }

    pub fn of(prediction: &Value) -> Option<Self> {
        prediction["status"].as_str().and_then(Self::parse)
    }

    /// How far along the lifecycle: every terminal status ranks alike.
    fn rank(self) -> u8 {
        match self {
            Self::Starting => 0,
            Self::Processing => 1,
            _ => 2,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.rank() == 2
    }

    /// The stage shown to the user while the prediction is in this status.
    pub fn stage(self) -> &'static str {
        match self {
            Self::Starting => "waiting for a GPU",
            Self::Processing => "rendering",
            Self::Succeeded => "downloading",
            Self::Failed | Self::Canceled | Self::Aborted => "ended",
        }
    }
}

/// The last percentage a tqdm bar printed in `logs`
/// (` 45%|████▌     | 45/100 [00:10<00:12, 4.5it/s]` → 45).
pub fn tqdm_percent(logs: &str) -> Option<u8> {
    let mut start = logs.len().saturating_sub(LOG_TAIL);
    while !logs.is_char_boundary(start) {
        start += 1;
    }
    let tail = &logs[start..];
    let mut found = None;
    let mut rest = tail;
    while let Some(i) = rest.find("%|") {
        let head = &rest[..i];
        let digits = &head[head.trim_end_matches(|c: char| c.is_ascii_digit()).len()..];
        if let Ok(p) = digits.parse::<u8>()
            && p <= 100
        {
            found = Some(p);
        }
        rest = &rest[i + 2..];
    }
    found
}

/// Every URL in a prediction's `output`: a string, a list of them, or an
/// object (whose values may be either, taken in key order), each once.
pub fn output_urls(output: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s)
                if (s.starts_with("https://") || s.starts_with("http://")) && !out.contains(s) =>
            {
                out.push(s.clone());
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => m.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(output, &mut out);
    out
}

/// Replicate's `error`, fit to show the user: trimmed, on one line,
/// bounded.
pub fn user_error(prediction: &Value) -> String {
    let text = match &prediction["error"] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    if text.trim().is_empty() {
        return "The render failed on Replicate.".into();
    }
    bounded(&text)
}

/// `text` on one line (runs of whitespace made one space), at most
/// [`USER_MESSAGE_MAX`] characters.
pub fn bounded(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > USER_MESSAGE_MAX {
        return one_line.chars().take(USER_MESSAGE_MAX - 1).collect::<String>() + "…";
    }
    one_line
}

/// The furthest state of one prediction this worker has seen.
#[derive(Debug, Default)]
pub struct Seen {
    status: Option<Status>,
    percent: u8,
    stage: &'static str,
}

/// What one look at a prediction means for the job.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing new (or older than what was seen).
    Nothing,
    Progress {
        stage: &'static str,
        percent: u8,
    },
    /// It ended with this status.
    End(Status),
}

impl Seen {
    pub fn percent(&self) -> u8 {
        self.percent
    }

    pub fn observe(&mut self, prediction: &Value) -> Step {
        let Some(status) = Status::of(prediction) else { return Step::Nothing };
        if self.status.is_some_and(|s| s.rank() > status.rank()) {
            return Step::Nothing;
        }
        self.status = Some(status);
        if status.is_terminal() {
            return Step::End(status);
        }
        // 100 is for a finished job.
        let logged = prediction["logs"].as_str().and_then(tqdm_percent).unwrap_or(0).min(99);
        let percent = self.percent.max(if status == Status::Processing { logged } else { 0 });
        let stage = status.stage();
        if (percent, stage) == (self.percent, self.stage) {
            return Step::Nothing;
        }
        self.percent = percent;
        self.stage = stage;
        Step::Progress { stage, percent }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn tqdm_bars_give_the_last_percentage() {
        let logs = "Loading model\n  0%|          | 0/100 [00:00<?, ?it/s]\r 12%|█▏        | 12/100 [00:02<00:20, 4.4it/s]\r 45%|████▌     | 45/100 [00:10<00:12, 4.5it/s]";
        assert_eq!(tqdm_percent(logs), Some(45));
        assert_eq!(tqdm_percent("100%|██████████| 4/4 [00:01<00:00, 3.1it/s]\nsaving"), Some(100));
        assert_eq!(tqdm_percent("Using seed 42\nno bar here, 50% done"), None);
        assert_eq!(tqdm_percent(""), None);
        // A bar far back in long logs is not looked for.
        let long = format!(" 30%|███ | 3/10\n{}", "x".repeat(LOG_TAIL + 10));
        assert_eq!(tqdm_percent(&long), None);
        // Multi-byte text at the cut does not panic.
        assert_eq!(tqdm_percent(&format!("{} 7%|▋", "█".repeat(3000))), Some(7));
    }

    #[test]
    fn every_output_url_is_collected_once_in_order() {
        assert_eq!(output_urls(&json!("https://d/a.mp4")), ["https://d/a.mp4"]);
        assert_eq!(
            output_urls(&json!(["https://d/a.png", "https://d/b.png"])),
            ["https://d/a.png", "https://d/b.png"]
        );
        // An object's values in key order (the primary one is picked by
        // kind afterwards).
        assert_eq!(
            output_urls(
                &json!({"video": "https://d/v.mp4", "frames": ["https://d/1.png", "https://d/v.mp4"], "n": 3})
            ),
            ["https://d/1.png", "https://d/v.mp4"]
        );
        assert!(output_urls(&json!(null)).is_empty());
        assert!(output_urls(&json!("just text")).is_empty());
    }

    #[test]
    fn errors_reach_the_user_on_one_bounded_line() {
        assert_eq!(
            user_error(&json!({"error": "  CUDA out of memory.\n Tried to allocate  "})),
            "CUDA out of memory. Tried to allocate"
        );
        assert_eq!(user_error(&json!({"error": null})), "The render failed on Replicate.");
        let long = user_error(&json!({"error": "e".repeat(1000)}));
        assert_eq!(long.chars().count(), USER_MESSAGE_MAX);
    }

    #[test]
    fn late_and_out_of_order_states_never_move_back() {
        let mut seen = Seen::default();
        assert_eq!(
            seen.observe(&json!({"status": "starting", "logs": null})),
            Step::Progress { stage: "waiting for a GPU", percent: 0 }
        );
        assert_eq!(
            seen.observe(&json!({"status": "processing", "logs": " 40%|████ | 4/10"})),
            Step::Progress { stage: "rendering", percent: 40 }
        );
        // An older delivery: an earlier status, a lower percentage.
        assert_eq!(seen.observe(&json!({"status": "starting"})), Step::Nothing);
        assert_eq!(seen.observe(&json!({"status": "processing", "logs": " 20%|██ | 2/10"})), Step::Nothing);
        // A second bar starting over keeps the furthest percentage.
        assert_eq!(
            seen.observe(&json!({"status": "processing", "logs": " 40%|████ | 4/10\n  5%|▌ | 1/20"})),
            Step::Nothing
        );
        assert_eq!(
            seen.observe(&json!({"status": "processing", "logs": "100%|██████████| 10/10"})),
            Step::Progress { stage: "rendering", percent: 99 }
        );
        assert_eq!(seen.observe(&json!({"status": "succeeded"})), Step::End(Status::Succeeded));
        assert_eq!(seen.observe(&json!({"status": "processing"})), Step::Nothing);
        assert_eq!(seen.observe(&json!({"status": "mystery"})), Step::Nothing);
    }
}
