//! The lifecycle's states and the one table of moves between them.

use crate::catalog::MediaKind;
pub use crate::enums::GenerationStatus as Status;
use crate::limits;
use crate::rows::Generation;

impl Status {
    pub const ACTIVE: [Self; 3] = [Self::Queued, Self::Rendering, Self::Transcoding];
    pub const RUNNING: [Self; 2] = [Self::Rendering, Self::Transcoding];

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }

    /// The one table of allowed moves.
    pub fn can_become(self, next: Self) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Queued, Rendering)
                | (Rendering, Queued)
                | (Rendering, Transcoding)
                | (Transcoding, Succeeded)
                | (Queued | Rendering | Transcoding, Failed | Canceled)
        )
    }
}

impl Generation {
    pub fn status(&self) -> Status {
        self.status
    }

    pub fn media_kind(&self) -> MediaKind {
        self.kind
    }

    pub fn limit_member(&self) -> String {
        limits::member(self.id, self.idempotency_key.as_deref())
    }
}

/// The states a transition into `to` may start from, as stored.
pub(super) fn sources(to: Status) -> Vec<&'static str> {
    Status::ALL.iter().copied().filter(|s| s.can_become(to)).map(Status::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::Status::{self, *};

    #[test]
    fn state_machine_allows_only_the_documented_moves() {
        let allowed = [
            (Queued, Rendering),
            (Rendering, Queued),
            (Rendering, Transcoding),
            (Transcoding, Succeeded),
            (Queued, Failed),
            (Queued, Canceled),
            (Rendering, Failed),
            (Rendering, Canceled),
            (Transcoding, Failed),
            (Transcoding, Canceled),
        ];
        for &from in Status::ALL {
            for &to in Status::ALL {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }
}
