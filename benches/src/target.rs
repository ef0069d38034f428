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

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::CHUNK;

/// Mode byte: echo.
pub const ECHO: u8 = b'e';
/// Mode byte: sink of length-prefixed frames, answered with the byte count after an empty frame.
pub const SINK: u8 = b's';
/// Mode byte: source of `n` bytes.
pub const SOURCE: u8 = b'd';

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
        _ => return Ok(()),
    }
    w.shutdown().await
}
