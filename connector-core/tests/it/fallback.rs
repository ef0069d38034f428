//! The agent's transport choice on real sockets: QUIC blocked or degraded →
//! TCP (TLS + QMux); QUIC back → return to QUIC; only an HTTP CONNECT proxy
//! leads out → through the proxy. UDP is impaired with the shared
//! `connector_testkit::netsim::UdpImpairProxy`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::common::*;
use connector_core::agent::{Agent, AgentStatus};
use connector_core::pki::ThrowawayCa;
use connector_core::server::{Selector, Server, ServerConfig};
use connector_core::tls::{AgentTls, ServerTls};
use connector_core::transport::fallback::{Degradation, FallbackConnector, FallbackSettings, TransportMode};
use connector_core::transport::qmux::proxy::{HttpProxy, ProxyChoice};
use connector_core::transport::qmux::{QmuxConnector, QmuxListener, QmuxSettings};
use connector_core::transport::quic::{QuicConnector, QuicListener, QuicSettings};
use connector_core::transport::{BoxFuture, Connection, Connector, TransportError};
use connector_testkit::netsim::{Direction, Impairment, UdpImpairProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A server listening on QUIC and on TCP, like `ServerSetup` builds it.
struct TwoListeners {
    server: Server,
    ca: ThrowawayCa,
    quic: SocketAddr,
    tcp: SocketAddr,
}

fn two_listeners() -> TwoListeners {
    init_tracing();
    let ca = ThrowawayCa::new("fallback test CA").unwrap();
    let tls = ServerTls {
        identity: ca.issue("connector server", &["localhost"]).unwrap().identity(),
        client_cas: None,
    };
    let quic = QuicListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &QuicSettings::default()).unwrap();
    let tcp = QmuxListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &QmuxSettings::default()).unwrap();
    let (quic_addr, tcp_addr) = (quic.local_socket_addr().unwrap(), tcp.local_socket_addr().unwrap());
    let server = Server::new(ServerConfig::new("test-server", authenticator()));
    server.serve(Arc::new(quic));
    server.serve(Arc::new(tcp));
    TwoListeners {
        server,
        ca,
        quic: quic_addr,
        tcp: tcp_addr,
    }
}

fn agent_tls(ca: &ThrowawayCa) -> AgentTls {
    AgentTls {
        server_cas: vec![ca.cert_der()].into(),
        server_name: "localhost".into(),
        client_identity: None,
    }
}

fn fast_settings() -> FallbackSettings {
    FallbackSettings {
        mode: TransportMode::Auto,
        quic_connect_timeout: Duration::from_secs(1),
        probe_interval: Duration::from_millis(500),
        degradation: Degradation {
            window: Duration::from_secs(3),
            sample: Duration::from_millis(250),
            ..Degradation::default()
        },
    }
}

fn fallback(ca: &ThrowawayCa, quic: SocketAddr, tcp: SocketAddr, settings: FallbackSettings) -> FallbackConnector {
    let tls = agent_tls(ca);
    let quic = QuicConnector::new(quic.to_string(), &tls, &QuicSettings::default()).unwrap();
    let tcp = QmuxConnector::new(tcp.to_string(), &tls, &QmuxSettings::default())
        .unwrap()
        .with_proxy(ProxyChoice::Direct);
    FallbackConnector::new(quic, tcp, settings)
}

/// Wraps a connector and publishes every connection it hands out (weakly, so the agent still owns them).
struct Recording {
    inner: Arc<dyn Connector>,
    handed_out: watch::Sender<Vec<(&'static str, Weak<dyn Connection>)>>,
}

impl Recording {
    fn new(inner: Arc<dyn Connector>) -> Arc<Recording> {
        Arc::new(Recording {
            inner,
            handed_out: watch::channel(Vec::new()).0,
        })
    }

    /// Waits for the `n`th connection (1-based) and returns its transport and the connection.
    async fn nth(&self, n: usize) -> (&'static str, Arc<dyn Connection>) {
        let mut rx = self.handed_out.subscribe();
        let list = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|l| l.len() >= n))
            .await
            .unwrap_or_else(|_| panic!("the agent did not make connection #{n} within 60 s"))
            .unwrap()
            .clone();
        let (transport, conn) = &list[n - 1];
        (transport, conn.upgrade().expect("connection still in use"))
    }
}

impl Connector for Recording {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        Box::pin(async move {
            let conn = self.inner.connect().await?;
            self.handed_out
                .send_modify(|l| l.push((conn.transport(), Arc::downgrade(&conn))));
            Ok(conn)
        })
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

async fn start_agent(connector: Arc<dyn Connector>) -> Agent {
    let agent = Agent::start(connector, Harness::agent_config_for("node-a", token("node-a")));
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        agent.wait_for(|s| matches!(s, AgentStatus::Connected { .. } | AgentStatus::Rejected { .. })),
    )
    .await
    .expect("agent did not connect within 60 s");
    assert!(matches!(status, AgentStatus::Connected { .. }), "{status:?}");
    agent
}

async fn echo_round_trip(server: &Server, echo: SocketAddr, len: usize, seed: u64) {
    let stream = server
        .dial(&Selector::Agent("node-a".into()), &echo.to_string())
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(stream);
    let data = pattern(len, seed);
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let ((), read) = tokio::join!(send, r.read_to_end(&mut back));
    read.unwrap();
    assert!(back == data, "echo through the tunnel corrupted");
}

async fn superseded_within(conn: &Arc<dyn Connection>, limit: Duration) -> String {
    tokio::time::timeout(limit, conn.superseded())
        .await
        .unwrap_or_else(|_| panic!("connection over {} not superseded within {limit:?}", conn.transport()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_agent_connects_over_tcp_and_returns_to_quic_when_unblocked() {
    guard(async {
        let s = two_listeners();
        let udp = UdpImpairProxy::start(vec![s.quic], 1).await.unwrap();
        udp.set(Impairment {
            blackhole: true,
            ..Default::default()
        });
        let connector = Arc::new(fallback(&s.ca, udp.local_addr(), s.tcp, fast_settings()));
        let recording = Recording::new(connector.clone());
        let _agent = start_agent(recording.clone()).await;
        let (transport, conn) = recording.nth(1).await;
        assert_eq!(transport, "tcp", "QUIC is blackholed, so the agent must be on TCP");
        let echo = echo_target().await;
        echo_round_trip(&s.server, echo, 1024 * 1024, 1).await;

        udp.set(Impairment::default());
        let reason = superseded_within(&conn, Duration::from_secs(30)).await;
        assert!(reason.contains("QUIC reachable again"), "{reason}");
        assert!(!connector.prefers_tcp());
        let next = connector.connect().await.unwrap();
        assert_eq!(
            next.transport(),
            "quic",
            "after the probe succeeded the next connect uses QUIC"
        );
        drop(conn);
    })
    .await
}

/// A server that answers over QUIC but refuses the connection (a replica
/// draining in a rolling update) has shown that QUIC works: the agent does
/// not fall back to TCP, where the same server would have taken it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_quic_connections_does_not_send_the_agent_to_tcp() {
    guard(async {
        let s = two_listeners();
        let tls = ServerTls {
            identity: s.ca.issue("connector server", &["localhost"]).unwrap().identity(),
            client_cas: None,
        };
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.rustls_config().unwrap()).unwrap();
        let refusing = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(crypto)),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let refusing_addr = refusing.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = refusing.accept().await {
                incoming.refuse();
            }
        });
        let connector = fallback(&s.ca, refusing_addr, s.tcp, fast_settings());
        let err = match connector.connect().await {
            Ok(conn) => panic!("connected over {} to a server refusing QUIC", conn.transport()),
            Err(err) => err,
        };
        assert!(matches!(err, TransportError::Rejected(_)), "{err}");
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(!connector.prefers_tcp());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_to_quic_keeps_in_flight_tunnelled_connections() {
    guard(async {
        let s = two_listeners();
        let udp = UdpImpairProxy::start(vec![s.quic], 2).await.unwrap();
        udp.set(Impairment {
            blackhole: true,
            ..Default::default()
        });
        let connector = Arc::new(fallback(&s.ca, udp.local_addr(), s.tcp, fast_settings()));
        let recording = Recording::new(connector);
        let _agent = start_agent(recording.clone()).await;
        assert_eq!(recording.nth(1).await.0, "tcp");
        let digest = digest_target().await;
        let stream = s
            .server
            .dial(&Selector::Agent("node-a".into()), &digest.to_string())
            .await
            .unwrap();
        let (mut r, mut w) = tokio::io::split(stream);
        let data = pattern(8 * 1024 * 1024, 3);
        let (first, second) = data.split_at(data.len() / 2);
        w.write_all(first).await.unwrap();

        udp.set(Impairment::default());
        let (transport, _) = recording.nth(2).await;
        assert_eq!(transport, "quic", "the agent moves back to QUIC");

        w.write_all(second).await.unwrap();
        w.shutdown().await.unwrap();
        let mut answer = Vec::new();
        r.read_to_end(&mut answer).await.unwrap();
        assert_eq!(
            answer,
            sha256(&data),
            "the tunnelled connection opened before the switch completed intact"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_quic_path_falls_back_to_tcp() {
    guard(async {
        init_tracing();
        let s = two_listeners();
        let udp = UdpImpairProxy::start(vec![s.quic], 4).await.unwrap();
        let connector = Arc::new(fallback(&s.ca, udp.local_addr(), s.tcp, fast_settings()));
        let recording = Recording::new(connector.clone());
        let _agent = start_agent(recording.clone()).await;
        let (transport, conn) = recording.nth(1).await;
        assert_eq!(transport, "quic", "a clean path uses QUIC");

        // A tunnelled connection that streams from the node (like `kubectl logs -f`)
        // is open and flowing; then two in three datagrams towards the server
        // disappear while the agent has data to send. The third always gets
        // through and the way back is clean, so ACKs keep coming: the path
        // starves, the server is not silent (random loss both ways could
        // leave no ACK for eight packets, which means a server gone).
        let source = source_target().await;
        let mut stream = s
            .server
            .dial(&Selector::Agent("node-a".into()), &source.to_string())
            .await
            .unwrap();
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.unwrap();
        udp.set_direction(
            Direction::ToUpstream,
            Impairment {
                keep_one_in: 3,
                ..Default::default()
            },
        );
        let traffic = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let reason = superseded_within(&conn, Duration::from_secs(60)).await;
        assert!(reason.contains("degraded"), "{reason}");
        assert!(connector.prefers_tcp());
        let next = connector.connect().await.unwrap();
        assert_eq!(next.transport(), "tcp", "after degradation the next connect uses TCP");
        traffic.abort();
    })
    .await
}

/// A TCP server that writes to every connection until the connection fails.
async fn source_target() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = pattern(64 * 1024, 11);
                while tcp.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    addr
}

/// A minimal HTTP CONNECT proxy: resolves targets through `names` only (the
/// agent cannot reach them any other way), optionally requires Basic
/// credentials (407 otherwise), or refuses everything with `refuse`.
struct ConnectProxy {
    addr: SocketAddr,
    tunnels: Arc<Mutex<Vec<String>>>,
}

async fn connect_proxy(names: HashMap<String, SocketAddr>, basic: Option<&str>, refuse: Option<u16>) -> ConnectProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = Arc::new(Mutex::new(Vec::new()));
    let expected = basic.map(|b| format!("proxy-authorization: basic {b}").to_ascii_lowercase());
    let log = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let names = names.clone();
            let expected = expected.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let target = text.split_whitespace().nth(1).unwrap_or_default().to_owned();
                let answer = if let Some(code) = refuse {
                    format!("HTTP/1.1 {code} Forbidden\r\n\r\n")
                } else if expected.as_ref().is_some_and(|e| !text.lines().any(|l| l.trim() == e)) {
                    "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n".into()
                } else if let Some(upstream) = names.get(&target) {
                    let Ok(mut upstream) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .unwrap();
                    log.lock().unwrap().push(target);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                } else {
                    "HTTP/1.1 502 Bad Gateway\r\n\r\n".into()
                };
                let _ = client.write_all(answer.as_bytes()).await;
            });
        }
    });
    ConnectProxy { addr, tunnels }
}

/// A TCP connector to a name only the proxy can resolve.
fn via_proxy(ca: &ThrowawayCa, proxy_url: &str) -> QmuxConnector {
    QmuxConnector::new(
        "connector.proxied.invalid:443",
        &agent_tls(ca),
        &QmuxSettings::default(),
    )
    .unwrap()
    .with_proxy(ProxyChoice::Via(HttpProxy::parse(proxy_url).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_http_connect_proxy_leads_out_and_the_agent_connects_through_it() {
    guard(async {
        let s = two_listeners();
        let names = HashMap::from([("connector.proxied.invalid:443".to_owned(), s.tcp)]);
        for basic in [None, Some("YWdlbnQ6cGEgc3M=")] {
            let proxy = connect_proxy(names.clone(), basic, None).await;
            let url = match basic {
                None => format!("http://{}", proxy.addr),
                Some(_) => format!("http://agent:pa%20ss@{}", proxy.addr),
            };
            let recording = Recording::new(Arc::new(via_proxy(&s.ca, &url)));
            let agent = start_agent(recording.clone()).await;
            assert_eq!(recording.nth(1).await.0, "tcp");
            assert_eq!(*proxy.tunnels.lock().unwrap(), ["connector.proxied.invalid:443"]);
            let echo = echo_target().await;
            echo_round_trip(&s.server, echo, 256 * 1024, 7).await;
            agent.stop().await;
            s.server.wait_for_agents(|a| a.is_empty()).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refusals_are_clear_errors_without_credentials() {
    guard(async {
        let s = two_listeners();
        let names = HashMap::from([("connector.proxied.invalid:443".to_owned(), s.tcp)]);
        let forbidding = connect_proxy(names.clone(), None, Some(403)).await;
        let err = via_proxy(&s.ca, &format!("http://{}", forbidding.addr))
            .connect()
            .await
            .err()
            .expect("a 403 from the proxy must fail the connect");
        let text = err.to_string();
        assert!(matches!(err, TransportError::Connect(_)), "{err:?}");
        assert!(
            text.contains("403") && text.contains(&forbidding.addr.to_string()),
            "{text}"
        );

        let authenticating = connect_proxy(names, Some("YWdlbnQ6cmlnaHQ="), None).await;
        let err = via_proxy(&s.ca, &format!("http://agent:wrong-secret@{}", authenticating.addr))
            .connect()
            .await
            .err()
            .expect("wrong proxy credentials must fail the connect");
        let text = err.to_string();
        assert!(text.contains("407"), "{text}");
        assert!(
            !text.contains("wrong-secret"),
            "credentials leaked into the error: {text}"
        );
        assert!(authenticating.tunnels.lock().unwrap().is_empty());
    })
    .await
}
