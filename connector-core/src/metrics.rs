//! What servers and agents count, and its rendering in the Prometheus text
//! exposition format (version 0.0.4). Counters are plain atomics updated on
//! the paths that already do work (a dial, a rejection, a read); rendering
//! happens only when `/metrics` is scraped ([`crate::admin`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts how often each label value occurs (for gauges by transport).
pub fn tally(values: impl IntoIterator<Item = &'static str>) -> Vec<(&'static str, usize)> {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for value in values {
        match counts.iter_mut().find(|(v, _)| *v == value) {
            Some((_, n)) => *n += 1,
            None => counts.push((value, 1)),
        }
    }
    counts
}

/// Counters keyed by one label value from a small, fixed vocabulary (a dial
/// result, a reject code), so the number of series stays bounded.
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<BTreeMap<&'static str, u64>>);

impl LabeledCounter {
    /// Adds one to the series `label`.
    pub fn inc(&self, label: &'static str) {
        *self.0.lock().expect("metrics").entry(label).or_default() += 1;
    }

    /// The series and their values, ordered by label.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.0.lock().expect("metrics").iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// The value of one series (0 if it never happened).
    pub fn get(&self, label: &str) -> u64 {
        self.0.lock().expect("metrics").get(label).copied().unwrap_or(0)
    }
}

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`].
#[derive(Debug)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..=LATENCY_BUCKETS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// Builds a Prometheus text-format page.
#[derive(Debug, Default)]
pub struct TextEncoder {
    out: String,
}

impl TextEncoder {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A counter without labels (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "counter", help);
        self.sample(name, &[], value);
    }

    /// A counter with one label; always has a `HELP`/`TYPE` even without series.
    pub fn labeled_counter(&mut self, name: &str, help: &str, label: &str, counter: &LabeledCounter) {
        self.header(name, "counter", help);
        for (value, count) in counter.snapshot() {
            self.sample(name, &[(label, value)], count);
        }
    }

    /// A gauge, optionally with constant labels.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: i64) {
        self.header(name, "gauge", help);
        self.sample(name, labels, value);
    }

    /// A gauge with one series per value of `label`.
    pub fn labeled_gauge(&mut self, name: &str, help: &str, label: &str, series: &[(&str, i64)]) {
        self.header(name, "gauge", help);
        for (value, sample) in series {
            self.sample(name, &[(label, value)], *sample);
        }
    }

    /// A histogram in seconds.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.header(name, "histogram", help);
        let mut cumulative = 0;
        for (i, bucket) in histogram.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            self.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative);
        }
        let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], cumulative);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// What a [`crate::Server`] counts.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Dials by result (`ok`, or the failure's [`crate::DialError::label`]).
    pub dials: LabeledCounter,
    /// Time from `dial` to its answer, successful or not.
    pub dial_duration: Histogram,
    /// Tunnelled connections open now.
    pub tunnels_active: Gauge,
    /// Tunnelled connections the agent closed because one side read nothing
    /// for its stall timeout.
    pub tunnels_stalled: Counter,
    /// Bytes written by dialers towards targets.
    pub bytes_to_targets: Counter,
    /// Bytes read by dialers from targets.
    pub bytes_from_targets: Counter,
    /// Agent connections refused, by reject code (authentication, identifiers, limits, ...).
    pub agent_rejections: LabeledCounter,
    /// Agent connections admitted.
    pub agent_connections: Counter,
    /// Streams agents opened towards the server (only the control stream is allowed), refused.
    pub refused_agent_streams: Counter,
    /// `GoAway`s by direction: `sent` to agents while draining, `received`
    /// from agents that are drained or moved to a new connection,
    /// `acknowledged`: agents that answered a sent one (with a `GoAway` of
    /// their own or by closing their connection).
    pub go_aways: LabeledCounter,
}

impl ServerMetrics {
    /// Renders the page; `agents` are the agents connected now, by
    /// transport, `unadmitted` the connections not yet admitted.
    pub fn render(&self, server_id: &str, agents: &[(&str, usize)], unadmitted: crate::server::Unadmitted) -> String {
        let mut page = TextEncoder::new();
        page.gauge(
            "connector_server_info",
            "This server replica's id (always 1).",
            &[("server_id", server_id)],
            1,
        );
        page.labeled_gauge(
            "connector_server_agents_unadmitted",
            "Agent connections not yet admitted: handshake in progress, or waiting for their Hello and its authentication.",
            "stage",
            &[
                ("handshake", unadmitted.handshakes as i64),
                ("hello", unadmitted.awaiting_hello as i64),
            ],
        );
        let count = |transport: &str| {
            agents
                .iter()
                .filter(|(t, _)| *t == transport)
                .map(|(_, n)| *n as i64)
                .sum()
        };
        let mut by_transport = vec![("quic", count("quic")), ("tcp", count("tcp"))];
        for (transport, n) in agents {
            if !by_transport.iter().any(|(t, _)| t == transport) {
                by_transport.push((transport, *n as i64));
            }
        }
        page.labeled_gauge(
            "connector_server_agents_connected",
            "Agents connected now, by transport (QUIC, or the TCP fallback).",
            "transport",
            &by_transport,
        );
        page.counter(
            "connector_server_agent_connections_total",
            "Agent connections admitted (each reconnect counts).",
            self.agent_connections.get(),
        );
        page.labeled_counter(
            "connector_server_agent_rejections_total",
            "Agent connections refused, by reason.",
            "reason",
            &self.agent_rejections,
        );
        page.counter(
            "connector_server_refused_agent_streams_total",
            "Streams opened by agents other than their control stream, refused.",
            self.refused_agent_streams.get(),
        );
        page.labeled_counter(
            "connector_server_go_aways_total",
            "GoAways, by direction: sent to agents while draining, received from agents leaving or moving, acknowledged by agents (answered with a GoAway or a close).",
            "direction",
            &self.go_aways,
        );
        page.labeled_counter(
            "connector_server_dials_total",
            "Dials through agents, by result.",
            "result",
            &self.dials,
        );
        page.histogram(
            "connector_server_dial_duration_seconds",
            "Time from a dial to its answer.",
            &self.dial_duration,
        );
        page.gauge(
            "connector_server_tunnels_active",
            "Tunnelled connections open now.",
            &[],
            self.tunnels_active.get(),
        );
        page.counter(
            "connector_server_tunnels_stalled_total",
            "Tunnelled connections the agent closed because one side read nothing for its stall timeout.",
            self.tunnels_stalled.get(),
        );
        page.counter(
            "connector_server_bytes_to_targets_total",
            "Bytes sent through tunnels towards targets.",
            self.bytes_to_targets.get(),
        );
        page.counter(
            "connector_server_bytes_from_targets_total",
            "Bytes received through tunnels from targets.",
            self.bytes_from_targets.get(),
        );
        page.finish()
    }
}

/// What an [`crate::Agent`] counts.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// Sessions established with a server.
    pub connects: Counter,
    /// Connection attempts that failed or were rejected, by reason.
    pub connect_failures: LabeledCounter,
    /// Dials served, by result (`ok`, `refused`, `denied`, ...).
    pub dials: LabeledCounter,
    /// Tunnelled connections open now.
    pub tunnels_active: Gauge,
    /// `GoAway`s received from servers (a replica shutting down).
    pub go_aways: Counter,
    /// Tunnelled connections closed by the idle timeout.
    pub tunnels_idle_closed: Counter,
    /// Tunnelled connections closed by the stall timeout.
    pub tunnels_stalled: Counter,
}

impl AgentMetrics {
    /// Renders the page: `connected` distinct server replicas held out of
    /// `expected`, and live sessions per transport.
    pub fn render(&self, agent_id: &str, connected: usize, expected: usize, transports: &[(&str, usize)]) -> String {
        let mut page = TextEncoder::new();
        page.gauge(
            "connector_agent_info",
            "This agent's id (always 1).",
            &[("agent_id", agent_id)],
            1,
        );
        page.gauge(
            "connector_agent_connected",
            "1 while the agent holds a session with at least one server.",
            &[],
            i64::from(connected > 0),
        );
        page.gauge(
            "connector_agent_servers_connected",
            "Distinct server replicas the agent holds a session with.",
            &[],
            connected as i64,
        );
        page.gauge(
            "connector_agent_servers_expected",
            "Server replicas the agent should hold (listed addresses, or the count the servers report).",
            &[],
            expected as i64,
        );
        let live = |transport: &str| {
            transports
                .iter()
                .find(|(t, _)| *t == transport)
                .map_or(0, |(_, n)| *n as i64)
        };
        page.labeled_gauge(
            "connector_agent_sessions",
            "Live sessions by transport (QUIC, or the TCP fallback).",
            "transport",
            &[("quic", live("quic")), ("tcp", live("tcp"))],
        );
        page.counter(
            "connector_agent_go_aways_total",
            "GoAways received from servers (a replica draining); the agent connected elsewhere.",
            self.go_aways.get(),
        );
        page.counter(
            "connector_agent_connects_total",
            "Sessions established (the first and every reconnect).",
            self.connects.get(),
        );
        page.labeled_counter(
            "connector_agent_connect_failures_total",
            "Connection attempts that failed or were rejected, by reason.",
            "reason",
            &self.connect_failures,
        );
        page.labeled_counter(
            "connector_agent_dials_total",
            "Dials served, by result.",
            "result",
            &self.dials,
        );
        page.gauge(
            "connector_agent_tunnels_active",
            "Tunnelled connections open now.",
            &[],
            self.tunnels_active.get(),
        );
        page.counter(
            "connector_agent_tunnels_idle_closed_total",
            "Tunnelled connections closed because no byte moved for the idle timeout.",
            self.tunnels_idle_closed.get(),
        );
        page.counter(
            "connector_agent_tunnels_stalled_total",
            "Tunnelled connections closed on both ends because one side read nothing for the stall timeout.",
            self.tunnels_stalled.get(),
        );
        page.finish()
    }
}

/// Gauges of the tokio runtime the caller runs on (empty outside a runtime):
/// alive tasks and worker threads. Appended to every `/metrics` page, so that
/// a task leak shows as a number that keeps growing.
pub fn render_runtime() -> String {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return String::new();
    };
    let runtime = handle.metrics();
    let mut page = TextEncoder::new();
    page.gauge(
        "connector_runtime_alive_tasks",
        "Tasks spawned on the process's tokio runtime and not yet finished.",
        &[],
        runtime.num_alive_tasks() as i64,
    );
    page.gauge(
        "connector_runtime_workers",
        "Worker threads of the process's tokio runtime.",
        &[],
        runtime.num_workers() as i64,
    );
    page.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut page = TextEncoder::new();
        page.histogram("x_seconds", "help", &h);
        let text = page.finish();
        assert!(text.contains("x_seconds_bucket{le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"30\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_count 3\n"), "{text}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut page = TextEncoder::new();
        page.gauge("g", "help", &[("id", "a\"b\\c\nd")], 1);
        assert!(page.finish().contains("g{id=\"a\\\"b\\\\c\\nd\"} 1\n"));
    }
}
