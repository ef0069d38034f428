//! QMux wire format (draft-ietf-quic-qmux-01): QUIC variable-length integers,
//! QMux records (`Size (i), Frames (..)`) and the subset of QUIC version 1
//! frames this transport uses, plus QX_TRANSPORT_PARAMETERS and QX_PING.
//!
//! Decoding works on a record already bounded by the receiver's
//! `max_record_size`; frames borrow their payloads from it (no copy, no
//! allocation beyond the record).

use bytes::{Buf, BufMut, Bytes};

/// The largest value a QUIC variable-length integer holds (2^62 - 1).
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// QX_TRANSPORT_PARAMETERS frame type (`ff 51 53 30 0d 0a 0d 0a` on the wire).
pub const QX_TRANSPORT_PARAMETERS: u64 = 0x3f51_5330_0d0a_0d0a;
/// QX_PING frame type: a request for a response.
pub const QX_PING_REQUEST: u64 = 0x348c_6752_9ef8_c7bd;
/// QX_PING frame type: the response.
pub const QX_PING_RESPONSE: u64 = 0x348c_6752_9ef8_c7be;
/// The draft's initial (and minimum) value of `max_record_size`.
pub const DEFAULT_MAX_RECORD_SIZE: u64 = 16_382;
/// Longest CONNECTION_CLOSE reason this implementation sends.
pub const MAX_REASON_LEN: usize = 1024;

/// QUIC transport error codes used when closing on a protocol violation.
pub mod error_code {
    /// No error (RFC 9000; this implementation closes cleanly with an application code instead).
    #[allow(dead_code)]
    pub const NO_ERROR: u64 = 0x0;
    /// Flow-control limit exceeded.
    pub const FLOW_CONTROL_ERROR: u64 = 0x3;
    /// Too many streams opened.
    pub const STREAM_LIMIT_ERROR: u64 = 0x4;
    /// Frame for a stream in the wrong state.
    pub const STREAM_STATE_ERROR: u64 = 0x5;
    /// Final size changed or exceeded.
    pub const FINAL_SIZE_ERROR: u64 = 0x6;
    /// Malformed or prohibited frame.
    pub const FRAME_ENCODING_ERROR: u64 = 0x7;
    /// Bad or missing transport parameters.
    pub const TRANSPORT_PARAMETER_ERROR: u64 = 0x8;
    /// Other protocol violation.
    pub const PROTOCOL_VIOLATION: u64 = 0xa;
}

/// A malformed record or frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed QMux frame: {0}")]
pub struct FrameError(pub &'static str);

/// Reads a variable-length integer.
pub fn get_varint(buf: &mut impl Buf) -> Result<u64, FrameError> {
    if !buf.has_remaining() {
        return Err(FrameError("truncated integer"));
    }
    let first = buf.chunk()[0];
    let len = 1usize << (first >> 6);
    if buf.remaining() < len {
        return Err(FrameError("truncated integer"));
    }
    let mut value = u64::from(buf.get_u8() & 0x3f);
    for _ in 1..len {
        value = (value << 8) | u64::from(buf.get_u8());
    }
    Ok(value)
}

/// Length of `v`'s encoding.
pub fn varint_len(v: u64) -> usize {
    match v {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Writes a variable-length integer. Values above [`VARINT_MAX`] are a bug in the caller.
pub fn put_varint(buf: &mut impl BufMut, v: u64) {
    debug_assert!(v <= VARINT_MAX, "varint out of range");
    match varint_len(v) {
        1 => buf.put_u8(v as u8),
        2 => buf.put_u16(0x4000 | v as u16),
        4 => buf.put_u32(0x8000_0000 | v as u32),
        _ => buf.put_u64(0xc000_0000_0000_0000 | (v & VARINT_MAX)),
    }
}

/// Transport parameters exchanged in QX_TRANSPORT_PARAMETERS (the subset the draft permits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportParams {
    /// `max_idle_timeout` in milliseconds (0: none).
    pub max_idle_timeout_ms: u64,
    /// `initial_max_data`.
    pub initial_max_data: u64,
    /// `initial_max_stream_data_bidi_local`.
    pub initial_max_stream_data_bidi_local: u64,
    /// `initial_max_stream_data_bidi_remote`.
    pub initial_max_stream_data_bidi_remote: u64,
    /// `initial_max_streams_bidi`.
    pub initial_max_streams_bidi: u64,
    /// `max_record_size`.
    pub max_record_size: u64,
}

impl Default for TransportParams {
    /// The values QUIC and QMux assume for absent parameters.
    fn default() -> Self {
        Self {
            max_idle_timeout_ms: 0,
            initial_max_data: 0,
            initial_max_stream_data_bidi_local: 0,
            initial_max_stream_data_bidi_remote: 0,
            initial_max_streams_bidi: 0,
            max_record_size: DEFAULT_MAX_RECORD_SIZE,
        }
    }
}

mod param_id {
    pub const MAX_IDLE_TIMEOUT: u64 = 0x01;
    pub const INITIAL_MAX_DATA: u64 = 0x04;
    pub const BIDI_LOCAL: u64 = 0x05;
    pub const BIDI_REMOTE: u64 = 0x06;
    pub const UNI: u64 = 0x07;
    pub const STREAMS_BIDI: u64 = 0x08;
    pub const STREAMS_UNI: u64 = 0x09;
    pub const MAX_RECORD_SIZE: u64 = 0x0571_c594_29cd_0845;
}

impl TransportParams {
    fn encode(&self, buf: &mut impl BufMut) {
        let mut put = |id: u64, v: u64| {
            put_varint(buf, id);
            put_varint(buf, varint_len(v) as u64);
            put_varint(buf, v);
        };
        put(param_id::MAX_IDLE_TIMEOUT, self.max_idle_timeout_ms);
        put(param_id::INITIAL_MAX_DATA, self.initial_max_data);
        put(param_id::BIDI_LOCAL, self.initial_max_stream_data_bidi_local);
        put(param_id::BIDI_REMOTE, self.initial_max_stream_data_bidi_remote);
        put(param_id::STREAMS_BIDI, self.initial_max_streams_bidi);
        put(param_id::MAX_RECORD_SIZE, self.max_record_size);
    }

    fn encoded_len(&self) -> usize {
        let mut counter = bytes::BytesMut::new();
        self.encode(&mut counter);
        counter.len()
    }

    fn decode(mut buf: Bytes) -> Result<Self, FrameError> {
        let mut p = TransportParams::default();
        while buf.has_remaining() {
            let id = get_varint(&mut buf)?;
            let len = get_varint(&mut buf)?;
            if len > buf.remaining() as u64 {
                return Err(FrameError("truncated transport parameter"));
            }
            let mut value = buf.split_to(len as usize);
            let mut int = || -> Result<u64, FrameError> {
                let v = get_varint(&mut value)?;
                if value.has_remaining() {
                    return Err(FrameError("transport parameter longer than its integer"));
                }
                Ok(v)
            };
            match id {
                param_id::MAX_IDLE_TIMEOUT => p.max_idle_timeout_ms = int()?,
                param_id::INITIAL_MAX_DATA => p.initial_max_data = int()?,
                param_id::BIDI_LOCAL => p.initial_max_stream_data_bidi_local = int()?,
                param_id::BIDI_REMOTE => p.initial_max_stream_data_bidi_remote = int()?,
                param_id::STREAMS_BIDI => p.initial_max_streams_bidi = int()?,
                param_id::UNI | param_id::STREAMS_UNI => {
                    int()?;
                }
                param_id::MAX_RECORD_SIZE => {
                    p.max_record_size = int()?;
                    if p.max_record_size < DEFAULT_MAX_RECORD_SIZE {
                        return Err(FrameError("max_record_size below the initial value"));
                    }
                }
                // Every other QUIC v1 parameter is prohibited in QMux.
                0x00..=0x10 => return Err(FrameError("transport parameter prohibited in QMux")),
                _ => {} // extensions not known to us are ignored
            }
        }
        Ok(p)
    }
}

/// One frame of the subset we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// RESET_STREAM (0x04).
    ResetStream {
        /// Stream.
        id: u64,
        /// Application error code.
        code: u64,
        /// Bytes sent on the stream before the reset.
        final_size: u64,
    },
    /// STOP_SENDING (0x05).
    StopSending {
        /// Stream.
        id: u64,
        /// Application error code.
        code: u64,
    },
    /// STREAM (0x08..=0x0f).
    Stream {
        /// Stream.
        id: u64,
        /// Offset of `data` in the stream.
        offset: u64,
        /// Payload.
        data: Bytes,
        /// End of stream after `data`.
        fin: bool,
    },
    /// MAX_DATA (0x10).
    MaxData(u64),
    /// MAX_STREAM_DATA (0x11).
    MaxStreamData {
        /// Stream.
        id: u64,
        /// New limit.
        max: u64,
    },
    /// MAX_STREAMS (0x12 bidirectional, 0x13 unidirectional).
    MaxStreams {
        /// Bidirectional.
        bidi: bool,
        /// New cumulative limit.
        max: u64,
    },
    /// DATA_BLOCKED (0x14).
    DataBlocked(u64),
    /// STREAM_DATA_BLOCKED (0x15).
    StreamDataBlocked {
        /// Stream.
        id: u64,
        /// The limit it is blocked at.
        max: u64,
    },
    /// STREAMS_BLOCKED (0x16 bidirectional, 0x17 unidirectional).
    StreamsBlocked {
        /// Bidirectional.
        bidi: bool,
        /// The limit it is blocked at.
        max: u64,
    },
    /// CONNECTION_CLOSE (0x1c transport error, 0x1d application).
    ConnectionClose {
        /// `true` for 0x1d (application close).
        application: bool,
        /// Error code.
        code: u64,
        /// Frame type that caused a transport error (0 for application closes).
        frame_type: u64,
        /// Reason phrase.
        reason: Bytes,
    },
    /// QX_TRANSPORT_PARAMETERS.
    TransportParameters(TransportParams),
    /// QX_PING request (`response: false`) or response.
    Ping {
        /// Sequence number.
        seq: u64,
        /// A response to the peer's request.
        response: bool,
    },
}

impl Frame {
    /// The frame type this frame is sent as (for STREAM, with explicit offset
    /// and length, the FIN bit as `fin` says).
    fn frame_type(&self) -> u64 {
        match self {
            Frame::ResetStream { .. } => 0x04,
            Frame::StopSending { .. } => 0x05,
            // Always with explicit offset and length, so frames can follow it.
            Frame::Stream { fin, .. } => 0x08 | 0x04 | 0x02 | u64::from(*fin),
            Frame::MaxData(_) => 0x10,
            Frame::MaxStreamData { .. } => 0x11,
            Frame::MaxStreams { bidi: true, .. } => 0x12,
            Frame::MaxStreams { bidi: false, .. } => 0x13,
            Frame::DataBlocked(_) => 0x14,
            Frame::StreamDataBlocked { .. } => 0x15,
            Frame::StreamsBlocked { bidi: true, .. } => 0x16,
            Frame::StreamsBlocked { bidi: false, .. } => 0x17,
            Frame::ConnectionClose { application: false, .. } => 0x1c,
            Frame::ConnectionClose { application: true, .. } => 0x1d,
            Frame::TransportParameters(_) => QX_TRANSPORT_PARAMETERS,
            Frame::Ping { response: false, .. } => QX_PING_REQUEST,
            Frame::Ping { response: true, .. } => QX_PING_RESPONSE,
        }
    }

    /// Appends this frame's encoding.
    pub fn encode(&self, buf: &mut impl BufMut) {
        put_varint(buf, self.frame_type());
        match self {
            Frame::ResetStream { id, code, final_size } => {
                put_varint(buf, *id);
                put_varint(buf, *code);
                put_varint(buf, *final_size);
            }
            Frame::StopSending { id, code } => {
                put_varint(buf, *id);
                put_varint(buf, *code);
            }
            Frame::Stream { id, offset, data, .. } => {
                put_varint(buf, *id);
                put_varint(buf, *offset);
                put_varint(buf, data.len() as u64);
                buf.put_slice(data);
            }
            Frame::MaxData(max) | Frame::DataBlocked(max) => put_varint(buf, *max),
            Frame::MaxStreamData { id, max } | Frame::StreamDataBlocked { id, max } => {
                put_varint(buf, *id);
                put_varint(buf, *max);
            }
            Frame::MaxStreams { max, .. } | Frame::StreamsBlocked { max, .. } => put_varint(buf, *max),
            Frame::ConnectionClose {
                application,
                code,
                frame_type,
                reason,
            } => {
                put_varint(buf, *code);
                if !application {
                    put_varint(buf, *frame_type);
                }
                put_varint(buf, reason.len() as u64);
                buf.put_slice(reason);
            }
            Frame::TransportParameters(params) => {
                put_varint(buf, params.encoded_len() as u64);
                params.encode(buf);
            }
            Frame::Ping { seq, .. } => put_varint(buf, *seq),
        }
    }

    /// Length of [`Frame::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let v = varint_len;
        let payload = match self {
            Frame::ResetStream { id, code, final_size } => v(*id) + v(*code) + v(*final_size),
            Frame::StopSending { id, code } => v(*id) + v(*code),
            Frame::Stream { id, offset, data, .. } => v(*id) + v(*offset) + v(data.len() as u64) + data.len(),
            Frame::MaxData(m) | Frame::DataBlocked(m) => v(*m),
            Frame::MaxStreamData { id, max } | Frame::StreamDataBlocked { id, max } => v(*id) + v(*max),
            Frame::MaxStreams { max, .. } | Frame::StreamsBlocked { max, .. } => v(*max),
            Frame::ConnectionClose {
                application,
                code,
                frame_type,
                reason,
            } => {
                let ft = if *application { 0 } else { v(*frame_type) };
                v(*code) + ft + v(reason.len() as u64) + reason.len()
            }
            Frame::TransportParameters(p) => {
                let len = p.encoded_len();
                v(len as u64) + len
            }
            Frame::Ping { seq, .. } => v(*seq),
        };
        v(self.frame_type()) + payload
    }

    /// Decodes the next frame of a record, skipping PADDING. `Ok(None)` at
    /// the end of the record. Prohibited and unknown frame types are errors.
    pub fn decode(buf: &mut Bytes) -> Result<Option<Frame>, FrameError> {
        while buf.first() == Some(&0) {
            buf.advance(1);
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let ty = get_varint(buf)?;
        let frame = match ty {
            0x04 => Frame::ResetStream {
                id: get_varint(buf)?,
                code: get_varint(buf)?,
                final_size: get_varint(buf)?,
            },
            0x05 => Frame::StopSending {
                id: get_varint(buf)?,
                code: get_varint(buf)?,
            },
            0x08..=0x0f => {
                let id = get_varint(buf)?;
                let offset = if ty & 0x04 != 0 { get_varint(buf)? } else { 0 };
                let len = if ty & 0x02 != 0 {
                    get_varint(buf)?
                } else {
                    buf.len() as u64
                };
                if len > buf.len() as u64 {
                    return Err(FrameError("STREAM frame longer than its record"));
                }
                if offset.saturating_add(len) > VARINT_MAX {
                    return Err(FrameError("STREAM frame beyond the largest offset"));
                }
                Frame::Stream {
                    id,
                    offset,
                    data: buf.split_to(len as usize),
                    fin: ty & 0x01 != 0,
                }
            }
            0x10 => Frame::MaxData(get_varint(buf)?),
            0x11 => Frame::MaxStreamData {
                id: get_varint(buf)?,
                max: get_varint(buf)?,
            },
            0x12 | 0x13 => Frame::MaxStreams {
                bidi: ty == 0x12,
                max: get_varint(buf)?,
            },
            0x14 => Frame::DataBlocked(get_varint(buf)?),
            0x15 => Frame::StreamDataBlocked {
                id: get_varint(buf)?,
                max: get_varint(buf)?,
            },
            0x16 | 0x17 => Frame::StreamsBlocked {
                bidi: ty == 0x16,
                max: get_varint(buf)?,
            },
            0x1c | 0x1d => {
                let application = ty == 0x1d;
                let code = get_varint(buf)?;
                let frame_type = if application { 0 } else { get_varint(buf)? };
                let len = get_varint(buf)?;
                if len > buf.len() as u64 {
                    return Err(FrameError("CONNECTION_CLOSE reason longer than its record"));
                }
                Frame::ConnectionClose {
                    application,
                    code,
                    frame_type,
                    reason: buf.split_to(len as usize),
                }
            }
            QX_TRANSPORT_PARAMETERS => {
                let len = get_varint(buf)?;
                if len > buf.len() as u64 {
                    return Err(FrameError("transport parameters longer than their record"));
                }
                Frame::TransportParameters(TransportParams::decode(buf.split_to(len as usize))?)
            }
            QX_PING_REQUEST | QX_PING_RESPONSE => Frame::Ping {
                seq: get_varint(buf)?,
                response: ty == QX_PING_RESPONSE,
            },
            _ => return Err(FrameError("prohibited or unknown frame type")),
        };
        Ok(Some(frame))
    }
}

/// Appends a record holding `frames` (already encoded) to `out`.
pub fn put_record(out: &mut impl BufMut, frames: &[u8]) {
    put_varint(out, frames.len() as u64);
    out.put_slice(frames);
}

/// Splits the next complete record off `buf`: `Ok(None)` when more bytes are
/// needed, an error when the announced size exceeds `max_record_size`.
pub fn take_record(buf: &mut bytes::BytesMut, max_record_size: u64) -> Result<Option<Bytes>, FrameError> {
    let mut peek = &buf[..];
    let size = match get_varint(&mut peek) {
        Ok(size) => size,
        Err(_) => return Ok(None),
    };
    if size > max_record_size {
        return Err(FrameError("record larger than max_record_size"));
    }
    let header = buf.len() - peek.len();
    if peek.len() < size as usize {
        return Ok(None);
    }
    buf.advance(header);
    Ok(Some(buf.split_to(size as usize).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn varint() -> impl Strategy<Value = u64> {
        prop_oneof![0..64u64, 0..16_384u64, 0..(1u64 << 30), 0..=VARINT_MAX]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (varint(), varint(), varint()).prop_map(|(id, code, final_size)| Frame::ResetStream {
                id,
                code,
                final_size
            }),
            (varint(), varint()).prop_map(|(id, code)| Frame::StopSending { id, code }),
            (
                varint(),
                0..(1u64 << 40),
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<bool>()
            )
                .prop_map(|(id, offset, data, fin)| Frame::Stream {
                    id,
                    offset,
                    data: data.into(),
                    fin
                }),
            varint().prop_map(Frame::MaxData),
            (varint(), varint()).prop_map(|(id, max)| Frame::MaxStreamData { id, max }),
            (any::<bool>(), varint()).prop_map(|(bidi, max)| Frame::MaxStreams { bidi, max }),
            varint().prop_map(Frame::DataBlocked),
            (varint(), varint()).prop_map(|(id, max)| Frame::StreamDataBlocked { id, max }),
            (any::<bool>(), varint()).prop_map(|(bidi, max)| Frame::StreamsBlocked { bidi, max }),
            (
                any::<bool>(),
                varint(),
                varint(),
                proptest::collection::vec(any::<u8>(), 0..32)
            )
                .prop_map(|(application, code, ft, reason)| Frame::ConnectionClose {
                    application,
                    code,
                    frame_type: if application { 0 } else { ft },
                    reason: reason.into()
                }),
            (
                varint(),
                varint(),
                varint(),
                varint(),
                varint(),
                DEFAULT_MAX_RECORD_SIZE..=VARINT_MAX
            )
                .prop_map(|(a, b, c, d, e, f)| Frame::TransportParameters(TransportParams {
                    max_idle_timeout_ms: a,
                    initial_max_data: b,
                    initial_max_stream_data_bidi_local: c,
                    initial_max_stream_data_bidi_remote: d,
                    initial_max_streams_bidi: e,
                    max_record_size: f,
                })),
            (varint(), any::<bool>()).prop_map(|(seq, response)| Frame::Ping { seq, response }),
        ]
    }

    proptest! {
        #[test]
        fn varints_round_trip(v in varint()) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            prop_assert_eq!(buf.len(), varint_len(v));
            prop_assert_eq!(get_varint(&mut &buf[..]).unwrap(), v);
        }

        #[test]
        fn records_of_frames_round_trip(frames in proptest::collection::vec(frame(), 1..8)) {
            let mut payload = Vec::new();
            for f in &frames {
                let before = payload.len();
                f.encode(&mut payload);
                prop_assert_eq!(payload.len() - before, f.encoded_len());
            }
            let mut wire = bytes::BytesMut::new();
            put_record(&mut wire, &payload);
            let mut record = take_record(&mut wire, u64::MAX).unwrap().unwrap();
            prop_assert!(wire.is_empty());
            let mut decoded = Vec::new();
            while let Some(f) = Frame::decode(&mut record).unwrap() {
                decoded.push(f);
            }
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut wire = bytes::BytesMut::from(&data[..]);
            while let Ok(Some(mut record)) = take_record(&mut wire, DEFAULT_MAX_RECORD_SIZE) {
                while let Ok(Some(_)) = Frame::decode(&mut record) {}
            }
            let mut raw = Bytes::from(data);
            while let Ok(Some(_)) = Frame::decode(&mut raw) {}
        }
    }

    #[test]
    fn transport_parameters_frame_starts_with_the_magic() {
        let mut buf = Vec::new();
        Frame::TransportParameters(TransportParams::default()).encode(&mut buf);
        // The draft's registered value 0x3f5153300d0a0d0a (its prose spells the
        // bytes "\xffQMX\r\n\r\n", which does not match the value; the value wins).
        assert_eq!(&buf[..8], b"\xffQS0\r\n\r\n");
    }

    #[test]
    fn oversized_records_and_prohibited_frames_are_refused() {
        let mut wire = bytes::BytesMut::new();
        put_varint(&mut wire, DEFAULT_MAX_RECORD_SIZE + 1);
        assert!(take_record(&mut wire, DEFAULT_MAX_RECORD_SIZE).is_err());
        // PING (0x01) and ACK (0x02) are prohibited in QMux.
        assert!(Frame::decode(&mut Bytes::from_static(&[0x01])).is_err());
        assert!(Frame::decode(&mut Bytes::from_static(&[0x02, 0, 0, 0, 0])).is_err());
        // A prohibited QUIC transport parameter (stateless_reset_token, 0x02).
        let mut buf = Vec::new();
        put_varint(&mut buf, QX_TRANSPORT_PARAMETERS);
        put_varint(&mut buf, 3);
        buf.extend_from_slice(&[0x02, 0x01, 0x00]);
        assert!(Frame::decode(&mut Bytes::from(buf)).is_err());
    }
}
