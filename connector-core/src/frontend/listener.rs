//! Where frontends listen: a Unix domain socket (owner-only by default) or
//! TCP with mutual TLS. Accepting, the TLS handshake (bounded in time) and
//! the bound on concurrent connections are handled here, once for every
//! frontend; a frontend only sees ready [`FrontendConn`]s.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::tls::{FrontendTls, TlsError};

/// Where a frontend listens.
#[derive(Debug, Clone)]
pub enum FrontendBind {
    /// A Unix domain socket at this path (a stale socket file is replaced).
    Unix {
        /// Socket path.
        path: PathBuf,
        /// File mode of the socket (default `0o600`: only the owner may connect).
        mode: u32,
        /// Group id to give the socket (with `mode` `0o660`, members of that
        /// group may connect); `None` keeps the process's group.
        group: Option<u32>,
    },
    /// TCP with mutual TLS: clients must present a certificate from `tls.client_cas`.
    Tls {
        /// Address to bind.
        addr: SocketAddr,
        /// Certificate and client CAs.
        tls: FrontendTls,
    },
    /// Plain TCP, without any authentication: only allowed on loopback
    /// addresses, for local tools (`curl -x`, benchmarks).
    PlainLoopback {
        /// A loopback address to bind.
        addr: SocketAddr,
    },
}

impl FrontendBind {
    /// A Unix socket with owner-only permissions.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        FrontendBind::Unix {
            path: path.into(),
            mode: 0o600,
            group: None,
        }
    }
}

/// Bounds protecting a frontend from its clients.
#[derive(Debug, Clone)]
pub struct FrontendLimits {
    /// Client connections served at once; more are closed on arrival (default 10,000).
    pub max_connections: usize,
    /// Time a client has for the TLS handshake, and again, separately, for
    /// its request head (default 10 s).
    pub head_timeout: Duration,
    /// Largest request head accepted, in bytes (default 8 KiB).
    pub max_head: usize,
}

impl Default for FrontendLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            head_timeout: Duration::from_secs(10),
            max_head: 8 * 1024,
        }
    }
}

/// Why a frontend could not start.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// Binding the socket failed.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// The address or path.
        what: String,
        /// Cause.
        source: io::Error,
    },
    /// TLS material problem.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listener that authenticates nobody (a plain TCP frontend, a
    /// forward) was asked for on a non-loopback address.
    #[error(
        "{} is not a loopback address: listeners without authentication (plain TCP frontends, forwards) must use 127.0.0.0/8 or ::1; use TLS with client certificates elsewhere",
        .0.ip()
    )]
    NotLoopback(SocketAddr),
}

/// Refuses a non-loopback address for a listener that authenticates nobody
/// (a plain TCP frontend, a forward).
pub fn require_loopback(addr: SocketAddr) -> Result<(), FrontendError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(FrontendError::NotLoopback(addr))
    }
}

/// Anything a frontend client connection can be.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One accepted, handshaken client connection. Holds one of the listener's
/// connection slots until dropped.
pub struct FrontendConn {
    /// Declared first, so dropped first: the slot is free again by the time
    /// the client sees its connection close.
    _slot: OwnedSemaphorePermit,
    io: Box<dyn Io>,
    peer: String,
}

impl FrontendConn {
    /// The client's address (or `unix` for socket clients), for logs.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

impl std::fmt::Debug for FrontendConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontendConn").field("peer", &self.peer).finish()
    }
}

impl AsyncRead for FrontendConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for FrontendConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A bound frontend socket, accepting in the background.
pub struct FrontendListener {
    ready: mpsc::Receiver<FrontendConn>,
    local: String,
    acceptor: JoinHandle<()>,
}

impl Drop for FrontendListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl FrontendListener {
    /// Binds and starts accepting. `alpn` is offered on TLS listeners.
    pub fn bind(bind: &FrontendBind, alpn: &[&[u8]], limits: &FrontendLimits) -> Result<Self, FrontendError> {
        let bind_err = |what: String| move |source| FrontendError::Bind { what, source };
        let (socket, tls, local) = match bind {
            FrontendBind::Unix { path, mode, group } => {
                let listener = bind_unix(path, *mode, *group).map_err(bind_err(path.display().to_string()))?;
                (Socket::Unix(listener), None, format!("unix://{}", path.display()))
            }
            FrontendBind::Tls { addr, tls } => {
                let acceptor = TlsAcceptor::from(Arc::new(tls.rustls_config(alpn)?));
                let listener = std_tcp(*addr).map_err(bind_err(addr.to_string()))?;
                let local = listener.local_addr().map_err(bind_err(addr.to_string()))?;
                (Socket::Tcp(listener), Some(acceptor), format!("tls://{local}"))
            }
            FrontendBind::PlainLoopback { addr } => {
                require_loopback(*addr)?;
                let listener = std_tcp(*addr).map_err(bind_err(addr.to_string()))?;
                let local = listener.local_addr().map_err(bind_err(addr.to_string()))?;
                (Socket::Tcp(listener), None, format!("tcp://{local}"))
            }
        };
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(socket, tls, limits.clone(), tx, local.clone()));
        Ok(Self { ready, local, acceptor })
    }

    /// The next ready client connection; `None` once the listener has failed.
    pub async fn accept(&mut self) -> Option<FrontendConn> {
        self.ready.recv().await
    }

    /// Where it listens: `unix://PATH`, `tls://ADDR` or `tcp://ADDR`.
    pub fn local_addr(&self) -> &str {
        &self.local
    }
}

fn std_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Binds a Unix socket at `path` that is never reachable with other
/// permissions than `mode` and `group`: it is bound inside a fresh directory
/// only the owner can enter, given its mode and group there, and only then
/// renamed into place (replacing a stale socket from an earlier run).
fn bind_unix(path: &std::path::Path, mode: u32, group: Option<u32>) -> io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path has no file name",
        ));
    }
    // Short names: the staged path must fit in sun_path (108 bytes) whenever
    // the final one does, so it is at most as long as `parent/` plus 11 bytes.
    let private = parent.join(format!(".{:08x}", rand::random::<u32>()));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    let result = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        if group.is_some() {
            std::os::unix::fs::chown(&staged, None, group)?;
        }
        remove_stale_socket(path);
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    result
}

/// Removes a socket file left by an earlier run (never a regular file).
fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// A connection as accepted, before any TLS.
enum Raw {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept_loop(
    socket: Socket,
    tls: Option<TlsAcceptor>,
    limits: FrontendLimits,
    ready: mpsc::Sender<FrontendConn>,
    local: String,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = match &socket {
            Socket::Unix(l) => l.accept().await.map(|(s, _)| (Raw::Unix(s), "unix".to_owned())),
            Socket::Tcp(l) => l.accept().await.map(|(s, peer)| (Raw::Tcp(s), peer.to_string())),
        };
        let (raw, peer) = match accepted {
            Ok(x) => x,
            Err(err) => {
                // Out of file descriptors and similar: log, pause briefly so as not to spin, go on.
                tracing::warn!(listen = %local, %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(listen = %local, %peer, limit = limits.max_connections, "too many frontend connections; closing a new one");
            continue;
        };
        let (tls, ready, timeout) = (tls.clone(), ready.clone(), limits.head_timeout);
        tokio::spawn(async move {
            let io: Box<dyn Io> = match (raw, tls) {
                (Raw::Unix(unix), _) => Box::new(unix),
                (Raw::Tcp(tcp), None) => {
                    let _ = tcp.set_nodelay(true);
                    Box::new(tcp)
                }
                (Raw::Tcp(tcp), Some(tls)) => {
                    let _ = tcp.set_nodelay(true);
                    // TLS records go out gathered: without SIGPIPE (crate::no_sigpipe).
                    match tokio::time::timeout(timeout, tls.accept(crate::no_sigpipe::NoSigPipe(tcp))).await {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(err)) => {
                            tracing::info!(%peer, err = %crate::proto::escaped(&err.to_string()), "frontend TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "frontend TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let _ = ready.send(FrontendConn { io, peer, _slot: slot }).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::bind_unix;

    /// Found by deploy/validate.sh: the staged socket lived at a longer path
    /// than the final one, so a final path near the sun_path limit (108 bytes)
    /// could not be bound although it fits.
    #[tokio::test]
    async fn socket_paths_near_the_limit_still_bind() {
        let dir = std::env::temp_dir().join(format!("cs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("x").to_string_lossy().len();
        let path = dir.join(format!("{}.sock", "s".repeat(103 - base)));
        assert_eq!(path.to_string_lossy().len(), 107);
        let listener = bind_unix(&path, 0o600, None).unwrap();
        assert!(std::fs::symlink_metadata(&path).is_ok());
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
