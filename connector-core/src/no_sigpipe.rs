//! Socket writes that never raise `SIGPIPE`.
//!
//! A write to a TCP socket whose peer has gone raises `SIGPIPE` on the
//! writing thread unless it passes `MSG_NOSIGNAL`, and a host process that
//! has not ignored the signal ends (a Go program using the C library: the
//! signal arrives on one of our threads). std's (and so tokio's) plain
//! writes pass it; gathered writes (`writev`) cannot, and TLS (rustls writes
//! its records gathered) uses them. [`NoSigPipe`] gathers with
//! `sendmsg(MSG_NOSIGNAL)` instead.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One `sendmsg` of `chunks` with `MSG_NOSIGNAL`, once the socket is writable.
pub(crate) fn poll_send_gathered(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    chunks: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        let sent = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            socket2::SockRef::from(tcp).send_vectored_with_flags(chunks, libc::MSG_NOSIGNAL)
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            sent => return Poll::Ready(sent),
        }
    }
}

/// A TCP stream whose gathered writes pass `MSG_NOSIGNAL` (its plain writes
/// already do); wrap the socket under TLS with it.
#[derive(Debug)]
pub struct NoSigPipe(pub TcpStream);

impl AsyncRead for NoSigPipe {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NoSigPipe {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_send_gathered(&self.0, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
