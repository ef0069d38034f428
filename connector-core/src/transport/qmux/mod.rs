//! The TCP fallback transport: QMux (draft-ietf-quic-qmux-01) over TLS 1.3
//! over TCP. QUIC's stream semantics (FIN, reset and stop codes, per-stream
//! and connection flow control, stream limits, close code and reason) carried
//! by QUIC frames in QMux records, for networks where UDP is blocked or
//! degraded. `conn` is the protocol without I/O; this module drives it with
//! tokio: one task reads records from the socket, one writes them.
//!
//! Ours because no crate implements QMux, and the multiplexers that exist do
//! not carry QUIC's semantics one to one: yamux has no reset, stop or close
//! codes, and in HTTP/2 the server cannot open streams (`docs/protocol.md`
//! §1.1). TLS is rustls (tokio-rustls), as on QUIC.

pub(crate) mod conn;
pub(crate) mod frame;
pub mod proxy;

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::task::TaskTracker;

use self::conn::{Config, Conn, ConnError, Side, StreamError};
use self::proxy::ProxyChoice;
use super::quic::{AGENT_OPENED_STREAMS, QuicSettings};
use super::{
    BiStream, BoxFuture, ChunkSink, ChunkSource, Connection, Connector, Handshake, Incoming, Listener, PeerInfo,
    RecvStream, SendStream, StreamReset, TransportError,
};
use crate::no_sigpipe::NoSigPipe;
use crate::proto::{ConnectionCode, StreamCode};
use crate::tls::{AgentTls, ServerTls, TlsError};

/// ALPN of connector over QMux over TLS (different from QUIC's `connector/1`,
/// as the draft requires; `qx01` names the QMux draft revision).
pub const QMUX_ALPN: &[u8] = b"connector/1-qx01";

/// Bytes written to the socket per batch.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a closed connection keeps reading until the peer closes too.
const LINGER: Duration = Duration::from_secs(5);

/// QMux connection settings shared by both ends.
#[derive(Debug, Clone)]
pub struct QmuxSettings {
    /// How often to send a QX_PING.
    pub keepalive: Duration,
    /// A connection from which nothing arrives for this long is dead.
    pub idle_timeout: Duration,
    /// Agent side: streams the server may have open at once (see `QuicSettings`).
    pub max_tunnelled_streams: u32,
    /// Limit for TCP connect, proxy CONNECT and TLS handshake together.
    pub handshake_timeout: Duration,
    /// Receive window per stream (bytes buffered for a slow reader); the
    /// connection's window covers one per open stream (`transport::credit`).
    pub stream_window: u64,
}

impl Default for QmuxSettings {
    /// QUIC's defaults ([`QuicSettings`]) for the settings the two transports share.
    fn default() -> Self {
        let quic = QuicSettings::default();
        Self {
            keepalive: quic.keepalive,
            idle_timeout: quic.idle_timeout,
            max_tunnelled_streams: quic.max_tunnelled_streams,
            handshake_timeout: quic.handshake_timeout,
            stream_window: super::STREAM_WINDOW as u64,
        }
    }
}

/// Why a QMux listener or connector could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QmuxSetupError {
    /// TLS material problem.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TCP socket could not be bound.
    #[error("cannot bind TCP {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
    /// The proxy setting is unusable.
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
}

fn config(side: Side, settings: &QmuxSettings, incoming_streams: u32) -> Config {
    Config {
        idle_timeout: settings.idle_timeout,
        keepalive: settings.keepalive,
        stream_window: settings.stream_window,
        max_incoming_streams: u64::from(incoming_streams),
        // A server's peers are admitted by the server (`Connection::admitted`).
        until_admitted: side == Side::Server,
    }
}

/// Server side: a TCP listener accepting agents over TLS + QMux.
pub struct QmuxListener {
    listener: TcpListener,
    tls: TlsAcceptor,
    settings: QmuxSettings,
    live: Mutex<Vec<Weak<Shared>>>,
    shutdown: watch::Sender<bool>,
    /// The socket tasks of every connection accepted here ([`Listener::closed_sent`]).
    tasks: TaskTracker,
}

impl QmuxListener {
    /// Binds `addr` (must be called within a tokio runtime).
    pub fn bind(addr: SocketAddr, tls: &ServerTls, settings: &QmuxSettings) -> Result<Self, QmuxSetupError> {
        let mut config = tls.rustls_config()?;
        config.alpn_protocols = vec![QMUX_ALPN.to_vec()];
        let std_listener = std::net::TcpListener::bind(addr).map_err(|source| QmuxSetupError::Bind { addr, source })?;
        std_listener
            .set_nonblocking(true)
            .map_err(|source| QmuxSetupError::Bind { addr, source })?;
        let listener = TcpListener::from_std(std_listener).map_err(|source| QmuxSetupError::Bind { addr, source })?;
        Ok(Self {
            listener,
            tls: TlsAcceptor::from(Arc::new(config)),
            settings: settings.clone(),
            live: Mutex::new(Vec::new()),
            shutdown: watch::channel(false).0,
            tasks: TaskTracker::new(),
        })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_socket_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Listener for QmuxListener {
    fn accept(&self) -> BoxFuture<'_, Option<Incoming>> {
        Box::pin(async move {
            let mut stop = self.shutdown.subscribe();
            let (tcp, remote) = loop {
                let accepted = tokio::select! {
                    accepted = self.listener.accept() => accepted,
                    _ = stop.wait_for(|s| *s) => return None,
                };
                match accepted {
                    Ok(accepted) => break accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "TCP accept failed");
                        // Out of descriptors and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            let tls = self.tls.clone();
            let settings = self.settings.clone();
            let tasks = self.tasks.clone();
            let shared = Arc::new(Shared::new(Side::Server, &settings, AGENT_OPENED_STREAMS));
            {
                let mut live = self.live.lock().unwrap();
                live.retain(|w| w.strong_count() > 0);
                live.push(Arc::downgrade(&shared));
            }
            let handshake = Box::pin(async move {
                let _ = tcp.set_nodelay(true);
                let stream = tokio::time::timeout(settings.handshake_timeout, tls.accept(NoSigPipe(tcp)))
                    .await
                    .map_err(|_| TransportError::Connect(format!("TLS handshake with {remote} timed out")))?
                    .map_err(|e| TransportError::Connect(format!("TLS handshake with {remote}: {e}")))?;
                let (_, session) = stream.get_ref();
                if session.alpn_protocol() != Some(QMUX_ALPN) {
                    return Err(TransportError::Connect(format!(
                        "{remote} did not negotiate ALPN connector/1-qx01"
                    )));
                }
                let certificates = session
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default();
                let peer = PeerInfo {
                    remote_addr: Some(remote),
                    certificates,
                };
                Ok(QmuxConnection::start(shared, stream, peer, Some(&tasks)) as Arc<dyn Connection>)
            }) as Handshake;
            Some(Incoming::new(Some(remote), handshake))
        })
    }

    fn local_addr(&self) -> String {
        super::socket_addr_for_logs(self.local_socket_addr())
    }

    fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let live = std::mem::take(&mut *self.live.lock().unwrap());
        for shared in live.iter().filter_map(Weak::upgrade) {
            shared.close(ConnectionCode::Shutdown, "server shutting down");
        }
    }

    fn closed_sent(&self) -> BoxFuture<'static, ()> {
        // Each connection's writer ends once its close is written and the
        // TLS stream shut down; its reader once the agent has ended its side
        // (or after the linger): leaving earlier could reset the socket and
        // make the agent's kernel discard the close unread.
        let tasks = self.tasks.clone();
        tasks.close();
        Box::pin(async move { tasks.wait().await })
    }
}

/// Agent side: connects to one server address over TCP (directly or through
/// an HTTP CONNECT proxy), TLS 1.3 and QMux.
pub struct QmuxConnector {
    server: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    settings: QmuxSettings,
    proxy: ProxyChoice,
    /// The CAs trusted, for the message when the server's certificate is refused.
    trusted: String,
}

impl QmuxConnector {
    /// A connector for `server` (`host:port`, resolved at each attempt). The
    /// proxy defaults to `HTTPS_PROXY`/`https_proxy` unless `NO_PROXY` exempts the server.
    pub fn new(server: impl Into<String>, tls: &AgentTls, settings: &QmuxSettings) -> Result<Self, QmuxSetupError> {
        let mut config = tls.rustls_config()?;
        config.alpn_protocols = vec![QMUX_ALPN.to_vec()];
        Ok(Self {
            server: server.into(),
            server_name: tls.server_name()?,
            tls: TlsConnector::from(Arc::new(config)),
            settings: settings.clone(),
            proxy: ProxyChoice::Environment,
            trusted: tls.server_cas.describe(),
        })
    }

    /// Chooses how to reach the server (environment, direct, or a given proxy).
    pub fn with_proxy(mut self, proxy: ProxyChoice) -> Self {
        self.proxy = proxy;
        self
    }

    /// A failed TLS handshake: [`TransportError::UntrustedServer`] when this
    /// agent refused the server's certificate.
    fn handshake_error(&self, err: std::io::Error) -> TransportError {
        if let Some(rustls::Error::InvalidCertificate(refusal)) =
            err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
            && let Some(refused) = TransportError::untrusted_server(
                self.server.clone(),
                self.trusted.clone(),
                err.to_string(),
                rustls::AlertDescription::from(refusal.clone()).into(),
            )
        {
            return refused;
        }
        TransportError::Connect(format!("TLS handshake with {}: {err}", self.server))
    }

    async fn connect_inner(&self) -> Result<Arc<dyn Connection>, TransportError> {
        let proxy = self
            .proxy
            .resolve(&self.server)
            .map_err(|e| TransportError::Connect(e.to_string()))?;
        let (tcp, remote) = match &proxy {
            Some(proxy) => proxy.connect(&self.server).await?,
            None => {
                let tcp = TcpStream::connect(&self.server)
                    .await
                    .map_err(|e| TransportError::Connect(format!("TCP connect to {}: {e}", self.server)))?;
                let remote = tcp.peer_addr().ok();
                (tcp, remote)
            }
        };
        let _ = tcp.set_nodelay(true);
        let stream = self
            .tls
            .connect(self.server_name.clone(), NoSigPipe(tcp))
            .await
            .map_err(|e| self.handshake_error(e))?;
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() != Some(QMUX_ALPN) {
            return Err(TransportError::Connect(format!(
                "{} did not negotiate ALPN connector/1-qx01 (not a connector server, or too old)",
                self.server
            )));
        }
        let certificates: Vec<CertificateDer<'static>> = session
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let shared = Arc::new(Shared::new(
            Side::Client,
            &self.settings,
            self.settings.max_tunnelled_streams,
        ));
        let peer = PeerInfo {
            remote_addr: remote,
            certificates,
        };
        Ok(QmuxConnection::start(shared, stream, peer, None) as Arc<dyn Connection>)
    }
}

impl Connector for QmuxConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        Box::pin(async move {
            tokio::time::timeout(self.settings.handshake_timeout, self.connect_inner())
                .await
                .map_err(|_| {
                    TransportError::Connect(format!(
                        "connecting to {} over TCP timed out after {:?}",
                        self.server, self.settings.handshake_timeout
                    ))
                })?
        })
    }

    fn describe(&self) -> String {
        match self.proxy.resolve(&self.server) {
            Ok(Some(proxy)) => format!("tcp://{} via {}", self.server, proxy.describe()),
            _ => format!("tcp://{}", self.server),
        }
    }
}

/// State shared by a connection, its streams and its two socket tasks.
struct Shared {
    conn: Mutex<Conn>,
    /// Wakes the writer task: there may be something to send.
    wake_writer: Notify,
    closed: watch::Sender<Option<TransportError>>,
}

fn transport_error(e: &ConnError) -> TransportError {
    match e {
        ConnError::ClosedByPeer {
            application: true,
            code,
            reason,
        } => TransportError::ClosedByPeer {
            code: ConnectionCode::from_wire(u32::try_from(*code).unwrap_or(u32::MAX)),
            reason: reason.clone(),
        },
        ConnError::ClosedByPeer { code, reason, .. } => {
            TransportError::Lost(format!("peer closed with QMux transport error {code:#x}: {reason}"))
        }
        ConnError::LocallyClosed => TransportError::LocallyClosed,
        ConnError::TimedOut => TransportError::TimedOut,
        ConnError::Lost(what) => TransportError::Lost(what.clone()),
    }
}

impl Shared {
    fn new(side: Side, settings: &QmuxSettings, incoming_streams: u32) -> Self {
        Self {
            conn: Mutex::new(Conn::new(
                side,
                config(side, settings, incoming_streams),
                Instant::now(),
            )),
            wake_writer: Notify::new(),
            closed: watch::channel(None).0,
        }
    }

    /// Runs `f` on the connection, then publishes a close and wakes the writer.
    fn with<R>(&self, f: impl FnOnce(&mut Conn) -> R) -> R {
        let r = self.with_quiet(f);
        self.wake_writer.notify_one();
        r
    }

    /// [`Shared::with`] without waking the writer (for the writer itself).
    fn with_quiet<R>(&self, f: impl FnOnce(&mut Conn) -> R) -> R {
        let (r, error) = {
            let mut conn = self.conn.lock().unwrap();
            let r = f(&mut conn);
            (r, conn.error().map(transport_error))
        };
        if let Some(error) = error {
            self.closed.send_if_modified(|state| {
                if state.is_some() {
                    return false;
                }
                *state = Some(error);
                true
            });
        }
        r
    }

    fn close(&self, code: ConnectionCode, reason: &str) {
        self.with(|c| c.close(u64::from(code.to_wire()), reason));
    }
}

/// TLS over the socket; its records go out gathered, without `SIGPIPE`.
type Tls = tokio_rustls::TlsStream<NoSigPipe>;

async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut rd: R) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut closed = shared.closed.subscribe();
    loop {
        let done = shared.with(|c| {
            let now = Instant::now();
            loop {
                match frame::take_record(&mut buf, frame::DEFAULT_MAX_RECORD_SIZE) {
                    Ok(Some(record)) => c.handle_record(record, now),
                    Ok(None) => break,
                    Err(_) => c.record_too_large(),
                }
                if c.error().is_some() {
                    break;
                }
            }
            c.error().is_some()
        });
        if done {
            break;
        }
        buf.reserve(32 * 1024);
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) => {
                    shared.with(|c| c.transport_failed("the server or agent closed the TCP connection".into()));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    shared.with(|c| c.transport_failed(format!("TCP connection failed: {e}")));
                    return;
                }
            },
            _ = closed.wait_for(Option::is_some) => break,
        }
    }
    linger(&mut rd, buf).await;
}

/// After a close, reads (and drops) until the peer ends its side too, for at
/// most [`LINGER`]. Closing a socket with unread bytes in it makes the kernel
/// send a reset, and a reset makes the peer's kernel discard what the peer has
/// not read yet: the last stream data before our close, or the peer's own
/// CONNECTION_CLOSE.
async fn linger<R: AsyncRead + Unpin>(rd: &mut R, mut buf: BytesMut) {
    let drain = async {
        loop {
            buf.clear();
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

async fn write_loop<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut wr: W) {
    let mut out = Vec::with_capacity(WRITE_BATCH + 32 * 1024);
    loop {
        out.clear();
        let (deadline, drained) = shared.with_quiet(|c| {
            c.handle_timeout(Instant::now());
            while out.len() < WRITE_BATCH && c.poll_transmit(&mut out, WRITE_BATCH) {}
            (c.poll_timeout(), c.is_drained())
        });
        if !out.is_empty() {
            let written = async {
                wr.write_all(&out).await?;
                wr.flush().await
            };
            if let Err(e) = written.await {
                shared.with(|c| c.transport_failed(format!("TCP connection failed: {e}")));
                return;
            }
            continue;
        }
        if drained {
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
            return;
        }
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.wake_writer.notified() => {}
            _ = sleep => {}
        }
    }
}

/// Longest [`Connection::close_sent`] waits for a closed connection's socket
/// tasks (as for QUIC).
const CLOSE_SENT_LIMIT: Duration = Duration::from_secs(1);

/// One QMux connection.
struct QmuxConnection {
    shared: Arc<Shared>,
    peer: PeerInfo,
    /// Its reader and writer tasks.
    loops: TaskTracker,
}

impl QmuxConnection {
    /// Starts the socket tasks, also tracked by `listener` when given.
    fn start(shared: Arc<Shared>, stream: impl Into<Tls>, peer: PeerInfo, listener: Option<&TaskTracker>) -> Arc<Self> {
        let (rd, wr) = tokio::io::split(stream.into());
        let loops = TaskTracker::new();
        let reader = loops.track_future(read_loop(shared.clone(), rd));
        let writer = loops.track_future(write_loop(shared.clone(), wr));
        match listener {
            Some(listener) => {
                listener.spawn(reader);
                listener.spawn(writer);
            }
            None => {
                tokio::spawn(reader);
                tokio::spawn(writer);
            }
        }
        loops.close();
        Arc::new(Self { shared, peer, loops })
    }

    fn bi(&self, id: u64) -> BiStream {
        BiStream {
            send: Box::new(QmuxSend {
                shared: self.shared.clone(),
                id,
            }),
            recv: Box::new(QmuxRecv {
                shared: self.shared.clone(),
                id,
            }),
        }
    }
}

impl Drop for QmuxConnection {
    fn drop(&mut self) {
        self.shared.close(ConnectionCode::Normal, "connection dropped");
    }
}

impl Connection for QmuxConnection {
    fn open_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        Box::pin(async move {
            let id = poll_fn(|cx| self.shared.with(|c| c.poll_open(cx)))
                .await
                .map_err(|e| transport_error(&e))?;
            Ok(self.bi(id))
        })
    }

    fn admitted(&self) {
        self.shared.with(Conn::admit);
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        Box::pin(async move {
            let id = poll_fn(|cx| self.shared.with(|c| c.poll_accept(cx)))
                .await
                .map_err(|e| transport_error(&e))?;
            Ok(self.bi(id))
        })
    }

    fn close(&self, code: ConnectionCode, reason: &str) {
        self.shared.close(code, reason);
    }

    fn close_sent(&self) -> BoxFuture<'static, ()> {
        let loops = self.loops.clone();
        Box::pin(async move {
            let _ = tokio::time::timeout(CLOSE_SENT_LIMIT, loops.wait()).await;
        })
    }

    fn closed(&self) -> BoxFuture<'static, TransportError> {
        let mut rx = self.shared.closed.subscribe();
        Box::pin(async move {
            match rx.wait_for(Option::is_some).await {
                Ok(state) => state.clone().expect("waited for Some"),
                Err(_) => TransportError::LocallyClosed,
            }
        })
    }

    fn peer(&self) -> PeerInfo {
        self.peer.clone()
    }

    fn transport(&self) -> &'static str {
        "tcp"
    }

    fn rtt(&self) -> Option<std::time::Duration> {
        self.shared.conn.lock().unwrap().rtt()
    }
}

fn stream_io_error(e: StreamError) -> io::Error {
    match e {
        StreamError::Reset(code) | StreamError::Stopped(code) => {
            StreamReset(StreamCode::from_wire(u32::try_from(code).unwrap_or(u32::MAX))).into_io()
        }
        StreamError::Finished => io::Error::new(io::ErrorKind::BrokenPipe, "stream already finished"),
        StreamError::Connection(e) => io::Error::new(io::ErrorKind::NotConnected, transport_error(&e)),
    }
}

struct QmuxSend {
    shared: Arc<Shared>,
    id: u64,
}

struct QmuxRecv {
    shared: Arc<Shared>,
    id: u64,
}

impl AsyncWrite for QmuxSend {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.shared
            .with(|c| c.poll_write(self.id, cx, buf))
            .map_err(stream_io_error)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shared.with(|c| c.finish(self.id)).map_err(stream_io_error))
    }
}

impl SendStream for QmuxSend {
    fn reset(&mut self, code: StreamCode) {
        self.shared.with(|c| c.reset(self.id, u64::from(code.to_wire())));
    }
}

impl ChunkSink for QmuxSend {}

impl Drop for QmuxSend {
    fn drop(&mut self) {
        self.shared.with(|c| c.drop_send(self.id));
    }
}

impl AsyncRead for QmuxRecv {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = match self
            .shared
            .with(|c| c.poll_read(self.id, cx, buf.initialize_unfilled()))
        {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(stream_io_error(e))),
            Poll::Pending => return Poll::Pending,
        };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl RecvStream for QmuxRecv {
    fn stop(&mut self, code: StreamCode) {
        self.shared.with(|c| c.stop(self.id, u64::from(code.to_wire())));
    }
}

impl ChunkSource for QmuxRecv {}

impl Drop for QmuxRecv {
    fn drop(&mut self) {
        self.shared.with(|c| c.drop_recv(self.id));
    }
}
