//! The client side of each measurement, generic over the byte stream (a TCP
//! connection, a [`connector_core::TunnelStream`], a raw QUIC stream).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::CHUNK;
use crate::target::{COUNTED_SOURCE, ECHO, HOLD, SINK, SOURCE};

/// Sends `bytes` to a [`SINK`] and waits for its count, i.e. until every byte
/// arrived at the target. Returns the count the target saw.
pub async fn upload<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, bytes: u64) -> io::Result<u64> {
    let mut buf = vec![0xa5u8; CHUNK + 4];
    stream.write_all(&[SINK]).await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        buf[..4].copy_from_slice(&(n as u32).to_be_bytes());
        stream.write_all(&buf[..4 + n]).await?;
        left -= n as u64;
    }
    let seen = finish_upload(stream).await?;
    if seen != bytes {
        return Err(io::Error::other(format!("target saw {seen} of {bytes} bytes")));
    }
    Ok(seen)
}

/// Writes one [`SINK`] frame of `CHUNK` bytes (`buf` holds `CHUNK + 4` bytes).
pub async fn upload_chunk<S: AsyncWrite + Unpin>(stream: &mut S, buf: &mut [u8]) -> io::Result<u64> {
    let n = buf.len() - 4;
    buf[..4].copy_from_slice(&(n as u32).to_be_bytes());
    stream.write_all(buf).await?;
    Ok(n as u64)
}

/// Ends an upload to a [`SINK`] (an empty frame) and returns the count it saw.
pub async fn finish_upload<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<u64> {
    stream.write_all(&0u32.to_be_bytes()).await?;
    stream.flush().await?;
    stream.read_u64().await
}

/// Asks a [`SOURCE`] for `bytes` and reads them all.
pub async fn download<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, bytes: u64) -> io::Result<u64> {
    start_download(stream, bytes).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < bytes {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n as u64;
    }
    Ok(got)
}

/// Asks a [`SOURCE`] for `bytes` without reading them (`u64::MAX`: endless).
pub async fn start_download<S: AsyncWrite + Unpin>(stream: &mut S, bytes: u64) -> io::Result<()> {
    send_request(stream, SOURCE, bytes).await
}

/// Asks for an endless [`COUNTED_SOURCE`] of group `key` without reading it.
pub async fn start_counted_download<S: AsyncWrite + Unpin>(stream: &mut S, key: u64) -> io::Result<()> {
    send_request(stream, COUNTED_SOURCE, key).await
}

/// Sends a source request: the `service` byte, then `value` (big-endian u64).
async fn send_request<S: AsyncWrite + Unpin>(stream: &mut S, service: u8, value: u64) -> io::Result<()> {
    let mut request = [0u8; 9];
    request[0] = service;
    request[1..].copy_from_slice(&value.to_be_bytes());
    stream.write_all(&request).await?;
    stream.flush().await
}

/// Asks for a [`HOLD`] sink of group `key` (at most `hold_secs` seconds) and
/// waits for its answer: from then on the target reads nothing.
pub async fn start_hold<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, key: u64, hold_secs: u32) -> io::Result<()> {
    let mut request = [0u8; 13];
    request[0] = HOLD;
    request[1..9].copy_from_slice(&key.to_be_bytes());
    request[9..].copy_from_slice(&hold_secs.to_be_bytes());
    stream.write_all(&request).await?;
    stream.flush().await?;
    match stream.read_u8().await? {
        HOLD => Ok(()),
        other => Err(io::Error::other(format!(
            "unexpected answer {other:#04x} to a hold request"
        ))),
    }
}

/// A [`crate::target::STATUS`] or [`crate::target::RELEASE`] request for
/// group `key` on a fresh connection: returns the bytes the group's counted
/// sources wrote and the group's connections still open.
pub async fn group_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mode: u8,
    key: u64,
) -> io::Result<(u64, u64)> {
    let mut request = [0u8; 9];
    request[0] = mode;
    request[1..].copy_from_slice(&key.to_be_bytes());
    stream.write_all(&request).await?;
    stream.flush().await?;
    Ok((stream.read_u64().await?, stream.read_u64().await?))
}

/// Switches a fresh connection to [`ECHO`] mode.
pub async fn start_echo<S: AsyncWrite + Unpin>(stream: &mut S) -> io::Result<()> {
    stream.write_all(&[ECHO]).await?;
    stream.flush().await
}

/// One round trip of `msg.len()` bytes on a connection in echo mode; `scratch`
/// must be as long as `msg`.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &[u8],
    scratch: &mut [u8],
) -> io::Result<()> {
    stream.write_all(msg).await?;
    stream.flush().await?;
    stream.read_exact(scratch).await?;
    Ok(())
}

/// The dial test on a fresh connection: the echo mode byte and one payload
/// byte go out together; returns once the echoed byte is back.
pub async fn first_echo<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<()> {
    stream.write_all(&[ECHO, b'!']).await?;
    stream.flush().await?;
    let mut one = [0u8; 1];
    stream.read_exact(&mut one).await?;
    Ok(())
}

/// Percentile `p` (0..=100) of sorted samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[idx.min(sorted.len() - 1)])
}
