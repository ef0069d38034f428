//! A tunnelled connection as a real socket, for code that needs one
//! (`http.client`, `ssl`, `asyncio.open_connection(sock=...)`, httpx's
//! network backend): one end of a Unix socket pair goes to Python, the other
//! is spliced to the tunnel on the runtime (no Python thread moves the bytes).

use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;

use connector_core::TunnelStream;

use crate::errors::Failure;

/// A connected socket pair: Python's end (blocking) and the end that
/// [`Splice::start`] splices to a tunnel. Both are close-on-exec; dropping
/// either (a failed or cancelled dial) shows the other end of file.
pub fn pair() -> Result<(UnixStream, Splice), Failure> {
    let (python, ours) = UnixStream::pair().map_err(|e| Failure::io("socketpair", e))?;
    Ok((python, Splice(ours)))
}

/// The runtime's end of a [`pair`], waiting for its tunnel.
pub struct Splice(UnixStream);

impl Splice {
    /// Copies both ways between the socket and `tunnel` on the runtime until
    /// both directions have ended: an end of file on either side is a
    /// half-close of the other, and a failure of either ends both (the
    /// Python side then reads end of file). Must run within the runtime.
    pub fn start(self, mut tunnel: TunnelStream) -> Result<(), Failure> {
        self.0.set_nonblocking(true).map_err(|e| Failure::io("socketpair", e))?;
        let mut ours = tokio::net::UnixStream::from_std(self.0).map_err(|e| Failure::io("socketpair", e))?;
        tokio::spawn(async move {
            let request_id = tunnel.request_id();
            if let Err(err) = connector_core::server::copy_tunnel(&mut ours, &mut tunnel).await {
                tracing::debug!(request_id, "the socket's tunnelled connection ended: {err}");
            }
        });
        Ok(())
    }
}

/// A [`pair`] for the connection `dialling` makes: Python's end, and the
/// dial (to run on the runtime), which then splices the other end to it.
pub fn spliced(
    dialling: impl Future<Output = Result<TunnelStream, Failure>> + Send + 'static,
) -> Result<(UnixStream, impl Future<Output = Result<(), Failure>> + Send + 'static), Failure> {
    let (python, splice) = pair()?;
    Ok((python, async move { splice.start(dialling.await?) }))
}

/// Python's end of a pair, as the file descriptor `socket.socket(fileno=)` takes over.
pub fn into_fd(python: UnixStream) -> RawFd {
    python.into_raw_fd()
}
