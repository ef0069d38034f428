//! Hands a tunnelled connection to the caller as one end of a Unix
//! socketpair: a task copies between the other end and the tunnel, carrying
//! half-closes both ways. The caller's own event loop (Go's netpoller) then
//! provides deadlines, concurrent close and readiness.
//!
//! The copy loop is this crate's own rather than core's `copy_tunnel`: the
//! caller is told *how* the splice ended ([`SpliceEnd`]: a broken tunnel is
//! an error with its cause, the caller closing its end is not), what the
//! caller wrote before freeing its handle still drains for a grace period,
//! and writes to the caller's socket use `MSG_NOSIGNAL` because the host
//! program (Go) decides how SIGPIPE is handled. Core's copy reports byte
//! counts and one error, without saying which side failed.

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use connector_core::TunnelStream;
use connector_core::proto::StreamCode;
use connector_core::transport::StreamReset;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest, ReadHalf, WriteHalf};
use tokio::net::UnixStream;

use crate::cancel::connector_cancel;
use crate::connector_result;
use crate::error::Error;

/// How a splice ended, set once by the copy task before it closes its end
/// of the socketpair: a caller that reads end of stream can then tell a
/// clean end from a broken tunnel. Unset while the copy runs.
#[derive(Default)]
pub(crate) struct SpliceEnd(OnceLock<Result<(), Error>>);

impl SpliceEnd {
    /// `None` while running; `Some(Ok)` after a clean end (both directions
    /// finished, the caller closed, or the handle was freed); `Some(Err)`
    /// when the tunnel broke.
    pub(crate) fn get(&self) -> Option<&Result<(), Error>> {
        self.0.get()
    }

    fn set(&self, outcome: Result<(), Error>) {
        let _ = self.0.set(outcome);
    }
}

/// The error a broken tunnel is reported as.
fn tunnel_failure(err: &io::Error) -> Error {
    use connector_result::*;
    match StreamReset::from_io(err) {
        Some(StreamCode::TargetReset) => Error::new(CONNECTOR_ERR_IO, "the target reset the connection"),
        Some(StreamCode::IdleTimeout) => Error::new(
            CONNECTOR_ERR_TIMED_OUT,
            "the agent closed the connection: no byte either way for its tunnel idle timeout",
        ),
        Some(code) => Error::new(CONNECTOR_ERR_IO, format!("the agent reset the connection: {code}")),
        None => Error::new(
            CONNECTOR_ERR_IO,
            format!("the tunnel failed (agent or server connection lost?): {err}"),
        ),
    }
}

const BUF: usize = 64 * 1024;

/// Starts the copy task; returns the caller's end of the socketpair.
pub(crate) fn start(
    handle: &tokio::runtime::Handle,
    tunnel: TunnelStream,
    abort: Arc<connector_cancel>,
    end: Arc<SpliceEnd>,
) -> Result<RawFd, Error> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| Error::io(&e))?;
    ours.set_nonblocking(true).map_err(|e| Error::io(&e))?;
    let ours = {
        let _entered = handle.enter();
        UnixStream::from_std(ours).map_err(|e| Error::io(&e))?
    };
    handle.spawn(async move {
        let outcome = splice(tunnel, &ours, abort).await;
        end.set(outcome);
        // Only now does the caller see its end close: it finds the outcome set.
        drop(ours);
    });
    Ok(theirs.into_raw_fd())
}

/// How long data the caller wrote before closing may take to drain into
/// the tunnel once the handle is freed.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Copies both ways until both directions ended, one failed, or the handle
/// was freed. Then the tunnel is dropped, which aborts whatever did not end
/// cleanly (the target sees a reset). A broken tunnel is the `Err`.
async fn splice(tunnel: TunnelStream, sock: &UnixStream, abort: Arc<connector_cancel>) -> Result<(), Error> {
    let (mut from_target, mut to_target) = tokio::io::split(tunnel);
    let up = up(sock, &mut to_target);
    let down = down(&mut from_target, sock);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        tokio::select! {
            outcome = &mut up, if !up_done => {
                up_done = true;
                if let Some(err) = caller_failure(outcome)? {
                    tracing::debug!(%err, "spliced stream: caller side failed");
                    return Ok(());
                }
            }
            outcome = &mut down, if !down_done => {
                down_done = true;
                if let Some(err) = caller_failure(outcome)? {
                    // The caller closed its end: stop reading from the target,
                    // but let what the caller wrote before closing drain.
                    tracing::debug!(%err, "spliced stream: caller stopped reading");
                }
            }
            _ = abort.fired() => break,
        }
        if up_done && down_done {
            return Ok(());
        }
    }
    // Freed: the caller closed its descriptor first, so `up` ends at EOF once
    // the data written before the close is in the tunnel.
    if !up_done {
        let _ = tokio::time::timeout(DRAIN_GRACE, up).await;
    }
    Ok(())
}

/// Caller → target; the caller's EOF becomes a half-close towards the target.
async fn up(sock: &UnixStream, to_target: &mut WriteHalf<TunnelStream>) -> Result<(), Broken> {
    let mut buf = vec![0u8; BUF];
    loop {
        sock.readable().await.map_err(Broken::Caller)?;
        let n = match sock.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Broken::Caller(e)),
        };
        if n == 0 {
            return to_target.shutdown().await.map_err(Broken::Target);
        }
        to_target.write_all(&buf[..n]).await.map_err(Broken::Target)?;
    }
}

/// Which side of a splice failed.
enum Broken {
    /// The tunnel failed (target reset, agent or server gone).
    Target(io::Error),
    /// The caller's socket failed (the caller closed it).
    Caller(io::Error),
}

/// How one direction ended, for [`splice`]: the `Err` the caller is told
/// when the tunnel broke, else the caller side's failure, if any (what to do
/// about it depends on the direction).
fn caller_failure(outcome: Result<(), Broken>) -> Result<Option<io::Error>, Error> {
    match outcome {
        Ok(()) => Ok(None),
        Err(Broken::Target(err)) => Err(broken(&err)),
        Err(Broken::Caller(err)) => Ok(Some(err)),
    }
}

/// A tunnel failure, logged and turned into the error the caller is told.
fn broken(err: &io::Error) -> Error {
    // The tunnel failed (target reset, agent or server gone): everything
    // ends, so the caller sees its end close, and finds why in the status.
    tracing::debug!(%err, "spliced stream: tunnel failed");
    tunnel_failure(err)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_tunnel_is_reported_with_its_cause() {
        use connector_result::*;
        let reset = tunnel_failure(&StreamReset(StreamCode::TargetReset).into_io());
        assert_eq!(
            (reset.code, reset.message.as_str()),
            (CONNECTOR_ERR_IO, "the target reset the connection")
        );
        let idle = tunnel_failure(&StreamReset(StreamCode::IdleTimeout).into_io());
        assert_eq!(idle.code, CONNECTOR_ERR_TIMED_OUT);
        let lost = tunnel_failure(&io::Error::other("connection lost"));
        assert_eq!(lost.code, CONNECTOR_ERR_IO);
        assert!(lost.message.contains("connection lost"), "{}", lost.message);
        let end = SpliceEnd::default();
        assert!(end.get().is_none(), "unset while running");
        end.set(Err(reset));
        end.set(Ok(()));
        assert!(
            matches!(end.get(), Some(Err(e)) if e.code == CONNECTOR_ERR_IO),
            "set once"
        );
    }
}
