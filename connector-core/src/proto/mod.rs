//! The connector wire protocol as plain data and a codec: no sockets, no
//! async runtime. `docs/protocol.md` specifies every byte; this module is the
//! reference implementation of that document.
//!
//! Every message is one frame: a 5-byte header (type `u8`, payload length
//! `u32` big-endian) followed by the payload. Payloads larger than
//! [`MAX_FRAME_PAYLOAD`] are refused from the header alone, before anything is
//! allocated.
//!
//! ```
//! use connector_core::proto::{Frame, Dial, decode};
//! let dial = Frame::Dial(Dial { request_id: 7, host: "10.0.0.5".into(), port: 10250, timeout_ms: 5000 });
//! let bytes = dial.encode().unwrap();
//! let (decoded, used) = decode(&bytes).unwrap().unwrap();
//! assert_eq!((decoded, used), (dial, bytes.len()));
//! ```

mod codes;
mod message;
mod text;
mod wire;

pub use codes::{ConnectionCode, DialCode, RejectCode, StreamCode};
pub use message::{
    Credential, Dial, DialResult, GoAway, Hello, MAX_CONNECTED_SERVERS, MAX_ID_LEN, MAX_IDENTIFIERS, MAX_TEXT_LEN,
    Reject, Secret, Welcome, clip_text,
};
pub use text::{Escaped, escaped, is_printable};

use wire::{Reader, Writer};

/// Major protocol version spoken by this build. Peers with another major
/// version are rejected with [`RejectCode::UnsupportedVersion`].
pub const PROTOCOL_MAJOR: u16 = 1;
/// Minor protocol version: minor versions only append fields to payloads,
/// which older decoders skip.
pub const PROTOCOL_MINOR: u16 = 1;
/// QUIC/TLS application protocol (ALPN) identifier.
pub const ALPN: &[u8] = b"connector/1";
/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 5;
/// Hard cap on a frame payload (64 KiB). A header announcing more is a
/// protocol error; decoding never allocates more than this per frame.
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;

/// Frame type octets.
mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const REJECT: u8 = 0x03;
    pub const GO_AWAY: u8 = 0x04;
    pub const DIAL: u8 = 0x10;
    pub const DIAL_RESULT: u8 = 0x11;
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Agent → server, first frame of the control stream.
    Hello(Hello),
    /// Server → agent: the agent is registered.
    Welcome(Welcome),
    /// Server → agent: the agent is refused; the connection closes.
    Reject(Reject),
    /// Either side, on the control stream after `Welcome` (since 1.1): no new
    /// tunnelled connections over this connection; it closes after a grace.
    GoAway(GoAway),
    /// Server → agent, first frame of a data stream: open a TCP connection.
    Dial(Dial),
    /// Agent → server: the outcome of a [`Dial`]; raw bytes follow when it succeeded.
    DialResult(DialResult),
}

/// Why bytes could not be decoded as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header names a frame type this version does not know.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// The header announces a payload above the hard cap.
    #[error("frame payload of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Announced payload length.
        len: u64,
        /// The cap in force.
        max: usize,
    },
    /// The payload ended in the middle of a field.
    #[error("frame truncated while reading {field}")]
    Truncated {
        /// Field being read.
        field: &'static str,
    },
    /// A text field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Field being read.
        field: &'static str,
    },
    /// A field holds a value outside its domain.
    #[error("invalid {field}: {reason}")]
    InvalidValue {
        /// Field being read.
        field: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// A `Hello` from a peer speaking another major version.
    #[error("unsupported protocol version {major}.{minor} (this build speaks {PROTOCOL_MAJOR}.x)")]
    UnsupportedVersion {
        /// Peer's major version.
        major: u16,
        /// Peer's minor version.
        minor: u16,
    },
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or list is longer than its length prefix can describe.
    #[error("{field} is too long ({len} > {max})")]
    FieldTooLong {
        /// Field being written.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The whole payload would exceed [`MAX_FRAME_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the {MAX_FRAME_PAYLOAD}-byte limit")]
    FrameTooLarge(usize),
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    kind: u8,
    /// Payload length in bytes, already checked against the cap.
    pub len: usize,
}

impl FrameHeader {
    /// Parses and validates a header: known type, length within `max_payload`
    /// (itself clamped to [`MAX_FRAME_PAYLOAD`]).
    pub fn parse(bytes: [u8; HEADER_LEN], max_payload: usize) -> Result<Self, DecodeError> {
        let kind = bytes[0];
        if !matches!(
            kind,
            kind::HELLO | kind::WELCOME | kind::REJECT | kind::GO_AWAY | kind::DIAL | kind::DIAL_RESULT
        ) {
            return Err(DecodeError::UnknownFrameType(kind));
        }
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let max = max_payload.min(MAX_FRAME_PAYLOAD);
        if len > max {
            return Err(DecodeError::FrameTooLarge { len: len as u64, max });
        }
        Ok(Self { kind, len })
    }

    /// Decodes the payload that followed this header.
    pub fn decode_payload(&self, payload: &[u8]) -> Result<Frame, DecodeError> {
        let mut r = Reader::new(payload);
        Ok(match self.kind {
            kind::HELLO => Frame::Hello(Hello::decode(&mut r)?),
            kind::WELCOME => Frame::Welcome(Welcome::decode(&mut r)?),
            kind::REJECT => Frame::Reject(Reject::decode(&mut r)?),
            kind::GO_AWAY => Frame::GoAway(GoAway::decode(&mut r)?),
            kind::DIAL => Frame::Dial(Dial::decode(&mut r)?),
            kind::DIAL_RESULT => Frame::DialResult(DialResult::decode(&mut r)?),
            other => return Err(DecodeError::UnknownFrameType(other)),
        })
    }
}

impl Frame {
    /// Encodes the frame, header included.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer {
            buf: vec![0; HEADER_LEN],
        };
        let kind = match self {
            Frame::Hello(m) => {
                m.encode(&mut w)?;
                kind::HELLO
            }
            Frame::Welcome(m) => {
                m.encode(&mut w)?;
                kind::WELCOME
            }
            Frame::Reject(m) => {
                m.encode(&mut w)?;
                kind::REJECT
            }
            Frame::GoAway(m) => {
                m.encode(&mut w)?;
                kind::GO_AWAY
            }
            Frame::Dial(m) => {
                m.encode(&mut w)?;
                kind::DIAL
            }
            Frame::DialResult(m) => {
                m.encode(&mut w)?;
                kind::DIAL_RESULT
            }
        };
        let len = w.buf.len() - HEADER_LEN;
        if len > MAX_FRAME_PAYLOAD {
            return Err(EncodeError::FrameTooLarge(len));
        }
        w.buf[0] = kind;
        w.buf[1..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(w.buf)
    }

    /// Short name of the frame type, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Welcome(_) => "Welcome",
            Frame::Reject(_) => "Reject",
            Frame::GoAway(_) => "GoAway",
            Frame::Dial(_) => "Dial",
            Frame::DialResult(_) => "DialResult",
        }
    }
}

/// Decodes one frame from the start of `buf`. Returns `Ok(None)` when more
/// bytes are needed, or the frame and the number of bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = FrameHeader::parse(*header, MAX_FRAME_PAYLOAD)?;
    let end = HEADER_LEN + header.len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((header.decode_payload(&buf[HEADER_LEN..end])?, end)))
}

#[cfg(test)]
mod tests;
