//! Congestion control for the QUIC transport: which controller decides how
//! much an end has in flight ([`CongestionControl`]), our BBR (`bbr`), the
//! default that picks Cubic or BBR by the path's round trip (`by_rtt`), and
//! the loss measurement BBR uses to tell random loss from congestion
//! ([`LossMeter`]).
//!
//! Random loss (a lossy radio or long-haul link, not a full queue) is what
//! Cubic handles worst: it cuts its window by 30 % at every loss, so 1 % loss on a
//! 20 ms path holds it to a few Mbit/s (measured: 6 Mbit/s, where Linux's TCP
//! with BBR moved 0.5 Gbit/s on the same path; `docs/benchmarks.md`). BBR
//! keeps the path's bandwidth-delay product in flight instead, and, as BBRv2
//! does, counts loss as congestion only above 2 % of the data of a window
//! (draft-cardwell-iccrg-bbr-congestion-control-02, `BBRLossThresh`).

mod bbr;
mod by_rtt;

use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::ControllerFactory;

/// Which congestion controller QUIC uses for what this end sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CongestionControl {
    /// Cubic on paths with a minimum round trip under 5 ms, BBR on longer
    /// ones (`by_rtt::ByRoundTrip`): each where it measured best.
    #[default]
    Auto,
    /// CUBIC (RFC 9438), quinn's default: conservative, backs off on every loss.
    Cubic,
    /// BBR (`bbr::Bbr`): keeps the measured bandwidth-delay product in
    /// flight and takes loss as congestion only above 2 % of a window, so a
    /// lossy long path keeps its throughput; measured in `docs/benchmarks.md`
    /// (WAN rows).
    Bbr,
}

impl std::str::FromStr for CongestionControl {
    type Err = super::UnknownChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cubic" => Ok(Self::Cubic),
            "bbr" => Ok(Self::Bbr),
            other => Err(super::UnknownChoice {
                what: "congestion controller",
                given: other.to_owned(),
                choices: "use auto, cubic or bbr",
            }),
        }
    }
}

impl CongestionControl {
    /// The quinn controller factory for this choice.
    pub fn factory(self) -> Arc<dyn ControllerFactory + Send + Sync> {
        match self {
            Self::Auto => Arc::new(by_rtt::ByRoundTripFactory),
            Self::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            Self::Bbr => Arc::new(bbr::BbrFactory),
        }
    }
}

/// Share of a round trip's data (in thousandths) that must be lost before
/// the loss counts as congestion: BBRv2's 2 %.
const LOSS_THRESHOLD_PERMILLE: u64 = 20;

/// Loss smaller than this (in bytes: eight full-size packets, BBRv2's
/// `BBRStartupFullLossCnt`) never counts as congestion, so that a few random
/// losses in a small start-up flight do not end start-up.
const MIN_CONGESTION_LOSS: u64 = 8 * 1_200;

/// A measurement window spans at least a round trip and at least this many
/// bytes (about 1,000 full-size packets), so that the loss rate of 1 % random
/// loss is measured as about 1 %: over a single round trip of a small window
/// the count of lost packets is too noisy, and each false alarm would cap the
/// window for a round trip.
const MIN_WINDOW_BYTES: u64 = 1_000 * 1_200;

/// Bytes delivered and lost during one measurement window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    delivered: u64,
    lost: u64,
}

/// Measures the loss rate over the current and the previous window, each at
/// least a round trip and `MIN_WINDOW_BYTES` long; plain bookkeeping, no I/O.
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
        for _ in 0..40 {
            meter.delivered(PACKET, RTT);
        }
        for _ in 0..7 {
            meter.lost(PACKET);
        }
        assert!(!meter.congested(), "seven losses in a start-up flight");
        meter.lost(PACKET);
        assert!(meter.congested(), "eight losses in 48 packets");
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
