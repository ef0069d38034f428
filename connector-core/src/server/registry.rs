//! The server's table of connected agents and how a dial picks one.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

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
    /// Which transport carries its connection (`"quic"`, `"tcp"` for the
    /// TLS/TCP fallback, `"memory"`).
    pub transport: &'static str,
    /// The id of the server replica it is connected to (this server's
    /// [`super::ServerConfig::server_id`]).
    pub server_id: String,
    /// Tunnelled connections open through it right now.
    pub active_streams: u32,
    /// How long it has been connected.
    pub connected_for: Duration,
    /// When it connected (wall clock).
    pub connected_since: SystemTime,
    /// Bytes this server sent through it to targets over this connection
    /// (tunnelled payload, not protocol overhead).
    pub bytes_to_agent: u64,
    /// Bytes targets sent back through it to this server over this connection.
    pub bytes_from_agent: u64,
    /// The transport's smoothed round-trip time, when it measures one
    /// ([`Connection::rtt`]).
    pub rtt: Option<Duration>,
    /// How its previous connection to this server ended, if this server saw
    /// one end (and still remembers it: see [`MAX_DISCONNECTS`]).
    pub last_disconnect: Option<Disconnect>,
}

/// How an admitted agent's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// The agent's id.
    pub agent_id: String,
    /// Why the connection ended (peer-supplied text in it is escaped).
    pub reason: String,
    /// When it ended (wall clock).
    pub at: SystemTime,
}

/// Agent ids whose last disconnect a server remembers; beyond this the
/// oldest is forgotten. Only admitted agents are recorded, and each id once,
/// so this bounds the memory to about this many ids and reasons (each at
/// most [`crate::proto::MAX_ID_LEN`] and [`crate::proto::MAX_TEXT_LEN`] bytes).
pub const MAX_DISCONNECTS: usize = 10_000;

/// One registered agent connection.
pub(crate) struct AgentEntry {
    pub(crate) conn_id: u64,
    pub(crate) agent_id: String,
    pub(crate) identity: String,
    pub(crate) identifiers: Identifiers,
    pub(crate) conn: Arc<dyn Connection>,
    pub(crate) active: AtomicU32,
    pub(crate) connected_at: Instant,
    pub(crate) connected_since: SystemTime,
    /// Tunnelled bytes towards the agent (counted per read or write, not per byte).
    pub(crate) bytes_to_agent: AtomicU64,
    /// Tunnelled bytes from the agent.
    pub(crate) bytes_from_agent: AtomicU64,
    /// Why this server ended the connection, when it did (replaced, shut down):
    /// the transport then only reports a local close.
    pub(crate) ended_by_server: OnceLock<&'static str>,
    /// Server-wide: woken whenever a tunnelled connection closes (a drain waits on it).
    pub(crate) tunnel_closed: Arc<Notify>,
}

impl AgentEntry {
    fn info(&self, server_id: &str, last_disconnect: Option<Disconnect>) -> AgentInfo {
        AgentInfo {
            agent_id: self.agent_id.clone(),
            identity: self.identity.clone(),
            identifiers: self.identifiers.clone(),
            remote_addr: self.conn.peer().remote_addr,
            transport: self.conn.transport(),
            server_id: server_id.to_owned(),
            active_streams: self.active.load(Ordering::Relaxed),
            connected_for: self.connected_at.elapsed(),
            connected_since: self.connected_since,
            bytes_to_agent: self.bytes_to_agent.load(Ordering::Relaxed),
            bytes_from_agent: self.bytes_from_agent.load(Ordering::Relaxed),
            rtt: self.conn.rtt(),
            last_disconnect,
        }
    }
}

/// The last disconnect of recently disconnected agent ids, at most `cap`
/// of them; recording one more forgets the oldest.
pub(crate) struct Disconnects {
    cap: usize,
    next: u64,
    /// Agent id → (its last disconnect, its place in `order`).
    by_agent: HashMap<String, (Disconnect, u64)>,
    /// Places, oldest first → agent id.
    order: BTreeMap<u64, String>,
}

impl Disconnects {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            next: 0,
            by_agent: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// Records `disconnect`, replacing the agent's previous one.
    pub(crate) fn record(&mut self, disconnect: Disconnect) {
        if self.cap == 0 {
            return;
        }
        let place = self.next;
        self.next += 1;
        let id = disconnect.agent_id.clone();
        if let Some((_, old)) = self.by_agent.insert(id.clone(), (disconnect, place)) {
            self.order.remove(&old);
        }
        self.order.insert(place, id);
        while self.by_agent.len() > self.cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.by_agent.remove(&oldest);
        }
    }

    pub(crate) fn get(&self, agent_id: &str) -> Option<&Disconnect> {
        self.by_agent.get(agent_id).map(|(d, _)| d)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_agent.len()
    }

    /// Every remembered disconnect, newest first.
    pub(crate) fn newest_first(&self) -> impl Iterator<Item = &Disconnect> {
        self.order.values().rev().filter_map(|id| self.get(id))
    }
}

/// Connected agents, keyed by connection.
pub(crate) struct Registry {
    server_id: String,
    agents: Mutex<HashMap<u64, Arc<AgentEntry>>>,
    /// How admitted agents' connections ended ([`MAX_DISCONNECTS`]).
    disconnects: Mutex<Disconnects>,
    rotation: AtomicU64,
    /// Bumped on every change so that waiters need no polling.
    generation: watch::Sender<u64>,
}

impl Registry {
    pub(crate) fn new(server_id: &str) -> Self {
        Self {
            server_id: server_id.to_owned(),
            agents: Mutex::new(HashMap::new()),
            disconnects: Mutex::new(Disconnects::new(MAX_DISCONNECTS)),
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
                let _ = old.ended_by_server.set("replaced by a newer connection of this agent");
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
        // Lock order: agents, then disconnects (both here and in `ended`).
        let agents = self.agents.lock().expect("registry");
        let disconnects = self.disconnects.lock().expect("disconnects");
        let mut infos: Vec<_> = agents
            .values()
            .map(|e| e.info(&self.server_id, disconnects.get(&e.agent_id).cloned()))
            .collect();
        drop((disconnects, agents));
        infos.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        infos
    }

    /// Whether a connection of `agent_id` is registered.
    pub(crate) fn contains_agent(&self, agent_id: &str) -> bool {
        self.agents
            .lock()
            .expect("registry")
            .values()
            .any(|e| e.agent_id == agent_id)
    }

    /// Connection `conn_id` of an admitted agent ended, as `disconnect`
    /// says: unregisters it (if a newer connection did not already replace
    /// it) and records the disconnect, in one step for every observer.
    pub(crate) fn ended(&self, conn_id: u64, disconnect: Disconnect) {
        {
            let mut agents = self.agents.lock().expect("registry");
            agents.remove(&conn_id);
            self.disconnects.lock().expect("disconnects").record(disconnect);
        }
        self.changed();
    }

    /// The remembered disconnects of agent ids not connected now, newest first.
    pub(crate) fn disconnected(&self) -> Vec<Disconnect> {
        let agents = self.agents.lock().expect("registry");
        let connected: std::collections::HashSet<&str> = agents.values().map(|e| e.agent_id.as_str()).collect();
        self.disconnects
            .lock()
            .expect("disconnects")
            .newest_first()
            .filter(|d| !connected.contains(d.agent_id.as_str()))
            .cloned()
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gone(agent_id: &str, reason: &str) -> Disconnect {
        Disconnect {
            agent_id: agent_id.into(),
            reason: reason.into(),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn disconnects_keep_the_latest_per_agent_and_forget_the_oldest_beyond_the_cap() {
        let mut d = Disconnects::new(3);
        d.record(gone("a", "first"));
        d.record(gone("b", "b"));
        d.record(gone("a", "second"));
        assert_eq!(d.len(), 2, "one entry per agent id");
        assert_eq!(d.get("a").unwrap().reason, "second");
        d.record(gone("c", "c"));
        d.record(gone("d", "d"));
        // b is now the oldest (a was recorded again after it).
        assert_eq!(d.len(), 3);
        assert_eq!(d.get("b"), None);
        let newest: Vec<_> = d.newest_first().map(|x| x.agent_id.as_str()).collect();
        assert_eq!(newest, ["d", "c", "a"]);
    }

    #[test]
    fn disconnects_stay_bounded_under_a_stream_of_distinct_and_repeated_ids() {
        let mut d = Disconnects::new(MAX_DISCONNECTS);
        for i in 0..(3 * MAX_DISCONNECTS) {
            d.record(gone(&format!("agent-{i}"), "gone"));
            // A flapping agent recorded over and over takes one entry, not one per disconnect.
            d.record(gone("flapping", "again"));
            assert!(d.len() <= MAX_DISCONNECTS);
            assert_eq!(
                d.order.len(),
                d.by_agent.len(),
                "the eviction order holds one place per id"
            );
        }
        assert_eq!(d.len(), MAX_DISCONNECTS);
        assert!(d.get("agent-0").is_none(), "the oldest were forgotten");
        assert!(d.get(&format!("agent-{}", 3 * MAX_DISCONNECTS - 1)).is_some());
        assert_eq!(d.get("flapping").unwrap().reason, "again");
    }
}
