//! Which render backends this deployment runs, and how to reach each. The
//! API reads it to offer only the models it can render (and to verify
//! Replicate's webhooks); the workers read it to start a render queue per
//! backend. `mage serve` and `mage work` take the same variables, so both
//! agree on what is offered.

use std::path::PathBuf;

use clap::Args;

use crate::config::ConfigError;
use crate::enums::BackendKind;

pub const DEFAULT_REPLICATE_API_BASE: &str = "https://api.replicate.com";
pub const DEFAULT_COMFYUI_WORKFLOWS: &str = "workflows/comfyui";
pub const DEFAULT_REPLICATE_WORKFLOWS: &str = "workflows/replicate";

#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Render backends this deployment offers, comma-separated: synthetic
    /// (ffmpeg on the CPU), comfyui (your GPU hosts), replicate (hosted
    /// GPUs). Models on any other backend are not offered
    #[arg(long, env = "MAGE_RENDER_BACKENDS", default_value = "synthetic")]
    pub render_backends: String,
    /// ComfyUI servers, comma-separated (e.g. http://gpu1:8188,http://gpu2:8188); required by `mage work` with comfyui
    #[arg(long, env = "MAGE_COMFYUI_URLS")]
    pub comfyui_urls: Option<String>,
    /// Folder of the ComfyUI workflow templates, one `<workflow>.json` per model workflow
    #[arg(long, env = "MAGE_COMFYUI_WORKFLOWS", default_value = DEFAULT_COMFYUI_WORKFLOWS)]
    pub comfyui_workflows: PathBuf,
    /// Replicate API token (r8_...); required by `mage work` with replicate
    #[arg(long, env = "MAGE_REPLICATE_API_TOKEN", hide_env_values = true)]
    pub replicate_api_token: Option<String>,
    /// Replicate's API, without /v1 (tests point it at a fake)
    #[arg(long, env = "MAGE_REPLICATE_API_BASE", default_value = DEFAULT_REPLICATE_API_BASE)]
    pub replicate_api_base: String,
    /// The signing secret of Replicate's webhooks (whsec_...; `GET
    /// /v1/webhooks/default/secret`); required with replicate unless
    /// MAGE_REPLICATE_WEBHOOKS=false
    #[arg(long, env = "MAGE_REPLICATE_WEBHOOK_SECRET", hide_env_values = true)]
    pub replicate_webhook_secret: Option<String>,
    /// Have Replicate call MAGE_PUBLIC_URL/webhooks/replicate as a
    /// prediction moves; false (no public URL, e.g. in development) polls
    /// every prediction instead
    #[arg(long, env = "MAGE_REPLICATE_WEBHOOKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub replicate_webhooks: bool,
    /// Folder of the Replicate model templates, one `<workflow>.json` per model workflow
    #[arg(long, env = "MAGE_REPLICATE_WORKFLOWS", default_value = DEFAULT_REPLICATE_WORKFLOWS)]
    pub replicate_workflows: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComfySettings {
    /// Empty on an API host, which never talks to ComfyUI.
    pub urls: Vec<String>,
    pub workflows: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicateSettings {
    /// Without /v1 or a trailing slash.
    pub api_base: String,
    /// `None` on an API host, which never calls Replicate.
    pub token: Option<String>,
    pub webhook_secret: Option<String>,
    pub webhooks: bool,
    pub workflows: PathBuf,
}

/// The backends of this deployment, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backends {
    /// In the order given; never empty.
    pub offered: Vec<BackendKind>,
    pub comfyui: Option<ComfySettings>,
    pub replicate: Option<ReplicateSettings>,
}

impl Backends {
    /// The synthetic backend alone (tests, tools).
    pub fn synthetic() -> Self {
        Self { offered: vec![BackendKind::Synthetic], comfyui: None, replicate: None }
    }

    pub fn offers(&self, kind: BackendKind) -> bool {
        self.offered.contains(&kind)
    }

    /// Where the templates of `kind`'s workflows live (none for synthetic,
    /// whose workflows are built in).
    pub fn workflows_dir(&self, kind: BackendKind) -> Option<&std::path::Path> {
        match kind {
            BackendKind::Synthetic => None,
            BackendKind::ComfyUi => self.comfyui.as_ref().map(|c| c.workflows.as_path()),
            BackendKind::Replicate => self.replicate.as_ref().map(|r| r.workflows.as_path()),
        }
    }

    /// Where the catalogue looks for `kind`'s templates when a model is
    /// saved: the configured folder, or the default one for a backend this
    /// deployment does not offer (a model may be prepared before its
    /// backend is turned on; it is checked again by the workers, which load
    /// every template when they start).
    pub fn templates_dir(&self, kind: BackendKind) -> Option<PathBuf> {
        let default = match kind {
            BackendKind::Synthetic => return None,
            BackendKind::ComfyUi => DEFAULT_COMFYUI_WORKFLOWS,
            BackendKind::Replicate => DEFAULT_REPLICATE_WORKFLOWS,
        };
        Some(self.workflows_dir(kind).map_or_else(|| PathBuf::from(default), PathBuf::from))
    }
}

/// Who reads the settings: workers need every address and credential, the
/// API only what it verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
}

impl BackendArgs {
    /// MAGE_REPLICATE_WEBHOOK_SECRET, checked now rather than answering 400
    /// to every delivery later. The API verifies with it whether or not it
    /// offers the replicate backend.
    pub fn webhook_secret(&self) -> Result<Option<String>, ConfigError> {
        let Some(secret) = self.replicate_webhook_secret.as_deref().map(str::trim).filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        if !secret.starts_with("whsec_") || crate::replicate::sign(secret, "check", 0, b"").is_err() {
            return Err(ConfigError::new(
                "MAGE_REPLICATE_WEBHOOK_SECRET",
                "must be Replicate's signing secret: `whsec_` followed by base64 (GET /v1/webhooks/default/secret)",
            ));
        }
        Ok(Some(secret.to_owned()))
    }

    pub fn resolve(&self, role: Role) -> Result<Backends, ConfigError> {
        const NAME: &str = "MAGE_RENDER_BACKENDS";
        let mut offered = Vec::new();
        for name in self.render_backends.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let kind = BackendKind::parse(name).ok_or_else(|| {
                let known: Vec<&str> = BackendKind::ALL.iter().map(|k| k.as_str()).collect();
                ConfigError::new(
                    NAME,
                    format!("unknown backend {name:?} (this build has: {})", known.join(", ")),
                )
            })?;
            if offered.contains(&kind) {
                return Err(ConfigError::new(NAME, format!("{name} is listed twice")));
            }
            offered.push(kind);
        }
        if offered.is_empty() {
            return Err(ConfigError::new(NAME, "names no backend"));
        }
        let comfyui = if offered.contains(&BackendKind::ComfyUi) {
            let urls = comfy_urls(self.comfyui_urls.as_deref().unwrap_or_default())?;
            if urls.is_empty() && role == Role::Worker {
                return Err(ConfigError::new("MAGE_COMFYUI_URLS", "is required with the comfyui backend"));
            }
            Some(ComfySettings { urls, workflows: self.comfyui_workflows.clone() })
        } else {
            None
        };
        let replicate = if offered.contains(&BackendKind::Replicate) {
            let token = self.replicate_api_token.as_deref().map(str::trim).filter(|t| !t.is_empty());
            if token.is_none() && role == Role::Worker {
                return Err(ConfigError::new(
                    "MAGE_REPLICATE_API_TOKEN",
                    "is required with the replicate backend",
                ));
            }
            let secret = self.webhook_secret()?;
            if secret.is_none() && self.replicate_webhooks && role == Role::Api {
                return Err(ConfigError::new(
                    "MAGE_REPLICATE_WEBHOOK_SECRET",
                    "is required with the replicate backend unless MAGE_REPLICATE_WEBHOOKS=false",
                ));
            }
            let api_base = self.replicate_api_base.trim().trim_end_matches('/').to_owned();
            if !(api_base.starts_with("http://") || api_base.starts_with("https://")) {
                return Err(ConfigError::new(
                    "MAGE_REPLICATE_API_BASE",
                    "must start with http:// or https://",
                ));
            }
            Some(ReplicateSettings {
                api_base,
                token: token.map(str::to_owned),
                webhook_secret: secret,
                webhooks: self.replicate_webhooks,
                workflows: self.replicate_workflows.clone(),
            })
        } else {
            None
        };
        Ok(Backends { offered, comfyui, replicate })
    }
}

fn comfy_urls(list: &str) -> Result<Vec<String>, ConfigError> {
    const NAME: &str = "MAGE_COMFYUI_URLS";
    let urls: Vec<String> = list
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    if let Some(bad) = urls.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
        return Err(ConfigError::new(NAME, format!("{bad:?} must start with http:// or https://")));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = urls.iter().find(|u| !seen.insert(*u)) {
        return Err(ConfigError::new(NAME, format!("{dup} is listed twice")));
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        b: BackendArgs,
    }

    fn resolve(args: &[&str], role: Role) -> Result<Backends, ConfigError> {
        let mut argv = vec!["mage"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("parse").b.resolve(role)
    }

    #[test]
    fn the_default_is_the_synthetic_backend_alone() {
        assert_eq!(resolve(&[], Role::Worker).expect("ok"), Backends::synthetic());
    }

    #[test]
    fn workers_need_credentials_the_api_does_not() {
        let args = [
            "--render-backends",
            "synthetic,replicate",
            "--replicate-webhook-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ];
        let api = resolve(&args, Role::Api).expect("the API verifies webhooks with the secret alone");
        assert!(api.offers(BackendKind::Replicate));
        let e = resolve(&args, Role::Worker).expect_err("a worker needs the token");
        assert_eq!(e.name, "MAGE_REPLICATE_API_TOKEN");
        let e = resolve(&["--render-backends", "comfyui"], Role::Worker).expect_err("urls");
        assert_eq!(e.name, "MAGE_COMFYUI_URLS");
        assert!(resolve(&["--render-backends", "comfyui"], Role::Api).is_ok());
    }

    #[test]
    fn webhooks_need_a_secret_unless_turned_off() {
        let e = resolve(&["--render-backends", "replicate"], Role::Api).expect_err("secret");
        assert_eq!(e.name, "MAGE_REPLICATE_WEBHOOK_SECRET");
        let polling =
            resolve(&["--render-backends", "replicate", "--replicate-webhooks", "false"], Role::Api)
                .expect("polling needs no secret");
        assert!(!polling.replicate.expect("replicate").webhooks);
    }

    #[test]
    fn unknown_and_repeated_backends_are_refused() {
        assert_eq!(
            resolve(&["--render-backends", "gpu"], Role::Api).expect_err("unknown").name,
            "MAGE_RENDER_BACKENDS"
        );
        assert!(resolve(&["--render-backends", "synthetic,synthetic"], Role::Api).is_err());
        assert!(resolve(&["--render-backends", " , "], Role::Api).is_err());
    }
}
