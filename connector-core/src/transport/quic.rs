//! The production transport: QUIC (quinn) with TLS 1.3 (rustls). One QUIC
//! connection per agent; one QUIC bidirectional stream per tunnelled TCP
//! connection, each with its own flow control.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, TransportConfig, VarInt};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::congestion::CongestionControl;
use super::credit::{CreditLedger, StreamLimit};
use super::{
    BiStream, BoxFuture, ChunkSink, ChunkSource, Connection, Connector, Handshake, Incoming, Listener, PeerInfo,
    RecvStream, SendStream, StreamReset, TransportError,
};
use crate::proto::{ConnectionCode, StreamCode};
use crate::tls::{AgentTls, ServerTls, TlsError};

/// QUIC connection settings shared by both ends.
#[derive(Debug, Clone)]
pub struct QuicSettings {
    /// How often to send a keepalive when the connection is otherwise idle.
    pub keepalive: Duration,
    /// A connection silent for this long is dead.
    pub idle_timeout: Duration,
    /// Agent side: how many tunnelled connections (streams) the server may
    /// have open at once. Keep it a little above the agent's own limit so
    /// that excess dials get an `Overloaded` answer instead of waiting for
    /// stream credit. The limit announced starts lower and grows as streams
    /// open (`StreamLimit` in `transport::credit`). (A server always lets an agent open at most
    /// [`AGENT_OPENED_STREAMS`] streams: its control stream, plus a few that are refused.)
    pub max_tunnelled_streams: u32,
    /// Limit for the TLS/QUIC handshake.
    pub handshake_timeout: Duration,
    /// Congestion controller of this end's sending direction.
    pub congestion: CongestionControl,
    /// Largest UDP payload this end sends and accepts: the upper bound of
    /// path MTU discovery, clamped to 1,200..=[`MAX_UDP_PAYLOAD`]. 1,200
    /// turns discovery off.
    pub max_udp_payload: u16,
    /// Server side: with this many handshakes in progress, a new connection
    /// attempt must first prove it owns its source address (a QUIC Retry:
    /// one more round trip), so that floods of attempts from forged
    /// addresses cost the server nothing. 0 asks every attempt.
    pub validate_addresses_above: usize,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_tunnelled_streams: 10_064,
            handshake_timeout: Duration::from_secs(10),
            congestion: CongestionControl::Auto,
            max_udp_payload: MAX_UDP_PAYLOAD,
            validate_addresses_above: DEFAULT_VALIDATE_ADDRESSES_ABOVE,
        }
    }
}

/// Default of [`QuicSettings::validate_addresses_above`]: agents' handshakes
/// take a round trip or two, so even a reconnect storm of thousands keeps
/// fewer than this in progress; past it, an extra round trip is cheap.
pub const DEFAULT_VALIDATE_ADDRESSES_ABOVE: usize = 64;

/// Why a QUIC endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    /// TLS material problem.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
    /// rustls configuration is unusable for QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Crypto(String),
}

/// Streams an agent may have open towards a server at once.
pub const AGENT_OPENED_STREAMS: u32 = 4;

/// The smallest UDP payload every QUIC path carries (RFC 9000 §14); packets start at this size.
pub const MIN_UDP_PAYLOAD: u16 = 1_200;

/// Default upper bound of path MTU discovery ([`QuicSettings::max_udp_payload`]).
///
/// Discovery (DPLPMTUD, RFC 8899, run by quinn) starts at 1,200 bytes and
/// probes upwards, so the bound only matters where the path allows more:
/// on an Ethernet path it settles near 1,472; on loopback or a jumbo-frame
/// network it reaches the bound. Fewer, larger packets cut per-packet work
/// (packet building, encryption set-up, ACKs) in both processes. Measured
/// with raw QUIC on loopback (`netbench quic-run`, 2 s): 1,452 (quinn's
/// default) 8.8 / 6.9 Gbit/s up / down, 6,500 24.5 / 20.5 Gbit/s.
///
/// Why not higher: quinn hands the kernel up to 10 packets in one
/// segmentation-offload (GSO) send, and those must fit in one 64 KiB UDP
/// datagram (65,507 bytes of payload over IPv4). With larger packets every
/// full batch fails with `EMSGSIZE`, which quinn counts as loss, then as an
/// MTU black hole, and it falls back to 1,200 (measured with a 9,000 bound:
/// 79 packets lost, one black hole, 1,200 bytes from then on).
pub const MAX_UDP_PAYLOAD: u16 = 6_550;

/// Clamps a configured payload bound into what QUIC and quinn's batching allow.
fn udp_payload_bound(configured: u16) -> u16 {
    configured.clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
}

/// quinn transport parameters for one end: `incoming_streams` is how many
/// streams the peer may have open towards this end.
pub fn transport_config(settings: &QuicSettings, incoming_streams: u32) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(settings.keepalive));
    t.max_idle_timeout(Some(
        settings
            .idle_timeout
            .try_into()
            .unwrap_or(VarInt::from_u32(30_000).into()),
    ));
    t.max_concurrent_bidi_streams(VarInt::from_u32(incoming_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(super::STREAM_WINDOW));
    // The starting size; each connection then covers its open streams
    // (`QuicConnection::credit`, see `transport::credit`).
    t.receive_window(VarInt::from_u64(super::credit::INITIAL_CONNECTION_WINDOW).expect("small"));
    t.congestion_controller_factory(settings.congestion.factory());
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(udp_payload_bound(settings.max_udp_payload));
    t.mtu_discovery_config(Some(mtu));
    t
}

/// Socket buffer asked for on each QUIC UDP socket, both directions. The
/// kernel's default (208 KiB on Linux) holds about 3 ms at 0.5 Gbit/s: a
/// receiver that is not scheduled for longer drops what arrives, which the
/// sender takes for loss (measured: 11,500 drops in 5 s on a 20 ms path,
/// capping a transfer at 0.4 Gbit/s). Linux caps the request at
/// `net.core.rmem_max` / `wmem_max`; `docs/operations.md` says how to raise them.
pub const UDP_SOCKET_BUFFER: usize = 8 << 20;

/// Binds a UDP socket for a QUIC endpoint on `addr`, with socket buffers of
/// [`UDP_SOCKET_BUFFER`] where the kernel allows (IPv6 sockets dual-stack).
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6()
        && let Err(e) = socket.set_only_v6(false)
    {
        tracing::debug!(%e, "UDP socket not dual-stack");
    }
    // Best effort: a smaller buffer still works, only less well at high rates.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER);
    let recv = socket.recv_buffer_size().unwrap_or(0);
    // Linux reports twice what it granted (the doubling covers its
    // bookkeeping): 8 MiB reported is at least 4 MiB for datagrams.
    if recv < UDP_SOCKET_BUFFER {
        // Once per process at info: an agent binds a socket per connection attempt.
        static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !TOLD.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(
                granted = recv,
                wanted = UDP_SOCKET_BUFFER,
                "UDP receive buffer smaller than wanted; raise net.core.rmem_max for fast links"
            );
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A quinn endpoint on a socket from [`bind_udp`]: a server when `server`
/// is given, otherwise a client. It accepts UDP payloads up to
/// `max_udp_payload` (see [`QuicSettings::max_udp_payload`]).
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>, max_udp_payload: u16) -> io::Result<Endpoint> {
    endpoint_with(addr, server, quinn::EndpointConfig::default(), max_udp_payload)
}

fn endpoint_with(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    mut config: quinn::EndpointConfig,
    max_udp_payload: u16,
) -> io::Result<Endpoint> {
    let max_udp_payload = udp_payload_bound(max_udp_payload);
    config
        .max_udp_payload_size(max_udp_payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
    let socket = udp_socket(addr, max_udp_payload)?;
    Endpoint::new_with_abstract_socket(config, server, socket, Arc::new(quinn::TokioRuntime))
}

/// quinn's socket on a fresh UDP socket from [`bind_udp`], for packets up to
/// `max_udp_payload` (already bounded by [`udp_payload_bound`]).
fn udp_socket(addr: SocketAddr, max_udp_payload: u16) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
    super::gro_socket::wrap(bind_udp(addr)?, max_udp_payload)
}

/// Most client endpoints a [`QuicConnector`] keeps between attempts (one per
/// concurrent link is the common case; more are closed).
const MAX_IDLE_ENDPOINTS: usize = 4;

/// Client endpoints of one [`QuicConnector`] whose connection ended (or
/// whose handshake failed), kept for its next attempts.
///
/// Every attempt still gets a fresh UDP socket, hence a new source port: a
/// load balancer in front of several servers may pick another one, and no
/// stale NAT or conntrack entry of the old port is followed. But the socket
/// is put under an idle endpoint ([`Endpoint::rebind_abstract`]) rather than
/// under a new one, because each new endpoint allocates quinn's receive
/// buffer (2 MiB, see `gro_socket`), and an allocator that hands out a block
/// freed before has to zero it, touching every page: agents retrying against
/// a server that refused them grew by about 1.3 MiB each (`docs/benchmarks.md`,
/// "Refused agents").
#[derive(Default)]
struct IdleEndpoints(Mutex<Vec<Endpoint>>);

impl IdleEndpoints {
    /// A client endpoint on a fresh socket bound to `bind`: an idle one moved
    /// to the new socket, or a new endpoint when none is idle.
    fn take(&self, bind: SocketAddr, max_udp_payload: u16) -> io::Result<Endpoint> {
        let idle = self.0.lock().unwrap().pop();
        if let Some(endpoint) = idle {
            let socket = udp_socket(bind, udp_payload_bound(max_udp_payload))?;
            match endpoint.rebind_abstract(socket) {
                Ok(()) => return Ok(endpoint),
                Err(e) => tracing::debug!(%e, "could not move an idle QUIC endpoint to a new socket"),
            }
        }
        endpoint(bind, None, max_udp_payload)
    }

    /// [`Self::take`] for one attempt: the endpoint comes back here when the
    /// attempt (or the connection it made) is dropped.
    fn attempt(self: &Arc<Self>, bind: SocketAddr, max_udp_payload: u16) -> io::Result<AttemptEndpoint> {
        Ok(AttemptEndpoint {
            endpoint: Some(self.take(bind, max_udp_payload)?),
            idle: self.clone(),
        })
    }

    /// Keeps `endpoint` for a later [`Self::take`], or closes it when
    /// [`MAX_IDLE_ENDPOINTS`] are kept already.
    fn give_back(&self, endpoint: Endpoint) {
        let mut idle = self.0.lock().unwrap();
        if idle.len() < MAX_IDLE_ENDPOINTS {
            idle.push(endpoint);
        } else {
            endpoint.close(VarInt::from_u32(ConnectionCode::Normal.to_wire()), b"");
        }
    }
}

/// A client endpoint serving one attempt or connection; it goes back to its
/// connector's [`IdleEndpoints`] when dropped.
struct AttemptEndpoint {
    endpoint: Option<Endpoint>,
    idle: Arc<IdleEndpoints>,
}

impl AttemptEndpoint {
    fn endpoint(&self) -> &Endpoint {
        self.endpoint.as_ref().expect("held until dropped or discarded")
    }

    /// Closes the endpoint instead of keeping it: it could not start an
    /// attempt (its driver stopped, say), so it must not serve the next one.
    fn discard(mut self) {
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.close(VarInt::from_u32(ConnectionCode::Normal.to_wire()), b"");
        }
    }
}

impl Drop for AttemptEndpoint {
    fn drop(&mut self) {
        if let Some(endpoint) = self.endpoint.take() {
            self.idle.give_back(endpoint);
        }
    }
}

/// The endpoint configuration of a server: its stateless-reset key, and the
/// key its connection ids are checked with, are derived from its TLS private
/// key rather than drawn at random. A replacement started with the same key
/// on the same address (a restarted replica, or one killed without closing
/// its connections) therefore recognises an agent's packet on a connection
/// it does not know as one of its own ids and answers with a stateless reset
/// the agent accepts; the agent reconnects at once instead of waiting out its
/// idle timeout (RFC 9000, section 10.3).
fn server_endpoint_config(tls: &ServerTls) -> quinn::EndpointConfig {
    use aws_lc_rs::{hkdf, hmac};
    let private_key = tls.identity.private_key();
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"connector QUIC endpoint keys").extract(private_key.secret_der());
    let reset_key: hmac::Key = prk
        .expand(&[b"stateless reset v1"], hmac::HMAC_SHA256)
        .expect("HKDF-SHA256 expands to one HMAC-SHA256 key")
        .into();
    let mut cid_key = [0u8; 32];
    prk.expand(&[b"connection ids v1"], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut cid_key))
        .expect("HKDF-SHA256 expands to 32 bytes");
    let cid_key = u64::from_le_bytes(cid_key[..8].try_into().expect("8 bytes"));
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    // quinn sends at most one reset per interval (20 ms by default), against
    // reset loops and floods; after a replica restarts, every agent's next
    // packet asks for one at about the same time, and an agent whose packet
    // got none waits for its next probe (seconds, doubling). Neither risk
    // applies here: only a packet carrying a connection id that this key
    // issued (checked first, `cid_generator`) gets a reset, and a reset is
    // smaller than the packet that caused it.
    config.min_reset_interval(STATELESS_RESET_INTERVAL);
    config
}

/// Least time between two stateless resets a server endpoint sends.
const STATELESS_RESET_INTERVAL: Duration = Duration::ZERO;

/// Server side: a QUIC endpoint accepting agents.
pub struct QuicListener {
    endpoint: Endpoint,
    handshake_timeout: Duration,
    validate_addresses_above: usize,
    /// Handshakes in progress (counted by [`InProgress`]).
    handshakes: Arc<AtomicUsize>,
}

/// One handshake counted in [`QuicListener`]'s handshakes in progress.
struct InProgress(Arc<AtomicUsize>);

impl InProgress {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl QuicListener {
    /// Binds a UDP socket on `addr` and starts accepting agents.
    pub fn bind(addr: SocketAddr, tls: &ServerTls, settings: &QuicSettings) -> Result<Self, QuicSetupError> {
        let crypto =
            QuicServerConfig::try_from(tls.rustls_config()?).map_err(|e| QuicSetupError::Crypto(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        // Until its peer is admitted (`Connection::admitted`), a connection
        // has credit for the control stream and a `Hello` only.
        let mut transport = transport_config(settings, 1);
        transport.receive_window(VarInt::from_u64(super::PRE_ADMISSION_WINDOW).expect("small"));
        config.transport_config(Arc::new(transport));
        let endpoint = endpoint_with(
            addr,
            Some(config),
            server_endpoint_config(tls),
            settings.max_udp_payload,
        )
        .map_err(|source| QuicSetupError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            handshake_timeout: settings.handshake_timeout,
            validate_addresses_above: settings.validate_addresses_above,
            handshakes: Arc::default(),
        })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_socket_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }
}

impl Listener for QuicListener {
    fn accept(&self) -> BoxFuture<'_, Option<Incoming>> {
        Box::pin(async move {
            let incoming = loop {
                let incoming = self.endpoint.accept().await?;
                let busy = self.handshakes.load(Ordering::Relaxed) >= self.validate_addresses_above;
                if busy && !incoming.remote_address_validated() && incoming.may_retry() {
                    // Answered with a Retry: a peer at that address comes back with its token.
                    let _ = incoming.retry();
                    continue;
                }
                break incoming;
            };
            let remote = incoming.remote_address();
            let in_progress = InProgress::new(&self.handshakes);
            let limit = self.handshake_timeout;
            let handshake = Box::pin(async move {
                let _in_progress = in_progress;
                let connecting = incoming.accept().map_err(|e| TransportError::Connect(e.to_string()))?;
                let conn = tokio::time::timeout(limit, connecting)
                    .await
                    .map_err(|_| TransportError::Connect("handshake timed out".into()))?
                    .map_err(|e| TransportError::Connect(e.to_string()))?;
                Ok(Arc::new(QuicConnection::new(conn, None, Admission::Pending, None)) as Arc<dyn Connection>)
            }) as Handshake;
            Some(Incoming::new(Some(remote), handshake))
        })
    }

    fn local_addr(&self) -> String {
        super::socket_addr_for_logs(self.local_socket_addr())
    }

    fn shutdown(&self) {
        self.endpoint.close(
            VarInt::from_u32(ConnectionCode::Shutdown.to_wire()),
            b"server shutting down",
        );
    }

    fn closed_sent(&self) -> BoxFuture<'static, ()> {
        // Each agent connection's close is waited for by its own session
        // (`Connection::close_sent`); the endpoint itself has nothing to send.
        Box::pin(std::future::ready(()))
    }
}

/// Agent side: connects to one server address over QUIC.
pub struct QuicConnector {
    server: String,
    server_name: rustls_pki_types::ServerName<'static>,
    config: quinn::ClientConfig,
    handshake_timeout: Duration,
    max_udp_payload: u16,
    /// Streams the server may open at once, at most ([`StreamLimit`]).
    max_tunnelled_streams: u32,
    /// The CAs trusted, for the message when the server's certificate is refused.
    trusted: String,
    /// Endpoints of ended attempts, reused by the next ones.
    idle: Arc<IdleEndpoints>,
}

impl QuicConnector {
    /// A connector for `server` (`host:port`, resolved at each connection
    /// attempt so that DNS changes are followed).
    pub fn new(server: impl Into<String>, tls: &AgentTls, settings: &QuicSettings) -> Result<Self, QuicSetupError> {
        let crypto =
            QuicClientConfig::try_from(tls.rustls_config()?).map_err(|e| QuicSetupError::Crypto(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let streams = StreamLimit::new(settings.max_tunnelled_streams).limit();
        config.transport_config(Arc::new(transport_config(settings, streams)));
        Ok(Self {
            server: server.into(),
            server_name: tls.server_name()?,
            config,
            handshake_timeout: settings.handshake_timeout,
            max_udp_payload: settings.max_udp_payload,
            max_tunnelled_streams: settings.max_tunnelled_streams,
            trusted: tls.server_cas.describe(),
            idle: Arc::default(),
        })
    }
}

impl QuicConnector {
    /// [`Connector::connect`], returning the concrete connection (for its statistics).
    pub async fn connect_quic(&self) -> Result<QuicConnection, TransportError> {
        {
            let addr = tokio::net::lookup_host(&self.server)
                .await
                .map_err(|e| TransportError::Connect(format!("cannot resolve {}: {e}", self.server)))?
                .next()
                .ok_or_else(|| TransportError::Connect(format!("{} resolved to no address", self.server)))?;
            let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                .parse()
                .expect("literal");
            let endpoint = self
                .idle
                .attempt(bind, self.max_udp_payload)
                .map_err(|e| TransportError::Connect(format!("bind {bind}: {e}")))?;
            let name = self.server_name.to_str();
            let connecting = match endpoint.endpoint().connect_with(self.config.clone(), addr, &name) {
                Ok(connecting) => connecting,
                Err(e) => {
                    endpoint.discard();
                    return Err(TransportError::Connect(e.to_string()));
                }
            };
            let conn = tokio::time::timeout(self.handshake_timeout, connecting)
                .await
                .map_err(|_| TransportError::Connect(format!("handshake with {addr} timed out")))?
                .map_err(|e| handshake_error(addr, e, &self.trusted))?;
            let streams = StreamLimit::new(self.max_tunnelled_streams);
            Ok(QuicConnection::new(
                conn,
                Some(endpoint),
                Admission::NotNeeded,
                Some(streams),
            ))
        }
    }
}

impl Connector for QuicConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        Box::pin(async move { Ok(Arc::new(self.connect_quic().await?) as Arc<dyn Connection>) })
    }

    fn describe(&self) -> String {
        format!("quic://{}", self.server)
    }
}

/// Longest [`Connection::close_sent`] waits for a closed connection to drain
/// (three probe timeouts; on a lost path it would be the idle timeout).
const CLOSE_SENT_LIMIT: Duration = Duration::from_secs(1);

/// One QUIC connection.
pub struct QuicConnection {
    conn: quinn::Connection,
    peer: PeerInfo,
    /// The agent's own endpoint, held for the connection's life (then
    /// given back to its connector).
    _endpoint: Option<AttemptEndpoint>,
    /// Sizes the receive window to the streams open on this connection.
    credit: Arc<Credit>,
    /// Datagrams sent on it when [`Connection::close`] was called (`u64::MAX`
    /// until then): the first one after is the CONNECTION_CLOSE.
    datagrams_at_close: Arc<AtomicU64>,
}

/// Whether a connection waits for its peer's admission ([`Connection::admitted`]).
#[derive(Debug, Clone, Copy)]
enum Admission {
    /// A server's connection: restricted credit until the agent is admitted.
    Pending,
    /// An agent's connection.
    NotNeeded,
}

/// A connection's [`CreditLedger`], applied to quinn's receive window, and
/// (on an agent's connection) its [`StreamLimit`], applied to the streams the
/// server may open.
struct Credit {
    conn: quinn::Connection,
    ledger: Mutex<Ledgers>,
}

/// What [`Credit`] counts, under one lock.
struct Ledgers {
    window: CreditLedger,
    streams: Option<StreamLimit>,
}

impl Credit {
    /// Counts a new stream until the returned guard (held by its receiving half) drops.
    fn opened(self: &Arc<Self>) -> CreditGuard {
        let mut ledgers = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock, so that concurrent changes reach quinn in order.
        if let Some(window) = ledgers.window.opened() {
            self.set(window);
        }
        let open = ledgers.window.open();
        if let Some(limit) = ledgers.streams.as_mut().and_then(|s| s.opened(open)) {
            self.conn.set_max_concurrent_bi_streams(VarInt::from_u32(limit));
        }
        CreditGuard(self.clone())
    }

    fn set(&self, window: u64) {
        self.conn
            .set_receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX));
    }
}

/// One open stream counted in its connection's [`Credit`].
struct CreditGuard(Arc<Credit>);

impl Drop for CreditGuard {
    fn drop(&mut self) {
        let mut ledgers = self.0.ledger.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = ledgers.window.closed() {
            self.0.set(window);
        }
    }
}

impl QuicConnection {
    fn new(
        conn: quinn::Connection,
        endpoint: Option<AttemptEndpoint>,
        admission: Admission,
        streams: Option<StreamLimit>,
    ) -> Self {
        let certificates = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .map(|b| *b)
            .unwrap_or_default();
        let peer = PeerInfo {
            remote_addr: Some(conn.remote_address()),
            certificates,
        };
        let window = match admission {
            Admission::Pending => CreditLedger::restricted(super::STREAM_WINDOW.into()),
            Admission::NotNeeded => CreditLedger::default(),
        };
        let credit = Arc::new(Credit {
            conn: conn.clone(),
            ledger: Mutex::new(Ledgers { window, streams }),
        });
        Self {
            conn,
            peer,
            _endpoint: endpoint,
            credit,
            datagrams_at_close: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    fn bi(&self, (send, recv): (quinn::SendStream, quinn::RecvStream)) -> BiStream {
        BiStream {
            send: Box::new(QuicSend(send)),
            recv: Box::new(QuicRecv(recv, self.credit.opened())),
        }
    }

    /// quinn's counters for this connection (packets sent and lost, ACKs, RTT), for path-quality checks.
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }
}

impl Drop for QuicConnection {
    fn drop(&mut self) {
        self.conn.close(
            VarInt::from_u32(ConnectionCode::Normal.to_wire()),
            b"connection dropped",
        );
        // The endpoint (`AttemptEndpoint`) goes back to its connector.
    }
}

/// Resolves once `conn`'s CONNECTION_CLOSE has been put on the wire (a
/// datagram went out after [`Connection::close`], which recorded the count
/// in `at_close`: once closed, a connection sends nothing but its close), or
/// the connection ended otherwise (the peer closed it, it timed out or was
/// reset: nothing of ours is left to send). quinn's own signal,
/// `Endpoint::wait_idle`, also waits out every connection's draining period
/// (three probe timeouts, seconds on a loaded machine), which a process that
/// only has to tell its peers does not need; quinn reports no event for the
/// close going out, so its datagram counter is looked at every millisecond.
/// A connection closed other than through [`Connection::close`] (the whole
/// endpoint closed) waits for the caller's bound.
async fn close_went_out(conn: &quinn::Connection, at_close: &AtomicU64) {
    loop {
        let at_close = at_close.load(Ordering::Relaxed);
        if at_close != u64::MAX && conn.stats().udp_tx.datagrams > at_close {
            return;
        }
        if let Some(reason) = conn.close_reason()
            && !matches!(reason, quinn::ConnectionError::LocallyClosed)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A failed handshake: [`TransportError::Rejected`] when the server answered
/// (a close, a refusal, a TLS alert or a certificate we refused, a version
/// negotiation), [`TransportError::Connect`] when nothing came back.
/// A certificate this agent refused (a TLS alert it raised) is
/// [`TransportError::UntrustedServer`], naming what it trusts (`trusted`).
fn handshake_error(addr: SocketAddr, err: quinn::ConnectionError, trusted: &str) -> TransportError {
    use quinn::ConnectionError as E;
    if let E::TransportError(local) = &err
        && let Some(alert) = crypto_alert(local.code)
        && let Some(refused) =
            TransportError::untrusted_server(addr.to_string(), trusted.to_owned(), local.reason.clone(), alert)
    {
        return refused;
    }
    match err {
        E::TimedOut | E::LocallyClosed | E::CidsExhausted => TransportError::Connect(format!("{addr}: {err}")),
        E::VersionMismatch | E::TransportError(_) | E::ConnectionClosed(_) | E::ApplicationClosed(_) | E::Reset => {
            TransportError::Rejected(format!("{addr}: {err}"))
        }
    }
}

/// The TLS alert a QUIC CRYPTO_ERROR code carries (RFC 9001, section 4.8).
fn crypto_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..=0x1ff).contains(&code).then(|| (code - 0x100) as u8)
}

fn map_conn_error(err: quinn::ConnectionError) -> TransportError {
    use quinn::ConnectionError as E;
    match err {
        E::ApplicationClosed(close) => TransportError::ClosedByPeer {
            code: ConnectionCode::from_wire(close.error_code.into_inner().min(u32::MAX as u64) as u32),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        E::LocallyClosed => TransportError::LocallyClosed,
        E::TimedOut => TransportError::TimedOut,
        E::Reset => TransportError::Lost(
            "stateless reset: the peer no longer knows this connection (it restarted or lost its state)".into(),
        ),
        other => TransportError::Lost(other.to_string()),
    }
}

impl Connection for QuicConnection {
    fn open_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        Box::pin(async move { self.conn.open_bi().await.map(|s| self.bi(s)).map_err(map_conn_error) })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        Box::pin(async move { self.conn.accept_bi().await.map(|s| self.bi(s)).map_err(map_conn_error) })
    }

    fn close(&self, code: ConnectionCode, reason: &str) {
        let sent = self.conn.stats().udp_tx.datagrams;
        let _ = self
            .datagrams_at_close
            .compare_exchange(u64::MAX, sent, Ordering::Relaxed, Ordering::Relaxed);
        self.conn.close(VarInt::from_u32(code.to_wire()), reason.as_bytes());
    }

    fn closed(&self) -> BoxFuture<'static, TransportError> {
        let conn = self.conn.clone();
        Box::pin(async move { map_conn_error(conn.closed().await) })
    }

    fn close_sent(&self) -> BoxFuture<'static, ()> {
        let (conn, at_close) = (self.conn.clone(), self.datagrams_at_close.clone());
        Box::pin(async move {
            let _ = tokio::time::timeout(CLOSE_SENT_LIMIT, close_went_out(&conn, &at_close)).await;
        })
    }

    fn peer(&self) -> PeerInfo {
        // The address follows connection migration (a NAT rebinding on the agent's side).
        PeerInfo {
            remote_addr: Some(self.conn.remote_address()),
            ..self.peer.clone()
        }
    }

    fn transport(&self) -> &'static str {
        "quic"
    }

    fn rtt(&self) -> Option<Duration> {
        Some(self.conn.rtt())
    }

    fn admitted(&self) {
        let mut ledgers = self.credit.ledger.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = ledgers.window.admit() {
            self.credit.set(window);
            self.conn
                .set_max_concurrent_bi_streams(VarInt::from_u32(AGENT_OPENED_STREAMS));
        }
    }
}

fn stream_code(code: VarInt) -> StreamCode {
    StreamCode::from_wire(code.into_inner().min(u32::MAX as u64) as u32)
}

/// Re-expresses quinn's stream errors as [`StreamReset`] where the peer reset
/// or stopped the stream, and as the [`TransportError`] that ended the
/// connection where it was lost (quinn's own message says only "connection lost").
fn map_io(err: io::Error) -> io::Error {
    let Some(inner) = err.get_ref() else {
        return err;
    };
    match (
        inner.downcast_ref::<quinn::ReadError>(),
        inner.downcast_ref::<quinn::WriteError>(),
    ) {
        (Some(quinn::ReadError::ConnectionLost(cause)), _) | (_, Some(quinn::WriteError::ConnectionLost(cause))) => {
            io::Error::new(err.kind(), map_conn_error(cause.clone()))
        }
        (Some(quinn::ReadError::Reset(code)), _) | (_, Some(quinn::WriteError::Stopped(code))) => {
            StreamReset(stream_code(*code)).into_io()
        }
        _ => err,
    }
}

struct QuicSend(quinn::SendStream);
/// The receiving half, counted in its connection's credit while it exists.
struct QuicRecv(quinn::RecvStream, #[allow(dead_code)] CreditGuard);

impl AsyncWrite for QuicSend {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf).map_err(map_io)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.0), cx).map_err(map_io)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx).map_err(map_io)
    }
}

impl SendStream for QuicSend {
    fn reset(&mut self, code: StreamCode) {
        let _ = self.0.reset(VarInt::from_u32(code.to_wire()));
    }

    fn delivered(&self) -> BoxFuture<'static, ()> {
        let stopped = self.0.stopped();
        Box::pin(async move {
            let _ = stopped.await;
        })
    }
}

impl ChunkSink for QuicSend {
    fn takes_chunks(&self) -> bool {
        true
    }

    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<usize>> {
        // quinn keeps the chunk until it is acknowledged; no copy. The future
        // is cancel-safe: dropped while pending, it wrote nothing, and quinn
        // has kept the waker.
        let write = self.0.write_chunks(std::slice::from_mut(chunk));
        let written = std::task::ready!(std::pin::pin!(write).poll(cx)).map_err(|e| map_io(e.into()))?;
        Poll::Ready(Ok(written.bytes))
    }
}

impl AsyncRead for QuicRecv {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.0), cx, buf).map_err(map_io)
    }
}

impl RecvStream for QuicRecv {
    fn stop(&mut self, code: StreamCode) {
        let _ = self.0.stop(VarInt::from_u32(code.to_wire()));
    }
}

impl ChunkSource for QuicRecv {
    fn yields_chunks(&self) -> bool {
        true
    }

    fn poll_read_chunks(&mut self, cx: &mut Context<'_>, chunks: &mut [Bytes]) -> Poll<io::Result<usize>> {
        // The chunks are slices of the decrypted packets; no copy. The
        // future is cancel-safe: dropped while pending, it took nothing.
        let read = self.0.read_chunks(chunks);
        let filled = std::task::ready!(std::pin::pin!(read).poll(cx)).map_err(|e| map_io(e.into()))?;
        Poll::Ready(Ok(filled.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_endpoint_serves_the_next_attempt_on_a_new_port() {
        let idle = IdleEndpoints::default();
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = idle.take(bind, MAX_UDP_PAYLOAD).unwrap();
        let witness = first.clone();
        let first_addr = first.local_addr().unwrap();
        idle.give_back(first);

        let next = idle.take(bind, MAX_UDP_PAYLOAD).unwrap();
        let next_addr = next.local_addr().unwrap();
        assert_ne!(next_addr, first_addr, "each attempt gets a fresh source port");
        assert_eq!(
            witness.local_addr().unwrap(),
            next_addr,
            "the idle endpoint was moved, not a new one made"
        );
    }

    #[tokio::test]
    async fn only_a_few_idle_endpoints_are_kept() {
        let idle = IdleEndpoints::default();
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let endpoints: Vec<_> = (0..MAX_IDLE_ENDPOINTS + 2)
            .map(|_| idle.take(bind, MAX_UDP_PAYLOAD).unwrap())
            .collect();
        for endpoint in endpoints {
            idle.give_back(endpoint);
        }
        assert_eq!(idle.0.lock().unwrap().len(), MAX_IDLE_ENDPOINTS);
    }
}
