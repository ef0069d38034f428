//! Lets gRPC clients that put a Unix socket path in `:authority` through to
//! the HTTP/2 server.
//!
//! kube-apiserver's egress selector in `proxyProtocol: GRPC` mode dials the
//! socket with grpc-go and the socket path as target, so every request
//! carries `:authority: %2Fetc%2Fkubernetes%2F...sock`. That is not a valid
//! URI authority, and h2 (under tonic) answers such a request with
//! `RST_STREAM(PROTOCOL_ERROR)` (hyperium/h2 issue 442, pull request 487);
//! Go's HTTP/2 server, which konnectivity-server uses, accepts it.
//!
//! [`AuthorityRepair`] sits between the client connection and the HTTP/2
//! server. Everything the client sends passes through byte for byte, except
//! header blocks: those are decoded (HPACK), an invalid `:authority` is
//! replaced by `localhost`, and the block is encoded again for the server
//! with an encoder of its own, so both HPACK tables stay consistent. The
//! server's direction is not touched.
//!
//! Ours because the refusal is inside h2's header decoding, which tonic
//! gives no hook before; the HPACK coding itself is loona-hpack's. It can go
//! once h2 accepts such an `:authority`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length.
const FRAME_HEADER: usize = 9;
/// Largest frame we emit: the initial SETTINGS_MAX_FRAME_SIZE, which every
/// HTTP/2 server accepts.
const MAX_FRAME: usize = 16_384;
/// Largest header block (all HEADERS and CONTINUATION fragments) accepted.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// What replaces an invalid `:authority`.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why the client's byte stream could not be rewritten; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// A header block could not be decoded.
    #[error("undecodable HTTP/2 header block: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
    /// Frames violate HTTP/2 framing around header blocks.
    #[error("malformed HTTP/2 header frames: {0}")]
    Framing(&'static str),
    /// A header block exceeded [`MAX_HEADER_BLOCK`].
    #[error("HTTP/2 header block larger than {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
}

/// A header block being collected from HEADERS and CONTINUATION frames.
struct PendingBlock {
    stream_id: u32,
    /// END_STREAM of the HEADERS frame.
    end_stream: bool,
    /// The 5 priority bytes of the HEADERS frame, if it had them.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The sans-IO rewriter: bytes from the client in, bytes for the server out.
pub struct Rewriter {
    input: BytesMut,
    output: BytesMut,
    preface_seen: bool,
    /// The client did not speak HTTP/2: pass everything through unchanged
    /// and let the server reject it.
    passthrough: bool,
    /// A complete header block (the first request) has been passed on.
    request_seen: bool,
    /// Bytes of the current non-header frame still to copy through.
    copying: usize,
    pending: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter for one new connection.
    pub fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(4096);
        Self {
            input: BytesMut::new(),
            output: BytesMut::new(),
            preface_seen: false,
            passthrough: false,
            request_seen: false,
            copying: 0,
            pending: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
        }
    }

    /// Takes bytes from the client.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), RepairError> {
        if self.passthrough {
            self.output.extend_from_slice(data);
            return Ok(());
        }
        self.input.extend_from_slice(data);
        if !self.preface_seen {
            let n = self.input.len().min(PREFACE.len());
            if self.input[..n] != PREFACE[..n] {
                self.passthrough = true;
                let all = self.input.split();
                self.output.extend_from_slice(&all);
                return Ok(());
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.output.extend_from_slice(&self.input.split_to(PREFACE.len()));
            self.preface_seen = true;
        }
        self.process_frames()
    }

    /// Whether the client has sent its first complete request header block
    /// (or turned out not to speak HTTP/2, which the server rejects at once).
    pub fn request_seen(&self) -> bool {
        self.request_seen || self.passthrough
    }

    /// Bytes ready for the server.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    fn process_frames(&mut self) -> Result<(), RepairError> {
        loop {
            if self.copying > 0 {
                let n = self.copying.min(self.input.len());
                self.output.extend_from_slice(&self.input.split_to(n));
                self.copying -= n;
                if self.copying > 0 {
                    return Ok(());
                }
            }
            if self.input.len() < FRAME_HEADER {
                return Ok(());
            }
            let len =
                (usize::from(self.input[0]) << 16) | (usize::from(self.input[1]) << 8) | usize::from(self.input[2]);
            let kind = self.input[3];
            let flags = self.input[4];
            let stream_id =
                u32::from_be_bytes([self.input[5], self.input[6], self.input[7], self.input[8]]) & 0x7fff_ffff;
            let is_header_frame = kind == TYPE_HEADERS || kind == TYPE_CONTINUATION;
            if self.pending.is_some() && kind != TYPE_CONTINUATION {
                return Err(RepairError::Framing("a header block was interrupted by another frame"));
            }
            if !is_header_frame {
                // Copied through as it arrives, without waiting for the whole frame.
                self.copying = FRAME_HEADER + len;
                continue;
            }
            if len > MAX_HEADER_BLOCK {
                return Err(RepairError::TooLarge);
            }
            if self.input.len() < FRAME_HEADER + len {
                return Ok(());
            }
            self.input.advance(FRAME_HEADER);
            let payload = self.input.split_to(len);
            if kind == TYPE_HEADERS {
                self.headers(flags, stream_id, &payload)?;
            } else {
                self.continuation(flags, stream_id, &payload)?;
            }
        }
    }

    fn headers(&mut self, flags: u8, stream_id: u32, payload: &[u8]) -> Result<(), RepairError> {
        let mut body = payload;
        let mut padding = 0;
        if flags & FLAG_PADDED != 0 {
            let (&pad, rest) = body
                .split_first()
                .ok_or(RepairError::Framing("padded HEADERS without a pad length"))?;
            padding = usize::from(pad);
            body = rest;
        }
        let priority = if flags & FLAG_PRIORITY != 0 {
            let (bytes, rest) = body
                .split_first_chunk::<5>()
                .ok_or(RepairError::Framing("HEADERS too short for its priority"))?;
            body = rest;
            Some(*bytes)
        } else {
            None
        };
        let fragment = body
            .get(
                ..body
                    .len()
                    .checked_sub(padding)
                    .ok_or(RepairError::Framing("HEADERS padding exceeds the frame"))?,
            )
            .unwrap_or_default();
        let block = PendingBlock {
            stream_id,
            end_stream: flags & FLAG_END_STREAM != 0,
            priority,
            fragment: fragment.to_vec(),
        };
        if flags & FLAG_END_HEADERS != 0 {
            self.emit(block)
        } else {
            self.pending = Some(block);
            Ok(())
        }
    }

    fn continuation(&mut self, flags: u8, stream_id: u32, payload: &[u8]) -> Result<(), RepairError> {
        let Some(block) = self.pending.as_mut() else {
            return Err(RepairError::Framing("CONTINUATION without a header block"));
        };
        if block.stream_id != stream_id {
            return Err(RepairError::Framing("CONTINUATION on another stream"));
        }
        if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
            return Err(RepairError::TooLarge);
        }
        block.fragment.extend_from_slice(payload);
        if flags & FLAG_END_HEADERS != 0 {
            let block = self.pending.take().expect("checked above");
            self.emit(block)?;
        }
        Ok(())
    }

    /// Decodes, repairs, re-encodes and writes one complete header block.
    fn emit(&mut self, block: PendingBlock) -> Result<(), RepairError> {
        self.request_seen = true;
        let mut headers = self.decoder.decode(&block.fragment).map_err(RepairError::Hpack)?;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
                tracing::debug!(
                    authority = %crate::proto::escaped(&String::from_utf8_lossy(value)),
                    "replacing an invalid :authority (a Unix socket path) with localhost"
                );
                *value = REPLACEMENT_AUTHORITY.to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(name, value)| (name.as_slice(), value.as_slice())));
        let mut rest = encoded.as_slice();
        let mut first = true;
        loop {
            let room = if first && block.priority.is_some() {
                MAX_FRAME - 5
            } else {
                MAX_FRAME
            };
            let (chunk, tail) = rest.split_at(rest.len().min(room));
            rest = tail;
            let mut flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            let kind = if first { TYPE_HEADERS } else { TYPE_CONTINUATION };
            let mut len = chunk.len();
            if first {
                if block.end_stream {
                    flags |= FLAG_END_STREAM;
                }
                if block.priority.is_some() {
                    flags |= FLAG_PRIORITY;
                    len += 5;
                }
            }
            self.output.put_uint(len as u64, 3);
            self.output.put_u8(kind);
            self.output.put_u8(flags);
            self.output.put_u32(block.stream_id);
            if let (true, Some(priority)) = (first, block.priority) {
                self.output.put_slice(&priority);
            }
            self.output.put_slice(chunk);
            first = false;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }
}

/// A client connection whose header blocks pass through a [`Rewriter`].
pub struct AuthorityRepair<IO> {
    io: IO,
    rewriter: Rewriter,
    scratch: Box<[u8]>,
    /// Until the client's first request header block has arrived: when it must have.
    request_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> AuthorityRepair<IO> {
    /// Wraps a client connection.
    pub fn new(io: IO) -> Self {
        Self {
            io,
            rewriter: Rewriter::new(),
            scratch: vec![0; 32 * 1024].into_boxed_slice(),
            request_deadline: None,
        }
    }

    /// Fails reads with `TimedOut` (closing the connection) unless the
    /// client's connection preface and its first complete request header
    /// block (HEADERS and any CONTINUATIONs) arrive within `limit`: a client
    /// that connects and stays silent, stops after the preface or SETTINGS,
    /// or dribbles either, does not hold a connection slot for longer. Must
    /// be called within a tokio runtime.
    pub fn with_request_timeout(mut self, limit: std::time::Duration) -> Self {
        self.request_deadline = Some(Box::pin(tokio::time::sleep(limit)));
        self
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityRepair<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rewriter.request_seen() {
            this.request_deadline = None;
        } else if let Some(deadline) = &mut this.request_deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete HTTP/2 request header block in time",
            )));
        }
        loop {
            let output = this.rewriter.output();
            if !output.is_empty() {
                let n = output.len().min(buf.remaining());
                buf.put_slice(&output.split_to(n));
                return Poll::Ready(Ok(()));
            }
            let mut scratch = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut scratch))?;
            if scratch.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.rewriter
                .feed(scratch.filled())
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Parses the rewriter's output back into (type, flags, stream, payload) frames.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    fn request(authority: &[u8]) -> Vec<u8> {
        loona_hpack::Encoder::new().encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/ProxyService/Proxy"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
        ])
    }

    fn decoded_authority(block: &[u8]) -> Vec<u8> {
        loona_hpack::Decoder::new()
            .decode(block)
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == b":authority")
            .unwrap()
            .1
    }

    #[test]
    fn socket_path_authority_becomes_localhost_and_data_passes_unchanged() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &request(b"%2Ftmp%2Fgrpc.sock"),
        ));
        let data = frame(0x0, FLAG_END_STREAM, 1, b"payload bytes");
        input.extend(&data);
        let mut rewriter = Rewriter::new();
        // Byte by byte: frame boundaries never line up with reads.
        for byte in &input {
            rewriter.feed(std::slice::from_ref(byte)).unwrap();
        }
        let out = rewriter.output().split().to_vec();
        assert!(out.starts_with(PREFACE));
        let frames = frames(&out[PREFACE.len()..]);
        assert_eq!(frames.len(), 3);
        assert_eq!(
            (frames[1].0, frames[1].1, frames[1].2),
            (TYPE_HEADERS, FLAG_END_HEADERS, 1)
        );
        assert_eq!(decoded_authority(&frames[1].3), b"localhost");
        assert_eq!(frames[2], (0x0, FLAG_END_STREAM, 1, b"payload bytes".to_vec()));
    }

    #[test]
    fn valid_authorities_are_kept_and_continuations_padding_and_priority_are_handled() {
        let block = request(b"connector.example:8131");
        let (a, b) = block.split_at(7);
        let mut headers_payload = vec![3]; // pad length
        headers_payload.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        headers_payload.extend_from_slice(a);
        headers_payload.extend_from_slice(&[0, 0, 0]); // padding
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            3,
            &headers_payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, b));
        let mut rewriter = Rewriter::new();
        rewriter.feed(&input).unwrap();
        let out = rewriter.output().split().to_vec();
        let frames = frames(&out[PREFACE.len()..]);
        assert_eq!(frames.len(), 1);
        let (kind, flags, stream, payload) = &frames[0];
        assert_eq!(
            (*kind, *flags, *stream),
            (TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM | FLAG_PRIORITY, 3)
        );
        assert_eq!(&payload[..5], &[0, 0, 0, 0, 16]);
        assert_eq!(decoded_authority(&payload[5..]), b"connector.example:8131");
    }

    #[test]
    fn non_http2_bytes_pass_through_and_bad_blocks_are_errors() {
        let mut rewriter = Rewriter::new();
        rewriter.feed(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(&rewriter.output()[..], b"GET / HTTP/1.1\r\n\r\n");

        let mut rewriter = Rewriter::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        assert!(rewriter.feed(&input).is_err());

        let mut rewriter = Rewriter::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b"x"));
        assert!(matches!(rewriter.feed(&input), Err(RepairError::Framing(_))));

        let mut rewriter = Rewriter::new();
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0xff, 0xff, 0xff, TYPE_HEADERS, 0, 0, 0, 0, 1]);
        assert!(matches!(rewriter.feed(&input), Err(RepairError::TooLarge)));
    }

    #[test]
    fn the_first_request_counts_once_its_header_block_is_complete() {
        let block = request(b"localhost");
        let (a, b) = block.split_at(5);
        let mut rewriter = Rewriter::new();
        rewriter.feed(PREFACE).unwrap();
        rewriter.feed(&frame(0x4, 0, 0, &[])).unwrap();
        assert!(!rewriter.request_seen(), "preface and SETTINGS are not a request");
        rewriter.feed(&frame(TYPE_HEADERS, 0, 1, a)).unwrap();
        assert!(
            !rewriter.request_seen(),
            "a header block without END_HEADERS is not complete"
        );
        rewriter
            .feed(&frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b))
            .unwrap();
        assert!(rewriter.request_seen());

        let mut rewriter = Rewriter::new();
        rewriter.feed(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(
            rewriter.request_seen(),
            "not HTTP/2: the server rejects it, nothing to wait for"
        );
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let big = vec![b'v'; 40_000];
        let block = loona_hpack::Encoder::new().encode([(&b":authority"[..], &b"/x"[..]), (b"x-big", &big[..])]);
        let mut input = PREFACE.to_vec();
        let (a, b) = block.split_at(16_000);
        input.extend(frame(TYPE_HEADERS, 0, 5, a));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, b));
        let mut rewriter = Rewriter::new();
        rewriter.feed(&input).unwrap();
        let out = rewriter.output().split().to_vec();
        let frames = frames(&out[PREFACE.len()..]);
        assert!(frames.len() >= 3);
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(frames[0].0, TYPE_HEADERS);
        assert!(frames[1..].iter().all(|f| f.0 == TYPE_CONTINUATION));
        assert_eq!(frames.last().unwrap().1, FLAG_END_HEADERS);
        let block: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
        let headers = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert_eq!(headers[0], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(headers[1].1, big);
    }
}
