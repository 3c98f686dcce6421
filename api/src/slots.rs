//! Per-key shares of something this process holds open (connections per
//! peer, WebSockets per client): taken when one opens, given back when its
//! [`Slot`] is dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// How many each key holds now.
pub(crate) struct PerKey<K>(Mutex<HashMap<K, usize>>);

impl<K> Default for PerKey<K> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

/// One share of a key, held while what it counts is open.
pub(crate) struct Slot<K: Eq + Hash>(Arc<PerKey<K>>, K);

impl<K: Eq + Hash + Clone> PerKey<K> {
    /// A share of `key`, or `None` when it already holds `max`.
    pub(crate) fn take(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(key.clone()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot(self.clone(), key))
    }
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut map = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_max_and_gets_its_shares_back_on_drop() {
        let slots = Arc::new(PerKey::default());
        let a = slots.take("a", 2).expect("first");
        let _b = slots.take("a", 2).expect("second");
        assert!(slots.take("a", 2).is_none());
        assert!(slots.take("b", 2).is_some(), "keys are counted apart");
        drop(a);
        assert!(slots.take("a", 2).is_some());
    }
}
