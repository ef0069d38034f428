//! Copying bytes both ways between a TCP connection and a tunnel stream,
//! with the protocol's close semantics: an orderly end (FIN) on either side
//! becomes a half-close on the other, and a failure on either side aborts
//! both (a stream reset with a code, or a TCP reset). An optional idle
//! timeout aborts a splice that moved no byte either way for that long.
//!
//! A copy buffer exists only while its direction has bytes to move: it is
//! taken when a read returns data and given back as soon as a read would
//! wait. A tunnelled connection that sits idle (the usual state of a
//! `kubectl exec` or a watch) holds no copy buffer at all, so ten thousand of
//! them cost what their sockets and streams cost, not 64 KiB each.
//!
//! QUIC streams are fed and drained without a copy of our own: towards one,
//! a full read goes out as an owned chunk of the buffer ([`ChunkSink`]),
//! which quinn keeps until it is acknowledged instead of a copy of it; from
//! one, the decrypted packets' slices ([`ChunkSource`]) go straight to a
//! TCP socket, gathered into one `sendmsg` (the agent's target, the
//! server's `--forward` client).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use crate::proto::StreamCode;
use crate::transport::{ChunkSink, ChunkSource, RecvStream, SendStream, StreamReset};

/// Largest read per copy step (the buffer's capacity while it exists).
const BUF_LEN: usize = 32 * 1024;

/// Smallest read handed to a [`ChunkSink`] that takes chunks as an owned
/// chunk of the read buffer instead of a copy. The chunk keeps the whole
/// buffer alive until the peer acknowledges it, so small reads (an
/// interactive session's keystrokes) are copied: what a transport holds
/// unacknowledged then never pins more than twice its size.
const CHUNK_MIN: usize = BUF_LEN / 2;

/// Reads into `buf`, creating it first if needed; gives it back (drops it)
/// when the read has to wait, so an idle direction holds no memory.
fn poll_read_lazily<R: AsyncRead + ?Sized>(
    r: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut Option<BytesMut>,
) -> Poll<io::Result<usize>> {
    let b = buf.get_or_insert_with(|| BytesMut::with_capacity(BUF_LEN));
    b.clear();
    if b.capacity() < CHUNK_MIN {
        // The rest of a buffer whose front went out as a chunk.
        b.reserve(BUF_LEN);
    }
    let read = poll_read_buf(r, cx, b);
    if read.is_pending() {
        *buf = None;
    }
    read
}

/// Takes the `n` bytes just read into `buf` as an owned chunk, if `sink`
/// takes chunks and the read is large enough to be worth it; otherwise they
/// stay in `buf` to be written (copied) from there.
fn take_chunk<W: ChunkSink + ?Sized>(sink: &W, buf: &mut Option<BytesMut>, n: usize) -> Option<Bytes> {
    let b = buf.as_mut()?;
    (n >= CHUNK_MIN && sink.takes_chunks()).then(|| b.split_to(n).freeze())
}

/// Writes all of `chunk`, keeping its place across `Pending`.
fn poll_write_chunk_all<W: ChunkSink + ?Sized>(
    cx: &mut Context<'_>,
    w: &mut W,
    chunk: &mut Bytes,
) -> Poll<io::Result<()>> {
    while !chunk.is_empty() {
        if ready!(w.poll_write_chunk(cx, chunk))? == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
    }
    Poll::Ready(Ok(()))
}

/// Most chunks one gathered write takes.
const MAX_CHUNKS: usize = 8;

/// Chunks a [`ChunkSource`] handed out, written on as they are. Their slots
/// exist only while the direction is busy: once a read finds nothing, they
/// go (an idle tunnel holds no room for eight chunks in each direction).
#[derive(Default)]
struct Received {
    slots: Option<Box<ChunkSlots>>,
}

#[derive(Default)]
struct ChunkSlots {
    chunks: [Bytes; MAX_CHUNKS],
    next: usize,
    filled: usize,
    bytes: usize,
}

impl Received {
    /// Reads the next chunks; returns their bytes, 0 at the end.
    fn poll_fill<R: ChunkSource + ?Sized>(&mut self, cx: &mut Context<'_>, r: &mut R) -> Poll<io::Result<usize>> {
        let slots = self.slots.get_or_insert_with(Box::default);
        let filled = match r.poll_read_chunks(cx, &mut slots.chunks) {
            Poll::Pending => {
                // Only read once the last read went out: the slots are empty.
                self.slots = None;
                return Poll::Pending;
            }
            Poll::Ready(filled) => filled?,
        };
        slots.next = 0;
        slots.filled = filled;
        slots.bytes = slots.chunks[..filled].iter().map(Bytes::len).sum();
        Poll::Ready(Ok(slots.bytes))
    }

    /// Whether chunks are waiting to be written.
    fn is_pending(&self) -> bool {
        self.slots.as_ref().is_some_and(|s| s.next < s.filled)
    }

    /// The bytes of the chunks waiting to be written.
    fn waiting(&self) -> usize {
        self.slots
            .as_ref()
            .map_or(0, |s| s.chunks[s.next..s.filled].iter().map(Bytes::len).sum())
    }

    /// Writes out every chunk not yet written, keeping its place across
    /// `Pending`, and lets each go as soon as it is out. Returns the bytes
    /// of the whole read.
    fn poll_drain<W: ChunkSink + ?Sized>(&mut self, cx: &mut Context<'_>, w: &mut W) -> Poll<io::Result<usize>> {
        let Some(slots) = self.slots.as_deref_mut() else {
            return Poll::Ready(Ok(0));
        };
        while slots.next < slots.filled {
            let mut n = {
                let mut slices = [io::IoSlice::new(&[]); MAX_CHUNKS];
                let pending = &slots.chunks[slots.next..slots.filled];
                for (slice, chunk) in slices.iter_mut().zip(pending) {
                    *slice = io::IoSlice::new(chunk);
                }
                ready!(w.poll_write_gather(cx, &slices[..pending.len()]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while n > 0 {
                let chunk = &mut slots.chunks[slots.next];
                if n < chunk.len() {
                    chunk.advance(n);
                    break;
                }
                n -= chunk.len();
                *chunk = Bytes::new();
                slots.next += 1;
            }
        }
        slots.next = 0;
        slots.filled = 0;
        Poll::Ready(Ok(std::mem::take(&mut slots.bytes)))
    }
}

/// Any reader and writer, written through [`AsyncWrite`].
pub(crate) struct Plain<'a, T: ?Sized>(pub(crate) &'a mut T);

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Plain<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Plain<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> ChunkSink for Plain<'_, T> {}

impl<T: AsyncRead + Unpin + ?Sized> ChunkSource for Plain<'_, T> {}

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceOutcome {
    /// Bytes copied from TCP into the tunnel.
    pub to_tunnel: u64,
    /// Bytes copied from the tunnel to TCP.
    pub to_tcp: u64,
    /// The failure that aborted the splice, if any.
    pub aborted: Option<Abort>,
}

/// Which side failed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// The TCP connection failed or was reset; the stream was reset.
    Tcp,
    /// The tunnel stream was reset or stopped with this code; the TCP
    /// connection resets (RST) when dropped.
    Tunnel(StreamCode),
    /// No byte moved either way for the idle timeout; the stream was reset
    /// with [`StreamCode::IdleTimeout`] and the TCP connection resets (RST)
    /// when dropped.
    Idle,
    /// One side read none of the bytes waiting for it for the stall timeout;
    /// the stream was reset with [`StreamCode::Stalled`] and the TCP
    /// connection resets (RST) when dropped.
    Stalled(Stalled),
}

/// The error of a copy whose writer took none of the bytes waiting for it
/// for the stall timeout ([`Abort::Stalled`]); it travels as the source of
/// an [`io::Error`] of kind `TimedOut`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reader} read none of the bytes waiting for it for {after:?}")]
pub struct Stalled {
    /// Who stopped reading: `"the target"` or `"the server's side"` (on the agent).
    pub reader: &'static str,
    /// The stall timeout.
    pub after: Duration,
}

impl Stalled {
    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, self)
    }

    /// The stall inside `err`, if a copy ended because of one.
    pub fn from_io(err: &io::Error) -> Option<Self> {
        err.get_ref()?.downcast_ref::<Stalled>().copied()
    }
}

/// Watches one direction's writer while bytes wait for it: a writer that
/// takes none of them for the stall timeout has a reader that stopped
/// reading (a client that paused, a target that froze), and its tunnel only
/// holds memory. Like TCP's user timeout, but for the far reader: the
/// transports' flow control makes a stopped reader stop the writer here.
#[derive(Default)]
struct StallWatch {
    timeout: Option<Duration>,
    /// Who reads what this direction writes, for the error.
    reader: &'static str,
    /// Since when the writer has taken nothing of what waits.
    blocked_since: Option<Instant>,
    /// Kept across waits (reset, not reallocated); dropped once nothing waits.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallWatch {
    /// Ready once the writer has waited the whole stall timeout without
    /// taking a byte; registers the timer otherwise.
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<Stalled> {
        let Some(after) = self.timeout else {
            return Poll::Pending;
        };
        let since = *self.blocked_since.get_or_insert_with(Instant::now);
        let deadline = since + after;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Stalled {
            reader: self.reader,
            after,
        })
    }

    /// The writer took bytes.
    fn progressed(&mut self) {
        self.blocked_since = None;
    }

    /// Nothing waits for the writer any more.
    fn idle(&mut self) {
        self.blocked_since = None;
        self.timer = None;
    }
}

#[derive(Clone, Copy)]
enum Side {
    Tcp,
    Tunnel,
}

enum Failure {
    Io(Side, io::Error),
    Idle,
}

/// When a splice last moved bytes, in milliseconds since it started.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let now = self.start.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle`; never without a timeout.
    async fn idle_for(&self, idle: Option<Duration>) {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let deadline = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One direction of a splice: [`Direction::poll_copy`], with failures
/// named by side and every read or write counted as activity.
async fn pump<R, W>(
    direction: &mut Direction,
    r: &mut R,
    w: &mut W,
    (from, to): (Side, Side),
    activity: &Activity,
) -> Result<(), Failure>
where
    R: ChunkSource + ?Sized,
    W: ChunkSink + ?Sized,
{
    poll_fn(|cx| {
        let before = (direction.reads, direction.copied);
        let poll = direction.poll_copy(cx, r, w);
        if (direction.reads, direction.copied) != before {
            activity.touch();
        }
        poll.map(|done| {
            done.map(drop).map_err(|(end, e)| match end {
                End::Reader => Failure::Io(from, e),
                End::Writer => Failure::Io(to, e),
            })
        })
    })
    .await
}

/// When a splice gives up on a tunnelled connection (both off: never).
#[derive(Debug, Clone, Copy, Default)]
pub struct SpliceTimeouts {
    /// No byte moved either way for this long: [`Abort::Idle`].
    pub idle: Option<Duration>,
    /// Bytes waited for one side, which took none of them for this long:
    /// [`Abort::Stalled`].
    pub stall: Option<Duration>,
}

/// Runs until both directions have ended or one side fails, or one of
/// `timeouts` aborts both sides.
///
/// The caller keeps `tcp` and drops it afterwards: after an abort, dropping
/// it sends the TCP reset.
pub async fn splice(
    tcp: &mut TcpStream,
    mut send: Box<dyn SendStream>,
    mut recv: Box<dyn RecvStream>,
    timeouts: SpliceTimeouts,
) -> SpliceOutcome {
    let idle_timeout = timeouts.idle;
    let mut to_tunnel = Direction::watched(timeouts.stall, "the server's side");
    let mut to_tcp = Direction::watched(timeouts.stall, "the target");
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let failure = {
        let (mut tcp_read, mut tcp_write) = tcp.split();
        let up = pump(
            &mut to_tunnel,
            &mut tcp_read,
            &mut send,
            (Side::Tcp, Side::Tunnel),
            &activity,
        );
        let down = pump(
            &mut to_tcp,
            &mut recv,
            &mut tcp_write,
            (Side::Tunnel, Side::Tcp),
            &activity,
        );
        let idle = activity.idle_for(idle_timeout);
        tokio::pin!(up, down, idle);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let result = tokio::select! {
                r = &mut up, if !up_done => { up_done = true; r }
                r = &mut down, if !down_done => { down_done = true; r }
                () = &mut idle => Err(Failure::Idle),
            };
            if let Err(failure) = result {
                break Some(failure);
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    let aborted = failure.map(|failure| match failure {
        Failure::Io(_, err) if let Some(stalled) = Stalled::from_io(&err) => {
            tracing::info!(%stalled, "tunnelled connection stalled; resetting both sides");
            let _ = tcp.set_zero_linger();
            send.reset(StreamCode::Stalled);
            recv.stop(StreamCode::Stalled);
            Abort::Stalled(stalled)
        }
        Failure::Idle => {
            tracing::debug!(?idle_timeout, "tunnelled connection idle; resetting both sides");
            let _ = tcp.set_zero_linger();
            send.reset(StreamCode::IdleTimeout);
            recv.stop(StreamCode::IdleTimeout);
            Abort::Idle
        }
        Failure::Io(Side::Tcp, err) => {
            tracing::debug!(%err, "target connection failed; resetting the stream");
            send.reset(StreamCode::TargetReset);
            recv.stop(StreamCode::TargetReset);
            Abort::Tcp
        }
        Failure::Io(Side::Tunnel, err) => {
            let code = StreamReset::from_io(&err).unwrap_or(StreamCode::Internal);
            tracing::debug!(%err, "tunnel stream aborted; resetting the target connection");
            // Linger 0 makes the close below send a TCP RST instead of a FIN.
            let _ = tcp.set_zero_linger();
            send.reset(code);
            recv.stop(code);
            Abort::Tunnel(code)
        }
    });
    SpliceOutcome {
        to_tunnel: to_tunnel.copied,
        to_tcp: to_tcp.copied,
        aborted,
    }
}

/// Writes what is left of `buf` after `*written` bytes, advancing
/// `*written` as writes complete, so that a `Pending` keeps its place.
/// Ready once the whole buffer is out.
fn poll_write_rest<W: AsyncWrite + ?Sized>(
    cx: &mut Context<'_>,
    mut w: Pin<&mut W>,
    buf: &[u8],
    written: &mut usize,
) -> Poll<io::Result<()>> {
    while *written < buf.len() {
        let n = ready!(w.as_mut().poll_write(cx, &buf[*written..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *written += n;
    }
    Poll::Ready(Ok(()))
}

/// Copies a reader into a writer step by step, keeping its place between
/// polls, so that its user may stop polling at any point without losing a
/// byte: the server relays a client's bytes this way while the agent
/// answers a dial, then copies on from the next byte. A buffer exists only
/// while a chunk is under way.
#[derive(Default)]
pub(crate) struct Relay {
    buf: Option<BytesMut>,
    written: usize,
    relayed: u64,
    done: bool,
    client_failed: Option<io::Error>,
}

impl Relay {
    /// Relays until a side has to wait. Ready once the reader has ended or
    /// either side failed; nothing more is relayed then. An end or a write
    /// failure is left for the user's own copying to meet again; a read
    /// failure is kept ([`Relay::client_failed`]), since a socket reports it once.
    pub(crate) fn poll_relay<R, W>(&mut self, cx: &mut Context<'_>, mut r: Pin<&mut R>, mut w: Pin<&mut W>) -> Poll<()>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            ready!(self.poll_settle(cx, w.as_mut()));
            if self.done {
                return Poll::Ready(());
            }
            self.written = 0;
            match ready!(poll_read_lazily(r.as_mut(), cx, &mut self.buf)) {
                Ok(0) => self.end(),
                Ok(_) => {}
                Err(err) => {
                    self.client_failed = Some(err);
                    self.end();
                }
            }
        }
    }

    /// Writes the rest of the chunk under way, if any.
    pub(crate) fn poll_settle<W>(&mut self, cx: &mut Context<'_>, mut w: Pin<&mut W>) -> Poll<()>
    where
        W: AsyncWrite + ?Sized,
    {
        if let Some(b) = &self.buf
            && self.written < b.len()
        {
            match ready!(poll_write_rest(cx, w.as_mut(), b, &mut self.written)) {
                Ok(()) => self.relayed += b.len() as u64,
                // The stream is broken: whoever uses it next finds out.
                Err(_) => self.end(),
            }
        }
        Poll::Ready(())
    }

    fn end(&mut self) {
        self.done = true;
        self.buf = None;
        self.written = 0;
    }

    /// Nothing more will be relayed.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Bytes written so far.
    pub(crate) fn relayed(&self) -> u64 {
        self.relayed
    }

    /// The reader's failure, if it failed.
    pub(crate) fn client_failed(&self) -> Option<&io::Error> {
        self.client_failed.as_ref()
    }
}

/// One direction of [`copy_both`] or [`splice`]: what is under way, kept between polls:
/// a lazily held read buffer and how far it is written, a chunk of it
/// handed to a [`ChunkSink`], or the chunks a [`ChunkSource`] handed out.
#[derive(Default)]
struct Direction {
    buf: Option<BytesMut>,
    written: usize,
    chunk: Bytes,
    received: Received,
    read_done: bool,
    /// Reads that returned (data or the end).
    reads: u64,
    copied: u64,
    stall: StallWatch,
}

/// Which end of a [`Direction`] failed.
#[derive(Debug, Clone, Copy)]
enum End {
    Reader,
    Writer,
}

impl Direction {
    /// A direction that fails with [`Stalled`] once its writer has taken
    /// none of the bytes waiting for it for `stall` (never without one);
    /// `reader` names who reads what it writes.
    fn watched(stall: Option<Duration>, reader: &'static str) -> Self {
        Self {
            stall: StallWatch {
                timeout: stall,
                reader,
                ..StallWatch::default()
            },
            ..Self::default()
        }
    }

    /// Bytes read and not yet written.
    fn waiting(&self) -> usize {
        let buffered = self.buf.as_ref().map_or(0, |b| b.len().saturating_sub(self.written));
        self.received.waiting() + self.chunk.len() + buffered
    }

    /// Copies until `r` ends, then shuts `w` down; returns the bytes copied,
    /// or the failure and the end it came from. A writer that takes none of
    /// the waiting bytes for the stall timeout fails it with [`Stalled`].
    fn poll_copy<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<Result<u64, (End, io::Error)>>
    where
        R: ChunkSource + ?Sized,
        W: ChunkSink + ?Sized,
    {
        if self.stall.timeout.is_none() {
            // Nothing to watch: no bookkeeping on the copy's hot path.
            return self.poll_copy_unwatched(cx, r, w);
        }
        let (waiting, reads) = (self.waiting(), self.reads);
        let poll = self.poll_copy_unwatched(cx, r, w);
        if poll.is_pending() {
            let now_waiting = self.waiting();
            if now_waiting == 0 {
                self.stall.idle();
            } else {
                // A read comes only after everything before it was written.
                if now_waiting < waiting || self.reads != reads {
                    self.stall.progressed();
                }
                if let Poll::Ready(stalled) = self.stall.poll_waiting(cx) {
                    return Poll::Ready(Err((End::Writer, stalled.into_io())));
                }
            }
        }
        poll
    }

    fn poll_copy_unwatched<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<Result<u64, (End, io::Error)>>
    where
        R: ChunkSource + ?Sized,
        W: ChunkSink + ?Sized,
    {
        let writer = |e| (End::Writer, e);
        loop {
            if self.received.is_pending() {
                self.copied += ready!(self.received.poll_drain(cx, w)).map_err(writer)? as u64;
            }
            if !self.chunk.is_empty() {
                let len = self.chunk.len() as u64;
                ready!(poll_write_chunk_all(cx, w, &mut self.chunk)).map_err(writer)?;
                self.copied += len;
            }
            if let Some(b) = &self.buf
                && self.written < b.len()
            {
                ready!(poll_write_rest(cx, Pin::new(&mut *w), b, &mut self.written)).map_err(writer)?;
                self.copied += b.len() as u64;
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_shutdown(cx)).map_err(writer)?;
                return Poll::Ready(Ok(self.copied));
            }
            self.written = 0;
            let chunks = r.yields_chunks() && w.gathers();
            let read = if chunks {
                self.received.poll_fill(cx, r)
            } else {
                poll_read_lazily(Pin::new(&mut *r), cx, &mut self.buf)
            };
            if read.is_ready() {
                self.reads += 1;
            }
            match read {
                Poll::Pending => {
                    // Nothing more to read for now: push out what the writer buffers.
                    ready!(Pin::new(&mut *w).poll_flush(cx)).map_err(writer)?;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(_)) if chunks => {}
                Poll::Ready(Ok(n)) => {
                    if let Some(chunk) = take_chunk(w, &mut self.buf, n) {
                        self.chunk = chunk;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err((End::Reader, e))),
            }
        }
    }
}

/// Copies both ways between `a` and `b` until both directions have ended
/// (an end of one is a shutdown of the other's writing side), like
/// `tokio::io::copy_bidirectional`, but holding a copy buffer only while a
/// direction has bytes to move. Returns the bytes copied a→b and b→a; the
/// first error ends both.
pub async fn copy_both<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    copy_pair(&mut Plain(a), &mut Plain(b)).await
}

/// Copies both ways between `a` and `b` until both directions have ended;
/// the first error ends both. Returns the bytes copied a→b and b→a.
pub(crate) async fn copy_pair<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: ChunkSource + ChunkSink + ?Sized,
    B: ChunkSource + ChunkSink + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Direction::default(), Direction::default());
    let (mut a_done, mut b_done) = (None, None);
    poll_fn(|cx| {
        if a_done.is_none()
            && let Poll::Ready(copied) = a_to_b.poll_copy(cx, a, b)
        {
            a_done = Some(copied.map_err(|(_, e)| e)?);
        }
        if b_done.is_none()
            && let Poll::Ready(copied) = b_to_a.poll_copy(cx, b, a)
        {
            b_done = Some(copied.map_err(|(_, e)| e)?);
        }
        match (a_done, b_done) {
            (Some(up), Some(down)) => Poll::Ready(Ok((up, down))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn copy_both_carries_each_direction_and_its_end() {
        // client <-> (a | copy_both | b) <-> target
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut target) = duplex(1024);
        let copy = tokio::spawn(async move { copy_both(&mut a, &mut b).await });
        let up: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let down = vec![7u8; 50_000];
        let (up2, down2) = (up.clone(), down.clone());
        let client_side = tokio::spawn(async move {
            client.write_all(&up2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut got_up = Vec::new();
        target.read_to_end(&mut got_up).await.unwrap();
        assert_eq!(got_up, up, "client to target, then its end");
        target.write_all(&down2).await.unwrap();
        target.shutdown().await.unwrap();
        assert_eq!(client_side.await.unwrap(), down, "target to client, then its end");
        assert_eq!(copy.await.unwrap().unwrap(), (100_000, 50_000));
    }

    #[tokio::test]
    async fn a_waiting_direction_holds_no_buffer() {
        let (mut quiet, _peer) = duplex(64);
        let mut sink = tokio::io::sink();
        let mut direction = Direction::default();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(
            direction
                .poll_copy(&mut cx, &mut Plain(&mut quiet), &mut Plain(&mut sink))
                .is_pending()
        );
        assert!(direction.buf.is_none(), "nothing to read: no copy buffer kept");
    }

    /// Keeps what it is given, as a QUIC stream does until acknowledged.
    #[derive(Default)]
    struct Keeper {
        chunks: Vec<Bytes>,
        copies: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Keeper {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.get_mut().copies.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl ChunkSink for Keeper {
        fn takes_chunks(&self) -> bool {
            true
        }
        fn poll_write_chunk(&mut self, _: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<usize>> {
            let n = chunk.len();
            self.chunks.push(chunk.split_to(n));
            Poll::Ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn large_reads_go_out_as_owned_chunks_small_ones_as_copies() {
        let big: Vec<u8> = (0..3 * BUF_LEN as u32).map(|i| (i % 251) as u8).collect();
        let small = b"ls -l\n".to_vec();
        let mut source: &[u8] = &big;
        let mut keeper = Keeper::default();
        let mut direction = Direction::default();
        let copied = poll_fn(|cx| direction.poll_copy(cx, &mut Plain(&mut source), &mut keeper))
            .await
            .unwrap();
        assert_eq!(copied, big.len() as u64);
        assert!(keeper.copies.is_empty(), "full reads are handed over, not copied");
        assert_eq!(keeper.chunks.concat(), big);
        // Each chunk is a whole read buffer's worth, not a fragment.
        assert!(keeper.chunks.iter().all(|c| c.len() >= CHUNK_MIN));

        let mut source: &[u8] = &small;
        let mut keeper = Keeper::default();
        let mut direction = Direction::default();
        poll_fn(|cx| direction.poll_copy(cx, &mut Plain(&mut source), &mut keeper))
            .await
            .unwrap();
        assert!(keeper.chunks.is_empty(), "a small read is copied");
        assert_eq!(keeper.copies.concat(), small);
    }

    /// Hands out what "arrived" as chunks of its own, as a QUIC stream does;
    /// then the end, or, while `open`, nothing yet.
    struct Arrived(std::collections::VecDeque<Bytes>, bool);

    impl AsyncRead for Arrived {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            unreachable!("read as chunks")
        }
    }

    impl ChunkSource for Arrived {
        fn yields_chunks(&self) -> bool {
            true
        }
        fn poll_read_chunks(&mut self, _: &mut Context<'_>, chunks: &mut [Bytes]) -> Poll<io::Result<usize>> {
            let mut filled = 0;
            for slot in chunks.iter_mut() {
                let Some(chunk) = self.0.pop_front() else { break };
                *slot = chunk;
                filled += 1;
            }
            if filled == 0 && self.1 {
                return Poll::Pending;
            }
            Poll::Ready(Ok(filled))
        }
    }

    /// Takes at most 5,000 bytes per vectored write, and records each write's slice count.
    #[derive(Default)]
    struct Trickle {
        got: Vec<u8>,
        slices: Vec<usize>,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.slices.push(bufs.len());
            let mut room = 5_000;
            for buf in bufs {
                let n = buf.len().min(room);
                this.got.extend_from_slice(&buf[..n]);
                room -= n;
            }
            Poll::Ready(Ok(5_000 - room))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl ChunkSink for Trickle {
        fn poll_write_gather(&mut self, cx: &mut Context<'_>, chunks: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
            Pin::new(self).poll_write_vectored(cx, chunks)
        }
        fn gathers(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn arrived_chunks_go_out_in_gathered_writes_across_partial_writes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
        // Packet-sized chunks, as QUIC hands them out.
        let chunks = data.chunks(1_400).map(Bytes::copy_from_slice).collect();
        let mut source = Arrived(chunks, false);
        let mut sink = Trickle::default();
        let mut direction = Direction::default();
        let copied = poll_fn(|cx| direction.poll_copy(cx, &mut source, &mut sink))
            .await
            .unwrap();
        assert_eq!(copied, data.len() as u64);
        assert_eq!(sink.got, data, "every byte once, in order, across partial writes");
        assert!(sink.slices.iter().any(|&n| n > 1), "several chunks per write");
        assert!(
            direction
                .received
                .slots
                .iter()
                .all(|s| s.chunks.iter().all(Bytes::is_empty)),
            "no chunk kept once written"
        );
    }

    #[tokio::test]
    async fn an_idle_direction_lets_its_chunk_slots_go() {
        let chunks = [b"hello".as_slice(), b" world"].map(Bytes::from_static).into();
        let mut source = Arrived(chunks, true);
        let mut sink = Trickle::default();
        let mut direction = Direction::default();
        let poll = poll_fn(|cx| Poll::Ready(direction.poll_copy(cx, &mut source, &mut sink))).await;
        assert!(poll.is_pending(), "the source stays open");
        assert_eq!(sink.got, b"hello world");
        assert!(
            direction.received.slots.is_none(),
            "no chunk slots held while nothing arrives"
        );
    }
}
