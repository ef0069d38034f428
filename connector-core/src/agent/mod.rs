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
mod policy;
mod serve;

pub use backoff::{Backoff, BackoffConfig};
pub use policy::{DestinationPolicy, Rule, RuleParseError};
pub use serve::MAX_DIAL_TIMEOUT;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::CredentialSource;
use crate::frame_io::{FrameIoError, read_frame, write_frame};
use crate::identifiers::Identifiers;
use crate::metrics::AgentMetrics;
use crate::proto::{ConnectionCode, Frame, Hello, MAX_FRAME_PAYLOAD, RejectCode};
use crate::transport::{Connection, Connector};
use serve::{DialContext, serve_stream};

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
    /// A tunnelled connection that moves no byte either way for this long is
    /// closed on both ends with [`crate::proto::StreamCode::IdleTimeout`]
    /// (default `None`: never, as interactive sessions such as `kubectl exec`
    /// may stay quiet for hours; `max_connections` still bounds what idle
    /// connections can hold).
    pub tunnel_idle_timeout: Option<Duration>,
}

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
            tunnel_idle_timeout: None,
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
            .finish_non_exhaustive()
    }
}

/// Where the agent stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStatus {
    /// Connecting (or waiting to retry).
    Connecting,
    /// Registered with a server.
    Connected {
        /// The server's id from its `Welcome`.
        server_id: String,
        /// How many times this agent has connected so far (1 for the first connection).
        session: u64,
    },
    /// The server refused the agent; it will retry after a backoff.
    Rejected {
        /// The server's reject code.
        code: RejectCode,
        /// The server's reason.
        reason: String,
    },
    /// The connection failed or ended; it will retry after a backoff.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// [`Agent::stop`] was called.
    Stopped,
}

/// A running agent.
pub struct Agent {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    observer: AgentObserver,
}

/// A cheap, cloneable view of a running agent's status and metrics, for
/// health checks and `/metrics` ([`crate::admin`]).
#[derive(Clone)]
pub struct AgentObserver {
    agent_id: Arc<str>,
    status: watch::Receiver<AgentStatus>,
    metrics: Arc<AgentMetrics>,
}

impl AgentObserver {
    /// The current status.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// What the agent has counted so far.
    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }

    /// Whether the agent holds a session with its server (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        matches!(*self.status.borrow(), AgentStatus::Connected { .. })
    }

    /// The metrics page in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.agent_id, self.is_ready())
    }
}

impl Agent {
    /// Starts connecting in a background task. Must be called within a tokio runtime.
    pub fn start(connector: Arc<dyn Connector>, config: AgentConfig) -> Agent {
        let (status_tx, status) = watch::channel(AgentStatus::Connecting);
        let (stop, stop_rx) = watch::channel(false);
        let observer = AgentObserver {
            agent_id: config.agent_id.as_str().into(),
            status,
            metrics: Arc::default(),
        };
        let task = tokio::spawn(run(connector, config, status_tx, stop_rx, observer.metrics.clone()));
        Agent { stop, task, observer }
    }

    /// A view of this agent's status and metrics that outlives [`Agent::stop`] calls elsewhere.
    pub fn observer(&self) -> AgentObserver {
        self.observer.clone()
    }

    /// The current status.
    pub fn status(&self) -> AgentStatus {
        self.observer.status()
    }

    /// Waits until the status satisfies `predicate` and returns it.
    pub async fn wait_for(&self, mut predicate: impl FnMut(&AgentStatus) -> bool) -> AgentStatus {
        let mut rx = self.observer.status.clone();
        match rx.wait_for(|s| predicate(s)).await {
            Ok(s) => s.clone(),
            Err(_) => self.status(),
        }
    }

    /// Waits until connected and returns the server id.
    pub async fn connected(&self) -> String {
        match self.wait_for(|s| matches!(s, AgentStatus::Connected { .. })).await {
            AgentStatus::Connected { server_id, .. } => server_id,
            _ => String::new(),
        }
    }

    /// Closes the connection and stops reconnecting. Dropping the agent does
    /// the same without waiting.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

enum SessionEnd {
    Stopped,
    Rejected { code: RejectCode, reason: String },
    Failed(String),
}

async fn run(
    connector: Arc<dyn Connector>,
    config: AgentConfig,
    status: watch::Sender<AgentStatus>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<AgentMetrics>,
) {
    let mut backoff = Backoff::new(config.backoff.clone());
    let ctx = Arc::new(DialContext {
        policy: config.policy.clone(),
        slots: Arc::new(Semaphore::new(config.max_connections)),
        max_connections: config.max_connections,
        idle_timeout: config.tunnel_idle_timeout,
        metrics: metrics.clone(),
    });
    tracing::info!(agent = %config.agent_id, server = %connector.describe(), policy = %config.policy, "agent starting");
    let mut sessions = 0;
    loop {
        status.send_replace(AgentStatus::Connecting);
        let started = Instant::now();
        let sessions_before = sessions;
        match session(connector.as_ref(), &config, &ctx, &status, &mut stop, &mut sessions).await {
            SessionEnd::Stopped => break,
            SessionEnd::Rejected { code, reason } => {
                tracing::error!(%code, %reason, "the server rejected this agent");
                metrics.connect_failures.inc(code.label());
                status.send_replace(AgentStatus::Rejected { code, reason });
            }
            SessionEnd::Failed(reason) => {
                tracing::warn!(%reason, "connection to the server ended");
                if sessions == sessions_before {
                    metrics.connect_failures.inc("connection_failed");
                }
                status.send_replace(AgentStatus::Disconnected { reason });
            }
        }
        backoff.connection_lasted(started.elapsed());
        let delay = backoff.next_delay(&mut rand::rng());
        tracing::info!("reconnecting in {delay:.1?}");
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    status.send_replace(AgentStatus::Stopped);
}

/// One connection: handshake, then serve until it ends.
async fn session(
    connector: &dyn Connector,
    config: &AgentConfig,
    ctx: &Arc<DialContext>,
    status: &watch::Sender<AgentStatus>,
    stop: &mut watch::Receiver<bool>,
    sessions: &mut u64,
) -> SessionEnd {
    let conn = tokio::select! {
        _ = stop.wait_for(|s| *s) => return SessionEnd::Stopped,
        conn = connector.connect() => match conn {
            Ok(conn) => conn,
            Err(err) => return SessionEnd::Failed(err.to_string()),
        },
    };
    let credential = match config.credentials.credential().await {
        Ok(c) => c,
        Err(err) => return SessionEnd::Failed(format!("no credential: {err}")),
    };
    let hello = Frame::Hello(Hello::new(
        config.agent_id.clone(),
        config.identifiers.clone(),
        credential,
    ));
    let handshake = async {
        let mut control = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut control.send, &hello)
            .await
            .map_err(|e| e.to_string())?;
        let answer = read_frame(&mut control.recv, MAX_FRAME_PAYLOAD).await;
        Ok::<_, String>((control, answer))
    };
    let (mut control, answer) = tokio::select! {
        _ = stop.wait_for(|s| *s) => {
            conn.close(ConnectionCode::Normal, "agent stopping");
            return SessionEnd::Stopped;
        }
        r = tokio::time::timeout(config.hello_timeout, handshake) => match r {
            Err(_) => return SessionEnd::Failed(format!("no answer to Hello within {:?}", config.hello_timeout)),
            Ok(Err(err)) => return SessionEnd::Failed(err),
            Ok(Ok(x)) => x,
        },
    };
    let welcome = match answer {
        Ok(Frame::Welcome(welcome)) => welcome,
        Ok(Frame::Reject(reject)) => {
            conn.close(ConnectionCode::Rejected, "rejected");
            return SessionEnd::Rejected {
                code: reject.code,
                reason: reject.reason,
            };
        }
        Ok(other) => {
            return protocol_error(conn.as_ref(), format!("expected Welcome, got {}", other.name()));
        }
        Err(err) => {
            let reason = format!("handshake failed: {err}");
            return match conn.closed().now_or_never() {
                Some(closed) => SessionEnd::Failed(format!("{reason} ({closed})")),
                None => protocol_error(conn.as_ref(), reason),
            };
        }
    };
    tracing::info!(server_id = %welcome.server_id, server_count = welcome.server_count, "connected");
    *sessions += 1;
    ctx.metrics.connects.inc();
    status.send_replace(AgentStatus::Connected {
        server_id: welcome.server_id.clone(),
        session: *sessions,
    });
    let control_ended = read_frame(&mut control.recv, MAX_FRAME_PAYLOAD);
    tokio::pin!(control_ended);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {
                conn.close(ConnectionCode::Normal, "agent stopping");
                return SessionEnd::Stopped;
            }
            bi = conn.accept_bi() => match bi {
                Ok(bi) => { tokio::spawn(serve_stream(bi, ctx.clone())); }
                Err(err) => return SessionEnd::Failed(err.to_string()),
            },
            frame = &mut control_ended => {
                return match frame {
                    Ok(frame) => protocol_error(conn.as_ref(), format!("unexpected {} on the control stream", frame.name())),
                    Err(FrameIoError::Eof) => {
                        conn.close(ConnectionCode::Normal, "control stream closed");
                        SessionEnd::Failed("the server closed the control stream".into())
                    }
                    Err(err) => SessionEnd::Failed(format!("control stream: {err}")),
                };
            }
        }
    }
}

fn protocol_error(conn: &dyn Connection, reason: String) -> SessionEnd {
    conn.close(ConnectionCode::ProtocolError, &crate::proto::clip_text(&reason));
    SessionEnd::Failed(reason)
}

use futures_util::FutureExt;
