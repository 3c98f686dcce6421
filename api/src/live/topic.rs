//! What the hub keeps per Redis channel: its local subscribers' mailboxes
//! and the latest state it delivered, so that a newcomer starts from it and a
//! late or duplicate message is not pushed again.

use std::collections::HashMap;
use std::sync::Arc;

use mage_domain::generations::Status;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::mailbox::{Event, Mailbox, Snapshot};

#[derive(Default)]
pub(super) struct State {
    pub(super) topics: HashMap<String, Topic>,
    pub(super) subscriptions: usize,
}

pub(super) struct Topic {
    /// Redis confirmed the SUBSCRIBE: a newcomer need not wait for it.
    pub(super) confirmed: bool,
    /// A SUBSCRIBE for this channel is under way: those who registered
    /// meanwhile wait for its answer here instead of sending their own (a
    /// burst of newcomers would otherwise queue one Redis round trip each).
    pub(super) waiting: Option<Vec<oneshot::Sender<Result<(), String>>>>,
    pub(super) subscribers: Vec<(u64, Arc<Mailbox>)>,
    pub(super) kind: TopicKind,
}

pub(super) enum TopicKind {
    /// `generationUpdated(id)`: its latest known state.
    Generation { last: Option<Arc<Snapshot>> },
    /// `myGenerations`: the latest known state of each of the user's active
    /// generations (the QUEUED ones get position pushes).
    UserGenerations { last: HashMap<Uuid, Arc<Snapshot>>, loaded: bool },
    /// `creditsChanged`: the newest account version delivered, and whether a
    /// read of the account is under way (reads run one at a time per topic,
    /// so they cannot overtake each other).
    Credits { user_id: Uuid, version: i64, reading: bool, again: bool },
    /// `assetUpdated`: nothing kept; each message is the whole asset.
    Asset { id: Uuid },
}

impl Topic {
    pub(super) fn push(&self, event: &Event) {
        for (_, m) in &self.subscribers {
            m.push(event.clone());
        }
    }

    /// Keeps `snapshot` as the generation's latest known state unless a
    /// newer one is known; true when it was kept.
    pub(super) fn remember(&mut self, snapshot: &Arc<Snapshot>) -> bool {
        let slot = match &mut self.kind {
            TopicKind::Generation { last } => last,
            TopicKind::UserGenerations { last, .. } => {
                let newer = last.get(&snapshot.row.id).is_some_and(|l| l.order_key() > snapshot.order_key());
                if newer {
                    return false;
                }
                if snapshot.status().is_final() {
                    last.remove(&snapshot.row.id);
                } else {
                    last.insert(snapshot.row.id, snapshot.clone());
                }
                return true;
            }
            TopicKind::Credits { .. } | TopicKind::Asset { .. } => return false,
        };
        if slot.as_ref().is_some_and(|l| l.order_key() > snapshot.order_key()) {
            return false;
        }
        *slot = Some(snapshot.clone());
        true
    }

    pub(super) fn queued(&self) -> Vec<Arc<Snapshot>> {
        let queued = |s: &&Arc<Snapshot>| s.status() == Status::Queued;
        match &self.kind {
            TopicKind::Generation { last } => last.iter().filter(queued).cloned().collect(),
            TopicKind::UserGenerations { last, .. } => last.values().filter(queued).cloned().collect(),
            TopicKind::Credits { .. } | TopicKind::Asset { .. } => Vec::new(),
        }
    }
}

pub(super) fn topic_snapshot(topic: &Topic, id: Uuid) -> Option<Arc<Snapshot>> {
    match &topic.kind {
        TopicKind::Generation { last } => last.clone(),
        TopicKind::UserGenerations { last, .. } => last.get(&id).cloned(),
        TopicKind::Credits { .. } | TopicKind::Asset { .. } => None,
    }
}
