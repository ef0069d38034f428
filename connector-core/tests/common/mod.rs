//! Shared harness for the end-to-end tests: a server, agents and TCP targets
//! on loopback, over real QUIC, real TCP (QMux) or the in-memory transport.

#![allow(dead_code)]

/// Instantiates `$name(kind)` as one test per transport.
macro_rules! on_all_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn quic() {
                guard(super::$name(Kind::Quic)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                guard(super::$name(Kind::Memory)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                guard(super::$name(Kind::Tcp)).await
            }
        }
    )*};
}

/// Instantiates `$name(kind)` as one test per TLS transport (QUIC, TCP).
#[allow(unused_macros)] // most test binaries use `on_all_transports`
macro_rules! on_tls_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn quic() {
                guard(super::$name(Kind::Quic)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                guard(super::$name(Kind::Tcp)).await
            }
        }
    )*};
}

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector_core::agent::{Agent, AgentConfig, AgentStatus, BackoffConfig, DestinationPolicy};
use connector_core::auth::{
    Allowance, Authenticator, CertificateAuthenticator, FirstOf, StaticCredential, TokenAuthenticator, TokenEntry,
};
use connector_core::pki::ThrowawayCa;
use connector_core::proto::{Credential, Secret};
use connector_core::server::{Server, ServerConfig};
use connector_core::tls::{AgentTls, Identity, ServerTls};
use connector_core::transport::memory::{self, MemoryConnector};
use connector_core::transport::qmux::proxy::ProxyChoice;
use connector_core::transport::qmux::{QmuxConnector, QmuxListener, QmuxSettings};
use connector_core::transport::quic::{QuicConnector, QuicListener, QuicSettings};
use connector_core::transport::{Connector, Listener};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Which transport a test runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Quic,
    Memory,
    /// TLS + QMux over TCP.
    Tcp,
}

/// Tokens the harness server accepts: `token-<name>` for identity `<name>`,
/// which may claim `host=<name>`, addresses in 127.0.0.0/8 and the default route.
pub const NODES: &[&str] = &["node-a", "node-b", "node-c", "node-d"];

pub fn token(node: &str) -> Credential {
    Credential::Bearer(Secret::new(format!("token-{node}")))
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub fn authenticator() -> Arc<dyn Authenticator> {
    let entries = NODES
        .iter()
        .map(|n| {
            let allowed = format!("host={n},cidr=127.0.0.0/8,default-route=true").parse().unwrap();
            TokenEntry::new(&Secret::new(format!("token-{n}")), *n, Allowance::Only(allowed))
        })
        .collect();
    Arc::new(FirstOf(vec![
        Arc::new(TokenAuthenticator::from_entries(entries)),
        Arc::new(CertificateAuthenticator),
    ]))
}

/// A bare transport: a listener and a way to make connectors to it, with no
/// server attached (tests use it to play a hostile server).
pub struct RawTransport {
    pub kind: Kind,
    pub ca: ThrowawayCa,
    pub listener: Arc<dyn Listener>,
    quic_addr: Option<SocketAddr>,
    memory: Option<MemoryConnector>,
}

impl RawTransport {
    /// The listener's socket address (QUIC and TCP transports).
    #[allow(dead_code)]
    pub fn socket_addr(&self) -> SocketAddr {
        self.quic_addr.expect("a transport with a socket")
    }

    pub fn new(kind: Kind) -> RawTransport {
        init_tracing();
        let ca = ThrowawayCa::new("connector test CA").unwrap();
        let tls = ServerTls {
            identity: ca
                .issue("connector server", &["localhost", "127.0.0.1"])
                .unwrap()
                .identity(),
            client_cas: Some(vec![ca.cert_der()].into()),
        };
        let (listener, quic_addr, memory): (Arc<dyn Listener>, _, _) = match kind {
            Kind::Tcp => {
                let listener =
                    QmuxListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &QmuxSettings::default()).unwrap();
                let addr = listener.local_socket_addr().unwrap();
                (Arc::new(listener), Some(addr), None)
            }
            Kind::Quic => {
                let listener =
                    QuicListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &QuicSettings::default()).unwrap();
                let addr = listener.local_socket_addr().unwrap();
                (Arc::new(listener), Some(addr), None)
            }
            Kind::Memory => {
                let (listener, connector) = memory::pair();
                (Arc::new(listener), None, Some(connector))
            }
        };
        RawTransport {
            kind,
            ca,
            listener,
            quic_addr,
            memory,
        }
    }

    /// A connector to the listener, optionally presenting a client certificate.
    pub fn connector(&self, client: Option<Identity>) -> Arc<dyn Connector> {
        match self.kind {
            Kind::Quic => {
                let tls = AgentTls {
                    server_cas: vec![self.ca.cert_der()].into(),
                    server_name: "localhost".into(),
                    client_identity: client,
                };
                let settings = QuicSettings::default();
                Arc::new(QuicConnector::new(self.quic_addr.unwrap().to_string(), &tls, &settings).unwrap())
            }
            Kind::Tcp => {
                let tls = AgentTls {
                    server_cas: vec![self.ca.cert_der()].into(),
                    server_name: "localhost".into(),
                    client_identity: client,
                };
                let connector =
                    QmuxConnector::new(self.quic_addr.unwrap().to_string(), &tls, &QmuxSettings::default()).unwrap();
                Arc::new(connector.with_proxy(ProxyChoice::Direct))
            }
            Kind::Memory => {
                let chain = client.map(|id| id.chain().to_vec()).unwrap_or_default();
                Arc::new(self.memory.clone().unwrap().with_certificates(chain))
            }
        }
    }
}

impl RawTransport {
    /// A QUIC connector to `other`'s listener that trusts only this transport's CA.
    pub fn connector_with_ca(&self, other: &RawTransport) -> Arc<dyn Connector> {
        let tls = AgentTls {
            server_cas: vec![self.ca.cert_der()].into(),
            server_name: "localhost".into(),
            client_identity: None,
        };
        Arc::new(QuicConnector::new(other.quic_addr.unwrap().to_string(), &tls, &QuicSettings::default()).unwrap())
    }
}

impl RawTransport {
    /// `n` connection attempts that start a handshake and never finish it:
    /// idle TCP connections that send no TLS ClientHello, or QUIC Initial
    /// packets (each from its own UDP port) whose sender never answers.
    /// Holding the returned value keeps them open.
    pub async fn half_open_handshakes(&self, n: usize) -> Vec<Box<dyn std::any::Any + Send>> {
        let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
        match self.kind {
            Kind::Tcp => {
                for _ in 0..n {
                    held.push(Box::new(
                        tokio::net::TcpStream::connect(self.socket_addr()).await.unwrap(),
                    ));
                }
            }
            Kind::Quic => {
                let tls = AgentTls {
                    server_cas: vec![self.ca.cert_der()].into(),
                    server_name: "localhost".into(),
                    client_identity: None,
                };
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.rustls_config().unwrap()).unwrap();
                let config = quinn_proto::ClientConfig::new(Arc::new(crypto));
                for _ in 0..n {
                    let mut endpoint =
                        quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, false, None);
                    let now = std::time::Instant::now();
                    let (_, mut conn) = endpoint
                        .connect(now, config.clone(), self.socket_addr(), "localhost")
                        .unwrap();
                    let mut buf = Vec::new();
                    let transmit = conn.poll_transmit(now, 1, &mut buf).expect("an Initial packet");
                    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    socket.send_to(&buf[..transmit.size], self.socket_addr()).await.unwrap();
                    held.push(Box::new(socket));
                }
            }
            Kind::Memory => {}
        }
        held
    }
}

/// A server on a [`RawTransport`].
pub struct Harness {
    pub server: Server,
    pub transport: RawTransport,
}

impl std::ops::Deref for Harness {
    type Target = RawTransport;
    fn deref(&self) -> &RawTransport {
        &self.transport
    }
}

impl Harness {
    pub async fn new(kind: Kind) -> Harness {
        Self::with_config(kind, |_| {}).await
    }

    /// A harness whose server settings `configure` adjusts first.
    pub async fn with_config(kind: Kind, configure: impl FnOnce(&mut ServerConfig)) -> Harness {
        let transport = RawTransport::new(kind);
        let mut config = ServerConfig::new("test-server", authenticator());
        configure(&mut config);
        let server = Server::new(config);
        server.serve(transport.listener.clone());
        Harness { server, transport }
    }

    /// Agent settings that reach loopback targets and retry quickly.
    pub fn agent_config(&self, agent_id: &str, credential: Credential) -> AgentConfig {
        Self::agent_config_for(agent_id, credential)
    }

    /// [`Harness::agent_config`] without a harness. The agent claims
    /// `host=<agent_id>,ipv4=127.0.0.1`.
    pub fn agent_config_for(agent_id: &str, credential: Credential) -> AgentConfig {
        let mut config = AgentConfig::new(agent_id, Arc::new(StaticCredential(credential)));
        config.identifiers = format!("host={agent_id},ipv4=127.0.0.1").parse().unwrap();
        config.policy = DestinationPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        config.backoff = BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            stable_after: Duration::from_secs(60),
        };
        config
    }

    /// Starts agent `node` with its valid token and waits until it is connected.
    pub async fn agent(&self, node: &str) -> Agent {
        self.start_agent(self.agent_config(node, token(node))).await
    }

    /// Starts an agent and waits until it is connected; panics if it is rejected.
    pub async fn start_agent(&self, config: AgentConfig) -> Agent {
        let agent = Agent::start(self.connector(None), config);
        let status = agent
            .wait_for(|s| matches!(s, AgentStatus::Connected { .. } | AgentStatus::Rejected { .. }))
            .await;
        assert!(
            matches!(status, AgentStatus::Connected { .. }),
            "agent not admitted: {status:?}"
        );
        agent
    }
}

/// A TCP echo server on 127.0.0.1; each connection echoes until EOF, then half-closes.
pub async fn echo_target() -> SocketAddr {
    echo_target_on("127.0.0.1").await
}

/// [`echo_target`] on another loopback address (any of 127.0.0.0/8).
pub async fn echo_target_on(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP server that reads until EOF and only then answers with the SHA-256
/// of everything it read: it works only if half-close is carried through.
pub async fn digest_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => hasher.update(&buf[..n]),
                        Err(_) => return,
                    }
                }
                let _ = tcp.write_all(&hasher.finalize()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes all of `data` through `stream` (to an echo target), half-closes,
/// and returns everything read back until the end.
pub async fn echo_all(stream: connector_core::server::TunnelStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async {
        for chunk in data.chunks(256 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut back = Vec::with_capacity(data.len());
        r.read_to_end(&mut back).await.unwrap();
        back
    };
    tokio::join!(writer, reader).1
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Runs a test body with a generous hang guard (a hang is a failure, not a wait).
pub async fn guard<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(120), body)
        .await
        .expect("test hung for 120 s");
}

/// After a failed tunnelled connection, the agent serves the next dial as usual.
pub async fn next_dial_is_served(h: &Harness) {
    let echo = echo_target().await;
    let stream = h
        .server
        .dial(&connector_core::server::Selector::Any, &echo.to_string())
        .await
        .unwrap();
    assert_eq!(echo_all(stream, b"after").await, b"after");
}

/// Every formatted log line of the test binary, from every thread, as the
/// `connector` binary writes them (text, no colours).
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    /// Installs the binary's only subscriber, logging what `filter` lets
    /// through into the returned capture.
    pub fn install(filter: &str) -> CapturedLog {
        let captured = CapturedLog::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("this test binary installs the only subscriber");
        captured
    }

    /// Captures what `filter` lets through on this thread only, until the
    /// guard is dropped: a `current_thread` runtime's tasks log here, other
    /// tests' threads do not. Works beside a process-wide subscriber.
    pub fn scoped(filter: &str) -> (CapturedLog, tracing::subscriber::DefaultGuard) {
        let captured = CapturedLog::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// Waits until a line contains `needle`, and returns the lines that do.
    pub async fn wait_for(&self, needle: &str) -> Vec<String> {
        loop {
            let lines: Vec<String> = self
                .text()
                .lines()
                .filter(|l| l.contains(needle))
                .map(String::from)
                .collect();
            if !lines.is_empty() {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The test plays the server: takes the next agent connection on `raw` and
/// its `Hello`.
pub async fn accept_agent(
    raw: &RawTransport,
) -> (
    Arc<dyn connector_core::transport::Connection>,
    connector_core::transport::BiStream,
    connector_core::proto::Hello,
) {
    use connector_core::fuzzing::read_frame;
    use connector_core::proto::{Frame, MAX_FRAME_PAYLOAD};
    let conn = raw.listener.accept().await.unwrap().await.unwrap();
    let mut control = conn.accept_bi().await.unwrap();
    let Frame::Hello(hello) = read_frame(&mut control.recv, MAX_FRAME_PAYLOAD).await.unwrap() else {
        panic!("expected Hello")
    };
    (conn, control, hello)
}

/// The test, playing the server, admits `agent` on `control` and waits
/// until the agent sees itself connected.
pub async fn welcome_agent(control: &mut connector_core::transport::BiStream, agent: &Agent) {
    use connector_core::fuzzing::write_frame;
    use connector_core::proto::{Frame, MAX_FRAME_PAYLOAD, Welcome};
    let welcome = Welcome {
        server_id: "fake".into(),
        server_count: 1,
        keepalive_ms: 5000,
        idle_timeout_ms: 30000,
        max_streams: 100,
        max_frame: MAX_FRAME_PAYLOAD as u32,
    };
    write_frame(&mut control.send, &Frame::Welcome(welcome)).await.unwrap();
    agent.connected().await;
}

/// A Konnectivity client in a few lines of raw HTTP/2: one `Proxy` stream
/// carrying length-prefixed `Packet`s both ways.
#[cfg(feature = "grpc")]
pub struct ProxyStream {
    send: h2::SendStream<bytes::Bytes>,
    body: h2::RecvStream,
    buf: Vec<u8>,
    /// The task driving the HTTP/2 connection (and owning its socket).
    connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

/// A fresh path for a frontend's Unix socket, unique to this process and `name`.
pub fn socket_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("proxy.sock")
}

/// Starts `server`'s gRPC frontend (default limits) on a fresh Unix socket
/// ([`socket_path`] of `name`) and returns the socket's path.
#[cfg(feature = "grpc")]
pub fn grpc_frontend_on_unix(server: &connector_core::server::Server, name: &str) -> std::path::PathBuf {
    use connector_core::frontend::{FrontendBind, FrontendLimits, FrontendProtocol};
    let path = socket_path(name);
    connector_core::frontend::start(
        server,
        FrontendProtocol::Grpc,
        &FrontendBind::unix(&path),
        &FrontendLimits::default(),
    )
    .unwrap();
    path
}

/// The request head of Konnectivity's `ProxyService/Proxy` call, as konnectivity-client sends it.
#[cfg(feature = "grpc")]
pub fn proxy_request() -> http::Request<()> {
    http::Request::post("http://localhost/ProxyService/Proxy")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

#[cfg(feature = "grpc")]
impl ProxyStream {
    pub async fn open<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(io: S) -> ProxyStream {
        let (client, connection) = h2::client::handshake(io).await.unwrap();
        let connection = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let (response, send) = client.send_request(proxy_request(), false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        ProxyStream {
            send,
            body: response.into_body(),
            buf: Vec::new(),
            connection,
        }
    }

    pub fn send(&mut self, payload: connector_core::frontend::grpc::pb::packet::Payload) {
        use connector_core::frontend::grpc::pb::PacketType;
        use connector_core::frontend::grpc::pb::packet::Payload;
        use prost::Message;
        let kind = match &payload {
            Payload::DialRequest(_) => PacketType::DialReq,
            Payload::Data(_) => PacketType::Data,
            Payload::CloseDial(_) => PacketType::DialCls,
            Payload::CloseRequest(_) => PacketType::CloseReq,
            other => panic!("a client does not send {other:?}"),
        };
        let body = connector_core::frontend::grpc::pb::Packet {
            r#type: kind as i32,
            payload: Some(payload),
        }
        .encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        self.send.send_data(framed.into(), false).unwrap();
    }

    pub fn dial(&mut self, address: &str, random: i64) {
        self.send(connector_core::frontend::grpc::pb::packet::Payload::DialRequest(
            connector_core::frontend::grpc::pb::DialRequest {
                protocol: "tcp".into(),
                address: address.into(),
                random,
            },
        ));
    }

    /// The next packet's payload from the server.
    pub async fn next(&mut self) -> connector_core::frontend::grpc::pb::packet::Payload {
        use prost::Message;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if self.buf.len() >= 5 + len {
                    let packet = connector_core::frontend::grpc::pb::Packet::decode(&self.buf[5..5 + len]).unwrap();
                    self.buf.drain(..5 + len);
                    return packet.payload.expect("a packet without payload");
                }
            }
            let chunk = self.body.data().await.expect("the Proxy stream ended").unwrap();
            let _ = self.body.flow_control().release_capacity(chunk.len());
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next packet, which must be the `DIAL_RSP` for `random`.
    pub async fn dial_response(&mut self, random: i64) -> connector_core::frontend::grpc::pb::DialResponse {
        match self.next().await {
            connector_core::frontend::grpc::pb::packet::Payload::DialResponse(rsp) if rsp.random == random => rsp,
            other => panic!("expected DIAL_RSP for {random}, got {other:?}"),
        }
    }

    /// Sends `data` on `connect_id` and reads it back from an echo target.
    pub async fn echo(&mut self, connect_id: i64, data: &[u8]) {
        self.send(connector_core::frontend::grpc::pb::packet::Payload::Data(
            connector_core::frontend::grpc::pb::Data {
                connect_id,
                error: String::new(),
                data: data.to_vec(),
            },
        ));
        let mut back = Vec::new();
        while back.len() < data.len() {
            match self.next().await {
                connector_core::frontend::grpc::pb::packet::Payload::Data(d) if d.connect_id == connect_id => {
                    back.extend_from_slice(&d.data)
                }
                other => panic!("expected DATA, got {other:?}"),
            }
        }
        assert_eq!(back, data);
    }

    /// Closes `connect_id` as konnectivity-client's `conn.Close()` does:
    /// `CLOSE_REQ`, then waits for the server's `CLOSE_RSP`.
    pub async fn close(&mut self, connect_id: i64) {
        use connector_core::frontend::grpc::pb::packet::Payload;
        self.send(Payload::CloseRequest(
            connector_core::frontend::grpc::pb::CloseRequest { connect_id },
        ));
        loop {
            match self.next().await {
                Payload::CloseResponse(rsp) if rsp.connect_id == connect_id => {
                    assert_eq!(rsp.error, "", "CLOSE_RSP for {connect_id}");
                    return;
                }
                Payload::Data(d) if d.connect_id == connect_id => {}
                other => panic!("expected CLOSE_RSP for {connect_id}, got {other:?}"),
            }
        }
    }

    /// Closes the whole HTTP/2 connection without ending the stream, as
    /// konnectivity-client's single-use tunnels do (`grpcConn.Close()`).
    pub fn drop_connection(self) {
        self.connection.abort();
    }
}
