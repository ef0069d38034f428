//! The QMux connection state machine (`transport::qmux::conn::Conn`), on the
//! server side, driven by arbitrary records from the peer: what an
//! unauthenticated TCP client reaches right after the TLS handshake, before
//! any `Hello`. Interleaved with the input's records, the application
//! accepts, reads, writes, finishes, resets, stops and drops streams, and
//! time passes. Nothing panics; what the connection sends is always well-formed
//! records of frames that decode; it never tracks more streams than it
//! allows plus those it opened; and the bytes it buffers for reading stay
//! within the flow-control windows it announced.
//!
//! Input: a sequence of operations, each one byte followed by its operands.
#![no_main]

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use connector_core::fuzzing::window_for;
use connector_core::fuzzing::{Config, Conn, Side};
use connector_core::fuzzing::{DEFAULT_MAX_RECORD_SIZE, Frame, TransportParams, put_record, take_record};
use connector_core::transport::PRE_ADMISSION_WINDOW;
use libfuzzer_sys::fuzz_target;

const STREAM_WINDOW: u64 = 8 * 1024;
const MAX_INCOMING: u64 = 4;
/// Streams the application opens at most.
const MAX_LOCAL: u64 = 4;
/// Spare stream windows the connection window keeps (`transport::credit`).
const SPARE_SLOTS: u64 = 8;
/// What the application writes.
const FILL: [u8; 4096] = [0x5a; 4096];

/// Takes the next `n` bytes of input (fewer at its end).
fn take<'a>(input: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, rest) = input.split_at(n.min(input.len()));
    *input = rest;
    head
}

fn byte(input: &mut &[u8]) -> u8 {
    take(input, 1).first().copied().unwrap_or(0)
}

fn u16_of(input: &mut &[u8]) -> u16 {
    u16::from(byte(input)) << 8 | u16::from(byte(input))
}

/// A stream id the peer may name: its own (client-initiated, `4n`), ours
/// (`4n + 1`), or an odd kind (unidirectional, far beyond the limits).
fn stream_id(input: &mut &[u8]) -> u64 {
    let b = byte(input);
    let index = u64::from(b >> 2);
    match b & 3 {
        0 | 1 => index * 4 + u64::from(b & 1),
        2 => index * 4 + 2,
        _ => u64::from(u16_of(input)) << 20 | u64::from(b),
    }
}

/// A peer frame built from the input, so that most inputs get past the
/// first frame (QX_TRANSPORT_PARAMETERS) and reach the stream logic.
fn peer_frame(input: &mut &[u8]) -> Frame {
    match byte(input) % 8 {
        0 => Frame::TransportParameters(TransportParams {
            max_idle_timeout_ms: u64::from(u16_of(input)),
            initial_max_data: u64::from(u16_of(input)) << 4,
            initial_max_stream_data_bidi_local: u64::from(u16_of(input)),
            initial_max_stream_data_bidi_remote: u64::from(u16_of(input)),
            initial_max_streams_bidi: u64::from(byte(input) % 8),
            max_record_size: DEFAULT_MAX_RECORD_SIZE,
        }),
        1 | 2 => {
            let id = stream_id(input);
            let offset = u64::from(u16_of(input));
            let len = usize::from(u16_of(input) % 4096);
            let fin = byte(input) & 1 == 1;
            Frame::Stream {
                id,
                offset,
                data: Bytes::copy_from_slice(take(input, len)),
                fin,
            }
        }
        3 => Frame::ResetStream {
            id: stream_id(input),
            code: u64::from(byte(input)),
            final_size: u64::from(u16_of(input)),
        },
        4 => Frame::StopSending {
            id: stream_id(input),
            code: u64::from(byte(input)),
        },
        5 => match byte(input) % 3 {
            0 => Frame::MaxData(u64::from(u16_of(input)) << 8),
            1 => Frame::MaxStreamData {
                id: stream_id(input),
                max: u64::from(u16_of(input)) << 4,
            },
            _ => Frame::MaxStreams {
                bidi: byte(input) & 1 == 1,
                max: u64::from(u16_of(input)),
            },
        },
        6 => Frame::Ping {
            seq: u64::from(byte(input)),
            response: byte(input) & 1 == 1,
        },
        _ => {
            let len = usize::from(byte(input));
            Frame::ConnectionClose {
                application: byte(input) & 1 == 1,
                code: u64::from(byte(input)),
                frame_type: 0,
                reason: Bytes::copy_from_slice(take(input, len)),
            }
        }
    }
}

/// Checks that `wire` is a sequence of complete records of decodable frames.
fn assert_well_formed(wire: &[u8]) {
    let mut buf = BytesMut::from(wire);
    while !buf.is_empty() {
        let mut record = take_record(&mut buf, DEFAULT_MAX_RECORD_SIZE)
            .expect("records we send fit the default size")
            .expect("records we send are complete");
        while let Some(frame) = Frame::decode(&mut record).expect("frames we send decode") {
            let _ = frame;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let mut now = Instant::now();
    let config = Config {
        idle_timeout: Duration::from_secs(30),
        keepalive: Duration::from_secs(10),
        stream_window: STREAM_WINDOW,
        max_incoming_streams: MAX_INCOMING,
        // As a server's connection starts: until the agent is admitted it
        // has one stream and a `Hello`'s worth of credit.
        until_admitted: true,
    };
    let mut conn = Conn::new(Side::Server, config, now);
    let cx = Context::from_waker(Waker::noop());
    // Bytes from the peer that do not make a whole record yet.
    let mut from_peer = BytesMut::new();
    let mut streams: Vec<u64> = Vec::new();
    let mut opened = 0u64;
    let mut admitted = false;
    let mut read_buf = vec![0u8; 16 * 1024];
    while !input.is_empty() {
        let pick = |input: &mut &[u8], streams: &[u64]| {
            let b = usize::from(byte(input));
            (!streams.is_empty()).then(|| streams[b % streams.len()])
        };
        match byte(&mut input) % 10 {
            // Raw bytes from the peer, cut anywhere.
            0 | 1 => {
                let len = usize::from(u16_of(&mut input) % 8192);
                from_peer.extend_from_slice(take(&mut input, len));
            }
            // A record of well-formed frames from the peer.
            2..=4 => {
                let mut frames = BytesMut::new();
                for _ in 0..=byte(&mut input) % 4 {
                    peer_frame(&mut input).encode(&mut frames);
                }
                put_record(&mut from_peer, &frames);
            }
            5 => {
                if byte(&mut input) & 2 == 2 {
                    conn.admit();
                    admitted = true;
                }
                while let Poll::Ready(Ok(id)) = conn.poll_accept(&cx) {
                    streams.push(id);
                }
                if opened < MAX_LOCAL
                    && byte(&mut input) & 1 == 1
                    && let Poll::Ready(Ok(id)) = conn.poll_open(&cx)
                {
                    opened += 1;
                    streams.push(id);
                }
            }
            6 => {
                if let Some(id) = pick(&mut input, &streams) {
                    let len = usize::from(u16_of(&mut input)) % read_buf.len();
                    let _ = conn.poll_read(id, &cx, &mut read_buf[..len]);
                }
            }
            7 => {
                if let Some(id) = pick(&mut input, &streams) {
                    let len = usize::from(u16_of(&mut input) % 4096);
                    let _ = conn.poll_write(id, &cx, &FILL[..len]);
                }
            }
            8 => {
                if let Some(id) = pick(&mut input, &streams) {
                    match byte(&mut input) % 6 {
                        0 => {
                            let _ = conn.finish(id);
                        }
                        1 => conn.reset(id, 7),
                        2 => conn.stop(id, 9),
                        3 => conn.drop_send(id),
                        4 => conn.drop_recv(id),
                        _ => {
                            conn.drop_send(id);
                            conn.drop_recv(id);
                            streams.retain(|&s| s != id);
                        }
                    }
                }
            }
            _ => {
                match byte(&mut input) % 4 {
                    0 => conn.close(1, "fuzz"),
                    1 => conn.transport_failed("fuzz: byte stream ended".into()),
                    _ => {}
                }
                now += Duration::from_millis(u64::from(u16_of(&mut input)) * 10);
                conn.handle_timeout(now);
            }
        }
        // The driver's read loop: whole records to the connection.
        while conn.error().is_none() {
            match take_record(&mut from_peer, DEFAULT_MAX_RECORD_SIZE) {
                Ok(Some(record)) => conn.handle_record(record, now),
                Ok(None) => break,
                Err(_) => conn.record_too_large(),
            }
        }
        // The driver's write loop: everything the connection has to send.
        let mut wire = Vec::new();
        let mut rounds = 0;
        while conn.poll_transmit(&mut wire, 64 * 1024) {
            rounds += 1;
            assert!(rounds < 1_000, "poll_transmit never runs dry");
        }
        assert_well_formed(&wire);
        // Bounded state: streams within the limits, buffered bytes within
        // the windows announced.
        let tracked = conn.stream_count() as u64;
        assert!(tracked <= MAX_INCOMING + opened, "{tracked} streams tracked");
        let unread = conn.unread_bytes();
        assert!(
            admitted || unread <= PRE_ADMISSION_WINDOW,
            "{unread} bytes unread before admission"
        );
        assert!(
            unread <= tracked * STREAM_WINDOW,
            "{unread} unread bytes in {tracked} streams"
        );
        assert!(unread <= window_for(MAX_INCOMING + MAX_LOCAL + SPARE_SLOTS, STREAM_WINDOW));
        // Only a partial record waits in the driver's buffer.
        assert!(conn.error().is_some() || from_peer.len() < DEFAULT_MAX_RECORD_SIZE as usize + 8);
    }
});
