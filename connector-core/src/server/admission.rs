//! Admission that anonymous peers cannot lock: the bounded sets of agent
//! connections that have not been admitted yet.
//!
//! The agent port faces the internet, and admitting an agent takes work the
//! server must bound: a handshake (QUIC or TLS), then a `Hello` and its
//! authentication. A bound that refuses newcomers once full lets whoever
//! holds the slots (1,000 silent connections, refreshed every few seconds)
//! lock every legitimate agent out. Here a full set never refuses: a
//! newcomer takes the slot of the connection that has waited longest, which
//! is closed. A legitimate agent needs its slot for a round trip or two
//! (milliseconds); a peer that means to hold one needs it for as long as it
//! can, so it is the one evicted, and evicting legitimate agents takes more
//! new connections per second than the handshakes cost the attacker.
//!
//! Two sets, so that a flood of handshakes never evicts an agent that has
//! completed its handshake and is sending its `Hello`: one for handshakes in
//! progress, one for connections between handshake and admission. On top, a
//! cap per source address keeps one address from cycling everyone else's
//! slots; a QUIC listener also makes new attempts prove their address
//! (Retry) when many handshakes are in progress, so forged source addresses
//! get nowhere (`transport::quic::QuicSettings::validate_addresses_above`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Semaphore, oneshot, watch};

use crate::frame_io::FrameIoError;
use crate::proto::{Frame, FrameHeader, HEADER_LEN, MAX_FRAME_PAYLOAD};

/// Bytes of large `Hello` payloads the server reads at once, across all
/// connections not yet admitted: a `Hello` may announce up to 64 KiB, and a
/// thousand peers announcing that would be 64 MiB. The first
/// [`HELLO_FREE`] bytes of each payload need no share, so peers that hold the
/// whole budget with large, slow `Hello`s cannot make an agent's ordinary one
/// (1–2 KiB) wait; a large one waits for its share, and waiting counts
/// against the `Hello` timeout and the pre-`Hello` slot like any other delay.
pub(super) const HELLO_BUDGET: usize = 4 << 20;

/// The part of every `Hello` payload read without a share of
/// [`HELLO_BUDGET`]: more than an agent's `Hello` takes with a token and a
/// few dozen identifiers. With `max_pre_hello` connections (1,000) that is
/// 4 MiB beside the budget.
pub(super) const HELLO_FREE: usize = 4 * 1024;

/// Reads a `Hello` frame (or whatever frame comes first) from `recv`; a
/// payload larger than [`HELLO_FREE`] only once `budget` grants the excess.
pub(super) async fn read_hello<R: AsyncRead + Unpin + ?Sized>(
    recv: &mut R,
    budget: &Semaphore,
) -> Result<Frame, FrameIoError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let header = FrameHeader::parse(header, MAX_FRAME_PAYLOAD)?;
    // Never closed; a frame is at most 64 KiB, well below the budget.
    let excess = header.len.saturating_sub(HELLO_FREE);
    let _share = budget
        .acquire_many(u32::try_from(excess).unwrap_or(u32::MAX))
        .await
        .map_err(|_| FrameIoError::Eof)?;
    let mut payload = vec![0u8; header.len];
    recv.read_exact(&mut payload).await?;
    Ok(header.decode_payload(&payload)?)
}

/// A set of at most `capacity` slots in which a newcomer, when it is full,
/// takes the slot of the holder that has held one longest.
pub(super) struct SlotPool {
    capacity: usize,
    state: Mutex<PoolState>,
    /// Slots held, published on every change.
    held: watch::Sender<usize>,
}

struct PoolState {
    next: u64,
    /// Holders by age (ids only grow); dropping a sender evicts its holder.
    holders: BTreeMap<u64, oneshot::Sender<()>>,
}

impl SlotPool {
    pub(super) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            state: Mutex::new(PoolState {
                next: 0,
                holders: BTreeMap::new(),
            }),
            held: watch::channel(0).0,
        })
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot, evicting the oldest holder if the pool is full.
    pub(super) fn take(self: &Arc<Self>) -> Slot {
        let (tx, evicted) = oneshot::channel();
        let mut state = self.state();
        if state.holders.len() >= self.capacity {
            // Dropping its sender tells the oldest holder.
            state.holders.pop_first();
        }
        let id = state.next;
        state.next += 1;
        state.holders.insert(id, tx);
        self.held.send_replace(state.holders.len());
        Slot {
            pool: self.clone(),
            id,
            evicted,
        }
    }

    /// Slots held now.
    pub(super) fn held(&self) -> usize {
        *self.held.borrow()
    }

    /// Follows [`SlotPool::held`].
    pub(super) fn subscribe(&self) -> watch::Receiver<usize> {
        self.held.subscribe()
    }
}

/// A slot in a [`SlotPool`], given back when dropped.
pub(super) struct Slot {
    pool: Arc<SlotPool>,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl Slot {
    /// Resolves once a newcomer has taken this slot.
    pub(super) async fn evicted(&mut self) {
        let _ = (&mut self.evicted).await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.pool.state();
        state.holders.remove(&self.id);
        self.pool.held.send_replace(state.holders.len());
    }
}

/// Connections not yet admitted, counted per source address.
pub(super) struct Sources {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl Sources {
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `remote` until the returned guard drops,
    /// or `None` if that address already has its limit of connections not
    /// yet admitted. Connections without an address are not counted.
    pub(super) fn enter(self: &Arc<Self>, remote: Option<SocketAddr>) -> Option<SourceGuard> {
        let Some(ip) = remote.map(|a| canonical(a.ip())) else {
            return Some(SourceGuard {
                sources: None,
                ip: None,
            });
        };
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(SourceGuard {
            sources: Some(self.clone()),
            ip: Some(ip),
        })
    }

    /// The limit per address.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }
}

/// An IPv4 address seen through an IPv6 socket counts as itself.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One connection counted against its source address.
pub(super) struct SourceGuard {
    sources: Option<Arc<Sources>>,
    ip: Option<IpAddr>,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let (Some(sources), Some(ip)) = (&self.sources, self.ip) else {
            return;
        };
        let mut counts = sources.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn a_full_pool_gives_the_oldest_holders_slot_to_the_newcomer() {
        let pool = SlotPool::new(2);
        let mut first = pool.take();
        let mut second = pool.take();
        assert!(first.evicted().now_or_never().is_none());
        let mut third = pool.take();
        assert_eq!(pool.held(), 2);
        assert!(first.evicted().now_or_never().is_some(), "the oldest is evicted");
        assert!(second.evicted().now_or_never().is_none());
        assert!(third.evicted().now_or_never().is_none());
        drop(second);
        let _fourth = pool.take();
        assert!(third.evicted().now_or_never().is_none(), "a freed slot is used first");
        drop(first);
        assert_eq!(pool.held(), 2);
    }

    #[tokio::test]
    async fn an_ordinary_hello_is_read_while_large_ones_hold_the_whole_budget() {
        use crate::proto::{Hello, Secret};
        let spent = Semaphore::new(0);
        let hello = Frame::Hello(Hello::new(
            "node-a",
            Default::default(),
            crate::proto::Credential::Bearer(Secret::new("token-node-a")),
        ));
        let bytes = hello.encode().unwrap();
        assert!(bytes.len() <= HELLO_FREE);
        let mut reader: &[u8] = &bytes;
        let read = read_hello(&mut reader, &spent).now_or_never();
        assert!(matches!(read, Some(Ok(Frame::Hello(_)))), "read without a share");

        let mut large = vec![0x01, 0, 0, 0x20, 0]; // a Hello announcing 8 KiB
        large.resize(5 + 0x2000, 0);
        let mut reader: &[u8] = &large;
        assert!(
            read_hello(&mut reader, &spent).now_or_never().is_none(),
            "a larger one waits for its share"
        );
    }

    #[test]
    fn one_address_holds_at_most_its_limit() {
        let sources = Sources::new(2);
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let a_mapped: SocketAddr = "[::ffff:192.0.2.1]:1001".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1000".parse().unwrap();
        let one = sources.enter(Some(a)).unwrap();
        let _two = sources.enter(Some(a_mapped)).unwrap();
        assert!(sources.enter(Some(a)).is_none(), "the same address, IPv4-mapped or not");
        assert!(sources.enter(Some(b)).is_some(), "another address is not affected");
        assert!(sources.enter(None).is_some(), "no address, no count");
        drop(one);
        assert!(sources.enter(Some(a)).is_some());
    }
}
