//! A userspace UDP impairment proxy for tests and benchmarks.
//!
//! [`UdpImpairProxy`] listens on `127.0.0.1:0` and relays datagrams between
//! clients and upstream servers, applying an [`Impairment`] (drop, duplicate,
//! reorder, delay with jitter, blackhole) in both directions or in one. Each client
//! flow has its own upstream socket, which [`UdpImpairProxy::rebind`]
//! replaces: the server then sees the client under a new source port, as
//! after a NAT rebinding.
//!
//! Random decisions come from [`StdRng`] seeded from the proxy's seed, the
//! flow's number and the direction, so a given seed and sequence of
//! datagrams gives the same outcome every time.
//!
//! Memory is bounded: at most [`MAX_FLOWS`] flows (the least recently active
//! one makes room for a new one) and at most [`MAX_QUEUED`] datagrams waiting
//! per flow and direction (more are dropped and counted as such).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Most client flows the proxy tracks at once.
pub const MAX_FLOWS: usize = 256;
/// Most datagrams waiting per flow and direction (in the hand-over queue and, separately, in the delay queue).
pub const MAX_QUEUED: usize = 4096;
/// A datagram held back for reordering goes out after the next one, or after this long if none comes.
pub const REORDER_HOLD: Duration = Duration::from_millis(20);
const MAX_DATAGRAM: usize = 65_535;
/// Socket buffer asked for on each of the proxy's UDP sockets, both directions.
/// The kernel's default (208 KiB) holds about 3 ms at 0.5 Gbit/s; whenever the
/// proxy is not scheduled for longer, the kernel drops what arrives, on top of
/// the loss the proxy was told to add (measured: about 12,000 such drops in one
/// 10-second-each-way transfer at 20 ms and 1 %, which then ran at 0.42 / 0.37
/// Gbit/s). Linux caps the request at `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER: usize = 8 << 20;

/// Asks for [`SOCKET_BUFFER`] on `socket` (best effort: a smaller buffer
/// still works, with more drops of its own under load).
fn enlarge_buffers(socket: &UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
}

/// What happens to datagrams on their way through the proxy (both directions).
///
/// Probabilities are in `0.0..=1.0`; values outside are clamped by the
/// comparison (`<= 0` never, `>= 1` always). The default relays everything
/// unchanged.
#[derive(Debug, Clone, Default)]
pub struct Impairment {
    /// Probability that a datagram is dropped.
    pub drop: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back and sent after the next one.
    pub reorder: f64,
    /// Fixed one-way delay added to every datagram.
    pub delay: Duration,
    /// Extra random delay, uniform in `0..=jitter`; datagrams may overtake each other by it.
    pub jitter: Duration,
    /// Drop everything (a dead path), including datagrams already delayed or held back.
    pub blackhole: bool,
    /// Relay only every `n`-th datagram and drop the others (`0` and `1`: off). Heavy loss with
    /// no long run of drops, unlike `drop`: one datagram in `n` always gets through.
    pub keep_one_in: u32,
}

/// Datagram counts of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams that reached the impairment step (the current [`Impairment`] was applied to them).
    pub received: u64,
    /// Datagrams sent on (each copy of a duplicated one counts).
    pub relayed: u64,
    /// Datagrams not sent: dropped by the impairment, the blackhole, or a full queue.
    pub dropped: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Datagrams held back and sent after a later one.
    pub reordered: u64,
}

/// Datagram counts of both directions since the proxy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client → upstream.
    pub to_upstream: DirectionStats,
    /// Upstream → client.
    pub to_client: DirectionStats,
}

/// A userspace UDP relay with impairments; see the [module documentation](self).
///
/// Its tasks run on the Tokio runtime that started it and stop when it is dropped.
pub struct UdpImpairProxy {
    local: SocketAddr,
    shared: Arc<Shared>,
    relay: JoinHandle<()>,
}

impl UdpImpairProxy {
    /// Relays datagrams from clients to `upstreams`; each new client flow (client source address) is
    /// assigned the next upstream round-robin (a UDP load balancer when there are several).
    ///
    /// Fails when `upstreams` is empty or the socket cannot be bound.
    pub async fn start(upstreams: Vec<SocketAddr>, seed: u64) -> io::Result<UdpImpairProxy> {
        Self::start_on((Ipv4Addr::LOCALHOST, 0).into(), upstreams, seed).await
    }

    /// [`UdpImpairProxy::start`] on a given address instead of `127.0.0.1:0` (for a standalone proxy
    /// at a fixed port, as in `benches/compare.sh`).
    pub async fn start_on(listen: SocketAddr, upstreams: Vec<SocketAddr>, seed: u64) -> io::Result<UdpImpairProxy> {
        Self::start_with_limit(listen, upstreams, seed, MAX_FLOWS).await
    }

    async fn start_with_limit(
        listen: SocketAddr,
        upstreams: Vec<SocketAddr>,
        seed: u64,
        max_flows: usize,
    ) -> io::Result<UdpImpairProxy> {
        if upstreams.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "UdpImpairProxy needs at least one upstream address",
            ));
        }
        let front = UdpSocket::bind(listen).await?;
        enlarge_buffers(&front);
        let front = Arc::new(front);
        let local = front.local_addr()?;
        let shared = Arc::new(Shared {
            impairment: Mutex::default(),
            counters: Default::default(),
            flows: Mutex::new(FlowTable {
                flows: HashMap::new(),
                upstreams,
                next_upstream: 0,
                next_id: 0,
                max_flows: max_flows.max(1),
                seed,
            }),
            runtime: tokio::runtime::Handle::current(),
        });
        let relay = tokio::spawn(relay_from_clients(front, shared.clone()));
        Ok(UdpImpairProxy { local, shared, relay })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Applies to datagrams in both directions from now on.
    pub fn set(&self, impairment: Impairment) {
        *lock(&self.shared.impairment) = [impairment.clone(), impairment];
    }

    /// Applies to datagrams in one direction from now on; the other keeps its impairment.
    pub fn set_direction(&self, direction: Direction, impairment: Impairment) {
        lock(&self.shared.impairment)[direction as usize] = impairment;
    }

    /// Every flow gets a fresh upstream socket (new source port): NAT rebinding as the server sees it.
    ///
    /// Datagrams the upstream sends to the old port are lost from now on. A flow whose new socket
    /// cannot be bound keeps its old one (logged).
    pub fn rebind(&self) {
        let _runtime = self.shared.runtime.enter();
        let table = lock(&self.shared.flows);
        for (client, flow) in &table.flows {
            match upstream_socket(flow.upstream) {
                Ok(socket) => {
                    flow.socket.send_replace(Arc::new(socket));
                }
                Err(e) => tracing::warn!(%client, upstream = %flow.upstream, "netsim: rebind failed: {e}"),
            }
        }
    }

    /// Datagrams relayed / dropped / duplicated / reordered so far, per direction.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            to_upstream: self.shared.counters[Direction::ToUpstream as usize].snapshot(),
            to_client: self.shared.counters[Direction::ToClient as usize].snapshot(),
        }
    }
}

impl Drop for UdpImpairProxy {
    fn drop(&mut self) {
        self.relay.abort();
        // Dropping the flows aborts their tasks.
        lock(&self.shared.flows).flows.clear();
    }
}

impl std::fmt::Debug for UdpImpairProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpImpairProxy").field("local", &self.local).finish()
    }
}

/// One direction of the proxy's flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → upstream.
    ToUpstream = 0,
    /// Upstream → client.
    ToClient = 1,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    relayed: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            received: self.received.load(Ordering::Relaxed),
            relayed: self.relayed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

struct Shared {
    /// By [`Direction`].
    impairment: Mutex<[Impairment; 2]>,
    counters: [Counters; 2],
    flows: Mutex<FlowTable>,
    /// The runtime that owns the sockets (for `rebind`, a plain function).
    runtime: tokio::runtime::Handle,
}

impl Shared {
    fn impairment(&self, direction: Direction) -> Impairment {
        lock(&self.impairment)[direction as usize].clone()
    }
}

/// Mutex poisoning cannot leave these tables inconsistent (every update is a single assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct FlowTable {
    flows: HashMap<SocketAddr, Flow>,
    upstreams: Vec<SocketAddr>,
    next_upstream: usize,
    next_id: u64,
    max_flows: usize,
    seed: u64,
}

/// One client source address and its upstream side.
struct Flow {
    upstream: SocketAddr,
    /// The current upstream socket; replaced by `rebind`.
    socket: watch::Sender<Arc<UdpSocket>>,
    to_upstream: mpsc::Sender<Vec<u8>>,
    last_active: Instant,
    _tasks: [AbortOnDrop; 3],
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connected UDP socket towards `upstream` on a fresh ephemeral port.
fn upstream_socket(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let any: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = std::net::UdpSocket::bind((any, 0))?;
    socket.set_nonblocking(true)?;
    socket.connect(upstream)?;
    let socket = UdpSocket::from_std(socket)?;
    enlarge_buffers(&socket);
    Ok(socket)
}

/// The front socket's loop: hands each client datagram to its flow, creating flows as needed.
async fn relay_from_clients(front: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match front.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!("netsim: receive failed: {e}");
                continue;
            }
        };
        let mut table = lock(&shared.flows);
        if !table.flows.contains_key(&client) {
            match new_flow(&mut table, &front, &shared, client) {
                Ok(flow) => {
                    table.flows.insert(client, flow);
                }
                Err(e) => {
                    tracing::warn!(%client, "netsim: cannot open an upstream socket: {e}");
                    add(&shared.counters[Direction::ToUpstream as usize].dropped, 1);
                    continue;
                }
            }
        }
        let flow = table.flows.get_mut(&client).expect("inserted above");
        flow.last_active = Instant::now();
        if flow.to_upstream.try_send(buf[..n].to_vec()).is_err() {
            add(&shared.counters[Direction::ToUpstream as usize].dropped, 1);
        }
    }
}

fn new_flow(
    table: &mut FlowTable,
    front: &Arc<UdpSocket>,
    shared: &Arc<Shared>,
    client: SocketAddr,
) -> io::Result<Flow> {
    if table.flows.len() >= table.max_flows {
        let oldest = table.flows.iter().min_by_key(|(_, f)| f.last_active).map(|(a, _)| *a);
        if let Some(oldest) = oldest {
            tracing::debug!(client = %oldest, "netsim: flow table full, forgetting the least recently active flow");
            table.flows.remove(&oldest);
        }
    }
    let upstream = table.upstreams[table.next_upstream % table.upstreams.len()];
    let socket = Arc::new(upstream_socket(upstream)?);
    table.next_upstream = (table.next_upstream + 1) % table.upstreams.len();
    let id = table.next_id;
    table.next_id += 1;
    let rng = |direction: Direction| {
        StdRng::seed_from_u64(
            table
                .seed
                .wrapping_add(id.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .wrapping_add(direction as u64),
        )
    };
    let (socket_tx, socket_rx) = watch::channel(socket);
    let (up_tx, up_rx) = mpsc::channel(MAX_QUEUED);
    let (down_tx, down_rx) = mpsc::channel(MAX_QUEUED);
    let up = Pipe::new(shared.clone(), Direction::ToUpstream, rng(Direction::ToUpstream));
    let down = Pipe::new(shared.clone(), Direction::ToClient, rng(Direction::ToClient));
    let tasks = [
        AbortOnDrop(tokio::spawn(up.run(up_rx, Out::Upstream(socket_rx.clone())))),
        AbortOnDrop(tokio::spawn(relay_from_upstream(socket_rx, down_tx, shared.clone()))),
        AbortOnDrop(tokio::spawn(down.run(
            down_rx,
            Out::Client {
                front: front.clone(),
                client,
            },
        ))),
    ];
    Ok(Flow {
        upstream,
        socket: socket_tx,
        to_upstream: up_tx,
        last_active: Instant::now(),
        _tasks: tasks,
    })
}

/// Reads the flow's current upstream socket (following rebinds) and queues what arrives for the client.
async fn relay_from_upstream(
    mut sockets: watch::Receiver<Arc<UdpSocket>>,
    to_client: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let socket = sockets.borrow_and_update().clone();
        tokio::select! {
            got = socket.recv(&mut buf) => match got {
                Ok(n) => {
                    if to_client.try_send(buf[..n].to_vec()).is_err() {
                        add(&shared.counters[Direction::ToClient as usize].dropped, 1);
                    }
                }
                // A connected UDP socket reports ICMP errors (upstream not listening): keep going.
                Err(e) => tracing::trace!("netsim: upstream receive: {e}"),
            },
            changed = sockets.changed() => if changed.is_err() { return },
        }
    }
}

/// Where a pipe's datagrams go.
enum Out {
    Upstream(watch::Receiver<Arc<UdpSocket>>),
    Client { front: Arc<UdpSocket>, client: SocketAddr },
}

impl Out {
    async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        match self {
            Out::Upstream(socket) => {
                let socket = socket.borrow().clone();
                socket.send(datagram).await.map(drop)
            }
            Out::Client { front, client } => front.send_to(datagram, *client).await.map(drop),
        }
    }
}

/// A datagram waiting for its release time.
struct Scheduled {
    at: Instant,
    seq: u64,
    datagram: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One direction of one flow: applies the impairment and sends datagrams at their release time.
struct Pipe {
    shared: Arc<Shared>,
    direction: Direction,
    rng: StdRng,
    /// A datagram held back for reordering, its copy count and the time it goes out anyway.
    held: Option<(Vec<u8>, u32, Instant)>,
    /// Delayed datagrams by release time (then arrival order).
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    /// Datagrams arrived, for [`Impairment::keep_one_in`].
    arrived: u64,
}

impl Pipe {
    fn new(shared: Arc<Shared>, direction: Direction, rng: StdRng) -> Self {
        Self {
            shared,
            direction,
            rng,
            held: None,
            queue: BinaryHeap::new(),
            seq: 0,
            arrived: 0,
        }
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters[self.direction as usize]
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    async fn run(mut self, mut input: mpsc::Receiver<Vec<u8>>, out: Out) {
        loop {
            let next_release = self.queue.peek().map(|Reverse(s)| s.at);
            let hold_until = self.held.as_ref().map(|(_, _, at)| *at);
            tokio::select! {
                datagram = input.recv() => match datagram {
                    Some(d) => self.arrive(d, &out).await,
                    None => return,
                },
                _ = sleep_until_some(next_release), if next_release.is_some() => self.release_due(&out).await,
                _ = sleep_until_some(hold_until), if hold_until.is_some() => {
                    if let Some((d, copies, _)) = self.held.take() {
                        self.schedule(d, copies, &self.shared.impairment(self.direction), &out).await;
                    }
                }
            }
        }
    }

    async fn arrive(&mut self, datagram: Vec<u8>, out: &Out) {
        let imp = self.shared.impairment(self.direction);
        add(&self.counters().received, 1);
        self.arrived += 1;
        let thinned = imp.keep_one_in > 1 && !self.arrived.is_multiple_of(u64::from(imp.keep_one_in));
        if imp.blackhole || thinned || self.chance(imp.drop) {
            add(&self.counters().dropped, 1);
            return;
        }
        let copies = if self.chance(imp.duplicate) {
            add(&self.counters().duplicated, 1);
            2
        } else {
            1
        };
        if self.held.is_none() && self.chance(imp.reorder) {
            add(&self.counters().reordered, 1);
            self.held = Some((datagram, copies, Instant::now() + REORDER_HOLD));
            return;
        }
        self.schedule(datagram, copies, &imp, out).await;
        if let Some((held, copies, _)) = self.held.take() {
            self.schedule(held, copies, &imp, out).await;
        }
    }

    /// Sends `copies` copies now or queues them for later, according to the delay.
    async fn schedule(&mut self, datagram: Vec<u8>, copies: u32, imp: &Impairment, out: &Out) {
        for _ in 0..copies {
            let jitter = if imp.jitter.is_zero() {
                Duration::ZERO
            } else {
                imp.jitter.mul_f64(self.rng.random::<f64>())
            };
            let delay = imp.delay + jitter;
            if delay.is_zero() && self.queue.is_empty() {
                self.send(&datagram, out).await;
            } else if self.queue.len() >= MAX_QUEUED {
                add(&self.counters().dropped, 1);
            } else {
                self.seq += 1;
                self.queue.push(Reverse(Scheduled {
                    at: Instant::now() + delay,
                    seq: self.seq,
                    datagram: datagram.clone(),
                }));
            }
        }
    }

    async fn release_due(&mut self, out: &Out) {
        let now = Instant::now();
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > now {
                break;
            }
            let Some(Reverse(next)) = self.queue.pop() else { break };
            self.send(&next.datagram, out).await;
        }
    }

    async fn send(&self, datagram: &[u8], out: &Out) {
        if self.shared.impairment(self.direction).blackhole {
            add(&self.counters().dropped, 1);
            return;
        }
        match out.send(datagram).await {
            Ok(()) => add(&self.counters().relayed, 1),
            Err(e) => {
                tracing::trace!("netsim: send failed: {e}");
                add(&self.counters().dropped, 1);
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUARD: Duration = Duration::from_secs(10);

    async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(GUARD, f)
            .await
            .unwrap_or_else(|_| panic!("hang guard: {what} took over {GUARD:?}"))
    }

    /// A client socket, an upstream socket and a proxy between them.
    struct Rig {
        client: UdpSocket,
        upstream: UdpSocket,
        proxy: UdpImpairProxy,
    }

    async fn rig(seed: u64) -> Rig {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy = UdpImpairProxy::start(vec![upstream.local_addr().unwrap()], seed)
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(proxy.local_addr()).await.unwrap();
        Rig {
            client,
            upstream,
            proxy,
        }
    }

    async fn recv_from(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let (n, from) = guard("receiving a datagram", socket.recv_from(&mut buf)).await.unwrap();
        buf.truncate(n);
        (buf, from)
    }

    /// Waits until `n` datagrams in all went through the impairment step towards the upstream.
    async fn settled(proxy: &UdpImpairProxy, n: u64) {
        guard("the proxy taking in every datagram", async {
            while proxy.stats().to_upstream.received < n {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }

    /// Sends datagrams `0..n` (one byte each, then a marker after clearing the impairment)
    /// and returns what the upstream received before the marker.
    async fn send_sequence(rig: &Rig, n: u8, impairment: Impairment) -> Vec<u8> {
        let before = rig.proxy.stats().to_upstream.received;
        rig.proxy.set(impairment);
        for i in 0..n {
            rig.client.send(&[i]).await.unwrap();
        }
        settled(&rig.proxy, before + u64::from(n)).await;
        rig.proxy.set(Impairment::default());
        rig.client.send(b"marker").await.unwrap();
        let mut got = Vec::new();
        loop {
            let (d, _) = recv_from(&rig.upstream).await;
            if d == b"marker" {
                return got;
            }
            got.push(d[0]);
        }
    }

    #[tokio::test]
    async fn relays_both_ways_unchanged_by_default() {
        let rig = rig(1).await;
        rig.client.send(b"hello").await.unwrap();
        let (d, proxy_side) = recv_from(&rig.upstream).await;
        assert_eq!(d, b"hello");
        rig.upstream.send_to(b"world", proxy_side).await.unwrap();
        let (d, from) = recv_from(&rig.client).await;
        assert_eq!(d, b"world");
        assert_eq!(from, rig.proxy.local_addr());
        let stats = rig.proxy.stats();
        assert_eq!(stats.to_upstream.relayed, 1);
        assert_eq!(stats.to_client.relayed, 1);
    }

    #[tokio::test]
    async fn drops_deterministically_for_a_seed() {
        let lossy = Impairment {
            drop: 0.5,
            ..Default::default()
        };
        let a = send_sequence(&rig(7).await, 200, lossy.clone()).await;
        let b = send_sequence(&rig(7).await, 200, lossy.clone()).await;
        let c = send_sequence(&rig(8).await, 200, lossy.clone()).await;
        assert_eq!(a, b, "same seed, same datagrams lost");
        assert_ne!(a, c, "another seed loses other datagrams");
        assert!((50..150).contains(&a.len()), "about half arrive: {}", a.len());
        assert!(a.windows(2).all(|w| w[0] < w[1]), "no reordering: {a:?}");
    }

    #[tokio::test]
    async fn keeps_one_in_n_in_one_direction_only() {
        let rig = rig(5).await;
        rig.proxy.set_direction(
            Direction::ToUpstream,
            Impairment {
                keep_one_in: 3,
                ..Default::default()
            },
        );
        for i in 0..9u8 {
            rig.client.send(&[i]).await.unwrap();
        }
        settled(&rig.proxy, 9).await;
        rig.proxy.set_direction(Direction::ToUpstream, Impairment::default());
        rig.client.send(b"marker").await.unwrap();
        let mut got = Vec::new();
        let proxy_side = loop {
            let (d, from) = recv_from(&rig.upstream).await;
            if d == b"marker" {
                break from;
            }
            got.push(d[0]);
        };
        assert_eq!(got, [2, 5, 8], "every third datagram, none of the others");
        // The way back was not touched.
        for i in 0..3u8 {
            rig.upstream.send_to(&[i], proxy_side).await.unwrap();
            assert_eq!(recv_from(&rig.client).await.0, [i]);
        }
    }

    #[tokio::test]
    async fn counts_drops() {
        let rig = rig(3).await;
        let got = send_sequence(
            &rig,
            100,
            Impairment {
                drop: 0.2,
                ..Default::default()
            },
        )
        .await;
        let stats = rig.proxy.stats().to_upstream;
        assert_eq!(stats.dropped, 100 - got.len() as u64);
        assert_eq!(stats.relayed, got.len() as u64 + 1, "the marker is relayed too");
    }

    #[tokio::test]
    async fn duplicates() {
        let rig = rig(4).await;
        let got = send_sequence(
            &rig,
            50,
            Impairment {
                duplicate: 1.0,
                ..Default::default()
            },
        )
        .await;
        let twice: Vec<u8> = (0..50).flat_map(|i| [i, i]).collect();
        assert_eq!(got, twice);
        assert_eq!(rig.proxy.stats().to_upstream.duplicated, 50);
        let some = send_sequence(
            &rig,
            100,
            Impairment {
                duplicate: 0.3,
                ..Default::default()
            },
        )
        .await;
        assert!((110..150).contains(&some.len()), "about 30 duplicates: {}", some.len());
    }

    #[tokio::test]
    async fn reorders_by_holding_one_back_until_the_next() {
        let rig = rig(5).await;
        rig.proxy.set(Impairment {
            reorder: 1.0,
            ..Default::default()
        });
        for i in 0..6u8 {
            rig.client.send(&[i]).await.unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(recv_from(&rig.upstream).await.0[0]);
        }
        assert_eq!(got, [1, 0, 3, 2, 5, 4]);
        assert_eq!(rig.proxy.stats().to_upstream.reordered, 3);
    }

    #[tokio::test]
    async fn a_held_datagram_goes_out_even_if_nothing_follows() {
        let rig = rig(5).await;
        rig.proxy.set(Impairment {
            reorder: 1.0,
            ..Default::default()
        });
        rig.client.send(b"alone").await.unwrap();
        assert_eq!(recv_from(&rig.upstream).await.0, b"alone");
    }

    #[tokio::test]
    async fn reordering_is_deterministic_for_a_seed() {
        let some = Impairment {
            reorder: 0.3,
            ..Default::default()
        };
        let a = send_sequence(&rig(11).await, 100, some.clone()).await;
        let b = send_sequence(&rig(11).await, 100, some.clone()).await;
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<u8>>(), "some datagrams swapped");
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<u8>>(), "nothing lost or added");
    }

    #[tokio::test]
    async fn delays_each_way() {
        let rig = rig(6).await;
        let delay = Duration::from_millis(50);
        rig.proxy.set(Impairment {
            delay,
            jitter: Duration::from_millis(10),
            ..Default::default()
        });
        let start = std::time::Instant::now();
        rig.client.send(b"ping").await.unwrap();
        let (_, proxy_side) = recv_from(&rig.upstream).await;
        let one_way = start.elapsed();
        rig.upstream.send_to(b"pong", proxy_side).await.unwrap();
        recv_from(&rig.client).await;
        let round_trip = start.elapsed();
        assert!(one_way >= delay, "one way took {one_way:?}");
        assert!(round_trip >= 2 * delay, "round trip took {round_trip:?}");
    }

    #[tokio::test]
    async fn blackhole_drops_everything_until_lifted() {
        let rig = rig(9).await;
        let got = send_sequence(
            &rig,
            20,
            Impairment {
                blackhole: true,
                ..Default::default()
            },
        )
        .await;
        assert!(got.is_empty(), "nothing crosses a blackhole: {got:?}");
        assert_eq!(rig.proxy.stats().to_upstream.dropped, 20);
    }

    #[tokio::test]
    async fn blackhole_also_drops_what_was_already_delayed() {
        let rig = rig(9).await;
        rig.proxy.set(Impairment {
            delay: Duration::from_millis(100),
            ..Default::default()
        });
        rig.client.send(b"delayed").await.unwrap();
        rig.proxy.set(Impairment {
            blackhole: true,
            ..Default::default()
        });
        // Wait (event, not time) until the delayed datagram met the blackhole.
        guard("the delayed datagram being dropped", async {
            while rig.proxy.stats().to_upstream.dropped == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        rig.proxy.set(Impairment::default());
        rig.client.send(b"after").await.unwrap();
        assert_eq!(recv_from(&rig.upstream).await.0, b"after");
    }

    #[tokio::test]
    async fn impairs_the_way_back_too() {
        let rig = rig(10).await;
        rig.client.send(b"open").await.unwrap();
        let (_, proxy_side) = recv_from(&rig.upstream).await;
        rig.proxy.set(Impairment {
            duplicate: 1.0,
            ..Default::default()
        });
        rig.upstream.send_to(b"reply", proxy_side).await.unwrap();
        assert_eq!(recv_from(&rig.client).await.0, b"reply");
        assert_eq!(recv_from(&rig.client).await.0, b"reply");
        assert_eq!(rig.proxy.stats().to_client.duplicated, 1);
    }

    #[tokio::test]
    async fn rebind_changes_the_source_port_and_keeps_the_flow() {
        let rig = rig(12).await;
        rig.client.send(b"before").await.unwrap();
        let (_, old_side) = recv_from(&rig.upstream).await;
        rig.proxy.rebind();
        rig.client.send(b"after").await.unwrap();
        let (d, new_side) = recv_from(&rig.upstream).await;
        assert_eq!(d, b"after");
        assert_ne!(new_side, old_side, "the upstream sees a new source address");
        rig.upstream.send_to(b"reply", new_side).await.unwrap();
        assert_eq!(
            recv_from(&rig.client).await.0,
            b"reply",
            "replies to the new port reach the client"
        );
    }

    #[tokio::test]
    async fn new_flows_go_round_robin() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy = UdpImpairProxy::start(vec![a.local_addr().unwrap(), b.local_addr().unwrap()], 0)
            .await
            .unwrap();
        for (name, upstream) in [(b"one", &a), (b"two", &b), (b"thr", &a)] {
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            client.send_to(name, proxy.local_addr()).await.unwrap();
            assert_eq!(recv_from(upstream).await.0, name);
        }
    }

    #[tokio::test]
    async fn flow_table_is_capped() {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy = UdpImpairProxy::start_with_limit(
            "127.0.0.1:0".parse().unwrap(),
            vec![upstream.local_addr().unwrap()],
            0,
            2,
        )
        .await
        .unwrap();
        for _ in 0..3 {
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            client.send_to(b"x", proxy.local_addr()).await.unwrap();
            assert_eq!(recv_from(&upstream).await.0, b"x");
        }
        assert_eq!(lock(&proxy.shared.flows).flows.len(), 2);
    }

    #[tokio::test]
    async fn needs_an_upstream() {
        let err = UdpImpairProxy::start(Vec::new(), 0).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
