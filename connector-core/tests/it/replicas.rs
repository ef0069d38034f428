//! High availability: an agent holds a session with every server replica
//! (behind one load-balanced address or from an explicit list), replicas and
//! agents drain with `GoAway` without cutting open tunnelled connections,
//! and an agent moves to a new connection (make before break) when its
//! transport asks for it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use connector_core::agent::{Agent, AgentStatus};
use connector_core::proto::ConnectionCode;
use connector_core::server::{DialError, Selector, Server, ServerConfig, TunnelStream};
use connector_core::transport::memory::{self, MemoryConnector};
use connector_core::transport::{BiStream, BoxFuture, Connection, Connector, Listener, PeerInfo, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// A replica on the in-memory transport.
struct Replica {
    server: Server,
    connector: MemoryConnector,
}

fn replica(id: &str, count: u16) -> Replica {
    init_tracing();
    let (listener, connector) = memory::pair();
    let mut config = ServerConfig::new(id, authenticator());
    config.server_count = count;
    let server = Server::new(config);
    server.serve(Arc::new(listener) as Arc<dyn Listener>);
    Replica { server, connector }
}

/// One address in front of several replicas, like a load balancer: each
/// connection goes to the next backend in `order` (indices, cycled).
struct LoadBalancer {
    backends: Mutex<Vec<MemoryConnector>>,
    order: Vec<usize>,
    next: AtomicUsize,
}

impl LoadBalancer {
    fn new(backends: Vec<MemoryConnector>, order: Vec<usize>) -> Arc<Self> {
        Arc::new(Self {
            backends: Mutex::new(backends),
            order,
            next: AtomicUsize::new(0),
        })
    }

    /// Points backend `index` at a new replica (a restarted server).
    fn replace(&self, index: usize, connector: MemoryConnector) {
        self.backends.lock().unwrap()[index] = connector;
    }
}

impl Connector for LoadBalancer {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let backend = self.backends.lock().unwrap()[self.order[turn % self.order.len()]].clone();
        Box::pin(async move { backend.connect().await })
    }

    fn describe(&self) -> String {
        "memory load balancer".into()
    }
}

async fn wait_agents(server: &Server, count: usize) {
    tokio::time::timeout(Duration::from_secs(30), server.wait_for_agents(|a| a.len() == count))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} never had {count} agents: {:?}",
                server.config().server_id,
                server.agents()
            )
        });
}

async fn wait_ready(agent: &Agent, replicas: usize) {
    let servers = tokio::time::timeout(
        Duration::from_secs(30),
        agent.wait_for_servers(|s| {
            let mut ids: Vec<_> = s.iter().map(|s| s.server_id.clone()).collect();
            ids.sort();
            ids.dedup();
            ids.len() == replicas
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("agent never held {replicas} replicas: {:?}", agent.servers()));
    assert_eq!(servers.len(), replicas, "one session per replica: {servers:?}");
    assert!(agent.observer().is_ready());
}

/// Writes `data` through an echo target and checks it comes back.
async fn echo(stream: &mut TunnelStream, data: &[u8]) {
    stream.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back, data);
}

fn node_a() -> Selector {
    Selector::Agent("node-a".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_behind_one_address_connects_to_every_replica() {
    guard(async {
        let replicas: Vec<Replica> = ["srv-a", "srv-b", "srv-c"].iter().map(|id| replica(id, 3)).collect();
        // The balancer sends the first connections to srv-a again and again
        // before the others: the agent must keep looking.
        let lb = LoadBalancer::new(
            replicas.iter().map(|r| r.connector.clone()).collect(),
            vec![0, 0, 0, 1, 0, 0, 2],
        );
        let agent = Agent::start(lb, Harness::agent_config_for("node-a", token("node-a")));
        wait_ready(&agent, 3).await;
        assert_eq!(agent.observer().expected_servers(), 3);
        let echo_addr = echo_target().await.to_string();
        for r in &replicas {
            wait_agents(&r.server, 1).await;
            let mut stream = r.server.dial(&node_a(), &echo_addr).await.unwrap();
            echo(&mut stream, r.server.config().server_id.as_bytes()).await;
        }
        let page = agent.observer().render_metrics();
        assert!(page.contains("connector_agent_servers_connected 3\n"), "{page}");
        assert!(page.contains("connector_agent_servers_expected 3\n"), "{page}");
    })
    .await
}

/// The count a server reports may change while it runs (the Lease
/// controller sets it, `server::leases`): each `Welcome` carries the count of
/// the moment, and agents behind one address hold that many replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_hold_as_many_replicas_as_the_servers_count_now() {
    guard(async {
        let replicas: Vec<Replica> = ["srv-a", "srv-b"].iter().map(|id| replica(id, 1)).collect();
        for r in &replicas {
            r.server.set_server_count(2);
            assert!(r.server.render_metrics().contains("connector_server_replicas 2\n"));
        }
        let lb = LoadBalancer::new(replicas.iter().map(|r| r.connector.clone()).collect(), vec![0, 1]);
        let agent = Agent::start(lb, Harness::agent_config_for("node-a", token("node-a")));
        wait_ready(&agent, 2).await;
        assert_eq!(agent.observer().expected_servers(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_list_of_servers_over_quic_holds_each() {
    guard(async {
        let harnesses = [
            Harness::with_config(Kind::Quic, |c| c.server_id = "srv-1".into()).await,
            Harness::with_config(Kind::Quic, |c| c.server_id = "srv-2".into()).await,
        ];
        let connectors = harnesses.iter().map(|h| h.connector(None)).collect();
        let agent = Agent::start_with_servers(connectors, Harness::agent_config_for("node-a", token("node-a")));
        wait_ready(&agent, 2).await;
        let echo_addr = echo_target().await.to_string();
        for h in &harnesses {
            let mut stream = h.server.dial(&node_a(), &echo_addr).await.unwrap();
            echo(&mut stream, b"through every replica").await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_lets_open_connections_finish_and_the_agent_rejoins_it_after_restart() {
    guard(async {
        let mut replicas: Vec<Replica> = ["srv-a", "srv-b", "srv-c"].iter().map(|id| replica(id, 3)).collect();
        let lb = LoadBalancer::new(replicas.iter().map(|r| r.connector.clone()).collect(), vec![0, 1, 2]);
        let agent = Agent::start(lb.clone(), Harness::agent_config_for("node-a", token("node-a")));
        wait_ready(&agent, 3).await;
        let echo_addr = echo_target().await.to_string();
        let mut on_a = replicas[0].server.dial(&node_a(), &echo_addr).await.unwrap();
        let mut on_b = replicas[1].server.dial(&node_a(), &echo_addr).await.unwrap();
        echo(&mut on_a, b"before").await;
        echo(&mut on_b, b"before").await;

        let draining = replicas[1].server.clone();
        let drained = tokio::spawn(async move { draining.drain(Duration::from_secs(60)).await });
        // The agent hears GoAway and stops counting srv-b; srv-b refuses new dials at once.
        agent
            .wait_for_servers(|s| s.iter().all(|s| s.server_id != "srv-b"))
            .await;
        assert!(!agent.observer().is_ready());
        let refused = replicas[1].server.dial(&node_a(), &echo_addr).await.unwrap_err();
        assert!(matches!(refused, DialError::ShuttingDown), "{refused:?}");
        assert!(!replicas[1].server.is_ready());
        // The open connection through the draining replica still works, and so do the others.
        echo(&mut on_b, b"during the drain").await;
        echo(&mut on_a, b"elsewhere, untouched").await;
        // The drain ends when the last open connection does.
        on_b.shutdown().await.unwrap();
        let mut rest = Vec::new();
        on_b.read_to_end(&mut rest).await.unwrap();
        drop(on_b);
        drained.await.unwrap();
        let page = replicas[1].server.render_metrics();
        assert!(
            page.contains("connector_server_go_aways_total{direction=\"sent\"} 1\n"),
            "{page}"
        );
        assert_eq!(agent.observer().metrics().go_aways.get(), 1);

        // srv-b comes back (a new process behind the same balancer slot): the agent rejoins it.
        let restarted = replica("srv-b", 3);
        lb.replace(1, restarted.connector.clone());
        replicas[1] = restarted;
        wait_ready(&agent, 3).await;
        let mut again = replicas[1].server.dial(&node_a(), &echo_addr).await.unwrap();
        echo(&mut again, b"rejoined").await;
        echo(&mut on_a, b"never noticed").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_agent_gets_no_new_dials_but_finishes_open_ones() {
    guard(async {
        let h = Harness::new(Kind::Memory).await;
        let leaving = h.agent("node-a").await;
        // A second agent serving the same address takes over new dials.
        let staying = h.agent("node-b").await;
        let echo_addr = echo_target().await.to_string();
        let mut open = h.server.dial(&node_a(), &echo_addr).await.unwrap();
        echo(&mut open, b"before").await;

        let drained = tokio::spawn(leaving.drain(Duration::from_secs(60)));
        tokio::time::timeout(
            Duration::from_secs(30),
            h.server.wait_for_agents(|a| a.iter().all(|a| a.agent_id != "node-a")),
        )
        .await
        .expect("the server kept routing to the draining agent");
        let err = h.server.dial(&node_a(), &echo_addr).await.unwrap_err();
        assert!(matches!(err, DialError::NoAgent(_)), "{err:?}");
        let mut other = h
            .server
            .dial(&Selector::for_target(&echo_addr), &echo_addr)
            .await
            .unwrap();
        assert_eq!(other.agent_id(), "node-b");
        echo(&mut other, b"the other agent serves").await;
        echo(&mut open, b"still open while draining").await;
        open.shutdown().await.unwrap();
        let mut rest = Vec::new();
        open.read_to_end(&mut rest).await.unwrap();
        drop(open);
        tokio::time::timeout(Duration::from_secs(30), drained)
            .await
            .expect("the agent did not finish draining once its last connection ended")
            .unwrap();
        let page = h.server.render_metrics();
        assert!(
            page.contains("connector_server_go_aways_total{direction=\"received\"} 1\n"),
            "{page}"
        );
        drop(staying);
    })
    .await
}

/// A connection whose transport asks for its replacement when the test says so.
struct Replaceable {
    inner: Arc<dyn Connection>,
    replace: Arc<Notify>,
}

impl Connection for Replaceable {
    fn open_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        self.inner.open_bi()
    }
    fn accept_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        self.inner.accept_bi()
    }
    fn close(&self, code: ConnectionCode, reason: &str) {
        self.inner.close(code, reason)
    }
    fn closed(&self) -> BoxFuture<'static, TransportError> {
        self.inner.closed()
    }
    fn peer(&self) -> PeerInfo {
        self.inner.peer()
    }
    fn transport(&self) -> &'static str {
        self.inner.transport()
    }
    fn superseded(&self) -> BoxFuture<'static, String> {
        let replace = self.replace.clone();
        Box::pin(async move {
            replace.notified().await;
            "the test asked for a new connection".to_owned()
        })
    }
}

struct ReplaceableConnector {
    inner: Arc<dyn Connector>,
    replace: Arc<Notify>,
    closed: Mutex<Vec<BoxFuture<'static, TransportError>>>,
}

impl Connector for ReplaceableConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        Box::pin(async move {
            let inner = self.inner.connect().await?;
            self.closed.lock().unwrap().push(inner.closed());
            Ok(Arc::new(Replaceable {
                inner,
                replace: self.replace.clone(),
            }) as Arc<dyn Connection>)
        })
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

mod a_superseded_connection_is_replaced_without_cutting_open_ones {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic() {
        guard(super::a_superseded_connection_is_replaced_without_cutting_open_ones(
            Kind::Quic,
        ))
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory() {
        guard(super::a_superseded_connection_is_replaced_without_cutting_open_ones(
            Kind::Memory,
        ))
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp() {
        guard(super::a_superseded_connection_is_replaced_without_cutting_open_ones(
            Kind::Tcp,
        ))
        .await
    }
}

async fn a_superseded_connection_is_replaced_without_cutting_open_ones(kind: Kind) {
    let h = Harness::new(kind).await;
    let replace = Arc::new(Notify::new());
    let connector = Arc::new(ReplaceableConnector {
        inner: h.connector(None),
        replace: replace.clone(),
        closed: Mutex::new(Vec::new()),
    });
    let agent = Agent::start(connector.clone(), h.agent_config("node-a", token("node-a")));
    agent.connected().await;
    let echo_addr = echo_target().await.to_string();
    let mut open = h.server.dial(&node_a(), &echo_addr).await.unwrap();
    echo(&mut open, b"on the first connection").await;

    replace.notify_one();
    agent
        .wait_for(|s| matches!(s, AgentStatus::Connected { session: 2, .. }))
        .await;
    // New dials take the new connection; the open one keeps working on the old.
    let mut fresh = h.server.dial(&node_a(), &echo_addr).await.unwrap();
    echo(&mut fresh, b"on the second connection").await;
    echo(&mut open, b"still on the first").await;
    assert_eq!(h.server.agents().len(), 1);
    // Once the old connection's last tunnelled connection ends, the agent closes it.
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    drop(open);
    let first_closed = connector.closed.lock().unwrap().remove(0);
    let reason = tokio::time::timeout(Duration::from_secs(30), first_closed)
        .await
        .expect("the replaced connection was never closed");
    // Closed in order: the agent ends its control stream first (so that a
    // GoAway on it is not lost), and then either it closes the connection or
    // the server, seeing that end, closes it first.
    assert!(
        matches!(
            reason,
            TransportError::LocallyClosed
                | TransportError::ClosedByPeer {
                    code: ConnectionCode::Normal,
                    ..
                }
        ),
        "{reason:?}"
    );
    echo(&mut fresh, b"and the new one lives on").await;
}

mod behind_a_udp_load_balancer {
    //! Three QUIC replicas behind `UdpImpairProxy` acting as a round-robin
    //! UDP load balancer (each new client flow goes to the next replica).

    use std::net::SocketAddr;

    use connector_core::pki::ThrowawayCa;
    use connector_core::tls::{AgentTls, ServerTls};
    use connector_core::transport::quic::{QuicConnector, QuicListener, QuicSettings};
    use connector_testkit::netsim::UdpImpairProxy;

    use super::*;

    fn quic_replica(ca: &ThrowawayCa, id: &str) -> (Server, SocketAddr) {
        let tls = ServerTls {
            identity: ca.issue("connector server", &["localhost"]).unwrap().identity(),
            client_cas: None,
        };
        let listener = QuicListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &QuicSettings::default()).unwrap();
        let addr = listener.local_socket_addr().unwrap();
        let mut config = ServerConfig::new(id, authenticator());
        config.server_count = 3;
        let server = Server::new(config);
        server.serve(Arc::new(listener) as Arc<dyn Listener>);
        (server, addr)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_agent_reaches_every_replica_and_a_drain_interrupts_nothing_elsewhere() {
        guard(async {
            init_tracing();
            let ca = ThrowawayCa::new("replica CA").unwrap();
            let replicas: Vec<(Server, SocketAddr)> = ["srv-a", "srv-b", "srv-c"]
                .iter()
                .map(|id| quic_replica(&ca, id))
                .collect();
            let lb = UdpImpairProxy::start(replicas.iter().map(|(_, a)| *a).collect(), 7)
                .await
                .unwrap();
            let tls = AgentTls {
                server_cas: vec![ca.cert_der()].into(),
                server_name: "localhost".into(),
                client_identity: None,
            };
            let nodes = ["node-a", "node-b", "node-c", "node-d"];
            let mut agents = Vec::new();
            for node in nodes {
                let connector =
                    QuicConnector::new(lb.local_addr().to_string(), &tls, &QuicSettings::default()).unwrap();
                let agent = Agent::start(Arc::new(connector), Harness::agent_config_for(node, token(node)));
                agents.push(agent);
            }
            for agent in &agents {
                wait_ready(agent, 3).await;
            }
            // Dials from each replica reach every node; keep one open per (replica, node).
            let echo_addr = echo_target().await.to_string();
            let mut open = Vec::new();
            for (server, _) in &replicas {
                wait_agents(server, nodes.len()).await;
                for node in nodes {
                    let mut stream = server.dial(&Selector::Agent(node.into()), &echo_addr).await.unwrap();
                    echo(&mut stream, node.as_bytes()).await;
                    open.push((server.config().server_id.clone(), stream));
                }
            }
            // Drain srv-b: everything open on srv-a and srv-c keeps working, and so does srv-b's until closed.
            let draining = replicas[1].0.clone();
            let drained = tokio::spawn(async move { draining.drain(Duration::from_secs(60)).await });
            for agent in &agents {
                agent
                    .wait_for_servers(|s| s.iter().all(|s| s.server_id != "srv-b"))
                    .await;
            }
            for (_, stream) in &mut open {
                echo(stream, b"after the drain began").await;
            }
            for (server_id, mut stream) in open {
                stream.shutdown().await.unwrap();
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty(), "{server_id}: {rest:?}");
            }
            drained.await.unwrap();
            for (server, _) in [&replicas[0], &replicas[2]] {
                let mut stream = server.dial(&node_a(), &echo_addr).await.unwrap();
                echo(&mut stream, b"still serving").await;
            }
        })
        .await
    }
}
