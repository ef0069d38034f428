//! [`TunnelStream`]: the byte stream a successful dial returns.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::registry::AgentEntry;
use crate::metrics::ServerMetrics;
use crate::proto::StreamCode;
use crate::transport::{ChunkSink, ChunkSource, RecvStream, SendStream, StreamReset};

/// A TCP connection opened by an agent, seen from the server side.
///
/// Reads return what the target sent; writes go to the target. Shutting the
/// write side down (`AsyncWriteExt::shutdown`) becomes a TCP half-close at
/// the target, which may still answer. Dropping the stream before both
/// directions finished aborts it: the agent resets the TCP connection.
pub struct TunnelStream {
    send: Box<dyn SendStream>,
    recv: Box<dyn RecvStream>,
    write_closed: bool,
    read_eof: bool,
    /// The agent reset this tunnel as stalled (counted once).
    stalled: bool,
    request_id: u64,
    agent: Arc<AgentEntry>,
    metrics: Arc<ServerMetrics>,
}

impl TunnelStream {
    pub(crate) fn new(
        send: Box<dyn SendStream>,
        recv: Box<dyn RecvStream>,
        request_id: u64,
        agent: Arc<AgentEntry>,
        metrics: Arc<ServerMetrics>,
    ) -> Self {
        metrics.tunnels_active.inc();
        Self {
            send,
            recv,
            write_closed: false,
            read_eof: false,
            stalled: false,
            request_id,
            agent,
            metrics,
        }
    }

    /// The dial's request id (it appears in both sides' logs).
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The id of the agent carrying this connection.
    pub fn agent_id(&self) -> &str {
        &self.agent.agent_id
    }

    /// Aborts both directions at once; the agent resets the TCP connection.
    pub fn abort(mut self) {
        self.abort_with(StreamCode::Cancelled);
    }

    fn abort_with(&mut self, code: StreamCode) {
        if !self.write_closed {
            self.send.reset(code);
            self.write_closed = true;
        }
        if !self.read_eof {
            self.recv.stop(code);
            self.read_eof = true;
        }
    }
}

impl TunnelStream {
    /// Counts `n` bytes written towards the target (server-wide and for the agent).
    pub(super) fn sent(&self, n: usize) {
        self.metrics.bytes_to_targets.inc_by(n as u64);
        self.agent.bytes_to_agent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts `n` bytes read from the target.
    fn received(&self, n: usize) {
        self.metrics.bytes_from_targets.inc_by(n as u64);
        self.agent.bytes_from_agent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Notes how a read or write failed: a reset by the agent's stall
    /// timeout is logged and counted, once per tunnel.
    fn failed<T>(&mut self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(err)) = &poll
            && !self.stalled
            && StreamReset::from_io(err) == Some(StreamCode::Stalled)
        {
            self.stalled = true;
            self.metrics.tunnels_stalled.inc();
            tracing::info!(
                request_id = self.request_id,
                agent = %self.agent.agent_id,
                "the agent closed a stalled tunnelled connection (a side read nothing for its stall timeout)"
            );
        }
        poll
    }
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("request_id", &self.request_id)
            .field("agent_id", &self.agent.agent_id)
            .finish()
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        self.agent.active.fetch_sub(1, Ordering::Relaxed);
        self.metrics.tunnels_active.dec();
        self.agent.tunnel_closed.notify_waiters();
        if !(self.write_closed && self.read_eof) {
            self.abort_with(StreamCode::Cancelled);
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.recv).poll_read(cx, buf);
        let poll = this.failed(poll);
        if let Poll::Ready(Ok(())) = poll {
            let read = buf.filled().len() - before;
            if read == 0 && buf.remaining() > 0 {
                this.read_eof = true;
            }
            this.received(read);
        }
        poll
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.send).poll_write(cx, buf);
        let poll = self.failed(poll);
        if let Poll::Ready(Ok(n)) = poll {
            self.sent(n);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.send).poll_shutdown(cx);
        if let Poll::Ready(Ok(())) = poll {
            self.write_closed = true;
        }
        poll
    }
}

impl ChunkSink for TunnelStream {
    fn takes_chunks(&self) -> bool {
        self.send.takes_chunks()
    }

    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<usize>> {
        let poll = self.send.poll_write_chunk(cx, chunk);
        let poll = self.failed(poll);
        if let Poll::Ready(Ok(n)) = poll {
            self.sent(n);
        }
        poll
    }
}

impl ChunkSource for TunnelStream {
    fn yields_chunks(&self) -> bool {
        self.recv.yields_chunks()
    }

    fn poll_read_chunks(&mut self, cx: &mut Context<'_>, chunks: &mut [Bytes]) -> Poll<io::Result<usize>> {
        let poll = self.recv.poll_read_chunks(cx, chunks);
        let poll = self.failed(poll);
        if let Poll::Ready(Ok(filled)) = poll {
            if filled == 0 && !chunks.is_empty() {
                self.read_eof = true;
            }
            let read: usize = chunks[..filled].iter().map(Bytes::len).sum();
            self.received(read);
        }
        poll
    }
}

/// Copies both ways between a client connection and a tunnelled connection
/// until both directions have ended, feeding the tunnel without a copy of
/// our own where its transport allows (QUIC; see `splice`).
/// Returns the bytes copied client→tunnel and tunnel→client.
pub async fn copy_tunnel<A>(client: &mut A, tunnel: &mut TunnelStream) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    crate::splice::copy_pair(&mut crate::splice::Plain(client), tunnel).await
}

/// [`copy_tunnel`] for a TCP client, which also takes what the tunnel
/// received as the transport's own chunks, gathered into one `sendmsg`.
pub async fn copy_tunnel_tcp(client: &mut TcpStream, tunnel: &mut TunnelStream) -> io::Result<(u64, u64)> {
    crate::splice::copy_pair(client, tunnel).await
}
