//! Hands a tunnelled connection to the caller as one end of a Unix
//! socketpair: a task copies between the other end and the tunnel, carrying
//! half-closes both ways. The caller's own event loop (Go's netpoller) then
//! provides deadlines, concurrent close and readiness.

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::Arc;

use connector_core::TunnelStream;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest, ReadHalf, WriteHalf};
use tokio::net::UnixStream;

use crate::cancel::connector_cancel;
use crate::error::Error;

const BUF: usize = 64 * 1024;

/// Starts the copy task; returns the caller's end of the socketpair.
pub(crate) fn start(
    handle: &tokio::runtime::Handle,
    tunnel: TunnelStream,
    abort: Arc<connector_cancel>,
) -> Result<RawFd, Error> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| Error::io(&e))?;
    ours.set_nonblocking(true).map_err(|e| Error::io(&e))?;
    let ours = {
        let _entered = handle.enter();
        UnixStream::from_std(ours).map_err(|e| Error::io(&e))?
    };
    handle.spawn(splice(tunnel, ours, abort));
    Ok(theirs.into_raw_fd())
}

/// How long data the caller wrote before closing may take to drain into
/// the tunnel once the handle is freed.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Copies both ways until both directions ended, one failed, or the handle
/// was freed. Then the tunnel is dropped, which aborts whatever did not end
/// cleanly (the target sees a reset).
async fn splice(tunnel: TunnelStream, sock: UnixStream, abort: Arc<connector_cancel>) {
    let (mut from_target, mut to_target) = tokio::io::split(tunnel);
    let up = up(&sock, &mut to_target);
    let down = down(&mut from_target, &sock);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        tokio::select! {
            outcome = &mut up, if !up_done => {
                up_done = true;
                if let Err(err) = outcome {
                    tracing::debug!(%err, "spliced stream: caller side failed");
                    return;
                }
            }
            outcome = &mut down, if !down_done => {
                down_done = true;
                match outcome {
                    Ok(()) => {}
                    Err(Broken::Target(err)) => {
                        // The tunnel failed (target reset, agent or server gone):
                        // end everything, so the caller sees its end close.
                        tracing::debug!(%err, "spliced stream: tunnel failed");
                        return;
                    }
                    Err(Broken::Caller(err)) => {
                        // The caller closed its end: stop reading from the target,
                        // but let what the caller wrote before closing drain.
                        tracing::debug!(%err, "spliced stream: caller stopped reading");
                    }
                }
            }
            _ = abort.fired() => break,
        }
        if up_done && down_done {
            return;
        }
    }
    // Freed: the caller closed its descriptor first, so `up` ends at EOF once
    // the data written before the close is in the tunnel.
    if !up_done {
        let _ = tokio::time::timeout(DRAIN_GRACE, up).await;
    }
}

/// Caller → target; the caller's EOF becomes a half-close towards the target.
async fn up(sock: &UnixStream, to_target: &mut WriteHalf<TunnelStream>) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        sock.readable().await?;
        let n = match sock.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return to_target.shutdown().await;
        }
        to_target.write_all(&buf[..n]).await?;
    }
}

/// Which side of a splice failed.
enum Broken {
    /// Reading from the tunnel failed.
    Target(io::Error),
    /// Writing to the caller's socket failed (the caller closed it).
    Caller(io::Error),
}

/// Target → caller; the target's EOF becomes a half-close towards the caller.
async fn down(from_target: &mut ReadHalf<TunnelStream>, sock: &UnixStream) -> Result<(), Broken> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from_target.read(&mut buf).await.map_err(Broken::Target)?;
        if n == 0 {
            // SAFETY: `sock` owns a valid descriptor.
            unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_WR) };
            return Ok(());
        }
        send_all(sock, &buf[..n]).await.map_err(Broken::Caller)?;
    }
}

/// Writes with `MSG_NOSIGNAL`: a peer that closed must give `EPIPE`, not a
/// process-killing `SIGPIPE` (the host program may not ignore it).
async fn send_all(sock: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        sock.writable().await?;
        let sent = sock.try_io(Interest::WRITABLE, || {
            // SAFETY: `buf` is valid for its length; the descriptor is open.
            let n = unsafe { libc::send(sock.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
