//! A BBR congestion controller (after draft-cardwell-iccrg-bbr-congestion-control,
//! version 1 of the model, as Linux's `tcp_bbr`) for quinn.
//!
//! BBR models the path by two numbers: the bottleneck bandwidth (the largest
//! delivery rate of the last ten round trips) and the round-trip propagation
//! time (the smallest round trip of the last ten seconds). It keeps about
//! their product in flight, so random loss does not shrink its window; loss
//! counts only when it is heavy (more than 2 % of a window, [`LossMeter`]) or
//! persistent.
//!
//! Why not quinn's own BBR: its bandwidth samples are the rate between two
//! consecutive packets, which bursts of sends and ACKs inflate tenfold
//! (measured: it paced at 8–10 Gbit/s on a 0.6 Gbit/s path and lost 38 % of
//! its packets), and it keeps a zero minimum round trip (so its initial window) when
//! a connection starts with small messages. Here delivery rates are measured
//! as the draft says: the data delivered between a packet's send and its
//! acknowledgement, over the longer of the send and the ACK intervals, and a
//! sample over less than the minimum round trip is discarded.
//!
//! quinn paces sends from the window and the smoothed round trip, not from
//! a controller's pacing rate, so the gains of the draft act on the window
//! here: start-up grows it by what is acknowledged (doubling per round
//! trip), and the steady state cycles between 1.25, 0.75 and 1 times the
//! estimated bandwidth-delay product.

use std::any::Any;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};

use super::LossMeter;

/// Window gains of the steady state, one per minimum round trip: probe for
/// more bandwidth, drain the queue that made, then cruise.
const PROBE_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Start-up ends when the bandwidth grew less than this over three round trips.
const FULL_BANDWIDTH_GROWTH: f64 = 1.25;
const FULL_BANDWIDTH_ROUNDS: u8 = 3;
/// Round trips the bandwidth maximum is kept for.
const BANDWIDTH_WINDOW_ROUNDS: u64 = 10;
/// Round trips the ACK-aggregation maximum is kept for (Linux: 5).
const AGGREGATION_WINDOW_ROUNDS: u64 = 5;
/// How long a minimum round trip is trusted before it is measured again.
const MIN_RTT_LIFETIME: Duration = Duration::from_secs(10);
/// How long the window stays at its minimum to measure the round trip.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// Share of the bandwidth times the smoothed round trip below which the
/// window is not set, whatever the minimum round trip says. Below 1, so a
/// queue that inflates the smoothed round trip still drains.
const SMOOTHED_RTT_FLOOR: f64 = 0.9;
/// Full-size packets of the smallest window.
const MIN_WINDOW_PACKETS: u64 = 4;
/// Most send states kept (a safety net: states are coalesced, see `on_sent`).
const MAX_SEND_STATES: usize = 1 << 16;
/// Initial window: RFC 9002's `min(10 * max_datagram_size, max(14720, 2 * max_datagram_size))`.
const INITIAL_WINDOW: u64 = 14_720;

/// Builds [`Bbr`] controllers; hand it to `TransportConfig::congestion_controller_factory`.
#[derive(Debug, Default, Clone, Copy)]
pub struct BbrFactory;

impl ControllerFactory for BbrFactory {
    fn build(self: std::sync::Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Bbr::new(now, current_mtu))
    }
}

/// The largest value seen in each of the last `rounds` round trips.
#[derive(Debug, Clone, Default)]
struct RoundMax {
    rounds: u64,
    best: VecDeque<(u64, u64)>,
}

impl RoundMax {
    fn new(rounds: u64) -> Self {
        Self {
            rounds,
            best: VecDeque::new(),
        }
    }

    fn get(&self) -> u64 {
        self.best.iter().map(|&(_, v)| v).max().unwrap_or(0)
    }

    fn update(&mut self, round: u64, value: u64) {
        match self.best.back_mut() {
            Some((r, best)) if *r == round => *best = (*best).max(value),
            _ => self.best.push_back((round, value)),
        }
        while self.best.front().is_some_and(|&(r, _)| r + self.rounds <= round) {
            self.best.pop_front();
        }
    }
}

/// What was known when a batch of packets was sent, to measure the delivery
/// rate once one of them is acknowledged.
#[derive(Debug, Clone, Copy)]
struct SendState {
    sent: Instant,
    delivered: u64,
    delivered_at: Instant,
    first_sent: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Startup,
    Drain,
    ProbeBandwidth { phase: usize, since: Instant },
    ProbeRtt { until: Option<Instant>, round: u64 },
}

/// The BBR controller of one connection.
#[derive(Debug, Clone)]
pub struct Bbr {
    mtu: u64,
    mode: Mode,
    window: u64,
    /// Window to return to after ProbeRTT.
    prior_window: u64,
    in_flight: u64,

    // Delivery-rate sampling.
    delivered: u64,
    delivered_at: Instant,
    first_sent: Instant,
    /// One state per change of what is known, oldest first.
    sends: VecDeque<SendState>,
    /// Bytes acknowledged in the current batch of ACKs.
    batch_acked: u64,

    // The path model.
    /// Largest delivery rate (bytes per second) of the last round trips.
    bandwidth: RoundMax,
    /// Largest excess of acknowledged bytes over what the bandwidth explains
    /// (ACKs that arrive in bursts, a receiver scheduled late): the window
    /// keeps this much more, or bursts would find it closed.
    aggregation: RoundMax,
    aggregation_start: Option<Instant>,
    aggregation_acked: u64,
    min_rtt: Option<Duration>,
    min_rtt_at: Instant,
    /// quinn's smoothed round trip at the last ACK.
    smoothed_rtt: Duration,
    /// Smallest round trip seen in the current batch of ACKs.
    batch_rtt: Option<Duration>,

    // Round trips: one ends when a packet sent after the previous end is acknowledged.
    round: u64,
    round_end_delivered: u64,
    round_started: bool,

    // Start-up exit.
    full_bandwidth: u64,
    rounds_without_growth: u8,
    pipe_filled: bool,

    meter: LossMeter,
    /// Round trip in which the window was last cut for heavy loss.
    loss_cut_round: Option<u64>,
}

impl Bbr {
    /// A controller for a new connection.
    pub fn new(now: Instant, mtu: u16) -> Self {
        Self {
            mtu: u64::from(mtu),
            mode: Mode::Startup,
            window: INITIAL_WINDOW,
            prior_window: INITIAL_WINDOW,
            in_flight: 0,
            delivered: 0,
            delivered_at: now,
            first_sent: now,
            sends: VecDeque::new(),
            batch_acked: 0,
            bandwidth: RoundMax::new(BANDWIDTH_WINDOW_ROUNDS),
            aggregation: RoundMax::new(AGGREGATION_WINDOW_ROUNDS),
            aggregation_start: None,
            aggregation_acked: 0,
            min_rtt: None,
            min_rtt_at: now,
            smoothed_rtt: Duration::ZERO,
            batch_rtt: None,
            round: 0,
            round_end_delivered: 0,
            round_started: false,
            full_bandwidth: 0,
            rounds_without_growth: 0,
            pipe_filled: false,
            meter: LossMeter::default(),
            loss_cut_round: None,
        }
    }

    /// One acknowledged packet, sent at `sent` (`Controller::on_ack` without quinn's types).
    fn acked(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, smoothed_rtt: Duration) {
        self.meter.delivered(bytes, smoothed_rtt);
        self.smoothed_rtt = smoothed_rtt;
        self.delivered += bytes;
        self.delivered_at = now;
        self.batch_acked += bytes;
        // A zero sample (an ACK handled at the instant quinn stamped the send
        // with) says nothing about the path.
        let rtt = now.saturating_duration_since(sent);
        if !rtt.is_zero() {
            self.batch_rtt = Some(self.batch_rtt.map_or(rtt, |r| r.min(rtt)));
        }
        // The state of this packet is the latest sent no later than it; older
        // ones belong to packets acknowledged already or lost.
        while self.sends.get(1).is_some_and(|next| next.sent <= sent) {
            self.sends.pop_front();
        }
        let Some(state) = self.sends.front().copied().filter(|s| s.sent <= sent) else {
            return;
        };
        if state.delivered >= self.round_end_delivered {
            self.round_end_delivered = self.delivered;
            self.round += 1;
            self.round_started = true;
        }
        self.first_sent = state.sent;
        let interval = state
            .sent
            .saturating_duration_since(state.first_sent)
            .max(now.saturating_duration_since(state.delivered_at));
        // Shorter than a round trip: ACK compression, not the path's rate.
        if self.min_rtt.is_some_and(|min| interval < min) || interval.is_zero() {
            return;
        }
        let rate = ((self.delivered - state.delivered) as f64 / interval.as_secs_f64()) as u64;
        // An app-limited sample only counts when it shows more than known.
        if !app_limited || rate > self.bandwidth() {
            self.bandwidth.update(self.round, rate);
        }
    }

    fn min_window(&self) -> u64 {
        MIN_WINDOW_PACKETS * self.mtu
    }

    /// Estimated bottleneck bandwidth, bytes per second (0 before any sample).
    pub fn bandwidth(&self) -> u64 {
        self.bandwidth.get()
    }

    /// `gain` times the estimated bandwidth-delay product, or `None` before the model has both.
    fn target(&self, gain: f64) -> Option<u64> {
        let bw = self.bandwidth();
        let rtt = self.min_rtt?;
        if bw == 0 {
            return None;
        }
        let bdp = bw as f64 * rtt.as_secs_f64();
        // Never far below what the smoothed round trip says is in flight at
        // this rate: a minimum taken from samples that came out short (a
        // receive timestamp taken before a preempted batch was read) would
        // otherwise keep the window under the path's product, each round's
        // delivery rate under the last, and the bandwidth estimate sinking.
        let floor = SMOOTHED_RTT_FLOOR * bw as f64 * self.smoothed_rtt.as_secs_f64();
        // More for delayed and aggregated ACKs.
        Some(((gain * bdp).max(floor) as u64 + self.aggregation.get() + 3 * self.mtu).max(self.min_window()))
    }

    /// Tracks how far acknowledgements run ahead of the estimated bandwidth.
    fn update_aggregation(&mut self, now: Instant, acked: u64) {
        let bw = self.bandwidth();
        let expected = self.aggregation_start.map_or(0, |start| {
            (bw as f64 * now.saturating_duration_since(start).as_secs_f64()) as u64
        });
        // A new epoch when ACKs fell back to the bandwidth's pace (or never measured).
        if self.aggregation_start.is_none() || self.aggregation_acked <= expected {
            self.aggregation_start = Some(now);
            self.aggregation_acked = acked;
            return;
        }
        self.aggregation_acked += acked;
        let extra = (self.aggregation_acked - expected).min(self.window);
        self.aggregation.update(self.round, extra);
    }

    fn check_full_bandwidth(&mut self, app_limited: bool) {
        if self.pipe_filled || !self.round_started || app_limited {
            return;
        }
        let bw = self.bandwidth();
        if bw as f64 >= self.full_bandwidth as f64 * FULL_BANDWIDTH_GROWTH {
            self.full_bandwidth = bw;
            self.rounds_without_growth = 0;
            return;
        }
        self.rounds_without_growth += 1;
        if self.rounds_without_growth >= FULL_BANDWIDTH_ROUNDS {
            self.pipe_filled = true;
        }
    }

    fn update_mode(&mut self, now: Instant) {
        if self.mode == Mode::Startup && self.pipe_filled {
            self.mode = Mode::Drain;
        }
        if self.mode == Mode::Drain && self.target(1.0).is_none_or(|bdp| self.in_flight <= bdp) {
            self.mode = Mode::ProbeBandwidth { phase: 0, since: now };
        }
        if let Mode::ProbeBandwidth { phase, since } = self.mode {
            let rtt = self.min_rtt.unwrap_or(Duration::from_millis(100));
            // The drain phase may end early, once the queue is gone.
            let drained = PROBE_GAINS[phase] < 1.0 && self.target(1.0).is_some_and(|bdp| self.in_flight <= bdp);
            if now.saturating_duration_since(since) >= rtt || drained {
                self.mode = Mode::ProbeBandwidth {
                    phase: (phase + 1) % PROBE_GAINS.len(),
                    since: now,
                };
            }
        }
    }

    fn update_min_rtt(&mut self, now: Instant, app_limited: bool) {
        let expired = now.saturating_duration_since(self.min_rtt_at) > MIN_RTT_LIFETIME;
        if let Some(sample) = self.batch_rtt.take()
            && (self.min_rtt.is_none_or(|min| sample <= min) || expired)
        {
            self.min_rtt = Some(sample);
            self.min_rtt_at = now;
        }
        // An app-limited connection builds no queue, so its samples are
        // minimum round trips already: no need to drain the path for one (a
        // connection idle for 10 s would start its next transfer at the
        // minimum window for 200 ms).
        if expired && app_limited {
            self.min_rtt_at = now;
        } else if expired && !matches!(self.mode, Mode::ProbeRtt { .. }) {
            self.prior_window = self.window;
            self.mode = Mode::ProbeRtt {
                until: None,
                round: self.round,
            };
        }
        if let Mode::ProbeRtt { until, round } = self.mode {
            match until {
                None if self.in_flight <= self.min_window() => {
                    self.mode = Mode::ProbeRtt {
                        until: Some(now + PROBE_RTT_TIME),
                        round: self.round,
                    };
                }
                Some(until) if now >= until && self.round > round => {
                    self.min_rtt_at = now;
                    self.window = self.window.max(self.prior_window);
                    self.mode = if self.pipe_filled {
                        Mode::ProbeBandwidth { phase: 0, since: now }
                    } else {
                        Mode::Startup
                    };
                }
                _ => {}
            }
        }
    }

    fn update_window(&mut self, acked: u64) {
        let gain = match self.mode {
            Mode::Startup => None,
            Mode::Drain => Some(1.0),
            Mode::ProbeBandwidth { phase, .. } => Some(PROBE_GAINS[phase]),
            Mode::ProbeRtt { .. } => return,
        };
        match (gain, self.target(gain.unwrap_or(1.0))) {
            // Start-up (or no model yet): grow by what was acknowledged.
            (None, _) | (_, None) => self.window += acked,
            // Grow towards the target by what was acknowledged; shrink to it at once.
            (Some(_), Some(target)) => self.window = (self.window + acked).min(target),
        }
        self.window = self.window.max(self.min_window());
    }
}

impl Controller for Bbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, _last_packet_number: u64) {
        if self.in_flight == 0 {
            // Idle until now: rates are measured from here.
            self.first_sent = now;
            self.delivered_at = now;
        }
        self.in_flight += bytes;
        // Sends between two ACKs share one state (an ACK looks up the latest
        // state sent no later than its packet), so a side that only sends
        // ACKs keeps one state, not one per packet.
        let unchanged = self.sends.back().is_some_and(|last| {
            (last.delivered, last.delivered_at, last.first_sent) == (self.delivered, self.delivered_at, self.first_sent)
        });
        if !unchanged {
            if self.sends.len() == MAX_SEND_STATES {
                self.sends.pop_front();
            }
            self.sends.push_back(SendState {
                sent: now,
                delivered: self.delivered,
                delivered_at: self.delivered_at,
                first_sent: self.first_sent,
            });
        }
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &quinn_proto::RttEstimator) {
        self.acked(now, sent, bytes, app_limited, rtt.get());
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, _largest: Option<u64>) {
        let acked = std::mem::take(&mut self.batch_acked);
        self.in_flight = in_flight;
        self.meter.roll(now);
        self.update_aggregation(now, acked);
        self.check_full_bandwidth(app_limited);
        self.update_mode(now);
        self.update_min_rtt(now, app_limited);
        self.update_window(acked);
        self.round_started = false;
    }

    fn on_congestion_event(&mut self, _now: Instant, _sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.meter.lost(lost_bytes);
        self.in_flight = self.in_flight.saturating_sub(lost_bytes);
        if is_persistent_congestion {
            // Nothing arrived for several round trips: start again from the minimum window.
            self.window = self.min_window();
            return;
        }
        // Heavy loss (or an ECN mark, `lost_bytes == 0`): end start-up, and cut
        // the window once per round trip to what is in flight.
        if lost_bytes == 0 || self.meter.congested() {
            self.pipe_filled = true;
            if self.loss_cut_round != Some(self.round) {
                self.loss_cut_round = Some(self.round);
                self.window = self.in_flight.max(self.min_window());
            }
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.window = self.window.max(self.min_window());
    }

    fn window(&self) -> u64 {
        match self.mode {
            Mode::ProbeRtt { .. } => self.min_window(),
            _ => self.window,
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.window();
        metrics.pacing_rate = Some(self.bandwidth() * 8);
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        INITIAL_WINDOW
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const MTU: u64 = 1_200;

    /// A bottleneck of `rate` bytes per second with a drop-tail queue of
    /// `queue` bytes, `rtt` of propagation and `loss` random loss; the sender
    /// sends full packets whenever the window allows. Returns the bytes
    /// delivered per second over the last half of `secs`, and the controller.
    fn simulate(rate: f64, rtt: Duration, loss: f64, queue: f64, secs: u64) -> (f64, Bbr) {
        simulate_stale(rate, rtt, loss, queue, secs, Duration::ZERO)
    }

    /// [`simulate`], with the ACKs of the first 300 ms handled `stale` too
    /// early by the clock (as quinn does with datagrams read after its
    /// receive timestamp was taken, when the process was preempted
    /// mid-batch), so their round-trip samples come out short.
    fn simulate_stale(rate: f64, rtt: Duration, loss: f64, queue: f64, secs: u64, stale: Duration) -> (f64, Bbr) {
        let start = Instant::now();
        let end = start + Duration::from_secs(secs);
        let half = start + Duration::from_secs(secs) / 2;
        let mut rng = StdRng::seed_from_u64(7);
        let mut bbr = Bbr::new(start, MTU as u16);
        // (when the ACK (or loss notice) arrives, send time, lost)
        let mut events: BinaryHeap<Reverse<(Instant, Instant, bool)>> = BinaryHeap::new();
        let mut now = start;
        let mut in_flight = 0u64;
        let mut link_free = start;
        let mut delivered_late = 0u64;
        let per_packet = Duration::from_secs_f64(MTU as f64 / rate);
        while now < end {
            while in_flight + MTU <= bbr.window() {
                bbr.on_sent(now, MTU, 0);
                in_flight += MTU;
                let departs = link_free.max(now) + per_packet;
                let queued = departs.saturating_duration_since(now).as_secs_f64() * rate;
                let lost = queued > queue || rng.random::<f64>() < loss;
                if queued <= queue {
                    link_free = departs;
                }
                // A loss is noticed about when its ACK would have come.
                events.push(Reverse((departs + rtt, now, lost)));
            }
            let Some(Reverse((at, sent, lost))) = events.pop() else {
                break;
            };
            now = at;
            in_flight -= MTU;
            let stamp = if now < start + Duration::from_millis(300) {
                now - stale
            } else {
                now
            };
            if lost {
                bbr.on_congestion_event(stamp, sent, false, MTU);
            } else {
                bbr.acked(stamp, sent, MTU, false, rtt);
                if now >= half {
                    delivered_late += MTU;
                }
            }
            bbr.on_end_acks(stamp, in_flight, false, None);
        }
        let late = end.saturating_duration_since(half).as_secs_f64();
        (delivered_late as f64 / late, bbr)
    }

    const RATE: f64 = 100e6 / 8.0; // 100 Mbit/s
    const RTT: Duration = Duration::from_millis(20);
    const BDP: f64 = RATE * 0.020;

    #[test]
    fn fills_a_lossy_path_and_models_it() {
        let (throughput, bbr) = simulate(RATE, RTT, 0.01, BDP, 10);
        assert!(throughput > 0.85 * RATE, "{:.1} Mbit/s of 100", throughput * 8e-6);
        let bw = bbr.bandwidth() as f64;
        assert!(bw > 0.9 * RATE && bw < 1.2 * RATE, "bandwidth {:.1} Mbit/s", bw * 8e-6);
        let min_rtt = bbr.min_rtt.unwrap();
        assert!(min_rtt >= RTT && min_rtt < RTT * 2, "{min_rtt:?}");
    }

    #[test]
    fn short_round_trip_samples_do_not_starve_the_path() {
        // Start-up's ACKs stamped 9 ms early on a 20 ms path: the minimum
        // round trip is taken for 11 ms until it expires.
        let (throughput, bbr) = simulate_stale(RATE, RTT, 0.01, BDP, 8, Duration::from_millis(9));
        assert!(bbr.min_rtt.unwrap() < RTT * 3 / 4, "{:?}", bbr.min_rtt);
        assert!(throughput > 0.85 * RATE, "{:.1} Mbit/s of 100", throughput * 8e-6);
    }

    #[test]
    fn keeps_the_queue_short_on_a_clean_path() {
        // A queue of four bandwidth-delay products: the window stays near one.
        let (throughput, bbr) = simulate(RATE, RTT, 0.0, 4.0 * BDP, 10);
        assert!(throughput > 0.9 * RATE, "{:.1} Mbit/s of 100", throughput * 8e-6);
        assert!(
            (bbr.window() as f64) < 2.5 * BDP,
            "window {} for a BDP of {BDP}",
            bbr.window()
        );
    }

    #[test]
    fn an_app_limited_connection_does_not_drain_for_a_round_trip_sample() {
        // A control stream: one small message a second. The first round trip
        // is the smallest, so the minimum expires after 10 s.
        let start = Instant::now();
        let mut bbr = Bbr::new(start, MTU as u16);
        for second in 0..=10 {
            let sent = start + Duration::from_secs(second);
            let rtt = if second == 0 {
                RTT
            } else {
                RTT + Duration::from_millis(5)
            };
            bbr.on_sent(sent, 100, 0);
            bbr.acked(sent + rtt, sent, 100, true, rtt);
            bbr.on_end_acks(sent + rtt, 0, true, None);
        }
        assert!(!matches!(bbr.mode, Mode::ProbeRtt { .. }), "{:?}", bbr.mode);
        assert!(bbr.window() >= INITIAL_WINDOW, "window {}", bbr.window());
    }

    #[test]
    fn heavy_loss_cuts_the_window() {
        // Start-up overfills the queue once; after that, 1 % random loss
        // never counts, while 10 % keeps counting to the end.
        let (_, light) = simulate(RATE, RTT, 0.01, BDP, 5);
        let (_, heavy) = simulate(RATE, RTT, 0.10, BDP, 5);
        let last_cut = |bbr: &Bbr| bbr.loss_cut_round.map_or(0.0, |r| r as f64 / bbr.round as f64);
        assert!(
            last_cut(&light) < 0.2,
            "1 % loss taken for congestion late: {}",
            last_cut(&light)
        );
        assert!(last_cut(&heavy) > 0.9, "10 % loss ignored: {}", last_cut(&heavy));
    }
}
