//! Congestion control for the QUIC transport: which controller paces what an
//! end sends, and [`LossTolerant`], which keeps BBR from reading random loss
//! as congestion.
//!
//! quinn's BBR follows Chromium's BBRv1: it leaves its start-up phase at the
//! first round trip with a loss and no bandwidth growth, and while in
//! recovery it caps its window at what is in flight. On a path with 1 %
//! random loss (a lossy Wi-Fi or long-haul link, not a full queue) that means
//! it stops probing early and stays capped: measured at 0.10–0.45 Gbit/s where
//! Linux's TCP BBR moved 0.5 Gbit/s on the same 20 ms path
//! (`docs/benchmarks.md`). BBRv2 answers this with a loss threshold: loss
//! counts as congestion only when more than 2 % of the data of a round trip
//! is lost (draft-cardwell-iccrg-bbr-congestion-control-02, `BBRLossThresh`).
//! [`LossTolerant`] applies that threshold in front of any quinn controller.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};

/// Which congestion controller QUIC uses for what this end sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CongestionControl {
    /// CUBIC (RFC 9438), quinn's default: conservative, backs off on every loss.
    #[default]
    Cubic,
    /// BBR: paces to the measured bandwidth and round trip, and takes loss as
    /// congestion only above 2 % of a round trip's data ([`LossTolerant`]), so
    /// a lossy long path keeps its throughput. quinn marks its BBR
    /// experimental; measured in `docs/benchmarks.md` (WAN rows).
    Bbr,
}

impl std::str::FromStr for CongestionControl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Self::Cubic),
            "bbr" => Ok(Self::Bbr),
            other => Err(format!("unknown congestion controller {other:?}: use cubic or bbr")),
        }
    }
}

impl CongestionControl {
    /// The quinn controller factory for this choice.
    pub fn factory(self) -> Arc<dyn ControllerFactory + Send + Sync> {
        match self {
            Self::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            Self::Bbr => Arc::new(LossTolerant::new(quinn::congestion::BbrConfig::default())),
        }
    }
}

/// Share of a round trip's data (in thousandths) that must be lost before
/// the loss counts as congestion: BBRv2's 2 %.
const LOSS_THRESHOLD_PERMILLE: u64 = 20;

/// Loss smaller than this (in bytes: a few full-size packets) never counts as
/// congestion on its own, so that one loss in a small start-up flight does
/// not end start-up.
const MIN_CONGESTION_LOSS: u64 = 4 * 1_200;

/// A measurement window spans at least a round trip and at least this many
/// bytes (about 1,000 full-size packets), so that the loss rate of 1 % random
/// loss is measured as about 1 %: over a single round trip of a small window
/// the count of lost packets is too noisy, and each false alarm would cap the
/// window for a round trip.
const MIN_WINDOW_BYTES: u64 = 1_000 * 1_200;

/// A controller factory whose controllers hear of loss only when it exceeds
/// the loss threshold (see [`LossMeter`]), or when it is persistent
/// congestion, or an ECN congestion mark (always passed on).
#[derive(Debug)]
pub struct LossTolerant<F> {
    inner: Arc<F>,
}

impl<F> LossTolerant<F> {
    /// Wraps the controllers `inner` builds.
    pub fn new(inner: F) -> Self {
        Self { inner: Arc::new(inner) }
    }
}

impl<F: ControllerFactory + Send + Sync + 'static> ControllerFactory for LossTolerant<F> {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LossFilter {
            inner: self.inner.clone().build(now, current_mtu),
            meter: LossMeter::default(),
            acked_any: false,
        })
    }
}

/// Bytes delivered and lost during one measurement window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    delivered: u64,
    lost: u64,
}

/// Measures the loss rate over the current and the previous window, each at
/// least a round trip and [`MIN_WINDOW_BYTES`] long; plain bookkeeping, no I/O.
#[derive(Debug, Clone, Copy)]
pub struct LossMeter {
    /// Latest smoothed round trip: the shortest window.
    round_trip: Duration,
    window_start: Option<Instant>,
    current: Tally,
    previous: Tally,
}

impl Default for LossMeter {
    fn default() -> Self {
        Self {
            round_trip: Duration::from_millis(100),
            window_start: None,
            current: Tally::default(),
            previous: Tally::default(),
        }
    }
}

impl LossMeter {
    /// `bytes` were acknowledged; `round_trip` is the current smoothed round trip.
    pub fn delivered(&mut self, bytes: u64, round_trip: Duration) {
        self.current.delivered += bytes;
        self.round_trip = round_trip;
    }

    /// `bytes` were declared lost.
    pub fn lost(&mut self, bytes: u64) {
        self.current.lost += bytes;
    }

    /// Starts a new window when the current one is long enough (called once
    /// per batch of acknowledgements).
    pub fn roll(&mut self, now: Instant) {
        let long_enough = |start: Instant| {
            now.saturating_duration_since(start) >= self.round_trip
                && self.current.delivered + self.current.lost >= MIN_WINDOW_BYTES
        };
        if self.window_start.is_none_or(long_enough) {
            self.previous = std::mem::take(&mut self.current);
            self.window_start = Some(now);
        }
    }

    /// Whether the loss over the current and the previous window amounts to congestion.
    pub fn congested(&self) -> bool {
        let lost = self.current.lost + self.previous.lost;
        let total = self.current.delivered + self.previous.delivered + lost;
        lost >= MIN_CONGESTION_LOSS && lost * 1_000 > total * LOSS_THRESHOLD_PERMILLE
    }
}

/// The controller [`LossTolerant`] builds: passes every call through,
/// congestion events only when the [`LossMeter`] says congestion.
struct LossFilter {
    inner: Box<dyn Controller>,
    meter: LossMeter,
    acked_any: bool,
}

impl Controller for LossFilter {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &quinn_proto::RttEstimator) {
        self.meter.delivered(bytes, rtt.get());
        // quinn's BBR takes its minimum round trip from an acknowledgement
        // only while that is unset (zero) if the sample is not app-limited;
        // a connection that starts with small messages (a control stream
        // does) can enter ProbeRTT first and keep a zero minimum for 10 s,
        // which pins its window at the initial 240 kB. The first sample is
        // therefore passed as not app-limited, so the minimum is set at once.
        let app_limited = app_limited && self.acked_any;
        self.acked_any = true;
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_packet_num_acked: Option<u64>) {
        self.meter.roll(now);
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.meter.lost(lost_bytes);
        // `lost_bytes == 0` is an ECN congestion mark: explicit, always congestion.
        if is_persistent_congestion || lost_bytes == 0 || self.meter.congested() {
            self.inner
                .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(LossFilter {
            inner: self.inner.clone_box(),
            meter: self.meter,
            acked_any: self.acked_any,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: u64 = 1_200;
    const RTT: Duration = Duration::from_millis(20);

    /// Sends `packets` packets, one window per `per_window`, losing one in
    /// every `loss_every`; returns how many losses the meter called congestion.
    fn run(packets: u64, per_window: u64, loss_every: u64) -> u64 {
        let mut meter = LossMeter::default();
        let mut now = Instant::now();
        let mut congested = 0;
        for n in 1..=packets {
            if n % loss_every == 0 {
                meter.lost(PACKET);
                congested += u64::from(meter.congested());
            } else {
                meter.delivered(PACKET, RTT);
            }
            if n % per_window == 0 {
                now += RTT;
                meter.roll(now);
            }
        }
        congested
    }

    #[test]
    fn one_percent_random_loss_is_not_congestion() {
        // Windows of 200 packets (small flights) and of 5,000 (large ones).
        assert_eq!(run(100_000, 200, 100), 0);
        assert_eq!(run(100_000, 5_000, 100), 0);
    }

    #[test]
    fn loss_above_the_threshold_is_congestion() {
        // 5 % loss: nearly every loss after the first few counts.
        let losses = 100_000 / 20;
        assert!(run(100_000, 200, 20) > losses * 9 / 10);
    }

    #[test]
    fn a_burst_in_a_small_flight_is_congestion_and_a_single_loss_is_not() {
        let mut meter = LossMeter::default();
        meter.roll(Instant::now());
        for _ in 0..20 {
            meter.delivered(PACKET, RTT);
        }
        meter.lost(PACKET);
        assert!(!meter.congested(), "one loss in a start-up flight");
        for _ in 0..3 {
            meter.lost(PACKET);
        }
        assert!(meter.congested(), "four losses in 24 packets");
    }

    #[test]
    fn windows_last_at_least_a_round_trip_and_enough_bytes() {
        let mut meter = LossMeter::default();
        let start = Instant::now();
        meter.roll(start);
        meter.delivered(MIN_WINDOW_BYTES, RTT);
        meter.roll(start + RTT / 2);
        assert_eq!(meter.previous, Tally::default(), "rolled before a round trip");
        meter.roll(start + RTT);
        assert_eq!(meter.previous.delivered, MIN_WINDOW_BYTES);
        meter.delivered(PACKET, RTT);
        meter.roll(start + 3 * RTT);
        assert_eq!(meter.previous.delivered, MIN_WINDOW_BYTES, "rolled with too few bytes");
    }
}
