//! The QMux connection state machine, without I/O: records in
//! ([`Conn::handle_record`]), records out ([`Conn::poll_transmit`]), timers
//! ([`Conn::handle_timeout`]), and poll-style stream operations for the
//! driver's `AsyncRead`/`AsyncWrite` adapters (plain `std::task` wakers).
//!
//! Semantics follow QUIC v1 for bidirectional streams: in-order STREAM data
//! with FIN, RESET_STREAM / STOP_SENDING with application codes, per-stream
//! and connection flow control with window updates, MAX_STREAMS credit
//! returned as streams finish, QX_PING keepalives, idle timeout and
//! CONNECTION_CLOSE with code and reason.

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use super::frame::{self, Frame, FrameError, TransportParams, error_code};
use crate::transport::credit::CreditLedger;

/// Bytes a stream buffers for sending before its writer waits for the driver.
pub const SEND_BUFFER: u64 = 256 * 1024;
/// Largest record payload this implementation sends (2-byte Size field).
const RECORD_PAYLOAD: usize = frame::DEFAULT_MAX_RECORD_SIZE as usize;
/// Worst-case STREAM frame header (type, id, offset, length).
const STREAM_HEADER: usize = 1 + 8 + 8 + 4;

/// Which end of the connection this is; decides stream id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The end that connected (the agent).
    Client,
    /// The end that accepted (the server).
    Server,
}

/// Local limits and timers.
#[derive(Debug, Clone)]
pub struct Config {
    /// Idle timeout we announce (the smaller of both sides' applies).
    pub idle_timeout: Duration,
    /// QX_PING interval.
    pub keepalive: Duration,
    /// Receive window per stream. The connection's window covers one of
    /// these per open stream (`CreditLedger`).
    pub stream_window: u64,
    /// Streams the peer may have open at once.
    pub max_incoming_streams: u64,
    /// Server side: until [`Conn::admit`], the peer may open one stream and
    /// send [`crate::transport::PRE_ADMISSION_WINDOW`] bytes in all.
    pub until_admitted: bool,
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnError {
    /// The peer sent CONNECTION_CLOSE (application or transport).
    ClosedByPeer {
        /// 0x1d (application) rather than 0x1c (transport).
        application: bool,
        /// Error code.
        code: u64,
        /// Reason phrase.
        reason: String,
    },
    /// This side closed it.
    LocallyClosed,
    /// Nothing arrived within the idle timeout.
    TimedOut,
    /// The peer broke the protocol (we closed with a transport error) or the byte stream failed.
    Lost(String),
}

/// Why a stream operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The peer reset the stream (reads) with this code.
    Reset(u64),
    /// The peer asked us to stop sending (writes) with this code.
    Stopped(u64),
    /// Write after finish or reset.
    Finished,
    /// The connection is gone.
    Connection(ConnError),
}

#[derive(Default)]
struct Stream {
    recv_buf: VecDeque<Bytes>,
    recv_received: u64,
    recv_read: u64,
    recv_max: u64,
    recv_fin: Option<u64>,
    recv_reset: Option<u64>,
    recv_stopped: bool,
    recv_dropped: bool,
    read_waker: Option<Waker>,
    max_stream_data_pending: bool,

    send_buf: VecDeque<Bytes>,
    send_buffered: u64,
    send_accepted: u64,
    send_sent: u64,
    send_max: u64,
    send_fin: bool,
    fin_sent: bool,
    send_reset: Option<u64>,
    reset_sent: bool,
    send_stopped: Option<u64>,
    send_dropped: bool,
    write_waker: Option<Waker>,
    queued: bool,
}

impl Stream {
    fn recv_done(&self) -> bool {
        self.recv_reset.is_some() || self.recv_stopped || self.recv_fin == Some(self.recv_read)
    }
    fn send_done(&self) -> bool {
        self.fin_sent || self.reset_sent
    }
    fn wake_reader(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
    }
    fn wake_writer(&mut self) {
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
    /// Drops unread data; returns how many bytes that frees for connection flow control.
    fn discard_received(&mut self) -> u64 {
        self.recv_buf.clear();
        let freed = self.recv_received - self.recv_read;
        self.recv_read = self.recv_received;
        freed
    }
}

/// One QMux connection's state.
pub struct Conn {
    side: Side,
    config: Config,
    peer: Option<TransportParams>,
    streams: HashMap<u64, Stream>,
    next_local: u64,
    peer_max_streams: u64,
    next_remote: u64,
    local_max_streams: u64,
    max_streams_pending: bool,
    incoming: VecDeque<u64>,
    conn_send_max: u64,
    conn_send_used: u64,
    conn_recv_max: u64,
    conn_recv_total: u64,
    conn_recv_consumed: u64,
    max_data_pending: bool,
    /// Sizes the connection window to the open streams.
    credit: CreditLedger,
    control: VecDeque<Frame>,
    send_queue: VecDeque<u64>,
    max_stream_data_queue: VecDeque<u64>,
    ping_seq: u64,
    ping_response: Option<u64>,
    /// Our latest keepalive QX_PING not yet answered, and when it was queued.
    ping_sent: Option<(u64, Instant)>,
    /// Smoothed round-trip time from answered keepalives (RFC 9002's 7/8 weighting).
    rtt: Option<Duration>,
    last_recv: Instant,
    next_keepalive: Instant,
    error: Option<ConnError>,
    close_frame: Option<Frame>,
    /// A local close: stream data queued before it is sent ahead of CONNECTION_CLOSE.
    flush_before_close: bool,
    accept_wakers: Vec<Waker>,
    open_wakers: Vec<Waker>,
}

fn add_waker(list: &mut Vec<Waker>, cx: &Context<'_>) {
    if !list.iter().any(|w| w.will_wake(cx.waker())) {
        list.push(cx.waker().clone());
    }
}

impl Conn {
    /// A new connection; its first output is our QX_TRANSPORT_PARAMETERS.
    pub fn new(side: Side, config: Config, now: Instant) -> Self {
        let (credit, max_incoming) = if config.until_admitted {
            (CreditLedger::restricted(config.stream_window), 1)
        } else {
            (CreditLedger::new(config.stream_window), config.max_incoming_streams)
        };
        let params = TransportParams {
            max_idle_timeout_ms: config.idle_timeout.as_millis().min(frame::VARINT_MAX as u128) as u64,
            initial_max_data: credit.window(),
            initial_max_stream_data_bidi_local: config.stream_window,
            initial_max_stream_data_bidi_remote: config.stream_window,
            initial_max_streams_bidi: max_incoming,
            max_record_size: frame::DEFAULT_MAX_RECORD_SIZE,
        };
        Self {
            side,
            peer: None,
            streams: HashMap::new(),
            next_local: 0,
            peer_max_streams: 0,
            next_remote: 0,
            local_max_streams: max_incoming,
            max_streams_pending: false,
            incoming: VecDeque::new(),
            conn_send_max: 0,
            conn_send_used: 0,
            conn_recv_max: credit.window(),
            conn_recv_total: 0,
            conn_recv_consumed: 0,
            max_data_pending: false,
            credit,
            control: VecDeque::from([Frame::TransportParameters(params)]),
            send_queue: VecDeque::new(),
            max_stream_data_queue: VecDeque::new(),
            ping_seq: 0,
            ping_response: None,
            ping_sent: None,
            rtt: None,
            last_recv: now,
            next_keepalive: now + config.keepalive,
            error: None,
            close_frame: None,
            flush_before_close: false,
            accept_wakers: Vec::new(),
            open_wakers: Vec::new(),
            config,
        }
    }

    /// The smoothed round-trip time, measured from keepalive QX_PINGs and
    /// their answers (queueing behind stream data included, as TCP delivers
    /// in order); `None` until the first answer.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Why the connection ended, once it has.
    pub fn error(&self) -> Option<&ConnError> {
        self.error.as_ref()
    }

    /// Closed, and nothing (no CONNECTION_CLOSE) left to send: the byte stream can be shut.
    pub fn is_drained(&self) -> bool {
        self.error.is_some() && self.close_frame.is_none()
    }

    /// Streams currently tracked (open or finishing), for tests and metrics.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Received stream bytes not read yet, over all streams. Public for the
    /// `qmux_conn` fuzz target's bound on buffering only.
    #[doc(hidden)]
    pub fn unread_bytes(&self) -> u64 {
        let unread = |s: &Stream| s.recv_buf.iter().map(|b| b.len() as u64).sum::<u64>();
        self.streams.values().map(unread).sum()
    }

    fn is_local(&self, id: u64) -> bool {
        (id & 1 == 1) == (self.side == Side::Server)
    }

    fn local_id(&self, index: u64) -> u64 {
        index * 4 + u64::from(self.side == Side::Server)
    }

    fn remote_id(&self, index: u64) -> u64 {
        index * 4 + u64::from(self.side == Side::Client)
    }

    fn idle_timeout(&self) -> Duration {
        let peer = self.peer.map(|p| p.max_idle_timeout_ms).unwrap_or(0);
        match (self.config.idle_timeout.as_millis() as u64, peer) {
            (0, 0) => Duration::MAX,
            (0, p) | (p, 0) => Duration::from_millis(p),
            (a, b) => Duration::from_millis(a.min(b)),
        }
    }

    fn wake_all(&mut self) {
        for s in self.streams.values_mut() {
            s.wake_reader();
            s.wake_writer();
        }
        self.accept_wakers.drain(..).for_each(Waker::wake);
        self.open_wakers.drain(..).for_each(Waker::wake);
    }

    fn fail(&mut self, error: ConnError, close: Option<Frame>) {
        if self.error.is_some() {
            return;
        }
        self.error = Some(error);
        self.close_frame = close;
        self.control.clear();
        if !self.flush_before_close {
            self.send_queue.clear();
        }
        self.wake_all();
    }

    fn protocol_error(&mut self, code: u64, what: &str) {
        let reason: Bytes = what.as_bytes()[..what.len().min(frame::MAX_REASON_LEN)].to_vec().into();
        self.fail(
            ConnError::Lost(format!("peer violated the QMux protocol: {what}")),
            Some(Frame::ConnectionClose {
                application: false,
                code,
                frame_type: 0,
                reason,
            }),
        );
    }

    /// Closes the connection with an application code and reason. Stream data
    /// already accepted (written, or a FIN) is still sent, ahead of the
    /// CONNECTION_CLOSE: the byte stream is ordered, so a peer reads everything
    /// written before the close, as it would from a QUIC stream that was
    /// acknowledged before the connection closed.
    pub fn close(&mut self, code: u64, reason: &str) {
        if self.error.is_some() {
            return;
        }
        let cut = reason.len().min(frame::MAX_REASON_LEN);
        let cut = (0..=cut).rev().find(|&i| reason.is_char_boundary(i)).unwrap_or(0);
        self.flush_before_close = true;
        self.fail(
            ConnError::LocallyClosed,
            Some(Frame::ConnectionClose {
                application: true,
                code,
                frame_type: 0,
                reason: Bytes::copy_from_slice(&reason.as_bytes()[..cut]),
            }),
        );
    }

    /// The underlying byte stream ended or failed.
    pub fn transport_failed(&mut self, what: String) {
        self.fail(ConnError::Lost(what), None);
    }

    /// When [`Conn::handle_timeout`] next needs to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        let idle = self.last_recv.checked_add(self.idle_timeout());
        Some(idle.map_or(self.next_keepalive, |i| i.min(self.next_keepalive)))
    }

    /// Fires due timers: keepalive QX_PING, idle timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.error.is_some() {
            return;
        }
        if self
            .last_recv
            .checked_add(self.idle_timeout())
            .is_some_and(|deadline| now >= deadline)
        {
            self.fail(ConnError::TimedOut, None);
            return;
        }
        if now >= self.next_keepalive {
            self.ping_seq += 1;
            self.control.push_back(Frame::Ping {
                seq: self.ping_seq,
                response: false,
            });
            self.ping_sent = Some((self.ping_seq, now));
            self.next_keepalive = now + self.config.keepalive;
        }
    }

    /// Processes one received record.
    pub fn handle_record(&mut self, mut record: Bytes, now: Instant) {
        if self.error.is_some() {
            return;
        }
        self.last_recv = now;
        loop {
            match Frame::decode(&mut record) {
                Ok(Some(frame)) => self.handle_frame(frame),
                Ok(None) => break,
                Err(FrameError(what)) => {
                    let code = if what.contains("transport parameter") {
                        error_code::TRANSPORT_PARAMETER_ERROR
                    } else {
                        error_code::FRAME_ENCODING_ERROR
                    };
                    self.protocol_error(code, what)
                }
            }
            if self.error.is_some() {
                break;
            }
        }
    }

    /// A received record was larger than we allow.
    pub fn record_too_large(&mut self) {
        self.protocol_error(error_code::FRAME_ENCODING_ERROR, "record larger than max_record_size");
    }

    fn handle_frame(&mut self, frame: Frame) {
        let Some(peer) = self.peer else {
            match frame {
                Frame::TransportParameters(params) => self.apply_params(params),
                _ => self.protocol_error(
                    error_code::TRANSPORT_PARAMETER_ERROR,
                    "first frame is not QX_TRANSPORT_PARAMETERS",
                ),
            }
            return;
        };
        match frame {
            Frame::TransportParameters(_) => {
                self.protocol_error(error_code::TRANSPORT_PARAMETER_ERROR, "second QX_TRANSPORT_PARAMETERS")
            }
            Frame::Stream { id, offset, data, fin } => self.on_stream(id, offset, data, fin, &peer),
            Frame::ResetStream { id, code, final_size } => self.on_reset(id, code, final_size, &peer),
            Frame::StopSending { id, code } => {
                if let Some(id) = self.stream_for_frame(id, &peer) {
                    let s = self.streams.get_mut(&id).expect("just found");
                    if s.send_stopped.is_none() {
                        s.send_stopped = Some(code);
                        if !s.fin_sent && s.send_reset.is_none() {
                            self.reset_send(id, code);
                        }
                        self.streams.get_mut(&id).expect("just found").wake_writer();
                    }
                }
            }
            Frame::MaxData(max) => {
                if max > self.conn_send_max {
                    self.conn_send_max = max;
                    for s in self.streams.values_mut() {
                        s.wake_writer();
                    }
                }
            }
            Frame::MaxStreamData { id, max } => {
                if let Some(id) = self.stream_for_frame(id, &peer) {
                    let s = self.streams.get_mut(&id).expect("just found");
                    if max > s.send_max {
                        s.send_max = max;
                        s.wake_writer();
                    }
                }
            }
            Frame::MaxStreams { bidi, max } => {
                if bidi && max > self.peer_max_streams {
                    self.peer_max_streams = max.min(1 << 60);
                    self.open_wakers.drain(..).for_each(Waker::wake);
                }
            }
            Frame::DataBlocked(_) | Frame::StreamDataBlocked { .. } | Frame::StreamsBlocked { .. } => {}
            Frame::ConnectionClose {
                application,
                code,
                reason,
                ..
            } => {
                let reason = String::from_utf8_lossy(&reason).into_owned();
                self.fail(
                    ConnError::ClosedByPeer {
                        application,
                        code,
                        reason,
                    },
                    None,
                );
            }
            Frame::Ping { seq, response } => {
                if !response {
                    self.ping_response = Some(self.ping_response.map_or(seq, |s| s.max(seq)));
                } else if let Some((sent_seq, sent_at)) = self.ping_sent
                    && sent_seq == seq
                {
                    // `last_recv` is the time of the record carrying this answer.
                    self.ping_sent = None;
                    let sample = self.last_recv.saturating_duration_since(sent_at);
                    self.rtt = Some(self.rtt.map_or(sample, |rtt| (rtt * 7 + sample) / 8));
                }
            }
        }
    }

    fn apply_params(&mut self, params: TransportParams) {
        self.peer = Some(params);
        self.conn_send_max = params.initial_max_data;
        self.peer_max_streams = params.initial_max_streams_bidi.min(1 << 60);
        self.open_wakers.drain(..).for_each(Waker::wake);
    }

    /// The stream a frame refers to, opening peer streams as needed. `None`
    /// for a stream already forgotten (stale frame) or after a protocol error.
    fn stream_for_frame(&mut self, id: u64, peer: &TransportParams) -> Option<u64> {
        if id & 2 != 0 {
            self.protocol_error(error_code::STREAM_LIMIT_ERROR, "unidirectional streams are not allowed");
            return None;
        }
        let index = id >> 2;
        if self.is_local(id) {
            if index >= self.next_local {
                self.protocol_error(error_code::STREAM_STATE_ERROR, "frame for a stream we never opened");
                return None;
            }
            return self.streams.contains_key(&id).then_some(id);
        }
        if index >= self.local_max_streams {
            self.protocol_error(error_code::STREAM_LIMIT_ERROR, "peer opened more streams than allowed");
            return None;
        }
        while self.next_remote <= index {
            let new = self.remote_id(self.next_remote);
            self.next_remote += 1;
            self.streams.insert(
                new,
                Stream {
                    recv_max: self.config.stream_window,
                    send_max: peer.initial_max_stream_data_bidi_local,
                    ..Default::default()
                },
            );
            self.stream_opened();
            self.incoming.push_back(new);
        }
        self.accept_wakers.drain(..).for_each(Waker::wake);
        self.streams.contains_key(&id).then_some(id)
    }

    fn on_stream(&mut self, id: u64, offset: u64, data: Bytes, fin: bool, peer: &TransportParams) {
        let len = data.len() as u64;
        if self.conn_recv_total + len > self.conn_recv_max {
            return self.protocol_error(error_code::FLOW_CONTROL_ERROR, "connection flow control exceeded");
        }
        let Some(id) = self.stream_for_frame(id, peer) else {
            if self.error.is_none() {
                // Data for a stream we already forgot: count it and give the credit back.
                self.conn_recv_total += len;
                self.consumed(len);
            }
            return;
        };
        let s = self.streams.get_mut(&id).expect("just found");
        if offset != s.recv_received {
            return self.protocol_error(error_code::PROTOCOL_VIOLATION, "STREAM data out of order");
        }
        let end = offset + len;
        if s.recv_fin.is_some_and(|f| end > f || (fin && end != f)) {
            return self.protocol_error(error_code::FINAL_SIZE_ERROR, "data beyond the final size");
        }
        if end > s.recv_max {
            return self.protocol_error(error_code::FLOW_CONTROL_ERROR, "stream flow control exceeded");
        }
        s.recv_received = end;
        self.conn_recv_total += len;
        if fin {
            s.recv_fin = Some(end);
        }
        if s.recv_reset.is_some() || s.recv_stopped {
            s.recv_read = end;
            self.consumed(len);
        } else {
            if !data.is_empty() {
                s.recv_buf.push_back(data);
            }
            s.wake_reader();
        }
        self.maybe_forget(id);
    }

    fn on_reset(&mut self, id: u64, code: u64, final_size: u64, peer: &TransportParams) {
        let Some(id) = self.stream_for_frame(id, peer) else {
            return;
        };
        let s = self.streams.get_mut(&id).expect("just found");
        if final_size < s.recv_received || s.recv_fin.is_some_and(|f| f != final_size) || final_size > s.recv_max {
            return self.protocol_error(error_code::FINAL_SIZE_ERROR, "RESET_STREAM with a wrong final size");
        }
        if s.recv_reset.is_some() {
            return;
        }
        let unreceived = final_size - s.recv_received;
        if self.conn_recv_total + unreceived > self.conn_recv_max {
            return self.protocol_error(error_code::FLOW_CONTROL_ERROR, "connection flow control exceeded");
        }
        self.conn_recv_total += unreceived;
        s.recv_received = final_size;
        s.recv_fin = Some(final_size);
        s.recv_reset = Some(code);
        let freed = s.discard_received();
        s.wake_reader();
        self.consumed(freed);
        self.maybe_forget(id);
    }

    /// Connection-level credit: bytes the application (or discarding) consumed.
    fn consumed(&mut self, n: u64) {
        self.conn_recv_consumed += n;
        self.announce_credit();
    }

    /// Raises the connection's credit to what was consumed plus the window,
    /// in steps of an eighth of the window (as QUIC implementations do; the
    /// window allows for it, see [`crate::transport::credit::window_for`]).
    /// Never lowers it: a shrunk window takes effect as data is consumed.
    fn announce_credit(&mut self) {
        let window = self.credit.window();
        let target = self.conn_recv_consumed + window;
        if target >= self.conn_recv_max + window / 8 {
            self.conn_recv_max = target;
            self.max_data_pending = true;
        }
    }

    /// The peer was admitted: full connection credit and stream credit
    /// ([`Config::until_admitted`]). Idempotent.
    pub fn admit(&mut self) {
        if self.credit.admit().is_some() {
            self.announce_credit();
            self.local_max_streams += self.config.max_incoming_streams.saturating_sub(1);
            self.max_streams_pending = true;
        }
    }

    /// Counts a new stream in the connection's credit.
    fn stream_opened(&mut self) {
        if self.credit.opened().is_some() {
            self.announce_credit();
        }
    }

    fn maybe_forget(&mut self, id: u64) {
        let Some(s) = self.streams.get(&id) else { return };
        if s.send_dropped && s.recv_dropped && s.send_done() && s.recv_done() && !s.queued {
            self.streams.remove(&id);
            self.credit.closed();
            if !self.is_local(id) {
                self.local_max_streams += 1;
                self.max_streams_pending = true;
            }
        }
    }

    /// Opens a local stream once the peer's stream limit allows it.
    pub fn poll_open(&mut self, cx: &Context<'_>) -> Poll<Result<u64, ConnError>> {
        if let Some(e) = &self.error {
            return Poll::Ready(Err(e.clone()));
        }
        let Some(peer) = self.peer else {
            add_waker(&mut self.open_wakers, cx);
            return Poll::Pending;
        };
        if self.next_local >= self.peer_max_streams {
            add_waker(&mut self.open_wakers, cx);
            return Poll::Pending;
        }
        let id = self.local_id(self.next_local);
        self.next_local += 1;
        self.streams.insert(
            id,
            Stream {
                recv_max: self.config.stream_window,
                send_max: peer.initial_max_stream_data_bidi_remote,
                ..Default::default()
            },
        );
        self.stream_opened();
        Poll::Ready(Ok(id))
    }

    /// The next stream the peer opened.
    pub fn poll_accept(&mut self, cx: &Context<'_>) -> Poll<Result<u64, ConnError>> {
        if let Some(id) = self.incoming.pop_front() {
            return Poll::Ready(Ok(id));
        }
        if let Some(e) = &self.error {
            return Poll::Ready(Err(e.clone()));
        }
        add_waker(&mut self.accept_wakers, cx);
        Poll::Pending
    }

    /// Reads stream data into `out`; `Ok(0)` is the peer's FIN.
    pub fn poll_read(&mut self, id: u64, cx: &Context<'_>, out: &mut [u8]) -> Poll<Result<usize, StreamError>> {
        let error = self.error.clone();
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(StreamError::Connection(
                error.unwrap_or(ConnError::Lost("stream forgotten".into())),
            )));
        };
        if let Some(code) = s.recv_reset {
            return Poll::Ready(Err(StreamError::Reset(code)));
        }
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut n = 0;
        while n < out.len() {
            let Some(front) = s.recv_buf.front_mut() else { break };
            let take = front.len().min(out.len() - n);
            out[n..n + take].copy_from_slice(&front[..take]);
            front.advance(take);
            if front.is_empty() {
                s.recv_buf.pop_front();
            }
            n += take;
        }
        if n > 0 {
            s.recv_read += n as u64;
            let window = self.config.stream_window;
            if s.recv_fin.is_none() && s.recv_max - s.recv_read < window / 2 {
                s.recv_max = s.recv_read + window;
                if !s.max_stream_data_pending {
                    s.max_stream_data_pending = true;
                    self.max_stream_data_queue.push_back(id);
                }
            }
            self.consumed(n as u64);
            return Poll::Ready(Ok(n));
        }
        if s.recv_fin == Some(s.recv_read) {
            return Poll::Ready(Ok(0));
        }
        if let Some(e) = error {
            return Poll::Ready(Err(StreamError::Connection(e)));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Queues stream data as far as flow control and the send buffer allow.
    pub fn poll_write(&mut self, id: u64, cx: &Context<'_>, data: &[u8]) -> Poll<Result<usize, StreamError>> {
        if let Some(e) = &self.error {
            return Poll::Ready(Err(StreamError::Connection(e.clone())));
        }
        let conn_credit = self.conn_send_max.saturating_sub(self.conn_send_used);
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(StreamError::Finished));
        };
        if let Some(code) = s.send_stopped {
            return Poll::Ready(Err(StreamError::Stopped(code)));
        }
        if s.send_fin || s.send_reset.is_some() {
            return Poll::Ready(Err(StreamError::Finished));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let credit = (s.send_max.saturating_sub(s.send_accepted))
            .min(conn_credit)
            .min(SEND_BUFFER.saturating_sub(s.send_buffered));
        if credit == 0 {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = credit.min(data.len() as u64) as usize;
        s.send_buf.push_back(Bytes::copy_from_slice(&data[..n]));
        s.send_buffered += n as u64;
        s.send_accepted += n as u64;
        self.conn_send_used += n as u64;
        if !s.queued {
            s.queued = true;
            self.send_queue.push_back(id);
        }
        Poll::Ready(Ok(n))
    }

    /// Ends the stream in order (FIN after the queued data).
    pub fn finish(&mut self, id: u64) -> Result<(), StreamError> {
        if let Some(e) = &self.error {
            return Err(StreamError::Connection(e.clone()));
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if let Some(code) = s.send_stopped {
            return Err(StreamError::Stopped(code));
        }
        if s.send_reset.is_some() {
            return Err(StreamError::Finished);
        }
        if !s.send_fin {
            s.send_fin = true;
            if !s.queued {
                s.queued = true;
                self.send_queue.push_back(id);
            }
        }
        Ok(())
    }

    /// Abandons the sending half with `code`.
    pub fn reset(&mut self, id: u64, code: u64) {
        let Some(s) = self.streams.get(&id) else { return };
        if s.fin_sent || s.send_reset.is_some() || self.error.is_some() {
            return;
        }
        self.reset_send(id, code);
    }

    /// Resets the sending half of `id` (a stream neither finished nor reset)
    /// with `code`: what was accepted but not sent is dropped and its credit
    /// returned, and the stream is queued for its RESET_STREAM.
    fn reset_send(&mut self, id: u64, code: u64) {
        let s = self.streams.get_mut(&id).expect("a stream being reset");
        let unsent = s.send_accepted - s.send_sent;
        s.send_reset = Some(code);
        s.send_buf.clear();
        s.send_buffered = 0;
        s.send_accepted = s.send_sent;
        self.conn_send_used -= unsent;
        if !s.queued {
            s.queued = true;
            self.send_queue.push_back(id);
        }
    }

    /// Asks the peer to stop sending, with `code`; unread data is dropped.
    pub fn stop(&mut self, id: u64, code: u64) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        if s.recv_done() {
            return;
        }
        s.recv_stopped = true;
        let freed = s.discard_received();
        self.control.push_back(Frame::StopSending { id, code });
        self.consumed(freed);
        self.maybe_forget(id);
    }

    /// The application dropped its sending half: finish the stream if it was not ended.
    pub fn drop_send(&mut self, id: u64) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| !s.send_fin && s.send_reset.is_none())
        {
            let _ = self.finish(id);
        }
        if let Some(s) = self.streams.get_mut(&id) {
            s.send_dropped = true;
            s.write_waker = None;
            if self.error.is_some() {
                s.fin_sent = true;
            }
        }
        self.maybe_forget(id);
    }

    /// The application dropped its receiving half: stop the peer (code 0) if data may still come.
    pub fn drop_recv(&mut self, id: u64) {
        self.stop(id, 0);
        if let Some(s) = self.streams.get_mut(&id) {
            s.recv_dropped = true;
            s.read_waker = None;
            s.recv_stopped = true;
        }
        self.maybe_forget(id);
    }

    /// Appends records to `out` (about `budget` bytes at most); `false` when there was nothing to send.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>, budget: usize) -> bool {
        if self.error.is_some() && !self.flush_before_close {
            let Some(close) = self.close_frame.take() else {
                return false;
            };
            frame::put_varint(out, close.encoded_len() as u64);
            close.encode(out);
            return true;
        }
        let start = out.len();
        while out.len() - start < budget {
            let record_start = out.len();
            out.extend_from_slice(&[0x40, 0]); // 2-byte Size, filled in below
            self.fill_record(out, record_start + 2 + RECORD_PAYLOAD);
            let len = out.len() - record_start - 2;
            if len == 0 {
                out.truncate(record_start);
                break;
            }
            out[record_start] = 0x40 | (len >> 8) as u8;
            out[record_start + 1] = len as u8;
        }
        if out.len() > start {
            return true;
        }
        if self.error.is_some() {
            // Closing, and the queued stream data is all out: the close goes next.
            self.flush_before_close = false;
            return self.poll_transmit(out, budget);
        }
        false
    }

    fn fill_record(&mut self, out: &mut Vec<u8>, limit: usize) {
        let fits = |out: &Vec<u8>, f: &Frame| out.len() + f.encoded_len() <= limit;
        if let Some(seq) = self.ping_response.take() {
            Frame::Ping { seq, response: true }.encode(out);
        }
        while let Some(f) = self.control.front() {
            if !fits(out, f) {
                return;
            }
            self.control.pop_front().expect("front").encode(out);
        }
        if self.max_data_pending {
            self.max_data_pending = false;
            Frame::MaxData(self.conn_recv_max).encode(out);
        }
        if self.max_streams_pending {
            self.max_streams_pending = false;
            Frame::MaxStreams {
                bidi: true,
                max: self.local_max_streams,
            }
            .encode(out);
        }
        while let Some(&id) = self.max_stream_data_queue.front() {
            if out.len() + 1 + 8 + 8 > limit {
                return;
            }
            self.max_stream_data_queue.pop_front();
            if let Some(s) = self.streams.get_mut(&id) {
                s.max_stream_data_pending = false;
                Frame::MaxStreamData { id, max: s.recv_max }.encode(out);
            }
        }
        // Stream data, round-robin, one chunk per stream per turn.
        let mut turns = self.send_queue.len();
        while turns > 0 && out.len() + STREAM_HEADER < limit {
            turns -= 1;
            let Some(id) = self.send_queue.pop_front() else { break };
            let Some(s) = self.streams.get_mut(&id) else { continue };
            if let Some(code) = s.send_reset {
                if !s.reset_sent {
                    Frame::ResetStream {
                        id,
                        code,
                        final_size: s.send_sent,
                    }
                    .encode(out);
                    s.reset_sent = true;
                }
                s.queued = false;
                self.maybe_forget(id);
                continue;
            }
            let room = limit - out.len() - STREAM_HEADER;
            let mut data = Bytes::new();
            if let Some(front) = s.send_buf.front_mut() {
                let take = front.len().min(room);
                data = front.split_to(take);
                if front.is_empty() {
                    s.send_buf.pop_front();
                }
            }
            let n = data.len() as u64;
            let fin = s.send_fin && s.send_buf.is_empty();
            if n == 0 && !fin {
                s.queued = false;
                continue;
            }
            let offset = s.send_sent;
            s.send_sent += n;
            s.send_buffered -= n;
            if n > 0 {
                s.wake_writer();
            }
            Frame::Stream { id, offset, data, fin }.encode(out);
            if fin {
                s.fin_sent = true;
            }
            if s.send_buf.is_empty() {
                s.queued = false;
                self.maybe_forget(id);
            } else {
                self.send_queue.push_back(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::PRE_ADMISSION_WINDOW;

    fn config() -> Config {
        Config {
            idle_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(3),
            stream_window: 64 * 1024,
            until_admitted: false,
            max_incoming_streams: 2,
        }
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    /// Moves every pending record from `from` to `to`.
    fn pump(from: &mut Conn, to: &mut Conn, now: Instant) -> usize {
        let mut wire = Vec::new();
        while from.poll_transmit(&mut wire, 1 << 20) {}
        let n = wire.len();
        let mut buf = bytes::BytesMut::from(&wire[..]);
        while let Some(record) = frame::take_record(&mut buf, frame::DEFAULT_MAX_RECORD_SIZE).unwrap() {
            to.handle_record(record, now);
        }
        assert!(buf.is_empty());
        n
    }

    fn pair() -> (Conn, Conn, Instant) {
        let now = Instant::now();
        let mut c = Conn::new(Side::Client, config(), now);
        let mut s = Conn::new(Side::Server, config(), now);
        pump(&mut c, &mut s, now);
        pump(&mut s, &mut c, now);
        (c, s, now)
    }

    fn ready<T>(p: Poll<T>) -> T {
        match p {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("pending"),
        }
    }

    fn read_all(conn: &mut Conn, id: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Poll::Ready(Ok(n)) = conn.poll_read(id, &cx(), &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn data_and_fin_cross_with_window_updates() {
        let (mut c, mut s, now) = pair();
        let id = ready(c.poll_open(&cx())).unwrap();
        assert_eq!(id, 0);
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let mut written = 0;
        let mut received = Vec::new();
        let mut accepted = None;
        while written < data.len() || received.len() < data.len() {
            while let Poll::Ready(Ok(n)) = c.poll_write(id, &cx(), &data[written..]) {
                if n == 0 {
                    break;
                }
                written += n;
            }
            if written == data.len() {
                c.finish(id).unwrap();
            }
            pump(&mut c, &mut s, now);
            let sid = *accepted.get_or_insert_with(|| ready(s.poll_accept(&cx())).unwrap());
            received.extend(read_all(&mut s, sid));
            pump(&mut s, &mut c, now);
        }
        assert_eq!(received, data);
        let mut buf = [0u8; 8];
        assert_eq!(ready(s.poll_read(0, &cx(), &mut buf)), Ok(0), "FIN after the data");
    }

    #[test]
    fn a_peer_not_yet_admitted_has_one_stream_and_a_hellos_worth_of_credit() {
        let now = Instant::now();
        let big = Config {
            stream_window: 4 << 20,
            ..config()
        };
        let mut c = Conn::new(Side::Client, big.clone(), now);
        let mut s = Conn::new(
            Side::Server,
            Config {
                until_admitted: true,
                ..big
            },
            now,
        );
        pump(&mut c, &mut s, now);
        pump(&mut s, &mut c, now);
        let control = ready(c.poll_open(&cx())).unwrap();
        assert!(c.poll_open(&cx()).is_pending(), "no credit for a second stream");
        let chunk = vec![1u8; 1 << 20];
        let mut offered = 0;
        while let Poll::Ready(Ok(n)) = c.poll_write(control, &cx(), &chunk) {
            offered += n;
            pump(&mut c, &mut s, now);
        }
        pump(&mut c, &mut s, now);
        assert!(
            c.poll_write(control, &cx(), &chunk).is_pending(),
            "the writer waits for credit"
        );
        assert!(offered as u64 <= PRE_ADMISSION_WINDOW + SEND_BUFFER, "{offered} taken");
        assert!(
            s.conn_recv_total <= PRE_ADMISSION_WINDOW,
            "{} arrived",
            s.conn_recv_total
        );
        assert!(s.error.is_none(), "the client kept to its credit");

        s.admit();
        pump(&mut s, &mut c, now);
        assert!(c.poll_open(&cx()).is_ready(), "stream credit once admitted");
        assert!(
            c.poll_write(control, &cx(), &chunk).is_ready(),
            "connection credit once admitted"
        );
        pump(&mut c, &mut s, now);
        assert!(
            s.conn_recv_total > PRE_ADMISSION_WINDOW,
            "connection credit once admitted"
        );
    }

    #[test]
    fn a_slow_stream_is_bounded_and_does_not_block_another() {
        let (mut c, mut s, now) = pair();
        let slow = ready(c.poll_open(&cx())).unwrap();
        let fast = ready(c.poll_open(&cx())).unwrap();
        let chunk = vec![7u8; 1 << 20];
        // The slow stream's receiver never reads: the sender stops at the stream window.
        let mut sent = 0;
        while let Poll::Ready(Ok(n)) = c.poll_write(slow, &cx(), &chunk) {
            sent += n;
            pump(&mut c, &mut s, now);
        }
        assert_eq!(sent as u64, config().stream_window);
        assert!(c.poll_write(slow, &cx(), &chunk).is_pending());
        // The other stream still flows.
        assert_eq!(ready(c.poll_write(fast, &cx(), b"hello")), Ok(5));
        pump(&mut c, &mut s, now);
        let _ = ready(s.poll_accept(&cx()));
        let _ = ready(s.poll_accept(&cx()));
        assert_eq!(read_all(&mut s, fast), b"hello");
    }

    #[test]
    fn reset_and_stop_carry_their_codes() {
        let (mut c, mut s, now) = pair();
        let id = ready(c.poll_open(&cx())).unwrap();
        ready(c.poll_write(id, &cx(), b"x")).unwrap();
        c.reset(id, 42);
        pump(&mut c, &mut s, now);
        let sid = ready(s.poll_accept(&cx())).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(ready(s.poll_read(sid, &cx(), &mut buf)), Err(StreamError::Reset(42)));
        s.stop(sid, 7);
        pump(&mut s, &mut c, now);
        assert_eq!(ready(c.poll_write(id, &cx(), b"y")), Err(StreamError::Finished));
        let other = ready(c.poll_open(&cx())).unwrap();
        ready(c.poll_write(other, &cx(), b"z")).unwrap();
        pump(&mut c, &mut s, now);
        assert_eq!(ready(s.poll_accept(&cx())), Ok(other));
        s.stop(other, 9);
        pump(&mut s, &mut c, now);
        assert_eq!(ready(c.poll_write(other, &cx(), b"y")), Err(StreamError::Stopped(9)));
    }

    #[test]
    fn stream_limit_is_enforced_and_credit_returns_when_streams_end() {
        let (mut c, mut s, now) = pair();
        let a = ready(c.poll_open(&cx())).unwrap();
        let _b = ready(c.poll_open(&cx())).unwrap();
        assert!(c.poll_open(&cx()).is_pending(), "server allows two agent streams");
        c.finish(a).unwrap();
        c.drop_send(a);
        c.drop_recv(a);
        pump(&mut c, &mut s, now);
        let sa = ready(s.poll_accept(&cx())).unwrap();
        assert_eq!(read_all(&mut s, sa), b"");
        s.drop_recv(sa);
        s.drop_send(sa);
        pump(&mut s, &mut c, now);
        assert!(c.poll_open(&cx()).is_ready(), "a finished stream returns its credit");
    }

    #[test]
    fn close_reaches_the_peer_with_code_and_reason() {
        let (mut c, mut s, now) = pair();
        c.close(3, "bye");
        assert_eq!(c.error(), Some(&ConnError::LocallyClosed));
        pump(&mut c, &mut s, now);
        assert!(c.is_drained());
        assert_eq!(
            s.error(),
            Some(&ConnError::ClosedByPeer {
                application: true,
                code: 3,
                reason: "bye".into()
            })
        );
    }

    #[test]
    fn data_written_before_a_local_close_reaches_the_peer_ahead_of_it() {
        let (mut c, mut s, now) = pair();
        let id = ready(c.poll_open(&cx())).unwrap();
        let data = vec![9u8; 50_000];
        assert_eq!(ready(c.poll_write(id, &cx(), &data)), Ok(data.len()));
        c.finish(id).unwrap();
        c.close(0, "superseded");
        assert!(
            matches!(ready(c.poll_write(id, &cx(), b"late")), Err(StreamError::Connection(_))),
            "nothing is accepted after the close"
        );
        assert!(!c.is_drained(), "queued stream data still to send");
        pump(&mut c, &mut s, now);
        assert!(c.is_drained());
        let sid = ready(s.poll_accept(&cx())).unwrap();
        assert_eq!(read_all(&mut s, sid), data);
        let mut buf = [0u8; 8];
        assert_eq!(ready(s.poll_read(sid, &cx(), &mut buf)), Ok(0), "FIN before the close");
        assert!(matches!(s.error(), Some(ConnError::ClosedByPeer { code: 0, .. })));
    }

    #[test]
    fn answered_keepalives_measure_the_round_trip_time() {
        let (mut c, mut s, now) = pair();
        assert_eq!(c.rtt(), None, "no keepalive answered yet");
        // A keepalive at 3 s, answered 40 ms later.
        let sent = now + Duration::from_secs(3);
        c.handle_timeout(sent);
        pump(&mut c, &mut s, sent + Duration::from_millis(20));
        pump(&mut s, &mut c, sent + Duration::from_millis(40));
        assert_eq!(c.rtt(), Some(Duration::from_millis(40)));
        assert_eq!(s.rtt(), None, "the answering side measured nothing");
        // The next one takes 120 ms: smoothed as 7/8 old + 1/8 new.
        let sent = sent + Duration::from_secs(3);
        c.handle_timeout(sent);
        pump(&mut c, &mut s, sent);
        pump(&mut s, &mut c, sent + Duration::from_millis(120));
        assert_eq!(c.rtt(), Some(Duration::from_millis(50)));
        // A keepalive lost on the way is never answered; the next one is
        // measured from its own sending, not from the lost one's.
        let sent = sent + Duration::from_secs(3);
        c.handle_timeout(sent);
        let mut lost = Vec::new();
        while c.poll_transmit(&mut lost, 1 << 20) {}
        c.handle_timeout(sent + Duration::from_secs(3));
        pump(&mut c, &mut s, sent + Duration::from_secs(3));
        pump(
            &mut s,
            &mut c,
            sent + Duration::from_secs(3) + Duration::from_millis(50),
        );
        assert_eq!(
            c.rtt(),
            Some(Duration::from_millis(50)),
            "50 ms sample into a 50 ms average"
        );
    }

    #[test]
    fn silence_times_out_and_pings_keep_it_alive() {
        let (mut c, mut s, now) = pair();
        let mut t = now;
        for _ in 0..10 {
            t += Duration::from_secs(3);
            c.handle_timeout(t);
            s.handle_timeout(t);
            pump(&mut c, &mut s, t);
            pump(&mut s, &mut c, t);
        }
        assert_eq!(c.error(), None, "keepalives kept both ends alive");
        let deadline = c.poll_timeout().unwrap();
        c.handle_timeout(t + Duration::from_secs(11));
        assert!(deadline <= t + Duration::from_secs(11));
        assert_eq!(c.error(), Some(&ConnError::TimedOut));
    }

    #[test]
    fn protocol_violations_close_the_connection() {
        let now = Instant::now();
        let mut s = Conn::new(Side::Server, config(), now);
        let mut payload = Vec::new();
        Frame::MaxData(5).encode(&mut payload);
        s.handle_record(payload.into(), now);
        assert!(
            matches!(s.error(), Some(ConnError::Lost(_))),
            "first frame must be parameters"
        );

        let (mut c, mut s, now) = pair();
        let mut payload = Vec::new();
        Frame::Stream {
            id: 0,
            offset: 0,
            data: vec![0u8; 70 * 1024].into(),
            fin: false,
        }
        .encode(&mut payload);
        s.handle_record(payload.into(), now);
        assert!(matches!(s.error(), Some(ConnError::Lost(m)) if m.contains("flow control")));
        pump(&mut s, &mut c, now);
        assert!(matches!(
            c.error(),
            Some(ConnError::ClosedByPeer {
                application: false,
                code: error_code::FLOW_CONTROL_ERROR,
                ..
            })
        ));
    }
}
