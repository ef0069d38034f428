//! The caches of the ServiceAccount-token authenticator: decisions by the
//! SHA-256 of the token (and Node addresses by node name), bounded in number
//! (least recently used go first) and in time, and one apiserver request for
//! any number of concurrent lookups of one key.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// A value looked up once, and until when it stands.
#[derive(Debug, Clone)]
pub(super) struct Entry<V> {
    /// What was found (for a token: the identity, or why the agent is refused).
    pub value: V,
    /// Until when it is reused; `None`: never (a request that failed).
    pub until: Option<Instant>,
}

/// One key's entry, made once by whichever lookup gets there first while
/// the others wait for it. If that one is cancelled (its connection's
/// authentication timeout), a waiting one makes it instead.
pub(super) type Slot<V> = Arc<OnceCell<Entry<V>>>;

/// How a lookup found its key (for tokens, the label of
/// `connector_server_token_review_cache_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// A decision still standing: no review.
    Hit,
    /// A review of the same token in flight: it waits for that one.
    Shared,
    /// Nothing usable: it reviews the token.
    Miss,
}

impl Found {
    pub(super) fn label(self) -> &'static str {
        match self {
            Found::Hit => "hit",
            Found::Shared => "shared",
            Found::Miss => "miss",
        }
    }
}

/// Keys (digests) to their entries, at most `capacity` of them.
pub(super) struct Cache<V> {
    entries: Mutex<LruCache<[u8; 32], Slot<V>>>,
}

impl<V> Cache<V> {
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The slot of `key` at `now`: its standing decision, the review in
    /// flight, or a new empty slot (replacing an expired or failed decision;
    /// the least recently used entry goes when the cache is full).
    pub(super) fn slot(&self, key: [u8; 32], now: Instant) -> (Slot<V>, Found) {
        let mut entries = self.entries.lock().expect("review cache");
        if let Some(slot) = entries.get(&key) {
            match slot.get() {
                None => return (slot.clone(), Found::Shared),
                Some(Entry { until: Some(until), .. }) if *until > now => return (slot.clone(), Found::Hit),
                Some(_) => {}
            }
        }
        let slot = Slot::default();
        entries.put(key, slot.clone());
        (slot, Found::Miss)
    }

    /// Drops `key` if it still holds `slot` (a decision not to be reused).
    pub(super) fn forget(&self, key: &[u8; 32], slot: &Slot<V>) {
        let mut entries = self.entries.lock().expect("review cache");
        if entries.peek(key).is_some_and(|held| Arc::ptr_eq(held, slot)) {
            entries.pop(key);
        }
    }

    /// Entries held now.
    pub(super) fn len(&self) -> usize {
        self.entries.lock().expect("review cache").len()
    }
}
