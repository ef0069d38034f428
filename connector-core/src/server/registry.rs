//! The server's table of connected agents and how a dial picks one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::routing::{ProxyStrategy, Selector};
use crate::identifiers::Identifiers;
use crate::proto::ConnectionCode;
use crate::transport::Connection;

/// A snapshot of one connected agent.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    /// The id the agent announced.
    pub agent_id: String,
    /// The identity its credential established.
    pub identity: String,
    /// What it serves.
    pub identifiers: Identifiers,
    /// Its network address, if the transport has one.
    pub remote_addr: Option<SocketAddr>,
    /// Tunnelled connections open through it right now.
    pub active_streams: u32,
    /// How long it has been connected.
    pub connected_for: Duration,
}

/// One registered agent connection.
pub(crate) struct AgentEntry {
    pub(crate) conn_id: u64,
    pub(crate) agent_id: String,
    pub(crate) identity: String,
    pub(crate) identifiers: Identifiers,
    pub(crate) conn: Arc<dyn Connection>,
    pub(crate) active: AtomicU32,
    pub(crate) connected_at: Instant,
    /// Server-wide: woken whenever a tunnelled connection closes (a drain waits on it).
    pub(crate) tunnel_closed: Arc<Notify>,
}

impl AgentEntry {
    fn info(&self) -> AgentInfo {
        AgentInfo {
            agent_id: self.agent_id.clone(),
            identity: self.identity.clone(),
            identifiers: self.identifiers.clone(),
            remote_addr: self.conn.peer().remote_addr,
            active_streams: self.active.load(Ordering::Relaxed),
            connected_for: self.connected_at.elapsed(),
        }
    }
}

/// Connected agents, keyed by connection.
pub(crate) struct Registry {
    agents: Mutex<HashMap<u64, Arc<AgentEntry>>>,
    rotation: AtomicU64,
    /// Bumped on every change so that waiters need no polling.
    generation: watch::Sender<u64>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Self {
            agents: Mutex::new(HashMap::new()),
            rotation: AtomicU64::new(0),
            generation: watch::channel(0).0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.agents.lock().expect("registry").len()
    }

    fn changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Registers `entry`. An older connection of the same agent id is
    /// unregistered, and closed unless tunnelled connections are open on it:
    /// an agent that restarted left a half-dead connection, while one that
    /// moved to a new connection drains the old one itself.
    pub(crate) fn insert(&self, entry: Arc<AgentEntry>) {
        let replaced: Vec<_> = {
            let mut agents = self.agents.lock().expect("registry");
            let old: Vec<u64> = agents
                .values()
                .filter(|e| e.agent_id == entry.agent_id)
                .map(|e| e.conn_id)
                .collect();
            let replaced = old.iter().filter_map(|id| agents.remove(id)).collect();
            agents.insert(entry.conn_id, entry);
            replaced
        };
        for old in replaced {
            let open = old.active.load(Ordering::Relaxed);
            if open == 0 {
                tracing::info!(agent = %old.agent_id, "replacing an older connection of this agent");
                old.conn
                    .close(ConnectionCode::Replaced, ConnectionCode::Replaced.describe());
            } else {
                // The agent moved to a new connection (make before break): the
                // old one gets no new dials but keeps what is open until the
                // agent closes it.
                tracing::info!(agent = %old.agent_id, open, "a newer connection of this agent takes new dials; the older one keeps its open tunnelled connections");
            }
        }
        self.changed();
    }

    /// Unregisters connection `conn_id` (a no-op if it was already replaced).
    pub(crate) fn remove(&self, conn_id: u64) -> bool {
        let removed = self.agents.lock().expect("registry").remove(&conn_id).is_some();
        if removed {
            self.changed();
        }
        removed
    }

    pub(crate) fn drain(&self) -> Vec<Arc<AgentEntry>> {
        let all = self.agents.lock().expect("registry").drain().map(|(_, e)| e).collect();
        self.changed();
        all
    }

    pub(crate) fn snapshot(&self) -> Vec<AgentInfo> {
        let mut infos: Vec<_> = self
            .agents
            .lock()
            .expect("registry")
            .values()
            .map(|e| e.info())
            .collect();
        infos.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        infos
    }

    /// Connected agents counted by the transport that carries them.
    pub(crate) fn by_transport(&self) -> Vec<(&'static str, usize)> {
        crate::metrics::tally(
            self.agents
                .lock()
                .expect("registry")
                .values()
                .map(|e| e.conn.transport()),
        )
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Picks the agent for a dial: the candidates are those `selector` names
    /// (for a host, the first of `strategies` that yields any agent); among
    /// them, the one with the fewest open tunnelled connections, ties broken
    /// round-robin so that equal agents share new dials.
    pub(crate) fn select(&self, selector: &Selector, strategies: &[ProxyStrategy]) -> Option<Arc<AgentEntry>> {
        let agents = self.agents.lock().expect("registry");
        let mut candidates: Vec<&Arc<AgentEntry>> = match selector {
            Selector::Agent(id) => agents.values().filter(|e| e.agent_id == *id).collect(),
            Selector::Any => agents.values().collect(),
            Selector::Host(host) => strategies
                .iter()
                .map(|strategy| {
                    agents
                        .values()
                        .filter(|e| strategy.admits(&e.identifiers, host))
                        .collect::<Vec<_>>()
                })
                .find(|found| !found.is_empty())
                .unwrap_or_default(),
        };
        if candidates.is_empty() {
            return None;
        }
        candidates.sort_by_key(|e| e.conn_id);
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) as usize % candidates.len();
        candidates.rotate_left(start);
        candidates
            .into_iter()
            .min_by_key(|e| e.active.load(Ordering::Relaxed))
            .cloned()
    }
}
