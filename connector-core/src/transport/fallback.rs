//! Choosing between QUIC and the TCP fallback (QMux) on the agent.
//!
//! In [`TransportMode::Auto`] the [`FallbackConnector`] tries QUIC first,
//! within [`FallbackSettings::quic_connect_timeout`], and falls back to TCP
//! when QUIC got no answer. A server that answered over QUIC and refused
//! (a replica draining, a TLS error: [`TransportError::Rejected`]) has shown
//! that QUIC works; that error is returned as it is, and the agent retries
//! over QUIC.
//! It keeps watching what it handed out:
//!
//! * a QUIC connection whose path is starved (see [`Degradation`]) is marked
//!   [`Connection::superseded`] and later connects prefer TCP;
//! * while on TCP, a real QUIC handshake is attempted every
//!   [`FallbackSettings::probe_interval`] (±25 % jitter; doubled for every
//!   degraded QUIC path since QUIC last stayed healthy for 30 windows, up to
//!   32×, so a path that passes handshakes but starves data does not make the
//!   agent flap); once one succeeds the TCP connection is superseded ("QUIC
//!   reachable again") and the next connect uses QUIC.
//!
//! The agent reacts to `superseded()` by connecting again and draining the
//! old connection, so tunnelled connections in flight survive a switch.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::qmux::QmuxConnector;
use super::quic::{QuicConnection, QuicConnector};
use super::{BiStream, BoxFuture, Connection, Connector, PeerInfo, TransportError};
use crate::proto::ConnectionCode;

/// Which transport the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// QUIC, falling back to TCP when QUIC cannot connect or degrades, and back when QUIC works again.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TCP (TLS + QMux) only.
    Tcp,
}

impl FromStr for TransportMode {
    type Err = super::UnknownChoice;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "quic" => Ok(Self::Quic),
            "tcp" => Ok(Self::Tcp),
            other => Err(super::UnknownChoice {
                what: "transport",
                given: other.to_owned(),
                choices: "expected auto, quic or tcp",
            }),
        }
    }
}

impl fmt::Display for TransportMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        })
    }
}

/// When a QUIC path counts as starved. Counters are quinn's, compared over a
/// sliding `window` sampled every `sample`: the path is degraded when at
/// least `min_bytes` were sent or declared lost and the lost bytes come to
/// `loss_ratio` of the sent ones, or when at least `stall_packets` were sent
/// and no ACK at all came back. Loss is judged in bytes, not packets, so
/// that the check is as sharp on a path of 6,550-byte packets (which sends
/// few of them once starved) as on an Ethernet path.
#[derive(Debug, Clone)]
pub struct Degradation {
    /// Span of the sliding window.
    pub window: Duration,
    /// How often the counters are read.
    pub sample: Duration,
    /// Bytes sent or lost in the window (UDP payload) before the loss ratio is judged.
    pub min_bytes: u64,
    /// Share of sent bytes declared lost that counts as starved.
    pub loss_ratio: f64,
    /// Packets sent in the window without any ACK that counts as starved.
    pub stall_packets: u64,
}

impl Default for Degradation {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            sample: Duration::from_secs(1),
            // Twenty minimum-size QUIC packets.
            min_bytes: 24_000,
            loss_ratio: 0.3,
            stall_packets: 8,
        }
    }
}

/// What the samples of one window say about a QUIC path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Nothing to act on.
    Fine,
    /// The path carries the connection but starves its data: switch to TCP.
    Degraded(String),
    /// ACKs flowed on this connection, then stopped altogether: the server
    /// is gone (killed, restarted, unplugged), not the path. Connect again
    /// over the same transport.
    Silent(String),
}

impl Degradation {
    /// What the path did between two samples. `healthy` says whether ACKs
    /// arrived on this connection after its handshake and before `first`.
    fn verdict(&self, first: &PathSample, last: &PathSample, healthy: bool) -> Verdict {
        let sent = last.sent_packets - first.sent_packets;
        let sent_bytes = last.sent_bytes - first.sent_bytes;
        let lost_bytes = last.lost_bytes - first.lost_bytes;
        let acks = last.acks - first.acks;
        tracing::trace!(sent, sent_bytes, lost_bytes, acks, "QUIC path sample");
        // Packets declared lost in the window may have been sent before it:
        // once a starved path backs off and sends almost nothing, what it
        // lost is the evidence.
        let judged = sent_bytes.max(lost_bytes) >= self.min_bytes;
        let lossy = judged && lost_bytes as f64 >= self.loss_ratio * sent_bytes as f64;
        let stalled = sent >= self.stall_packets && acks == 0;
        let span = last.at.duration_since(first.at);
        if lossy || (stalled && !healthy) {
            Verdict::Degraded(format!(
                "QUIC path degraded: {lost_bytes} of {sent_bytes} bytes lost, {sent} packets sent and {acks} ACKs received in {span:?}"
            ))
        } else if stalled {
            // Nothing is declared lost without a later ACK: total silence
            // after a healthy spell is an absent peer, whatever the path.
            Verdict::Silent(format!(
                "the server stopped answering: {sent} packets sent and no ACK received in {span:?} after the connection had been healthy"
            ))
        } else {
            Verdict::Fine
        }
    }
}

/// Settings of the [`FallbackConnector`].
#[derive(Debug, Clone)]
pub struct FallbackSettings {
    /// Which transport to use.
    pub mode: TransportMode,
    /// How long a QUIC connection attempt may take before TCP is used (auto mode).
    pub quic_connect_timeout: Duration,
    /// How often to try QUIC again while on TCP (auto mode; ±25 % jitter).
    pub probe_interval: Duration,
    /// When a QUIC path counts as degraded (auto mode).
    pub degradation: Degradation,
}

impl Default for FallbackSettings {
    fn default() -> Self {
        Self {
            mode: TransportMode::Auto,
            quic_connect_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(60),
            degradation: Degradation::default(),
        }
    }
}

struct State {
    prefer_tcp: bool,
    last: Option<&'static str>,
    /// QUIC paths found degraded since QUIC last stayed healthy; each one
    /// doubles the probe interval (up to 32×), so a path that lets
    /// handshakes through but starves data does not make the agent flap.
    degradations: u32,
}

/// A QUIC connection healthy for this many degradation windows clears the probe back-off.
const HEALTHY_WINDOWS: u32 = 30;

/// A [`Connector`] over QUIC and TCP (QMux), switching between them as the network allows.
pub struct FallbackConnector {
    quic: Arc<QuicConnector>,
    tcp: Arc<QmuxConnector>,
    settings: FallbackSettings,
    state: Arc<Mutex<State>>,
}

impl FallbackConnector {
    /// Combines a QUIC and a TCP connector to the same server.
    pub fn new(quic: QuicConnector, tcp: QmuxConnector, settings: FallbackSettings) -> Self {
        Self {
            quic: Arc::new(quic),
            tcp: Arc::new(tcp),
            settings,
            state: Arc::new(Mutex::new(State {
                prefer_tcp: false,
                last: None,
                degradations: 0,
            })),
        }
    }

    /// Whether the next automatic connect goes to TCP first.
    pub fn prefers_tcp(&self) -> bool {
        self.state.lock().unwrap().prefer_tcp
    }

    fn handed_out(&self, conn: &Arc<dyn Connection>) {
        let now = conn.transport();
        let before = self.state.lock().unwrap().last.replace(now);
        match before {
            Some(before) if before != now => {
                tracing::info!(from = before, to = now, server = %self.describe(), "agent transport switched")
            }
            None => tracing::info!(transport = now, "agent transport chosen"),
            _ => {}
        }
    }

    async fn try_quic(&self) -> Result<QuicConnection, TransportError> {
        let bound = self.settings.quic_connect_timeout;
        tokio::time::timeout(bound, self.quic.connect_quic())
            .await
            .unwrap_or_else(|_| {
                Err(TransportError::Connect(format!(
                    "QUIC did not connect within {bound:?}"
                )))
            })
    }

    async fn connect_auto(&self) -> Result<Arc<dyn Connection>, TransportError> {
        let prefer_tcp = self.prefers_tcp();
        let quic_error = if prefer_tcp {
            None
        } else {
            match self.try_quic().await {
                Ok(conn) => return Ok(self.watch_quic(conn)),
                // The server answered over QUIC: the path works, whatever it said.
                Err(e @ (TransportError::Rejected(_) | TransportError::UntrustedServer { .. })) => return Err(e),
                Err(e) => {
                    tracing::info!(error = %e, "QUIC unavailable; falling back to TCP");
                    Some(e)
                }
            }
        };
        match self.tcp.connect().await {
            Ok(conn) => {
                if quic_error.is_some() {
                    // Only now is QUIC known to be the problem rather than the server.
                    self.state.lock().unwrap().prefer_tcp = true;
                }
                Ok(self.watch_tcp(conn))
            }
            Err(tcp_error) => {
                let quic_error = match quic_error {
                    Some(e) => e,
                    // On TCP by preference and TCP failed: QUIC may be back.
                    None => match self.try_quic().await {
                        Ok(conn) => {
                            self.state.lock().unwrap().prefer_tcp = false;
                            return Ok(self.watch_quic(conn));
                        }
                        Err(e) => e,
                    },
                };
                Err(TransportError::Connect(format!(
                    "neither QUIC ({quic_error}) nor TCP ({tcp_error}) could connect"
                )))
            }
        }
    }

    fn watch_quic(&self, conn: QuicConnection) -> Arc<dyn Connection> {
        let conn = Arc::new(conn);
        let (tx, rx) = watch::channel(None);
        let monitor = tokio::spawn(watch_degradation(
            conn.clone(),
            self.settings.degradation.clone(),
            self.state.clone(),
            tx,
        ));
        self.supervised(conn, rx, monitor.abort_handle())
    }

    fn watch_tcp(&self, conn: Arc<dyn Connection>) -> Arc<dyn Connection> {
        let (tx, rx) = watch::channel(None);
        let monitor = tokio::spawn(probe_quic(
            self.quic.clone(),
            self.settings.clone(),
            self.state.clone(),
            conn.closed(),
            tx,
        ));
        self.supervised(conn, rx, monitor.abort_handle())
    }

    /// `inner`, handed out with the `monitor` that says (through `superseded`)
    /// when the other transport should replace it.
    fn supervised<C: Connection + ?Sized>(
        &self,
        inner: Arc<C>,
        superseded: watch::Receiver<Option<String>>,
        monitor: AbortHandle,
    ) -> Arc<dyn Connection> {
        let conn: Arc<dyn Connection> = Arc::new(Supervised {
            inner,
            superseded,
            monitor,
        });
        self.handed_out(&conn);
        conn
    }
}

impl Connector for FallbackConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        Box::pin(async move {
            let conn = match self.settings.mode {
                TransportMode::Quic => self.quic.connect().await?,
                TransportMode::Tcp => self.tcp.connect().await?,
                TransportMode::Auto => return self.connect_auto().await,
            };
            self.handed_out(&conn);
            Ok(conn)
        })
    }

    fn describe(&self) -> String {
        match self.settings.mode {
            TransportMode::Quic => self.quic.describe(),
            TransportMode::Tcp => self.tcp.describe(),
            TransportMode::Auto => format!("{} (falling back to {})", self.quic.describe(), self.tcp.describe()),
        }
    }
}

/// Samples quinn's counters and supersedes the connection once its path is starved.
async fn watch_degradation(
    conn: Arc<QuicConnection>,
    limits: Degradation,
    state: Arc<Mutex<State>>,
    superseded: watch::Sender<Option<String>>,
) {
    let mut samples: VecDeque<PathSample> = VecDeque::new();
    // ACKs counted when the connection was handed out (its handshake's).
    let baseline = PathSample::read(&conn, Instant::now()).acks;
    let started = Instant::now();
    let mut cleared = false;
    let mut tick = tokio::time::interval(limits.sample);
    let closed = conn.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut closed => return,
        }
        let now = Instant::now();
        samples.push_back(PathSample::read(&conn, now));
        while samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) > limits.window)
        {
            samples.pop_front();
        }
        let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
            continue;
        };
        match limits.verdict(first, last, first.acks > baseline) {
            Verdict::Fine => {}
            Verdict::Degraded(reason) => {
                tracing::info!(%reason, "switching to TCP");
                {
                    let mut state = state.lock().unwrap();
                    state.prefer_tcp = true;
                    state.degradations = state.degradations.saturating_add(1);
                }
                superseded.send_replace(Some(reason));
                return;
            }
            Verdict::Silent(reason) => {
                // Not the path's fault: the transport preference and the probe back-off stay.
                tracing::info!(%reason, "connecting again over QUIC");
                superseded.send_replace(Some(reason));
                return;
            }
        }
        if !cleared && now.duration_since(started) >= limits.window * HEALTHY_WINDOWS {
            cleared = true;
            state.lock().unwrap().degradations = 0;
        }
    }
}

/// quinn's running totals for the path, read at one instant.
#[derive(Debug, Clone, Copy)]
struct PathSample {
    at: Instant,
    sent_packets: u64,
    sent_bytes: u64,
    lost_bytes: u64,
    acks: u64,
}

impl PathSample {
    fn read(conn: &QuicConnection, at: Instant) -> Self {
        let stats = conn.stats();
        Self {
            at,
            sent_packets: stats.path.sent_packets,
            sent_bytes: stats.udp_tx.bytes,
            lost_bytes: stats.path.lost_bytes,
            acks: stats.frame_rx.acks,
        }
    }
}

/// While on TCP: tries a QUIC handshake now and then, and supersedes the TCP connection once one succeeds.
async fn probe_quic(
    quic: Arc<QuicConnector>,
    settings: FallbackSettings,
    state: Arc<Mutex<State>>,
    closed: BoxFuture<'static, TransportError>,
    superseded: watch::Sender<Option<String>>,
) {
    tokio::pin!(closed);
    loop {
        let backoff = 1u32 << state.lock().unwrap().degradations.min(5);
        let jitter = rand::rng().random_range(0.75..1.25);
        let wait = (settings.probe_interval * backoff).mul_f64(jitter);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut closed => return,
        }
        let bound = settings.quic_connect_timeout;
        match tokio::time::timeout(bound, quic.connect_quic()).await {
            Ok(Ok(probe)) => {
                probe.close(ConnectionCode::Normal, "transport probe");
                tracing::info!("QUIC reachable again; switching back from TCP");
                state.lock().unwrap().prefer_tcp = false;
                superseded.send_replace(Some("QUIC reachable again".into()));
                return;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "QUIC probe failed; staying on TCP"),
            Err(_) => tracing::debug!(?bound, "QUIC probe timed out; staying on TCP"),
        }
    }
}

/// A connection handed out by the [`FallbackConnector`], with its watcher.
struct Supervised<C: ?Sized> {
    inner: Arc<C>,
    superseded: watch::Receiver<Option<String>>,
    monitor: AbortHandle,
}

impl<C: ?Sized> Drop for Supervised<C> {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}

impl<C: Connection + ?Sized> Connection for Supervised<C> {
    fn open_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        self.inner.open_bi()
    }
    fn accept_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        self.inner.accept_bi()
    }
    fn close(&self, code: ConnectionCode, reason: &str) {
        self.inner.close(code, reason)
    }
    fn close_sent(&self) -> BoxFuture<'static, ()> {
        self.inner.close_sent()
    }
    fn closed(&self) -> BoxFuture<'static, TransportError> {
        self.inner.closed()
    }
    fn peer(&self) -> PeerInfo {
        self.inner.peer()
    }
    fn transport(&self) -> &'static str {
        self.inner.transport()
    }
    fn rtt(&self) -> Option<std::time::Duration> {
        self.inner.rtt()
    }
    fn superseded(&self) -> BoxFuture<'static, String> {
        let mut rx = self.superseded.clone();
        Box::pin(async move {
            let reason = rx.wait_for(Option::is_some).await.ok().and_then(|r| r.clone());
            match reason {
                Some(reason) => reason,
                None => std::future::pending().await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two samples one window apart: `sent` packets of `size` bytes, `lost` of them lost, `acks` ACK frames back.
    fn window(sent: u64, size: u64, lost: u64, acks: u64) -> (PathSample, PathSample) {
        let at = Instant::now();
        let first = PathSample {
            at,
            sent_packets: 1_000,
            sent_bytes: 1_000_000,
            lost_bytes: 5_000,
            acks: 700,
        };
        let last = PathSample {
            at: at + Duration::from_secs(10),
            sent_packets: first.sent_packets + sent,
            sent_bytes: first.sent_bytes + sent * size,
            lost_bytes: first.lost_bytes + lost * size,
            acks: first.acks + acks,
        };
        (first, last)
    }

    fn degraded(sent: u64, size: u64, lost: u64, acks: u64) -> bool {
        let (first, last) = window(sent, size, lost, acks);
        matches!(
            Degradation::default().verdict(&first, &last, false),
            Verdict::Degraded(_)
        )
    }

    #[test]
    fn heavy_loss_of_few_large_packets_is_starvation() {
        // A starved path of 6,550-byte packets sends only a few per window.
        assert!(degraded(5, 6_550, 4, 1));
        assert!(degraded(30, 1_200, 10, 12));
        // Backed off after losing what it had in flight: sends little, lost much.
        let (first, mut last) = window(2, 6_550, 0, 1);
        last.lost_bytes += 30_000;
        assert!(matches!(
            Degradation::default().verdict(&first, &last, true),
            Verdict::Degraded(_)
        ));
    }

    #[test]
    fn light_loss_or_too_little_traffic_is_not() {
        assert!(!degraded(1_000, 6_550, 20, 400), "2 % loss");
        assert!(!degraded(3, 6_550, 2, 1), "19,650 bytes: too little to judge");
        assert!(!degraded(15, 1_200, 15, 1), "18,000 bytes: too little to judge");
        assert!(!degraded(0, 1_200, 0, 0), "an idle path");
    }

    #[test]
    fn packets_without_any_ack_are_a_stall() {
        assert!(degraded(8, 100, 0, 0));
        assert!(!degraded(7, 100, 0, 0));
    }

    #[test]
    fn silence_after_a_healthy_spell_is_a_server_gone_not_a_degraded_path() {
        // The case: a killed server, 11 packets and no ACK.
        let (first, last) = window(11, 34, 0, 0);
        let verdict = Degradation::default().verdict(&first, &last, true);
        assert!(
            matches!(&verdict, Verdict::Silent(reason) if reason.contains("stopped answering")),
            "{verdict:?}"
        );
        // Silence on a connection that never carried data past its handshake is the path.
        assert!(matches!(
            Degradation::default().verdict(&first, &last, false),
            Verdict::Degraded(_)
        ));
        // Loss is degradation whatever came before.
        let (first, last) = window(30, 1_200, 10, 12);
        assert!(matches!(
            Degradation::default().verdict(&first, &last, true),
            Verdict::Degraded(_)
        ));
        let (first, last) = window(1_000, 6_550, 20, 400);
        assert_eq!(Degradation::default().verdict(&first, &last, true), Verdict::Fine);
    }
}
