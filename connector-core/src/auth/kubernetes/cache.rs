//! The caches of the ServiceAccount-token authenticator: decisions by the
//! SHA-256 of the token (and Node addresses by node name), bounded in number
//! (least recently used go first) and in time, and one apiserver request for
//! any number of concurrent lookups of one key.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

impl<V> Entry<V> {
    /// `value`, reused for `ttl` from now (never when `ttl` is zero).
    pub(super) fn lasting(value: V, ttl: Duration) -> Self {
        Self {
            value,
            until: (!ttl.is_zero()).then(|| Instant::now() + ttl),
        }
    }
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
    fn slot(&self, key: [u8; 32], now: Instant) -> (Slot<V>, Found) {
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
    fn forget(&self, key: &[u8; 32], slot: &Slot<V>) {
        let mut entries = self.entries.lock().expect("review cache");
        if entries.peek(key).is_some_and(|held| Arc::ptr_eq(held, slot)) {
            entries.pop(key);
        }
    }

    /// The value of `key`: a standing one, the one a lookup in flight
    /// makes, or the one `make` makes now; `found` is told which, at once.
    /// A value not to be reused (no `until`) is dropped from the cache once made.
    pub(super) async fn get_or_make<F>(&self, key: [u8; 32], found: impl FnOnce(Found), make: impl FnOnce() -> F) -> V
    where
        V: Clone,
        F: Future<Output = Entry<V>>,
    {
        let (slot, how) = self.slot(key, Instant::now());
        found(how);
        let entry = slot.get_or_init(make).await.clone();
        if entry.until.is_none() {
            self.forget(&key, &slot);
        }
        entry.value
    }

    /// Entries held now.
    pub(super) fn len(&self) -> usize {
        self.entries.lock().expect("review cache").len()
    }
}
