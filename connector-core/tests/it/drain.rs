//! Issue 17: a drain reaches every agent even when the server's process ends
//! right after it, and a server that vanishes is not taken for a degraded
//! path.
//!
//! Each replica that goes away runs on a runtime of its own, which the test
//! ends the way a process ends: everything the runtime did not finish is
//! gone. Agents reconnect with a backoff of an hour, so a reconnect that
//! happens at all happened without backoff; timeouts are hang guards only.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use connector_core::agent::{Agent, AgentConfig, BackoffConfig};
use connector_core::pki::ThrowawayCa;
use connector_core::server::{Selector, Server, ServerConfig};
use connector_core::tls::{AgentTls, ServerTls};
use connector_core::transport::fallback::{Degradation, FallbackConnector, FallbackSettings, TransportMode};
use connector_core::transport::qmux::proxy::ProxyChoice;
use connector_core::transport::qmux::{QmuxConnector, QmuxListener, QmuxSettings};
use connector_core::transport::quic::{QuicConnector, QuicListener, QuicSettings};
use connector_core::transport::{BoxFuture, Connection, Connector, TransportError};
use futures_util::FutureExt;
use tokio::runtime::Runtime;

/// A server replica listening on QUIC and TCP, like `connector server`.
struct Replica {
    server: Server,
    ca: Arc<ThrowawayCa>,
    quic: SocketAddr,
    tcp: SocketAddr,
}

/// Starts replica `id` on the current runtime, on the given addresses (port 0: any).
fn replica_on(ca: Arc<ThrowawayCa>, id: &str, quic: SocketAddr, tcp: SocketAddr) -> std::io::Result<Replica> {
    let tls = ServerTls {
        identity: ca.issue("connector server", &["localhost"]).unwrap().identity(),
        client_cas: None,
    };
    let quic = QuicListener::bind(quic, &tls, &QuicSettings::default())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::AddrInUse, e.to_string()))?;
    let tcp = QmuxListener::bind(tcp, &tls, &QmuxSettings::default())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::AddrInUse, e.to_string()))?;
    let (quic_addr, tcp_addr) = (quic.local_socket_addr()?, tcp.local_socket_addr()?);
    let server = Server::new(ServerConfig::new(id, authenticator()));
    server.serve(Arc::new(quic));
    server.serve(Arc::new(tcp));
    Ok(Replica {
        server,
        ca,
        quic: quic_addr,
        tcp: tcp_addr,
    })
}

/// Replica `id` on the addresses a replica that went away held, once its
/// sockets are released (nothing holds them any more).
async fn replacement_on(ca: Arc<ThrowawayCa>, id: &str, quic: SocketAddr, tcp: SocketAddr) -> Replica {
    loop {
        match replica_on(ca.clone(), id, quic, tcp) {
            Ok(r) => return r,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A replica on a runtime of its own: its "process".
fn replica_in_process(id: &str) -> (Runtime, Replica) {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ca = Arc::new(ThrowawayCa::new("drain test CA").unwrap());
    let replica = {
        let _inside = runtime.enter();
        replica_on(ca, id, any_port(), any_port()).unwrap()
    };
    (runtime, replica)
}

fn fallback(replica: &Replica, mode: TransportMode, window: Duration) -> Arc<FallbackConnector> {
    let tls = AgentTls {
        server_cas: vec![replica.ca.cert_der()].into(),
        server_name: "localhost".into(),
        client_identity: None,
    };
    let quic = QuicConnector::new(replica.quic.to_string(), &tls, &QuicSettings::default()).unwrap();
    let tcp = QmuxConnector::new(replica.tcp.to_string(), &tls, &QmuxSettings::default())
        .unwrap()
        .with_proxy(ProxyChoice::Direct);
    let settings = FallbackSettings {
        mode,
        // The default: a QUIC attempt that starts just before its server is up
        // is answered once quinn sends its Initial again (about a second).
        quic_connect_timeout: Duration::from_secs(5),
        probe_interval: Duration::from_secs(3600),
        // Quick to judge, so that a close that never arrives would be taken
        // for a degraded path within the test.
        degradation: Degradation {
            window,
            sample: Duration::from_millis(250),
            ..Degradation::default()
        },
    };
    Arc::new(FallbackConnector::new(quic, tcp, settings))
}

/// One address whose backend the test switches, like a Service whose
/// terminating endpoint is removed; it keeps each connection's `superseded()`.
struct Switch {
    backend: Mutex<Arc<dyn Connector>>,
    superseded: Mutex<Vec<Option<BoxFuture<'static, String>>>>,
    closed: Mutex<Vec<Option<BoxFuture<'static, TransportError>>>>,
}

impl Switch {
    fn new(backend: Arc<dyn Connector>) -> Arc<Switch> {
        Arc::new(Switch {
            backend: Mutex::new(backend),
            superseded: Mutex::new(Vec::new()),
            closed: Mutex::new(Vec::new()),
        })
    }

    fn switch_to(&self, backend: Arc<dyn Connector>) {
        *self.backend.lock().unwrap() = backend;
    }

    /// When the first connection handed out was superseded, and why.
    fn first_superseded(&self) -> BoxFuture<'static, String> {
        self.superseded.lock().unwrap()[0].take().expect("asked once")
    }

    /// When the first connection handed out closed, and why.
    fn first_closed(&self) -> BoxFuture<'static, TransportError> {
        self.closed.lock().unwrap()[0].take().expect("asked once")
    }
}

impl Connector for Switch {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        let backend = self.backend.lock().unwrap().clone();
        Box::pin(async move {
            let conn = backend.connect().await?;
            self.superseded.lock().unwrap().push(Some(conn.superseded()));
            self.closed.lock().unwrap().push(Some(conn.closed()));
            Ok(conn)
        })
    }

    fn describe(&self) -> String {
        "switched address".into()
    }
}

/// Agent settings whose backoff is an hour: a reconnect within the test never waited for it.
fn no_backoff_config(node: &str) -> AgentConfig {
    let mut config = Harness::agent_config_for(node, token(node));
    config.backoff = BackoffConfig {
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
        stable_after: Duration::from_secs(3600),
    };
    config
}

async fn wait_on(agent: &Agent, server_id: &str) -> &'static str {
    let servers = tokio::time::timeout(
        Duration::from_secs(60),
        agent.wait_for_servers(|s| s.iter().any(|s| s.server_id == server_id)),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "agent never held a session with {server_id}: {:?}, {:?}, {} GoAways",
            agent.servers(),
            agent.status(),
            agent.observer().metrics().go_aways.get()
        )
    });
    servers.iter().find(|s| s.server_id == server_id).unwrap().transport
}

mod a_drain_reaches_every_agent_before_the_process_exits {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic() {
        guard(super::a_drain_reaches_every_agent_before_the_process_exits(
            TransportMode::Quic,
        ))
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp() {
        guard(super::a_drain_reaches_every_agent_before_the_process_exits(
            TransportMode::Tcp,
        ))
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auto() {
        guard(super::a_drain_reaches_every_agent_before_the_process_exits(
            TransportMode::Auto,
        ))
        .await
    }
}

/// Nothing is open, so the drain has nothing to wait for but the agents: the
/// case where the process used to exit before its GoAways went out.
async fn a_drain_reaches_every_agent_before_the_process_exits(mode: TransportMode) {
    let (process, old) = replica_in_process("srv-old");
    let new = replica_on(
        Arc::new(ThrowawayCa::new("new CA").unwrap()),
        "srv-new",
        any_port(),
        any_port(),
    )
    .unwrap();
    let nodes = ["node-a", "node-b", "node-c"];
    let mut agents = Vec::new();
    for node in nodes {
        let to_old = fallback(&old, mode, Duration::from_secs(3));
        let address = Switch::new(to_old.clone());
        let agent = Agent::start(address.clone(), no_backoff_config(node));
        agents.push((agent, address, to_old));
    }
    let mut before = Vec::new();
    for (agent, _, _) in &agents {
        before.push(wait_on(agent, "srv-old").await);
    }
    if mode == TransportMode::Tcp {
        assert!(before.iter().all(|t| *t == "tcp"), "{before:?}");
    } else {
        assert!(before.iter().all(|t| *t == "quic"), "{before:?}");
    }
    for (_, address, _) in &agents {
        address.switch_to(fallback(&new, mode, Duration::from_secs(3)));
    }

    // SIGTERM: drain, then the process is gone.
    let draining = old.server.clone();
    process
        .spawn(async move { draining.drain(Duration::from_secs(10)).await })
        .await
        .unwrap();
    process.shutdown_background();
    let old_page = old.server.render_metrics();
    drop(old);

    for ((agent, _, to_old), transport) in agents.iter().zip(&before) {
        let now = wait_on(agent, "srv-new").await;
        assert_eq!(
            agent.observer().metrics().go_aways.get(),
            1,
            "the agent counts the GoAway it received"
        );
        assert_eq!(now, *transport, "the agent moved without changing transport");
        assert!(!to_old.prefers_tcp(), "a drained server is no degraded path");
    }
    for (_, address, _) in &agents {
        let superseded = address.first_superseded().now_or_never();
        assert!(
            superseded.is_none(),
            "the old connection was given up as a degraded path: {superseded:?}"
        );
    }
    // Every GoAway was acknowledged before the process ended.
    assert!(
        old_page.contains("connector_server_go_aways_total{direction=\"sent\"} 3\n"),
        "{old_page}"
    );
    assert!(
        old_page.contains("connector_server_go_aways_total{direction=\"acknowledged\"} 3\n"),
        "{old_page}"
    );
    let echo = echo_target().await;
    for node in nodes {
        let stream = new
            .server
            .dial(&Selector::Agent(node.into()), &echo.to_string())
            .await
            .unwrap();
        assert_eq!(echo_all(stream, b"on the new replica").await, b"on the new replica");
    }
}

/// A server process that is killed (no drain, no close): the agent's QUIC
/// connection falls silent after a healthy spell. That is a server gone, not
/// a degraded path: the agent connects again over QUIC, and its transport
/// preference and probe back-off stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_not_a_degraded_path() {
    guard(async {
        let (process, old) = replica_in_process("srv-a");
        // The production window: an idle connection whose server is gone sends
        // its keepalive and then probes at growing intervals, about ten in it.
        let connector = fallback(&old, TransportMode::Auto, Degradation::default().window);
        let address = Switch::new(connector.clone());
        let mut config = Harness::agent_config_for("node-a", token("node-a"));
        config.backoff.max = Duration::from_millis(100);
        let agent = Agent::start(address.clone(), config);
        assert_eq!(wait_on(&agent, "srv-a").await, "quic");
        // Healthy: data flows and is acknowledged.
        let echo = echo_target().await;
        let stream = old
            .server
            .dial(&Selector::Agent("node-a".into()), &echo.to_string())
            .await
            .unwrap();
        assert_eq!(echo_all(stream, b"healthy").await, b"healthy");
        let (ca, quic, tcp) = (old.ca.clone(), old.quic, old.tcp);

        // SIGKILL: the process is gone without a word.
        process.shutdown_background();
        drop(old);
        // Silence: the agent gives the connection up when it sees that,
        // before the idle timeout (30 s) would end it.
        let given_up = async {
            tokio::select! {
                reason = address.first_superseded() => reason,
                reason = address.first_closed() => reason.to_string(),
            }
        };
        let reason = tokio::time::timeout(Duration::from_secs(60), given_up)
            .await
            .expect("the silent connection was never given up");
        assert!(reason.contains("stopped answering"), "{reason}");
        assert!(!reason.contains("degraded"), "{reason}");
        assert!(
            !connector.prefers_tcp(),
            "a killed server made the agent prefer TCP: {reason}"
        );

        // The replacement comes up on the same addresses: the agent is back over QUIC.
        let replacement = replacement_on(ca.clone(), "srv-a2", quic, tcp).await;
        assert_eq!(wait_on(&agent, "srv-a2").await, "quic");
        assert!(!connector.prefers_tcp());
        assert_eq!(agent.observer().metrics().go_aways.get(), 0);
        drop(replacement);
    })
    .await
}

/// Counts the connection attempts through it that failed, for waiting on.
struct CountingFailures {
    inner: Arc<dyn Connector>,
    failures: tokio::sync::watch::Sender<usize>,
}

impl Connector for CountingFailures {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        Box::pin(async move {
            let result = self.inner.connect().await;
            if result.is_err() {
                self.failures.send_modify(|n| *n += 1);
            }
            result
        })
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

mod after_a_go_away_the_agent_finds_the_replacement_without_backoff {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic() {
        guard(super::after_a_go_away_the_agent_finds_the_replacement_without_backoff(
            TransportMode::Quic,
        ))
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp() {
        guard(super::after_a_go_away_the_agent_finds_the_replacement_without_backoff(
            TransportMode::Tcp,
        ))
        .await
    }
}

/// A rolling update of a replica at a fixed address: it drains and exits,
/// and its replacement comes up on the same address only after the agent's
/// attempts have failed (the replica refused while draining, or nothing
/// answered). The agent's backoff is an hour, so it finds the replacement
/// only by probing for it, as it does after a `GoAway`.
async fn after_a_go_away_the_agent_finds_the_replacement_without_backoff(mode: TransportMode) {
    let (process, old) = replica_in_process("srv-old");
    let (ca, quic, tcp) = (old.ca.clone(), old.quic, old.tcp);
    let failures = tokio::sync::watch::channel(0).0;
    let address = Arc::new(CountingFailures {
        inner: fallback(&old, mode, Duration::from_secs(3)),
        failures: failures.clone(),
    });
    let agent = Agent::start(address, no_backoff_config("node-a"));
    wait_on(&agent, "srv-old").await;

    let draining = old.server.clone();
    process
        .spawn(async move { draining.drain(Duration::from_secs(10)).await })
        .await
        .unwrap();
    process.shutdown_background();
    drop(old);
    tokio::time::timeout(Duration::from_secs(60), failures.subscribe().wait_for(|n| *n >= 1))
        .await
        .expect("the agent never tried to reconnect")
        .unwrap();

    let replacement = replacement_on(ca.clone(), "srv-new", quic, tcp).await;
    wait_on(&agent, "srv-new").await;
    assert_eq!(agent.observer().metrics().go_aways.get(), 1);
    drop(replacement);
}
