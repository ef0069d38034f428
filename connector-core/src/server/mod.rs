//! The server: accepts agents, authenticates them, keeps a registry of who
//! serves what, and opens tunnelled connections through them.
//!
//! ```no_run
//! # async fn example(listener: std::sync::Arc<dyn connector_core::transport::Listener>,
//! #                  auth: std::sync::Arc<dyn connector_core::auth::Authenticator>) -> Result<(), Box<dyn std::error::Error>> {
//! use connector_core::server::{Selector, Server, ServerConfig};
//! use tokio::io::AsyncWriteExt;
//!
//! let server = Server::new(ServerConfig::new("apiserver-1", auth));
//! server.serve(listener);
//! let mut kubelet = server.dial(&Selector::for_target("10.0.0.5:10250"), "10.0.0.5:10250").await?;
//! kubelet.write_all(b"...").await?;
//! # Ok(()) }
//! ```

mod admission;
mod dial;
pub mod leases;
mod registry;
mod routing;
mod session;
mod target;
mod tunnel;

pub use dial::DialError;
pub use registry::{AgentInfo, Disconnect, MAX_DISCONNECTS};
pub use routing::{DEFAULT_STRATEGIES, ProxyStrategy, Selector, StrategyParseError};
pub use tunnel::{TunnelStream, copy_tunnel, copy_tunnel_tcp};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};

use crate::auth::Authenticator;
use crate::metrics::ServerMetrics;
use crate::proto::ConnectionCode;
use crate::transport::Listener;
use admission::{SlotPool, Sources};
use registry::Registry;

/// Bounds that protect the server from its peers. Defaults are documented
/// per field.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Agents connected at once (default 10,000).
    pub max_agents: usize,
    /// Tunnelled connections open through one agent at once (default 10,000).
    pub max_streams_per_agent: u32,
    /// Time an agent has after its handshake to send its `Hello` (default 10 s).
    pub hello_timeout: Duration,
    /// Deadline of [`Server::dial`] (default 30 s).
    pub dial_timeout: Duration,
    /// Dials waiting for their agent's answer at once, across all agents;
    /// further dials fail at once with [`DialError::TooManyPendingDials`]
    /// (default [`DEFAULT_MAX_PENDING_DIALS`]).
    pub max_pending_dials: usize,
    /// Agent connections at once past their handshake and not yet admitted
    /// or refused (`Hello`, authentication). When a connection completes its
    /// handshake with this many waiting, the one that has waited longest is
    /// closed with code `rejected` and a reason saying so, and counted in
    /// `connector_server_agent_rejections_total{reason="pre_hello_evicted"}`:
    /// silent peers cannot keep legitimate agents out (see
    /// `server::admission`; default [`DEFAULT_MAX_PRE_HELLO`]).
    pub max_pre_hello: usize,
    /// Handshakes (QUIC or TLS) in progress at once; a new one evicts the
    /// one in progress longest (`…{reason="handshake_evicted"}`; default
    /// [`DEFAULT_MAX_HANDSHAKES`]). The transport's own handshake timeout
    /// bounds each.
    pub max_handshakes: usize,
    /// Connections not yet admitted (handshake, `Hello`, authentication) from
    /// one source address at once; further ones are dropped at once
    /// (`…{reason="per_source_limit"}`; default
    /// [`DEFAULT_MAX_UNADMITTED_PER_SOURCE`]).
    pub max_unadmitted_per_source: usize,
    /// Time the authenticator has to decide on an agent (a TokenReview, a
    /// callback into the host); the agent is then refused with `INTERNAL`
    /// and a reason saying so (`…{reason="auth_timeout"}`; default 10 s).
    pub auth_timeout: Duration,
}

/// Agent connections not yet admitted ([`Server::unadmitted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unadmitted {
    /// Handshakes (QUIC or TLS) in progress ([`Limits::max_handshakes`]).
    pub handshakes: usize,
    /// Past their handshake, waiting for their `Hello` or its
    /// authentication ([`Limits::max_pre_hello`]).
    pub awaiting_hello: usize,
}

/// Default of [`Limits::max_handshakes`].
pub const DEFAULT_MAX_HANDSHAKES: usize = 1_000;

/// Default of [`Limits::max_unadmitted_per_source`]: nodes behind one NAT
/// address reconnect together after a server restart, but each is past
/// admission within a round trip or two, so even thousands of them keep few
/// waiting at once; those beyond retry with backoff.
pub const DEFAULT_MAX_UNADMITTED_PER_SOURCE: usize = 256;

/// Default of [`Limits::max_pre_hello`]. Admitting an agent takes a few
/// round trips, so even 10,000 agents reconnecting within a second keep far
/// fewer than this waiting; what each waiting connection may make the server
/// buffer is its `Hello` ([`crate::transport::PRE_ADMISSION_WINDOW`]).
pub const DEFAULT_MAX_PRE_HELLO: usize = 1_000;

/// Longest [`Server::drain`] waits, after closing every agent connection,
/// for the closes to go out (each agent session ends once its connection's
/// close is on the wire or the agent closed first: QUIC, a datagram left
/// after the close; TCP, the close is written and the agent ended its side).
pub const CLOSE_SENT_LIMIT: Duration = Duration::from_secs(3);

/// Default of [`Limits::max_pending_dials`]. A healthy dial waits for about
/// one round trip plus the agent's TCP connect (milliseconds), so a thousand
/// at once means targets that do not answer; failing the excess fast beats
/// letting them pile up until the dial timeout.
pub const DEFAULT_MAX_PENDING_DIALS: usize = 1_000;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_agents: 10_000,
            max_streams_per_agent: 10_000,
            hello_timeout: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(30),
            max_pending_dials: DEFAULT_MAX_PENDING_DIALS,
            max_pre_hello: DEFAULT_MAX_PRE_HELLO,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_unadmitted_per_source: DEFAULT_MAX_UNADMITTED_PER_SOURCE,
            auth_timeout: Duration::from_secs(10),
        }
    }
}

/// Server settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// This replica's id, reported to agents.
    pub server_id: String,
    /// How many replicas run behind the agents' server address (0 = unknown),
    /// reported in each `Welcome` until [`Server::set_server_count`] changes it
    /// (the Lease controller, [`leases`], does).
    pub server_count: u16,
    /// Decides who may connect as an agent.
    pub authenticator: Arc<dyn Authenticator>,
    /// Resource bounds.
    pub limits: Limits,
    /// Keepalive interval announced to agents (the transport enforces it).
    pub keepalive: Duration,
    /// Idle timeout announced to agents (the transport enforces it).
    pub idle_timeout: Duration,
    /// How [`Selector::Host`] dials find their agent (default [`DEFAULT_STRATEGIES`]).
    pub proxy_strategies: Vec<ProxyStrategy>,
    /// Where the server counts (default: counters of its own). Give a
    /// component that counts for the server, such as a
    /// [`crate::auth::KubernetesAuthenticator`], the same counters
    /// ([`crate::metrics::TokenReviewMetrics`] are shared by cloning).
    pub metrics: Arc<ServerMetrics>,
}

impl ServerConfig {
    /// Settings with default limits and timeouts.
    pub fn new(server_id: impl Into<String>, authenticator: Arc<dyn Authenticator>) -> Self {
        let quic = crate::transport::quic::QuicSettings::default();
        Self {
            server_id: server_id.into(),
            server_count: 1,
            authenticator,
            limits: Limits::default(),
            keepalive: quic.keepalive,
            idle_timeout: quic.idle_timeout,
            proxy_strategies: DEFAULT_STRATEGIES.to_vec(),
            metrics: Arc::default(),
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("server_id", &self.server_id)
            .field("server_count", &self.server_count)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A running server. Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    metrics: Arc<ServerMetrics>,
    registry: Registry,
    next_request: AtomicU64,
    next_conn: AtomicU64,
    /// Dials between choosing their agent and its `DialResult`.
    pending_dials: AtomicUsize,
    shutdown: watch::Sender<bool>,
    /// Set by [`Server::drain`] to the grace announced in `GoAway`s.
    draining: watch::Sender<Option<Duration>>,
    /// The replica count reported in each `Welcome` ([`Server::server_count`]).
    server_count: watch::Sender<u16>,
    /// Registered sessions whose agent has not yet acknowledged this
    /// server's `GoAway` (nor closed its connection); a drain waits for none.
    unacknowledged: watch::Sender<usize>,
    /// Woken whenever a tunnelled connection closes.
    tunnel_closed: Arc<Notify>,
    listeners: Mutex<Vec<Arc<dyn Listener>>>,
    /// Every agent connection's session task, from handshake to close, and
    /// the tasks that must finish before the process exits (the Lease
    /// controller releasing its Lease); a drain waits for them after
    /// closing (at most [`CLOSE_SENT_LIMIT`]), each session ending once its
    /// close went out.
    sessions: tokio_util::task::TaskTracker,
    /// Handshakes in progress ([`Limits::max_handshakes`]).
    handshakes: Arc<SlotPool>,
    /// Connections past their handshake, not yet admitted ([`Limits::max_pre_hello`]).
    pre_hello: Arc<SlotPool>,
    /// Connections not yet admitted, per source ([`Limits::max_unadmitted_per_source`]).
    sources: Arc<Sources>,
    /// Bytes of `Hello`s being read at once ([`admission::HELLO_BUDGET`]).
    hello_budget: Semaphore,
}

impl Server {
    /// A server with no listener yet; call [`Server::serve`].
    pub fn new(config: ServerConfig) -> Self {
        let limits = &config.limits;
        let handshakes = SlotPool::new(limits.max_handshakes);
        let pre_hello = SlotPool::new(limits.max_pre_hello);
        let sources = Sources::new(limits.max_unadmitted_per_source);
        let registry = Registry::new(&config.server_id);
        Self {
            inner: Arc::new(Inner {
                metrics: config.metrics.clone(),
                server_count: watch::channel(config.server_count).0,
                config,
                registry,
                next_request: AtomicU64::new(1),
                next_conn: AtomicU64::new(1),
                pending_dials: AtomicUsize::new(0),
                shutdown: watch::channel(false).0,
                draining: watch::channel(None).0,
                unacknowledged: watch::channel(0).0,
                tunnel_closed: Arc::new(Notify::new()),
                listeners: Mutex::new(Vec::new()),
                sessions: tokio_util::task::TaskTracker::new(),
                handshakes,
                pre_hello,
                sources,
                hello_budget: Semaphore::new(admission::HELLO_BUDGET),
            }),
        }
    }

    /// Accepts agents from `listener` in a background task until
    /// [`Server::shutdown`]. Must be called within a tokio runtime.
    pub fn serve(&self, listener: Arc<dyn Listener>) {
        tracing::info!(server_id = %self.inner.config.server_id, listen = %listener.local_addr(), "accepting agents");
        self.inner.listeners.lock().expect("listeners").push(listener.clone());
        let server = self.clone();
        tokio::spawn(async move { server.accept_loop(listener).await });
    }

    async fn accept_loop(self, listener: Arc<dyn Listener>) {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let incoming = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                next = listener.accept() => match next {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            if !self.accepting() {
                // Draining: refused before its handshake (QUIC answers
                // CONNECTION_REFUSED statelessly), so no half-made connection
                // is left for the drain's close to wait on; the agent, told
                // by the answer that this replica is up but leaving, retries.
                self.inner.metrics.agent_rejections.inc("shutting_down");
                drop(incoming);
                continue;
            }
            match self.inner.sources.enter(incoming.remote) {
                Some(source) => {
                    self.inner.sessions.spawn(session::run(self.clone(), incoming, source));
                }
                // Dropped before its handshake: the cheapest refusal there is.
                None => session::refuse_over_source_limit(&self, incoming),
            }
        }
        tracing::debug!(listen = %listener.local_addr(), "stopped accepting agents");
    }

    /// Agent connections not yet admitted, by stage.
    pub fn unadmitted(&self) -> Unadmitted {
        Unadmitted {
            handshakes: self.inner.handshakes.held(),
            awaiting_hello: self.inner.pre_hello.held(),
        }
    }

    /// Waits until `predicate` holds for [`Server::unadmitted`] (checked now
    /// and after every change).
    pub async fn wait_for_unadmitted(&self, mut predicate: impl FnMut(Unadmitted) -> bool) {
        let (mut handshakes, mut hello) = (self.inner.handshakes.subscribe(), self.inner.pre_hello.subscribe());
        loop {
            handshakes.borrow_and_update();
            hello.borrow_and_update();
            if predicate(self.unadmitted()) {
                return;
            }
            tokio::select! {
                _ = handshakes.changed() => {}
                _ = hello.changed() => {}
            }
        }
    }

    /// A snapshot of the connected agents, sorted by agent id.
    pub fn agents(&self) -> Vec<AgentInfo> {
        self.inner.registry.snapshot()
    }

    /// How the last connection of each recently disconnected agent that is
    /// not connected now ended, newest first (at most [`MAX_DISCONNECTS`]
    /// agent ids are remembered; connected agents carry theirs in
    /// [`AgentInfo::last_disconnect`]).
    pub fn recent_disconnects(&self) -> Vec<Disconnect> {
        self.inner.registry.disconnected()
    }

    /// Waits until `predicate` holds for the connected agents (checked now and
    /// after every change to the registry).
    pub async fn wait_for_agents(&self, mut predicate: impl FnMut(&[AgentInfo]) -> bool) {
        let mut changes = self.inner.registry.subscribe();
        loop {
            changes.borrow_and_update();
            if predicate(&self.agents()) {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves once [`Server::shutdown`] has been called.
    pub async fn stopped(&self) {
        let _ = self.inner.shutdown.subscribe().wait_for(|s| *s).await;
    }

    /// How many streams agents have opened towards this server since it
    /// started, beyond their control streams. Every one was refused
    /// (tunnelled connections only go from the server to agents), so a
    /// non-zero value means a misbehaving or hostile agent.
    pub fn refused_agent_streams(&self) -> u64 {
        self.inner.metrics.refused_agent_streams.get()
    }

    /// Dials waiting for their agent's answer right now (bounded by
    /// [`Limits::max_pending_dials`]).
    pub fn pending_dials(&self) -> usize {
        self.inner.pending_dials.load(Ordering::Relaxed)
    }

    /// The replica count this server reports in each `Welcome`:
    /// [`ServerConfig::server_count`] until [`Server::set_server_count`]
    /// changes it. Agents behind one load-balanced address hold a session
    /// with as many replicas.
    pub fn server_count(&self) -> u16 {
        *self.inner.server_count.borrow()
    }

    /// Changes the replica count reported to agents from their next
    /// `Welcome` on (what the Lease controller does after each count).
    pub fn set_server_count(&self, count: u16) {
        self.inner.server_count.send_if_modified(|current| {
            let changed = *current != count;
            *current = count;
            changed
        });
    }

    /// Waits until `predicate` holds for [`Server::server_count`] (checked
    /// now and after every change).
    pub async fn wait_for_server_count(&self, predicate: impl FnMut(&u16) -> bool) {
        let _ = self.inner.server_count.subscribe().wait_for(predicate).await;
    }

    /// Resolves once a drain or a shutdown has begun: the server is leaving.
    pub async fn leaving(&self) {
        let (mut draining, mut shutdown) = (self.inner.draining.subscribe(), self.inner.shutdown.subscribe());
        tokio::select! {
            _ = draining.wait_for(Option::is_some) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }

    /// Runs `task` in the background; a drain waits for it (at most
    /// [`CLOSE_SENT_LIMIT`]) before it returns, as for agent sessions.
    pub(crate) fn spawn_tracked<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.sessions.spawn(task);
    }

    /// This server's settings.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// What this server has counted so far.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.inner.metrics
    }

    /// The metrics page in the Prometheus text format (what `/metrics` serves).
    pub fn render_metrics(&self) -> String {
        let agents = self.inner.registry.by_transport();
        self.inner.metrics.render(
            &self.inner.config.server_id,
            &agents,
            self.unadmitted(),
            self.server_count(),
        )
    }

    /// Whether the server is serving: at least one listener accepting agents
    /// and no drain or shutdown begun (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.accepting() && !self.inner.listeners.lock().expect("listeners").is_empty()
    }

    /// Whether new agents and new dials are still taken.
    fn accepting(&self) -> bool {
        !*self.inner.shutdown.borrow() && self.inner.draining.borrow().is_none()
    }

    /// Drains the server, then shuts it down: new dials fail with
    /// [`DialError::ShuttingDown`] and new agents are refused at once; every
    /// agent is sent `GoAway` (it connects to another replica and keeps
    /// serving what is open here) and the drain waits until each has
    /// acknowledged it (with a `GoAway` of its own, or by closing its
    /// connection; logged per agent as "go-away acknowledged"); open
    /// tunnelled connections may finish; both waits end when `grace` has
    /// passed. Then [`Server::shutdown`] closes the rest, and the drain waits
    /// (at most [`CLOSE_SENT_LIMIT`]) until the closes have gone out, so that
    /// a process exiting right after still tells every agent.
    pub async fn drain(&self, grace: Duration) {
        if self.inner.draining.send_replace(Some(grace)).is_some() {
            self.stopped().await;
            return;
        }
        // A grace too long for the clock (a binding's `u64::MAX` ms) is no limit.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(grace)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        let metrics = &self.inner.metrics;
        tracing::info!(
            agents = self.inner.registry.len(),
            open = metrics.tunnels_active.get(),
            "draining: agents told to go away, no new dials; open tunnelled connections may finish within {grace:?}"
        );
        let mut unacknowledged = self.inner.unacknowledged.subscribe();
        let acknowledged = tokio::time::timeout_at(deadline, unacknowledged.wait_for(|n| *n == 0))
            .await
            .is_ok();
        if acknowledged {
            tracing::info!("every agent acknowledged the go-away");
        } else {
            tracing::warn!(
                unacknowledged = *unacknowledged.borrow(),
                "drain grace over before every agent acknowledged the go-away"
            );
        }
        let deadline = tokio::time::sleep_until(deadline);
        tokio::pin!(deadline);
        loop {
            let closed = self.inner.tunnel_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if metrics.tunnels_active.get() <= 0 {
                tracing::info!("drained: no tunnelled connection open");
                break;
            }
            tokio::select! {
                _ = &mut closed => {}
                _ = &mut deadline => {
                    tracing::info!(open = metrics.tunnels_active.get(), "drain grace over; closing what is still open");
                    break;
                }
            }
        }
        let listeners = self.close_everything();
        self.inner.sessions.close();
        let sessions = &self.inner.sessions;
        let sent = async {
            futures_util::future::join_all(listeners.iter().map(|l| l.closed_sent())).await;
            // Each session ends once its connection's close went out.
            sessions.wait().await;
        };
        match tokio::time::timeout(CLOSE_SENT_LIMIT, sent).await {
            Ok(_) => tracing::info!("closed: every agent connection's close has gone out"),
            // A TCP connection whose peer stopped reading may never take its close.
            Err(_) => tracing::info!(
                "agent connections not all closed after {CLOSE_SENT_LIMIT:?}; exiting without waiting longer"
            ),
        }
    }

    /// Stops accepting agents, refuses new dials and closes every agent
    /// connection (open tunnelled connections end with it).
    pub fn shutdown(&self) {
        self.close_everything();
    }

    /// [`Server::shutdown`], returning the listeners it shut down.
    fn close_everything(&self) -> Vec<Arc<dyn Listener>> {
        self.inner.shutdown.send_replace(true);
        for agent in self.inner.registry.drain() {
            let _ = agent.ended_by_server.set("server shutting down");
            agent.conn.close(ConnectionCode::Shutdown, "server shutting down");
        }
        let listeners: Vec<_> = self.inner.listeners.lock().expect("listeners").drain(..).collect();
        for listener in &listeners {
            listener.shutdown();
        }
        listeners
    }
}
