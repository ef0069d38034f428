//! Copying bytes both ways between a TCP connection and a tunnel stream,
//! with the protocol's close semantics: an orderly end (FIN) on either side
//! becomes a half-close on the other, and a failure on either side aborts
//! both (a stream reset with a code, or a TCP reset). An optional idle
//! timeout aborts a splice that moved no byte either way for that long.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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
    /// The tunnel stream was reset or stopped with this code; the TCP
    /// connection resets (RST) when dropped.
    Tunnel(StreamCode),
    /// No byte moved either way for the idle timeout; the stream was reset
    /// with [`StreamCode::IdleTimeout`] and the TCP connection resets (RST)
    /// when dropped.
    Idle,
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

async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    (from, to): (Side, Side),
    copied: &mut u64,
    activity: &Activity,
) -> Result<(), Failure>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; BUF_LEN];
    loop {
        let n = r.read(&mut buf).await.map_err(|e| Failure::Io(from, e))?;
        activity.touch();
        if n == 0 {
            return w.shutdown().await.map_err(|e| Failure::Io(to, e));
        }
        w.write_all(&buf[..n]).await.map_err(|e| Failure::Io(to, e))?;
        activity.touch();
        *copied += n as u64;
    }
}

/// Runs until both directions have ended or one side fails. With
/// `idle_timeout`, a connection that moved no byte either way for that long
/// is aborted on both sides ([`Abort::Idle`]).
///
/// The caller keeps `tcp` and drops it afterwards: after an abort, dropping
/// it sends the TCP reset.
pub async fn splice(
    tcp: &mut TcpStream,
    mut send: Box<dyn SendStream>,
    mut recv: Box<dyn RecvStream>,
    idle_timeout: Option<Duration>,
) -> SpliceOutcome {
    let (mut to_tunnel, mut to_tcp) = (0u64, 0u64);
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let failure = {
        let (mut tcp_read, mut tcp_write) = tcp.split();
        let up = pump(
            &mut tcp_read,
            &mut send,
            (Side::Tcp, Side::Tunnel),
            &mut to_tunnel,
            &activity,
        );
        let down = pump(
            &mut recv,
            &mut tcp_write,
            (Side::Tunnel, Side::Tcp),
            &mut to_tcp,
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
        to_tunnel,
        to_tcp,
        aborted,
    }
}
