//! The agent: dials out to a server, proves who it is, then serves the
//! server's `Dial`s by connecting from its own network. It reconnects with
//! capped, jittered exponential backoff whenever the connection ends.
//!
//! ```no_run
//! # fn example(connector: std::sync::Arc<dyn connector_core::transport::Connector>) {
//! use std::sync::Arc;
//! use connector_core::agent::{Agent, AgentConfig};
//! use connector_core::auth::TokenFile;
//!
//! let mut config = AgentConfig::new("node-a", Arc::new(TokenFile("/var/run/secrets/token".into())));
//! config.identifiers = "host=node-a,ipv4=10.0.0.5".parse().unwrap();
//! let agent = Agent::start(connector, config);
//! # }
//! ```

mod backoff;
mod links;
mod policy;
mod serve;
mod session;

pub use backoff::{Backoff, BackoffConfig};
pub use policy::{Denied, DestinationPolicy, Rule, RuleParseError};
pub use serve::MAX_DIAL_TIMEOUT;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::auth::CredentialSource;
use crate::identifiers::Identifiers;
use crate::metrics::AgentMetrics;
use crate::proto::RejectCode;
use crate::transport::Connector;
use links::{Discovery, Servers, Shared};
use serve::DialContext;

use crate::splice::SpliceTimeouts;

/// Agent settings.
#[derive(Clone)]
pub struct AgentConfig {
    /// This agent's id (often its node name).
    pub agent_id: String,
    /// What it claims to serve. Leave empty to serve whatever the identity allows.
    pub identifiers: Identifiers,
    /// Where its credential comes from, asked at every connection attempt.
    pub credentials: Arc<dyn CredentialSource>,
    /// Which destinations it will connect to.
    pub policy: DestinationPolicy,
    /// Tunnelled connections served at once; further dials are answered
    /// `Overloaded` (default 10,000).
    pub max_connections: usize,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Time the server has to answer the `Hello` (default 10 s).
    pub hello_timeout: Duration,
    /// How long a replaced session keeps its open tunnelled connections when
    /// the agent moves to a new connection (default 5 minutes).
    pub replace_grace: Duration,
    /// A tunnelled connection that moves no byte either way for this long is
    /// closed on both ends with [`crate::proto::StreamCode::IdleTimeout`]
    /// (default `None`: never, as interactive sessions such as `kubectl exec`
    /// may stay quiet for hours; `max_connections` still bounds what idle
    /// connections can hold).
    pub tunnel_idle_timeout: Option<Duration>,
    /// A tunnelled connection one side of which reads none of the bytes
    /// waiting for it for this long (a client paused for good, a target that
    /// froze) is closed on both ends with [`crate::proto::StreamCode::Stalled`]
    /// (default [`DEFAULT_TUNNEL_STALL_TIMEOUT`]; `None`: never). A stalled
    /// tunnel stops nothing else, but holds up to a stream window of memory
    /// on each end; this ends it once its cause is clearly gone.
    pub tunnel_stall_timeout: Option<Duration>,
    /// Time the server has to send the whole `Dial` frame on a stream it
    /// opened (default [`DEFAULT_DIAL_FRAME_TIMEOUT`], 60 s); a stream still
    /// without its `Dial` then is reset with a protocol error. Generous on
    /// purpose: QUIC makes a stream acceptable as soon as a later one carries
    /// data, and on a connection busy with bulk transfers the server's `Dial`
    /// write can wait for send window for seconds (the soak test saw more than
    /// 10 s on an overloaded machine). A waiting stream costs one task and a
    /// stream slot, both bounded by the stream limit the agent grants.
    pub dial_frame_timeout: Duration,
}

/// Default of [`AgentConfig::tunnel_stall_timeout`]: three minutes, long
/// enough for a person to come back to a paused `kubectl logs -f`.
pub const DEFAULT_TUNNEL_STALL_TIMEOUT: Duration = Duration::from_secs(180);

/// Default of [`AgentConfig::dial_frame_timeout`].
pub const DEFAULT_DIAL_FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// Default of [`AgentConfig::replace_grace`].
pub const DEFAULT_REPLACE_GRACE: Duration = Duration::from_secs(300);

/// A sensible grace for [`Agent::drain`] and [`crate::server::Server::drain`]
/// on SIGTERM: below Kubernetes' default termination grace period of 30 s.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(20);

/// Default of [`AgentConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl AgentConfig {
    /// Settings with the default policy, limits and backoff.
    pub fn new(agent_id: impl Into<String>, credentials: Arc<dyn CredentialSource>) -> Self {
        Self {
            agent_id: agent_id.into(),
            identifiers: Identifiers::default(),
            credentials,
            policy: DestinationPolicy::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            backoff: BackoffConfig::default(),
            hello_timeout: Duration::from_secs(10),
            replace_grace: DEFAULT_REPLACE_GRACE,
            tunnel_idle_timeout: None,
            tunnel_stall_timeout: Some(DEFAULT_TUNNEL_STALL_TIMEOUT),
            dial_frame_timeout: DEFAULT_DIAL_FRAME_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("agent_id", &self.agent_id)
            .field("identifiers", &self.identifiers)
            .field("policy", &self.policy)
            .field("max_connections", &self.max_connections)
            .field("tunnel_idle_timeout", &self.tunnel_idle_timeout)
            .field("tunnel_stall_timeout", &self.tunnel_stall_timeout)
            .finish_non_exhaustive()
    }
}

/// Where the agent stands, across all its server replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStatus {
    /// Connecting (or waiting to retry).
    Connecting,
    /// Registered with at least one server.
    Connected {
        /// The id of a server it holds a session with (the first link's).
        server_id: String,
        /// How many sessions this agent has opened so far (1 for the first).
        session: u64,
    },
    /// No session; the last server refused the agent; it retries after a backoff.
    Rejected {
        /// The server's reject code.
        code: RejectCode,
        /// The server's reason.
        reason: String,
    },
    /// No session; the last connection failed or ended; it retries after a backoff.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// [`Agent::stop`] or [`Agent::drain`] was called.
    Stopped,
}

/// One live session with a server replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSession {
    /// The replica's id from its `Welcome`.
    pub server_id: String,
    /// The transport carrying it (`"quic"`, `"tcp"`, ...).
    pub transport: &'static str,
}

/// What the agent's links are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Hold sessions and reconnect.
    Run,
    /// Send `GoAway` everywhere, let open tunnelled connections finish within the grace, then stop.
    Drain(Duration),
    /// Close everything now.
    Stop,
}

/// A running agent.
pub struct Agent {
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
    observer: AgentObserver,
}

/// A cheap, cloneable view of a running agent's status and metrics, for
/// health checks and `/metrics` ([`crate::admin`]).
#[derive(Clone)]
pub struct AgentObserver {
    agent_id: Arc<str>,
    status: watch::Receiver<AgentStatus>,
    servers: watch::Receiver<Servers>,
    metrics: Arc<AgentMetrics>,
}

impl AgentObserver {
    /// The current status.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// The live sessions, one per server replica held (ordered by link).
    pub fn servers(&self) -> Vec<ServerSession> {
        self.servers.borrow().live.values().cloned().collect()
    }

    /// How many server replicas the agent should hold: the number of listed
    /// addresses, or the replica count the servers report (at least 1).
    pub fn expected_servers(&self) -> usize {
        self.servers.borrow().expected.max(1)
    }

    /// What the agent has counted so far.
    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }

    /// Whether the agent holds a session with every server replica it knows
    /// of (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        let servers = self.servers.borrow();
        servers.distinct() >= servers.expected.max(1)
    }

    /// The metrics page in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let servers = self.servers.borrow().clone();
        self.metrics.render(
            &self.agent_id,
            servers.distinct(),
            servers.expected.max(1),
            &crate::metrics::tally(servers.live.values().map(|s| s.transport)),
        )
    }
}

impl Agent {
    /// Starts connecting to the server(s) behind `connector` in background
    /// tasks. When the servers report several replicas behind that one
    /// address, the agent keeps connecting until it holds a session with each.
    /// Must be called within a tokio runtime.
    pub fn start(connector: Arc<dyn Connector>, config: AgentConfig) -> Agent {
        Self::spawn(vec![connector], Discovery::LoadBalanced, config)
    }

    /// Starts an agent that holds one session with each of `servers` (an
    /// explicit list of replica addresses). Must be called within a tokio runtime.
    ///
    /// # Panics
    /// If `servers` is empty.
    pub fn start_with_servers(servers: Vec<Arc<dyn Connector>>, config: AgentConfig) -> Agent {
        assert!(!servers.is_empty(), "an agent needs at least one server");
        let discovery = if servers.len() == 1 {
            Discovery::LoadBalanced
        } else {
            Discovery::Listed
        };
        Self::spawn(servers, discovery, config)
    }

    fn spawn(connectors: Vec<Arc<dyn Connector>>, discovery: Discovery, config: AgentConfig) -> Agent {
        let (status_tx, status) = watch::channel(AgentStatus::Connecting);
        let expected = match discovery {
            Discovery::Listed => connectors.len(),
            Discovery::LoadBalanced => 1,
        };
        let (servers_tx, servers) = watch::channel(Servers {
            expected,
            ..Servers::default()
        });
        let (mode, mode_rx) = watch::channel(Mode::Run);
        let metrics = Arc::new(AgentMetrics::default());
        let observer = AgentObserver {
            agent_id: config.agent_id.as_str().into(),
            status,
            servers,
            metrics: metrics.clone(),
        };
        let ctx = Arc::new(DialContext {
            policy: config.policy.clone(),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            max_connections: config.max_connections,
            timeouts: SpliceTimeouts {
                idle: config.tunnel_idle_timeout,
                stall: config.tunnel_stall_timeout,
            },
            dial_frame_timeout: config.dial_frame_timeout,
            metrics: metrics.clone(),
        });
        let described: Vec<String> = connectors.iter().map(|c| c.describe()).collect();
        tracing::info!(agent = %config.agent_id, servers = ?described, policy = %config.policy, "agent starting");
        let shared = Arc::new(Shared::new(config, ctx, metrics, status_tx, servers_tx, mode_rx));
        let task = tokio::spawn(run(shared, connectors, discovery));
        Agent { mode, task, observer }
    }

    /// A view of this agent's status and metrics that outlives [`Agent::stop`] calls elsewhere.
    pub fn observer(&self) -> AgentObserver {
        self.observer.clone()
    }

    /// The current status.
    pub fn status(&self) -> AgentStatus {
        self.observer.status()
    }

    /// The live sessions, one per server replica held.
    pub fn servers(&self) -> Vec<ServerSession> {
        self.observer.servers()
    }

    /// Waits until the status satisfies `predicate` and returns it.
    pub async fn wait_for(&self, mut predicate: impl FnMut(&AgentStatus) -> bool) -> AgentStatus {
        let mut rx = self.observer.status.clone();
        match rx.wait_for(|s| predicate(s)).await {
            Ok(s) => s.clone(),
            Err(_) => self.status(),
        }
    }

    /// Waits until the live sessions satisfy `predicate` and returns them.
    pub async fn wait_for_servers(&self, mut predicate: impl FnMut(&[ServerSession]) -> bool) -> Vec<ServerSession> {
        let mut rx = self.observer.servers.clone();
        let _ = rx
            .wait_for(|s| predicate(&s.live.values().cloned().collect::<Vec<_>>()))
            .await;
        self.servers()
    }

    /// Waits until connected and returns the server id.
    pub async fn connected(&self) -> String {
        match self.wait_for(|s| matches!(s, AgentStatus::Connected { .. })).await {
            AgentStatus::Connected { server_id, .. } => server_id,
            _ => String::new(),
        }
    }

    /// Closes every session and stops reconnecting; open tunnelled
    /// connections end. Dropping the agent does the same without waiting.
    pub async fn stop(self) {
        self.mode.send_replace(Mode::Stop);
        let _ = self.task.await;
    }

    /// Drains the agent (its node is shutting down): every server is told
    /// with `GoAway` to route no new dials here, open tunnelled connections
    /// may finish within `grace`, then the sessions close and the agent stops.
    pub async fn drain(self, grace: Duration) {
        self.mode.send_replace(Mode::Drain(grace));
        let _ = self.task.await;
    }
}

async fn run(shared: Arc<Shared>, connectors: Vec<Arc<dyn Connector>>, discovery: Discovery) {
    let mut links = tokio::task::JoinSet::new();
    match discovery {
        Discovery::Listed => {
            for (index, connector) in connectors.into_iter().enumerate() {
                links.spawn(links::run_link(shared.clone(), index, connector, Discovery::Listed));
            }
        }
        Discovery::LoadBalanced => {
            let connector = connectors.into_iter().next().expect("one connector");
            // Links are added as the servers report more replicas; each extra link waits for its turn.
            let mut servers = shared.servers.subscribe();
            let mut mode = shared.mode.clone();
            let mut started = 0;
            loop {
                let wanted = servers.borrow_and_update().expected.max(1);
                while started < wanted {
                    links.spawn(links::run_link(
                        shared.clone(),
                        started,
                        connector.clone(),
                        Discovery::LoadBalanced,
                    ));
                    started += 1;
                }
                tokio::select! {
                    changed = servers.changed() => if changed.is_err() { break },
                    _ = mode.wait_for(|m| *m != Mode::Run) => break,
                }
            }
        }
    }
    while links.join_next().await.is_some() {}
    shared.draining.close();
    shared.draining.wait().await;
    shared.status.send_replace(AgentStatus::Stopped);
}
