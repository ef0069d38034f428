//! The target service every benchmark connects to (directly, or through a
//! tunnel). The first byte a client sends picks the mode:
//!
//! * [`ECHO`]: every byte after it is echoed until EOF, then the write side closes;
//! * [`SINK`]: frames of a big-endian `u32` length and that many bytes are
//!   read and discarded until a frame of length 0; then the total is sent back
//!   as a big-endian `u64`, so the client knows when everything arrived. (No
//!   half-close: Konnectivity's HTTP CONNECT path closes both directions on it.)
//! * [`SOURCE`] followed by a big-endian `u64` `n`: the service sends `n`
//!   bytes (`u64::MAX`: until the client goes away), then closes.
//!
//! For the isolation benchmark (`netbench isolation`), connections can belong
//! to a *group*, named by a big-endian `u64` key the client picks:
//!
//! * [`COUNTED_SOURCE`] followed by the key: an endless source whose written
//!   bytes add up in the group's counter, so that a client whose tunnel is
//!   stalled can still learn (through [`STATUS`] on a direct connection) how
//!   much the target pushed into it; it stops when the client goes away or the
//!   group is released;
//! * [`HOLD`] followed by the key and a big-endian `u32` of seconds: a sink
//!   that never reads. It answers one byte ([`HOLD`]) once registered, then
//!   reads nothing until the group is released or the seconds have passed,
//!   and closes abortively (the unread bytes are dropped, the peer sees a reset);
//! * [`STATUS`] / [`RELEASE`] followed by the key: answered with two
//!   big-endian `u64`s, the bytes the group's counted sources have written and
//!   the group's connections still open. [`RELEASE`] first ends every
//!   connection of the group, and any that arrives later at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::CHUNK;

/// Mode byte: echo.
pub const ECHO: u8 = b'e';
/// Mode byte: sink of length-prefixed frames, answered with the byte count after an empty frame.
pub const SINK: u8 = b's';
/// Mode byte: source of `n` bytes.
pub const SOURCE: u8 = b'd';
/// Mode byte: endless source counted in a group.
pub const COUNTED_SOURCE: u8 = b'c';
/// Mode byte: sink that never reads, until its group is released; also its answer.
pub const HOLD: u8 = b'h';
/// Mode byte: a group's byte count and open connections.
pub const STATUS: u8 = b'q';
/// Mode byte: ends a group's connections, then answers like [`STATUS`].
pub const RELEASE: u8 = b'r';

/// Binds `addr` and serves every connection in its own task, forever.
pub async fn bind_and_serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener));
    Ok(local)
}

/// Accepts connections on `listener` and serves each in its own task.
pub async fn serve(listener: TcpListener) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        tokio::spawn(handle(tcp));
    }
}

async fn handle(mut tcp: TcpStream) -> std::io::Result<()> {
    let mode = tcp.read_u8().await?;
    if matches!(mode, COUNTED_SOURCE | HOLD) {
        // Their ends are abortive: a reset tears the tunnel down at once,
        // where a FIN would wait behind the bytes nobody reads.
        tcp.set_zero_linger()?;
    }
    let (mut r, mut w) = tcp.split();
    serve_mode(mode, &mut r, &mut w).await
}

/// Serves one connection whose mode byte was `mode` (exposed so that the raw
/// QUIC benchmark serves its streams exactly like TCP connections).
pub async fn serve_mode<R, W>(mode: u8, r: &mut R, w: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match mode {
        ECHO => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n]).await?;
            }
        }
        SINK => {
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                let mut left = r.read_u32().await? as usize;
                if left == 0 {
                    break;
                }
                total += left as u64;
                while left > 0 {
                    let want = left.min(buf.len());
                    let n = r.read(&mut buf[..want]).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    left -= n;
                }
            }
            w.write_all(&total.to_be_bytes()).await?;
            w.flush().await?;
            // Wait for the client to close, so that no reset races the count.
            let _ = r.read(&mut buf).await;
            return Ok(());
        }
        SOURCE => {
            let mut left = r.read_u64().await?;
            let buf = vec![0x5au8; CHUNK];
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                w.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
        }
        COUNTED_SOURCE => {
            let group = Group::get(r.read_u64().await?);
            let _open = group.open();
            let mut released = group.released.subscribe();
            let buf = vec![0x5au8; CHUNK];
            loop {
                let written = tokio::select! {
                    _ = released.wait_for(|r| *r) => return Ok(()),
                    written = w.write(&buf) => written?,
                };
                if written == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                group.bytes.fetch_add(written as u64, Ordering::Relaxed);
            }
        }
        HOLD => {
            let group = Group::get(r.read_u64().await?);
            let hold = Duration::from_secs(r.read_u32().await?.into());
            let _open = group.open();
            let mut released = group.released.subscribe();
            w.write_all(&[HOLD]).await?;
            w.flush().await?;
            // From here on nothing is read: the peer's bytes pile up on the way.
            let _ = tokio::time::timeout(hold, released.wait_for(|r| *r)).await;
            return Ok(());
        }
        STATUS | RELEASE => {
            let group = Group::get(r.read_u64().await?);
            if mode == RELEASE {
                group.released.send_replace(true);
            }
            w.write_all(&group.bytes.load(Ordering::Relaxed).to_be_bytes()).await?;
            w.write_all(&group.open.load(Ordering::Relaxed).to_be_bytes()).await?;
        }
        _ => return Ok(()),
    }
    w.shutdown().await
}

/// The connections of one [`COUNTED_SOURCE`] / [`HOLD`] group.
struct Group {
    /// Bytes written by the group's counted sources.
    bytes: AtomicU64,
    /// Connections of the group still open.
    open: AtomicU64,
    /// `true` once the group was released.
    released: watch::Sender<bool>,
}

/// Every group this process has seen. Groups are never removed (a benchmark
/// makes a few dozen), so that a connection arriving after its group's
/// release is released at once.
static GROUPS: LazyLock<Mutex<HashMap<u64, Arc<Group>>>> = LazyLock::new(Default::default);

impl Group {
    fn get(key: u64) -> Arc<Group> {
        let mut groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Group {
                    bytes: AtomicU64::new(0),
                    open: AtomicU64::new(0),
                    released: watch::Sender::new(false),
                })
            })
            .clone()
    }

    /// Counts a connection as open until the guard drops.
    fn open(self: &Arc<Self>) -> OpenGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self.clone())
    }
}

struct OpenGuard(Arc<Group>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
