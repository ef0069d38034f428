//! The agent's links to the server replicas. Each link is a loop that holds
//! one session at a time and reconnects with backoff. With an explicit list
//! of server addresses there is one link per address; behind one
//! load-balanced address the agent adds links until it holds a session with
//! as many distinct server ids as the servers report replicas (every `Hello`
//! lists the replicas already held, and a replica that is listed answers
//! `AlreadyConnected`, so the link tries again and lands elsewhere).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::serve::DialContext;
use super::session::{self, Attempt, Served, Session};
use super::{AgentConfig, AgentStatus, Backoff, Mode, ServerSession};
use crate::metrics::AgentMetrics;
use crate::proto::{ConnectionCode, RejectCode, escaped};
use crate::transport::Connector;

/// The reason of the `GoAway` with which an agent answers a server's.
pub(super) const GO_AWAY_ACKNOWLEDGED: &str = "go-away acknowledged";

/// A session that receives `GoAway` sooner than this after it began is
/// "rapid": after two in a row the agent waits its backoff before it
/// connects again, so a server that sends nothing but `GoAway`s cannot make
/// it spin.
const RAPID_GO_AWAY: Duration = Duration::from_secs(1);

/// After a `GoAway`, attempts that find the replica still draining (it
/// refuses) or not yet replaced (nothing answers) are retried this often
/// (±50 %), without growing the backoff: the replacement is usually up
/// within seconds, and an agent asleep in a grown backoff would miss it.
const REPLACEMENT_PROBE: Duration = Duration::from_millis(250);

/// How long after a `GoAway` (beyond the grace it announced) the agent
/// probes for the replacement at [`REPLACEMENT_PROBE`]; then the normal backoff.
const REPLACEMENT_WAIT: Duration = Duration::from_secs(60);

/// How the agent finds its server replicas.
pub(super) enum Discovery {
    /// One link per given address.
    Listed,
    /// One address in front of all replicas: add links up to the reported replica count.
    LoadBalanced,
}

/// What every link of one agent shares.
pub(super) struct Shared {
    pub(super) config: AgentConfig,
    pub(super) ctx: Arc<DialContext>,
    pub(super) metrics: Arc<AgentMetrics>,
    pub(super) status: watch::Sender<AgentStatus>,
    /// Live sessions by link index, and how many replicas there are to hold.
    pub(super) servers: watch::Sender<Servers>,
    pub(super) mode: watch::Receiver<Mode>,
    /// Sessions being drained in the background.
    pub(super) draining: TaskTracker,
    sessions: AtomicU64,
}

/// The replicas the agent holds sessions with.
#[derive(Debug, Clone, Default)]
pub(super) struct Servers {
    pub(super) live: BTreeMap<usize, ServerSession>,
    /// Replicas the agent should hold (at least 1).
    pub(super) expected: usize,
}

impl Servers {
    /// Distinct server ids held now.
    pub(super) fn distinct(&self) -> usize {
        self.ids_except(None).len()
    }

    /// The distinct server ids held by every link but `except`, sorted.
    fn ids_except(&self, except: Option<usize>) -> Vec<String> {
        let mut ids: Vec<String> = self
            .live
            .iter()
            .filter(|(i, _)| Some(**i) != except)
            .map(|(_, s)| s.server_id.clone())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

impl Shared {
    pub(super) fn new(
        config: AgentConfig,
        ctx: Arc<DialContext>,
        metrics: Arc<AgentMetrics>,
        status: watch::Sender<AgentStatus>,
        servers: watch::Sender<Servers>,
        mode: watch::Receiver<Mode>,
    ) -> Self {
        Self {
            config,
            ctx,
            metrics,
            status,
            servers,
            mode,
            draining: TaskTracker::new(),
            sessions: AtomicU64::new(0),
        }
    }

    /// Server ids held by links other than `index`.
    fn held_by_others(&self, index: usize) -> Vec<String> {
        self.servers.borrow().ids_except(Some(index))
    }

    fn set_live(&self, index: usize, session: Option<ServerSession>, discovery: &Discovery, server_count: u16) {
        self.servers.send_modify(|servers| {
            match session {
                Some(s) => {
                    servers.live.insert(index, s);
                }
                None => {
                    servers.live.remove(&index);
                }
            }
            if matches!(discovery, Discovery::LoadBalanced) && server_count > 0 {
                servers.expected = servers.expected.max(server_count as usize);
            }
        });
        self.publish(None);
    }

    /// Sets the aggregate status: connected while any session is live, else `failure`.
    fn publish(&self, failure: Option<AgentStatus>) {
        let first = self.servers.borrow().live.values().next().cloned();
        match first {
            Some(s) => {
                self.status.send_replace(AgentStatus::Connected {
                    server_id: s.server_id,
                    session: self.sessions.load(Ordering::Relaxed),
                });
            }
            None => {
                if let Some(failure) = failure {
                    self.status.send_replace(failure);
                } else if !matches!(
                    *self.status.borrow(),
                    AgentStatus::Rejected { .. } | AgentStatus::Disconnected { .. }
                ) {
                    self.status.send_replace(AgentStatus::Connecting);
                }
            }
        }
    }
}

fn running(mode: &watch::Receiver<Mode>) -> bool {
    *mode.borrow() == Mode::Run
}

/// One link: sessions one after another over `connector` until the agent stops or drains.
pub(super) async fn run_link(shared: Arc<Shared>, index: usize, connector: Arc<dyn Connector>, discovery: Discovery) {
    let link = Link {
        mode: shared.mode.clone(),
        backoff: Backoff::new(shared.config.backoff.clone()),
        shared,
        index,
        connector,
        discovery,
        replaced: None,
        rapid_go_away: false,
        probing_until: None,
    };
    link.run().await
}

/// What a link does after an attempt or a session.
enum Next {
    /// The agent stops or drains.
    Stop,
    /// Connect again at once.
    Now,
    /// Connect again after a pause: `probing` for a replica's replacement,
    /// else the backoff (`quiet`: not worth an info line).
    Later { quiet: bool, probing: bool },
}

/// The state of one link between its sessions.
struct Link {
    shared: Arc<Shared>,
    index: usize,
    connector: Arc<dyn Connector>,
    discovery: Discovery,
    mode: watch::Receiver<Mode>,
    backoff: Backoff,
    /// The session being replaced keeps serving until the next attempt is over.
    replaced: Option<oneshot::Sender<()>>,
    /// The last session ended with a GoAway soon after it began.
    rapid_go_away: bool,
    /// Until when a failed attempt means "the replica that sent GoAway is
    /// still draining or not yet replaced" rather than a failure.
    probing_until: Option<Instant>,
}

impl Link {
    async fn run(mut self) {
        loop {
            self.wait_for_turn().await;
            if !running(&self.mode) {
                break;
            }
            let started = Instant::now();
            let held = self.shared.held_by_others(self.index);
            let attempt = session::open(self.connector.as_ref(), &self.shared.config, held, &mut self.mode).await;
            if let Some(trigger) = self.replaced.take() {
                let _ = trigger.send(());
            }
            let next = match attempt {
                Attempt::Stopped => Next::Stop,
                Attempt::Connected(session) => self.serve(session, started).await,
                Attempt::Rejected { code, reason } => self.rejected(code, reason),
                Attempt::Failed(reason) => self.failed(reason, self.probing()),
                Attempt::NoCredential(reason) => self.failed(reason, false),
            };
            if matches!(next, Next::Stop) {
                break;
            }
            self.backoff.connection_lasted(started.elapsed());
            if let Next::Later { quiet, probing } = next
                && !self.pause(quiet, probing).await
            {
                break;
            }
        }
        if let Some(trigger) = self.replaced.take() {
            let _ = trigger.send(());
        }
    }

    /// With one address in front of all replicas, an extra link waits until
    /// the servers report more replicas than links before it.
    async fn wait_for_turn(&mut self) {
        if matches!(self.discovery, Discovery::LoadBalanced) && self.index > 0 {
            let mut servers = self.shared.servers.subscribe();
            tokio::select! {
                _ = servers.wait_for(|s| s.expected > self.index) => {}
                _ = self.mode.wait_for(|m| *m != Mode::Run) => {}
            }
        }
    }

    /// Whether a failed attempt is one of the probes for the replacement of
    /// a replica that sent GoAway: retried soon, and logged at debug.
    fn probing(&self) -> bool {
        self.probing_until.is_some_and(|until| Instant::now() < until)
    }

    /// The server refused the agent: logged, counted, published.
    fn rejected(&mut self, code: RejectCode, reason: String) -> Next {
        if code == RejectCode::AlreadyConnected {
            tracing::debug!(link = self.index, reason = %escaped(&reason), "landed on a replica this agent already holds; trying again");
            return Next::Later {
                quiet: true,
                probing: false,
            };
        }
        // Refused because it drains: its replacement is not up yet.
        let probing = code == RejectCode::ShuttingDown && self.probing();
        if probing {
            tracing::debug!(%code, reason = %escaped(&reason), "the replica is still draining");
        } else {
            tracing::error!(%code, reason = %escaped(&reason), "the server rejected this agent");
        }
        self.shared.metrics.connect_failures.inc(code.label());
        self.shared.publish(Some(AgentStatus::Rejected { code, reason }));
        Next::Later { quiet: false, probing }
    }

    /// No session could be set up: logged, counted, published. While
    /// `probing`, nothing answering means a replaced replica's successor is
    /// not up yet.
    fn failed(&mut self, reason: String, probing: bool) -> Next {
        if probing {
            tracing::debug!(reason = %escaped(&reason), server = %self.connector.describe(), "the replacement is not up yet");
        } else {
            tracing::warn!(reason = %escaped(&reason), server = %self.connector.describe(), "could not connect to the server");
        }
        self.shared.metrics.connect_failures.inc("connection_failed");
        self.shared.publish(Some(AgentStatus::Disconnected { reason }));
        Next::Later { quiet: false, probing }
    }

    /// Serves a session until it ends, and decides what comes next.
    async fn serve(&mut self, mut session: Session, started: Instant) -> Next {
        self.probing_until = None;
        let shared = self.shared.clone();
        let server_id = session.server_id.clone();
        tracing::info!(
            server_id = %server_id,
            server_count = session.server_count,
            transport = session.transport(),
            "connected"
        );
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        shared.metrics.connects.inc();
        let live = ServerSession {
            server_id: server_id.clone(),
            transport: session.transport(),
        };
        shared.set_live(self.index, Some(live), &self.discovery, session.server_count);
        let served = session.serve(&shared.ctx, &mut self.mode).await;
        shared.set_live(self.index, None, &self.discovery, 0);
        match served {
            Served::Stopping => {
                let leaving = *self.mode.borrow();
                match leaving {
                    Mode::Drain(grace) => {
                        let code = ConnectionCode::Draining;
                        let announce = session::going_away(code, grace, code.describe());
                        session
                            .drain(shared.ctx.clone(), self.mode.clone(), Some(announce), code, grace)
                            .await
                    }
                    _ => session.close(ConnectionCode::Normal, "agent stopping").await,
                }
                Next::Stop
            }
            Served::GoAway(go_away) => {
                tracing::info!(%server_id, reason = %escaped(&go_away.reason), "the server is going away; connecting elsewhere");
                shared.metrics.go_aways.inc();
                // The server stopped routing here; what is open may finish within its
                // grace. The agent answers with a GoAway of its own (the server waits
                // for it before it closes) and closes once nothing is open.
                let grace = Duration::from_millis(go_away.grace_ms.into());
                self.probing_until = Some(Instant::now() + grace + REPLACEMENT_WAIT);
                let ack = session::going_away(go_away.code, grace, GO_AWAY_ACKNOWLEDGED);
                shared.draining.spawn(session.drain(
                    shared.ctx.clone(),
                    self.mode.clone(),
                    Some(ack),
                    ConnectionCode::Normal,
                    grace,
                ));
                shared.publish(Some(AgentStatus::Disconnected {
                    reason: format!("server {server_id} is going away"),
                }));
                // A replica that drains is no failure: connect again at once (to
                // another replica, or to its replacement). Only a server that keeps
                // sending GoAway right after the Welcome meets the backoff.
                let was_rapid = self.rapid_go_away;
                self.rapid_go_away = started.elapsed() < RAPID_GO_AWAY;
                if was_rapid {
                    Next::Later {
                        quiet: false,
                        probing: false,
                    }
                } else {
                    Next::Now
                }
            }
            Served::Superseded(reason) => {
                tracing::info!(%server_id, %reason, "moving to a new connection; draining this one");
                let (trigger, fired) = oneshot::channel();
                self.replaced = Some(trigger);
                shared.draining.spawn(session.drain_after(
                    async {
                        let _ = fired.await;
                    },
                    shared.ctx.clone(),
                    self.mode.clone(),
                    ConnectionCode::Superseded,
                    shared.config.replace_grace,
                ));
                Next::Now
            }
            Served::Lost(reason) => {
                tracing::warn!(%server_id, reason = %escaped(&reason), "connection to the server ended");
                shared.publish(Some(AgentStatus::Disconnected { reason }));
                Next::Later {
                    quiet: false,
                    probing: false,
                }
            }
        }
    }

    /// Waits before the next attempt: the probe interval while probing for
    /// a replacement, else the backoff. False if the agent stops meanwhile.
    async fn pause(&mut self, quiet: bool, probing: bool) -> bool {
        let delay = if probing {
            REPLACEMENT_PROBE.mul_f64(rand::rng().random_range(0.5..1.5))
        } else {
            self.backoff.next_delay(&mut rand::rng())
        };
        if quiet || probing {
            tracing::debug!(link = self.index, "trying again in {delay:.1?}");
        } else {
            tracing::info!(link = self.index, "reconnecting in {delay:.1?}");
        }
        tokio::select! {
            _ = self.mode.wait_for(|m| *m != Mode::Run) => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
