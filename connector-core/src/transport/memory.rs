//! An in-process transport: connections and streams are bounded in-memory
//! pipes with the same semantics as QUIC streams (FIN, reset and stop codes,
//! flow control by a fixed buffer per direction). Used by tests and
//! benchmarks to run the server and agent without sockets.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};

use super::{
    BiStream, BoxFuture, ChunkSink, ChunkSource, Connection, Connector, Handshake, Incoming, Listener, PeerInfo,
    RecvStream, SendStream, StreamReset, TransportError,
};
use crate::proto::{ConnectionCode, StreamCode};

/// Bytes buffered per stream direction before the writer waits for the reader.
pub const PIPE_CAPACITY: usize = 256 * 1024;

/// Creates a connected listener/connector pair.
pub fn pair() -> (MemoryListener, MemoryConnector) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = MemoryListener {
        incoming: tokio::sync::Mutex::new(rx),
        live: Arc::new(Mutex::new(Vec::new())),
    };
    let connector = MemoryConnector {
        listener: tx,
        certificates: Vec::new(),
        live: listener.live.clone(),
    };
    (listener, connector)
}

/// Server side of the in-memory transport.
pub struct MemoryListener {
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Arc<MemoryConnection>>>,
    live: Arc<Mutex<Vec<Weak<MemoryConnection>>>>,
}

/// Agent side of the in-memory transport; cloneable so that several agents can
/// share one listener.
#[derive(Clone)]
pub struct MemoryConnector {
    listener: mpsc::UnboundedSender<Arc<MemoryConnection>>,
    certificates: Vec<CertificateDer<'static>>,
    live: Arc<Mutex<Vec<Weak<MemoryConnection>>>>,
}

impl MemoryConnector {
    /// A connector whose connections present `chain` as their client
    /// certificate chain (as if verified by TLS), for testing certificate auth.
    pub fn with_certificates(mut self, chain: Vec<CertificateDer<'static>>) -> Self {
        self.certificates = chain;
        self
    }
}

impl Listener for MemoryListener {
    fn accept(&self) -> BoxFuture<'_, Option<Incoming>> {
        Box::pin(async move {
            let conn = self.incoming.lock().await.recv().await?;
            let conn: Arc<dyn Connection> = conn;
            Some(Incoming::new(None, Box::pin(async move { Ok(conn) }) as Handshake))
        })
    }

    fn local_addr(&self) -> String {
        "memory".into()
    }

    fn shutdown(&self) {
        self.incoming.try_lock().map(|mut rx| rx.close()).ok();
        let live = std::mem::take(&mut *self.live.lock().unwrap());
        for conn in live.iter().filter_map(Weak::upgrade) {
            conn.close(ConnectionCode::Shutdown, "listener shut down");
        }
    }
}

impl Connector for MemoryConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        Box::pin(async move {
            let shared = Arc::new(SharedConn::new());
            let (to_server, server_rx) = mpsc::unbounded_channel();
            let (to_client, client_rx) = mpsc::unbounded_channel();
            let client = Arc::new(MemoryConnection {
                shared: shared.clone(),
                peer_streams: to_server,
                incoming: tokio::sync::Mutex::new(client_rx),
                peer: PeerInfo::default(),
                side: Side::Client,
            });
            let server = Arc::new(MemoryConnection {
                shared,
                peer_streams: to_client,
                incoming: tokio::sync::Mutex::new(server_rx),
                peer: PeerInfo {
                    remote_addr: None,
                    certificates: self.certificates.clone(),
                },
                side: Side::Server,
            });
            {
                let mut live = self.live.lock().unwrap();
                live.retain(|w| w.strong_count() > 0);
                live.push(Arc::downgrade(&server));
            }
            self.listener
                .send(server)
                .map_err(|_| TransportError::Connect("the in-memory listener is gone".into()))?;
            Ok(client as Arc<dyn Connection>)
        })
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// State shared by both ends of one in-memory connection.
struct SharedConn {
    /// Set once, to who closed the connection and why.
    closed: watch::Sender<Option<(Side, ConnectionCode, String)>>,
    pipes: Mutex<Vec<Weak<Pipe>>>,
}

impl SharedConn {
    fn new() -> Self {
        Self {
            closed: watch::channel(None).0,
            pipes: Mutex::new(Vec::new()),
        }
    }
}

/// One end of an in-memory connection.
pub struct MemoryConnection {
    shared: Arc<SharedConn>,
    peer_streams: mpsc::UnboundedSender<BiStream>,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<BiStream>>,
    peer: PeerInfo,
    side: Side,
}

impl MemoryConnection {
    fn error(&self) -> Option<TransportError> {
        let closed = self.shared.closed.borrow();
        closed
            .as_ref()
            .map(|(by, code, reason)| close_error(self.side, *by, *code, reason))
    }
}

fn close_error(me: Side, by: Side, code: ConnectionCode, reason: &str) -> TransportError {
    if me == by {
        TransportError::LocallyClosed
    } else {
        TransportError::ClosedByPeer {
            code,
            reason: reason.to_owned(),
        }
    }
}

impl Drop for MemoryConnection {
    fn drop(&mut self) {
        self.close(ConnectionCode::Normal, "connection dropped");
    }
}

impl Connection for MemoryConnection {
    fn open_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        Box::pin(async move {
            if let Some(err) = self.error() {
                return Err(err);
            }
            let out = Arc::new(Pipe::default());
            let back = Arc::new(Pipe::default());
            self.shared
                .pipes
                .lock()
                .unwrap()
                .extend([Arc::downgrade(&out), Arc::downgrade(&back)]);
            let local = BiStream {
                send: Box::new(PipeWriter(out.clone())),
                recv: Box::new(PipeReader(back.clone())),
            };
            let remote = BiStream {
                send: Box::new(PipeWriter(back)),
                recv: Box::new(PipeReader(out)),
            };
            self.peer_streams
                .send(remote)
                .map_err(|_| self.error().unwrap_or(TransportError::LocallyClosed))?;
            Ok(local)
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        Box::pin(async move {
            let mut closed = self.shared.closed.subscribe();
            let mut incoming = self.incoming.lock().await;
            tokio::select! {
                stream = incoming.recv() => stream.ok_or_else(|| self.error().unwrap_or(TransportError::LocallyClosed)),
                _ = closed.wait_for(Option::is_some) => Err(self.error().unwrap_or(TransportError::LocallyClosed)),
            }
        })
    }

    fn close(&self, code: ConnectionCode, reason: &str) {
        let first = self.shared.closed.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some((self.side, code, reason.to_owned()));
            true
        });
        if first {
            let pipes = std::mem::take(&mut *self.shared.pipes.lock().unwrap());
            for pipe in pipes.iter().filter_map(Weak::upgrade) {
                pipe.update(|s| s.connection_closed = true);
            }
        }
    }

    fn closed(&self) -> BoxFuture<'static, TransportError> {
        let mut rx = self.shared.closed.subscribe();
        let side = self.side;
        Box::pin(async move {
            match rx.wait_for(Option::is_some).await {
                Ok(state) => {
                    let (by, code, reason) = state.as_ref().expect("waited for Some");
                    close_error(side, *by, *code, reason)
                }
                Err(_) => TransportError::LocallyClosed,
            }
        })
    }

    fn peer(&self) -> PeerInfo {
        self.peer.clone()
    }

    fn transport(&self) -> &'static str {
        "memory"
    }
}

/// One direction of an in-memory stream.
#[derive(Default)]
struct Pipe {
    state: Mutex<PipeState>,
}

#[derive(Default)]
struct PipeState {
    buf: VecDeque<u8>,
    fin: bool,
    reset: Option<StreamCode>,
    stopped: Option<StreamCode>,
    connection_closed: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
    reader_gone: bool,
}

impl Pipe {
    /// Applies `f` to the state and wakes both sides.
    fn update(&self, f: impl FnOnce(&mut PipeState)) {
        let (r, w) = {
            let mut s = self.state.lock().unwrap();
            f(&mut s);
            (s.reader.take(), s.writer.take())
        };
        r.into_iter().chain(w).for_each(Waker::wake);
    }
}

fn connection_lost() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

struct PipeWriter(Arc<Pipe>);
struct PipeReader(Arc<Pipe>);

impl AsyncWrite for PipeWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut s = self.0.state.lock().unwrap();
        if let Some(code) = s.stopped {
            return Poll::Ready(Err(StreamReset(code).into_io()));
        }
        if s.connection_closed {
            return Poll::Ready(Err(connection_lost()));
        }
        if s.fin || s.reset.is_some() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream already finished",
            )));
        }
        let room = PIPE_CAPACITY - s.buf.len();
        if room == 0 {
            s.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        s.buf.extend(&data[..n]);
        let reader = s.reader.take();
        drop(s);
        if let Some(waker) = reader {
            waker.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.update(|s| s.fin = true);
        Poll::Ready(Ok(()))
    }
}

impl SendStream for PipeWriter {
    fn reset(&mut self, code: StreamCode) {
        self.0.update(|s| {
            if !s.fin {
                s.reset = Some(code);
                s.buf.clear();
            }
        });
    }
}

impl ChunkSink for PipeWriter {}

impl Drop for PipeWriter {
    /// Like a QUIC stream, a dropped sender ends its stream in order.
    fn drop(&mut self) {
        self.0.update(|s| s.fin = true);
    }
}

impl AsyncRead for PipeReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.state.lock().unwrap();
        if let Some(code) = s.reset {
            return Poll::Ready(Err(StreamReset(code).into_io()));
        }
        if !s.buf.is_empty() {
            let n = out.remaining().min(s.buf.len());
            let (a, b) = s.buf.as_slices();
            let from_a = n.min(a.len());
            out.put_slice(&a[..from_a]);
            out.put_slice(&b[..n - from_a]);
            s.buf.drain(..n);
            let writer = s.writer.take();
            drop(s);
            if let Some(waker) = writer {
                waker.wake();
            }
            return Poll::Ready(Ok(()));
        }
        if s.fin {
            return Poll::Ready(Ok(()));
        }
        if s.connection_closed {
            return Poll::Ready(Err(connection_lost()));
        }
        s.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl RecvStream for PipeReader {
    fn stop(&mut self, code: StreamCode) {
        self.0.update(|s| {
            s.stopped = Some(code);
            s.buf.clear();
        });
    }
}

impl ChunkSource for PipeReader {}

impl Drop for PipeReader {
    /// Like a QUIC stream, a dropped receiver tells the sender to stop.
    fn drop(&mut self) {
        self.0.update(|s| {
            if !s.reader_gone && s.stopped.is_none() && !s.fin {
                s.stopped = Some(StreamCode::NoError);
            }
            s.reader_gone = true;
            s.buf.clear();
        });
    }
}
