//! Copying bytes both ways between a TCP connection and a tunnel stream,
//! with the protocol's close semantics: an orderly end (FIN) on either side
//! becomes a half-close on the other, and a failure on either side aborts
//! both (a stream reset with a code, or a TCP reset).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::StreamCode;
use crate::transport::{RecvStream, SendStream, StreamReset};

/// Copy buffer per direction.
const BUF_LEN: usize = 32 * 1024;

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
    /// The tunnel stream was reset or stopped with this code; the TCP connection was reset.
    Tunnel(StreamCode),
}

#[derive(Clone, Copy)]
enum Side {
    Tcp,
    Tunnel,
}

async fn pump<R, W>(r: &mut R, w: &mut W, from: Side, to: Side, copied: &mut u64) -> Result<(), (Side, io::Error)>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; BUF_LEN];
    loop {
        let n = r.read(&mut buf).await.map_err(|e| (from, e))?;
        if n == 0 {
            return w.shutdown().await.map_err(|e| (to, e));
        }
        w.write_all(&buf[..n]).await.map_err(|e| (to, e))?;
        *copied += n as u64;
    }
}

/// Runs until both directions have ended or one side fails.
pub async fn splice(mut tcp: TcpStream, mut send: Box<dyn SendStream>, mut recv: Box<dyn RecvStream>) -> SpliceOutcome {
    let (mut to_tunnel, mut to_tcp) = (0u64, 0u64);
    let failure = {
        let (mut tcp_read, mut tcp_write) = tcp.split();
        let up = pump(&mut tcp_read, &mut send, Side::Tcp, Side::Tunnel, &mut to_tunnel);
        let down = pump(&mut recv, &mut tcp_write, Side::Tunnel, Side::Tcp, &mut to_tcp);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let result = tokio::select! {
                r = &mut up, if !up_done => { up_done = true; r }
                r = &mut down, if !down_done => { down_done = true; r }
            };
            if let Err(failure) = result {
                break Some(failure);
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    let aborted = failure.map(|(side, err)| match side {
        Side::Tcp => {
            tracing::debug!(%err, "target connection failed; resetting the stream");
            send.reset(StreamCode::TargetReset);
            recv.stop(StreamCode::TargetReset);
            Abort::Tcp
        }
        Side::Tunnel => {
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
        to_tunnel,
        to_tcp,
        aborted,
    }
}
