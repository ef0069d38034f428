//! The transport seam: how the agent and the server get a connection that
//! carries independent bidirectional byte streams. Everything above this
//! module (server, agent, auth) is written against these traits only; QUIC
//! ([`quic`]) is the production implementation, [`qmux`] carries the same
//! stream semantics over TLS/TCP where UDP is blocked, [`fallback`] chooses
//! between the two, and [`memory`] runs the same code inside one process for
//! tests and benchmarks.

pub mod congestion;
pub(crate) mod credit;
pub mod fallback;
mod gro_socket;
pub mod memory;
pub mod qmux;
pub mod quic;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::proto::{ConnectionCode, StreamCode, escaped};

/// Receive window of one tunnelled connection (stream), on every transport:
/// what a stream may have in flight towards a reader. 4 MiB is about three
/// bandwidth-delay products of 0.5 Gbit/s over 20 ms, enough to keep such a
/// path full while a lost packet is sent again (quinn's default, 1.25 MB,
/// held one connection to 0.1–0.27 Gbit/s on a 20 ms, 1 %-loss path; see
/// `docs/benchmarks.md`). A reader that stops reading holds at most this
/// much buffered at this end; every open stream has this much connection
/// credit of its own (`credit`).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

// The receive window of a whole connection is not a fixed second limit: it
// covers one stream window per open stream (see [`credit`]), so tunnels whose
// reader stopped cannot take the credit of the others.

/// A boxed, sendable future (the traits here are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A writer the copy loops write to: a stream's sending half, a TCP socket.
/// One that keeps what it was given until the peer acknowledges it (a QUIC
/// stream) takes owned chunks of the read buffer, which saves copying every
/// byte once more; any other writer is written through [`AsyncWrite`].
pub trait ChunkSink: AsyncWrite + Unpin {
    /// Whether [`ChunkSink::poll_write_chunk`] takes the bytes over without
    /// copying them (QUIC); copy loops hand over owned chunks only then.
    fn takes_chunks(&self) -> bool {
        false
    }

    /// Writes from the front of `chunk` and advances it past what was
    /// written; returns that count. The default writes through [`AsyncWrite`].
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<usize>> {
        poll_write_copying(Pin::new(self), cx, chunk)
    }

    /// Writes from the front of `chunks` (not empty) in one call where the
    /// writer can gather them; returns the count. The default writes the
    /// first one only: `writev` on a socket whose peer has gone raises
    /// `SIGPIPE`, which ends a host process that has not ignored it (a Go
    /// program using the C library: the signal arrives on one of our
    /// threads), so only writers that pass `MSG_NOSIGNAL` gather.
    fn poll_write_gather(&mut self, cx: &mut Context<'_>, chunks: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, &chunks[0])
    }

    /// Whether [`ChunkSink::poll_write_gather`] takes several chunks at once;
    /// a copy loop reads a [`ChunkSource`]'s chunks only into a writer that
    /// does (one write per packet-sized chunk costs more than the copy).
    fn gathers(&self) -> bool {
        false
    }
}

/// A reader the copy loops read from: a stream's receiving half, a TCP
/// socket. One that holds what arrived as chunks of its own (a QUIC stream:
/// slices of the decrypted packets) hands them out, and they are written on
/// as they are ([`ChunkSink::poll_write_gather`]), which saves copying every
/// byte into a read buffer first; any other reader is read through [`AsyncRead`].
pub trait ChunkSource: AsyncRead + Unpin {
    /// Whether [`ChunkSource::poll_read_chunks`] hands out the transport's
    /// own buffers without copying them (QUIC); copy loops read chunks only then.
    fn yields_chunks(&self) -> bool {
        false
    }

    /// Fills `chunks` from the front with what has arrived, in order, and
    /// returns how many it filled; 0 is the end (the peer's FIN). The
    /// default reads through [`AsyncRead`] into one new buffer.
    fn poll_read_chunks(&mut self, cx: &mut Context<'_>, chunks: &mut [Bytes]) -> Poll<io::Result<usize>> {
        poll_read_copying(Pin::new(self), cx, chunks)
    }
}

impl<T: ChunkSink + ?Sized> ChunkSink for Box<T> {
    fn takes_chunks(&self) -> bool {
        (**self).takes_chunks()
    }
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<usize>> {
        (**self).poll_write_chunk(cx, chunk)
    }
    fn poll_write_gather(&mut self, cx: &mut Context<'_>, chunks: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        (**self).poll_write_gather(cx, chunks)
    }
    fn gathers(&self) -> bool {
        (**self).gathers()
    }
}

impl<T: ChunkSource + ?Sized> ChunkSource for Box<T> {
    fn yields_chunks(&self) -> bool {
        (**self).yields_chunks()
    }
    fn poll_read_chunks(&mut self, cx: &mut Context<'_>, chunks: &mut [Bytes]) -> Poll<io::Result<usize>> {
        (**self).poll_read_chunks(cx, chunks)
    }
}

impl ChunkSink for tokio::net::TcpStream {
    fn poll_write_gather(&mut self, cx: &mut Context<'_>, chunks: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        crate::no_sigpipe::poll_send_gathered(self, cx, chunks)
    }

    fn gathers(&self) -> bool {
        true
    }
}

impl ChunkSink for tokio::net::tcp::WriteHalf<'_> {
    fn poll_write_gather(&mut self, cx: &mut Context<'_>, chunks: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        crate::no_sigpipe::poll_send_gathered(self.as_ref(), cx, chunks)
    }

    fn gathers(&self) -> bool {
        true
    }
}

impl ChunkSource for tokio::net::TcpStream {}

impl ChunkSource for tokio::net::tcp::ReadHalf<'_> {}

/// The sending half of a stream. Shutting it down (`AsyncWriteExt::shutdown`)
/// sends an orderly end of stream (FIN); [`SendStream::reset`] aborts it.
pub trait SendStream: ChunkSink + Send {
    /// Abandons the stream: unsent data is dropped and the peer's reads fail
    /// with [`StreamReset`] carrying `code`.
    fn reset(&mut self, code: StreamCode);

    /// Resolves once the peer has acknowledged everything sent on this stream,
    /// its end (FIN) included — or once that can no longer happen (reset,
    /// stopped, connection gone). Taken before the stream is used, awaited
    /// after shutting it down: closing the connection earlier could discard
    /// data still in flight. The default resolves at once (transports whose
    /// close delivers what was written).
    fn delivered(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Writes from the front of `chunk` through [`AsyncWrite`] (a copy) and
/// advances it past what was written.
pub(crate) fn poll_write_copying<W: AsyncWrite + ?Sized>(
    w: Pin<&mut W>,
    cx: &mut Context<'_>,
    chunk: &mut Bytes,
) -> Poll<io::Result<usize>> {
    let n = std::task::ready!(w.poll_write(cx, chunk))?;
    chunk.advance(n);
    Poll::Ready(Ok(n))
}

/// The receiving half of a stream. A read of 0 bytes is the peer's FIN; a
/// reset by the peer surfaces as an [`io::Error`] wrapping [`StreamReset`].
pub trait RecvStream: ChunkSource + Send {
    /// Tells the peer to stop sending: its writes fail with [`StreamReset`] carrying `code`.
    fn stop(&mut self, code: StreamCode);
}

/// Size of the buffer [`poll_read_copying`] reads into.
const READ_CHUNK_LEN: usize = 32 * 1024;

/// Reads through [`AsyncRead`] into one new buffer and hands it out as the
/// first of `chunks`; returns how many chunks it filled (0 at the end).
pub(crate) fn poll_read_copying<R: AsyncRead + ?Sized>(
    r: Pin<&mut R>,
    cx: &mut Context<'_>,
    chunks: &mut [Bytes],
) -> Poll<io::Result<usize>> {
    let Some(first) = chunks.first_mut() else {
        return Poll::Ready(Ok(0));
    };
    let mut buf = bytes::BytesMut::with_capacity(READ_CHUNK_LEN);
    if std::task::ready!(tokio_util::io::poll_read_buf(r, cx, &mut buf))? == 0 {
        return Poll::Ready(Ok(0));
    }
    *first = buf.freeze();
    Poll::Ready(Ok(1))
}

/// Both halves of one bidirectional stream.
pub struct BiStream {
    /// Bytes towards the peer.
    pub send: Box<dyn SendStream>,
    /// Bytes from the peer.
    pub recv: Box<dyn RecvStream>,
}

impl fmt::Debug for BiStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BiStream")
    }
}

/// What the transport knows about the peer after its handshake.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The peer's network address, when there is one (current: it follows QUIC connection migration).
    pub remote_addr: Option<SocketAddr>,
    /// The peer's verified TLS certificate chain, end-entity first (empty
    /// when the peer presented none).
    pub certificates: Vec<CertificateDer<'static>>,
}

/// One established connection between an agent and a server.
pub trait Connection: Send + Sync + 'static {
    /// Opens a new bidirectional stream towards the peer.
    fn open_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>>;
    /// Waits for the peer to open a bidirectional stream.
    fn accept_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>>;
    /// Closes the connection and every stream on it.
    fn close(&self, code: ConnectionCode, reason: &str);
    /// After [`Connection::close`]: resolves once the close has gone out (or
    /// a short bound passes), so that a process or runtime ending right after
    /// still tells the peer, which otherwise finds out only at its idle
    /// timeout. The default resolves at once.
    fn close_sent(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
    /// Resolves once the connection is closed, by either side, with the reason.
    fn closed(&self) -> BoxFuture<'static, TransportError>;
    /// Who the peer is.
    fn peer(&self) -> PeerInfo;
    /// Which transport carries this connection (`"quic"`, `"tcp"`, `"memory"`), for logs and metrics.
    fn transport(&self) -> &'static str;
    /// The smoothed round-trip time to the peer, when the transport measures
    /// one: QUIC from its acknowledgements, TCP (QMux) from its keepalive
    /// pings (none until the first one is answered). The default is `None`.
    fn rtt(&self) -> Option<Duration> {
        None
    }
    /// Resolves, with the reason, when the transport wants this connection
    /// replaced by a fresh one: the agent then connects again and drains this
    /// connection instead of dropping it (make before break). A starved QUIC
    /// path, or QUIC working again after a fallback to TCP, are such reasons.
    /// The default never resolves.
    fn superseded(&self) -> BoxFuture<'static, String> {
        Box::pin(std::future::pending())
    }
    /// Server side: the peer has been authenticated and admitted. Until then
    /// it has credit for its control stream only, and a small connection
    /// window ([`PRE_ADMISSION_WINDOW`]), so an anonymous peer cannot make
    /// the server buffer more; this grants the full windows and stream
    /// credit. The default does nothing (transports without such limits).
    fn admitted(&self) {}
}

/// Server side: the connection receive window of a peer not yet admitted,
/// and nothing for any other stream ([`Connection::admitted`]). A `Hello`
/// (most are 1–2 KiB, at most 64 KiB) larger than this arrives in several
/// round trips, as the server reads it; what an anonymous peer can make the
/// server buffer is this, plus the `Hello` the server is reading
/// (`server::admission::HELLO_BUDGET` bounds the large ones together).
pub const PRE_ADMISSION_WINDOW: u64 = 8 * 1024;

/// A connection whose handshake is still in progress.
pub type Handshake = BoxFuture<'static, Result<Arc<dyn Connection>, TransportError>>;

/// A connection attempt a listener accepted: where it comes from, as far as
/// the transport knows before any handshake, and the handshake, which the
/// caller drives (or drops, which aborts it). Awaiting it drives the handshake.
pub struct Incoming {
    /// The peer's address (`None` on transports without one).
    pub remote: Option<SocketAddr>,
    /// The handshake.
    pub handshake: Handshake,
}

impl Incoming {
    /// An attempt from `remote` whose handshake is `handshake`.
    pub fn new(remote: Option<SocketAddr>, handshake: Handshake) -> Self {
        Self { remote, handshake }
    }
}

impl std::future::IntoFuture for Incoming {
    type Output = Result<Arc<dyn Connection>, TransportError>;
    type IntoFuture = Handshake;

    fn into_future(self) -> Handshake {
        self.handshake
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// [`Listener::local_addr`] of a listener bound to a socket: its address, or
/// why the address cannot be read.
fn socket_addr_for_logs(addr: io::Result<SocketAddr>) -> String {
    addr.map(|a| a.to_string()).unwrap_or_else(|e| e.to_string())
}

/// Server side: yields incoming agent connections.
pub trait Listener: Send + Sync + 'static {
    /// Waits for the next incoming connection. The returned handshake is
    /// driven separately so that one slow peer does not hold up the others.
    fn accept(&self) -> BoxFuture<'_, Option<Incoming>>;
    /// Where the listener listens, for logs.
    fn local_addr(&self) -> String;
    /// Stops accepting and closes every connection made through it.
    fn shutdown(&self);
    /// After [`Listener::shutdown`]: resolves once the closes of its
    /// connections have gone out (QUIC: the endpoint is idle; TCP: each close
    /// is written and the peer has ended its side), so that a process ending
    /// right after still tells its peers. Unbounded: the caller bounds it.
    /// The default resolves at once.
    fn closed_sent(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Agent side: establishes a connection to a server.
pub trait Connector: Send + Sync + 'static {
    /// Connects and completes the handshake.
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>>;
    /// The server this connector reaches, for logs.
    fn describe(&self) -> String;
}

/// A transport-level failure. Its `Display` escapes the text inside (a close
/// reason is the peer's, and a TLS or QUIC error can quote the peer), so it
/// goes into logs as one line ([`crate::proto::escaped`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the connection with an application code.
    #[error("closed by peer: {code} ({})", escaped(.reason))]
    ClosedByPeer {
        /// The peer's close code.
        code: ConnectionCode,
        /// The peer's reason text.
        reason: String,
    },
    /// This side closed the connection.
    #[error("connection closed locally")]
    LocallyClosed,
    /// The peer stopped answering (idle timeout).
    #[error("connection timed out: the peer stopped answering")]
    TimedOut,
    /// The connection could not be set up (address, handshake, TLS, ALPN).
    #[error("could not connect: {}", escaped(.0))]
    Connect(String),
    /// The server answered the handshake but the connection was not set up:
    /// it refused it (it is draining or overloaded), or TLS failed. The path
    /// to the server works, so an agent keeps its transport and retries.
    #[error("the server answered but the connection was not set up: {}", escaped(.0))]
    Rejected(String),
    /// Any other failure of the connection.
    #[error("connection lost: {}", escaped(.0))]
    Lost(String),
    /// This agent refused the server's certificate in the handshake. Like
    /// [`Rejected`](Self::Rejected), the path works: the agent keeps its
    /// transport (a certificate error is no reason to fall back to TCP).
    #[error("{server}: {}", explain_refusal(.trusted, .cause, *.unknown_issuer))]
    UntrustedServer {
        /// The server's address.
        server: String,
        /// What the agent trusts ([`crate::tls::CaBundle::describe`]).
        trusted: String,
        /// The TLS library's finding (`invalid peer certificate: UnknownIssuer`).
        cause: String,
        /// Whether the certificate does not chain to a trusted CA (rather
        /// than being expired, for another name or another purpose).
        unknown_issuer: bool,
    },
}

impl TransportError {
    /// [`TransportError::UntrustedServer`] when `alert`, the TLS alert this
    /// agent raised in its handshake with `server`, refuses the server's
    /// certificate; `None` for any other alert.
    pub(crate) fn untrusted_server(server: String, trusted: String, cause: String, alert: u8) -> Option<Self> {
        use rustls::AlertDescription as A;
        let unknown_issuer = match A::from(alert) {
            A::UnknownCA | A::DecryptError => true,
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown => false,
            _ => return None,
        };
        Some(Self::UntrustedServer {
            server,
            trusted,
            cause,
            unknown_issuer,
        })
    }
}

/// The message of [`TransportError::UntrustedServer`]: what is wrong and
/// which setting to fix.
fn explain_refusal(trusted: &str, cause: &str, unknown_issuer: bool) -> String {
    if unknown_issuer {
        format!(
            "the server's certificate is not signed by {trusted} ({}): set the agent's CA (`--ca`) to the CA that signed the server's certificate",
            escaped(cause)
        )
    } else {
        format!(
            "the server's certificate was refused: {} (trusted: {trusted})",
            escaped(cause)
        )
    }
}

/// A setting's text that names none of its choices (a transport, a
/// congestion controller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}: {choices}")]
pub struct UnknownChoice {
    /// What was being chosen.
    pub what: &'static str,
    /// The text given.
    pub given: String,
    /// What to write instead (`expected auto, quic or tcp`).
    pub choices: &'static str,
}

/// The error inside an [`io::Error`] when the peer reset or stopped a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream reset by peer: {0}")]
pub struct StreamReset(pub StreamCode);

impl StreamReset {
    /// Wraps this reset in an [`io::Error`] of kind `ConnectionReset`.
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, self)
    }

    /// The reset code carried by `err`, if it is a stream reset.
    pub fn from_io(err: &io::Error) -> Option<StreamCode> {
        err.get_ref()?.downcast_ref::<StreamReset>().map(|r| r.0)
    }
}
