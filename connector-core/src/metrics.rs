//! What servers and agents count, and the `/metrics` page ([`crate::admin`])
//! in the Prometheus text format (version 0.0.4).
//!
//! The counters, gauges and histograms are [`prometheus_client`]'s (the
//! Prometheus project's Rust client), updated on the paths that already do
//! work (a dial, a rejection, a read), and its encoder writes the page. What
//! is only known when `/metrics` is scraped (connected agents by transport,
//! connections not yet admitted, the runtime's tasks) is read then: each
//! render registers the live metrics and those values in a fresh
//! [`Registry`], in the order the page has always had. Counters are
//! registered without their `_total` suffix, which the encoder appends.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

/// The `Content-Type` of the page.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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

/// Counters keyed by one label whose values come from a small, fixed
/// vocabulary (a dial result, a reject code), so the number of series stays
/// bounded: a [`Family`] of [`Counter`]s.
#[derive(Debug, Clone)]
pub struct LabeledCounter {
    label: &'static str,
    series: Family<[(&'static str, &'static str); 1], Counter>,
    total: Counter,
}

impl LabeledCounter {
    /// No series yet; `label` is the label's name.
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            series: Family::default(),
            total: Counter::default(),
        }
    }

    /// Adds one to the series `value`.
    pub fn inc(&self, value: &'static str) {
        self.series.get_or_create(&[(self.label, value)]).inc();
        self.total.inc();
    }

    /// The value of one series (0 if it never happened).
    pub fn get(&self, value: &'static str) -> u64 {
        self.series.get(&[(self.label, value)]).map_or(0, |c| c.get())
    }

    /// The sum over all series.
    pub fn total(&self) -> u64 {
        self.total.get()
    }
}

/// Encoded as its [`Family`], but never skipped as empty: the page has the
/// counter's `HELP` and `TYPE` before its first series too.
impl EncodeMetric for LabeledCounter {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.series.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`] (observations in seconds).
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// One `/metrics` page being put together.
struct Page(Registry);

impl Page {
    fn new() -> Self {
        Self(Registry::default())
    }

    /// Registers `metric`. `help` is a sentence; the registry appends the
    /// full stop itself, so it is taken off here.
    fn add(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.0.register(name, help.strip_suffix('.').unwrap_or(help), metric);
    }

    /// A gauge whose value is known now.
    fn gauge(&mut self, name: &str, help: &str, value: i64) {
        self.add(name, help, ConstGauge::new(value));
    }

    /// A gauge with one series per value of `label`.
    fn gauges_by(&mut self, name: &str, help: &str, label: &'static str, series: &[(&str, i64)]) {
        let family = Family::<[(&'static str, String); 1], Gauge>::default();
        for (value, sample) in series {
            family.get_or_create(&[(label, (*value).to_owned())]).set(*sample);
        }
        self.add(name, help, family);
    }

    /// An info metric: `{name}_info{label="value"} 1`, typed as a gauge.
    fn info(&mut self, name: &str, help: &str, label: &'static str, value: &str) {
        self.add(name, help, Info::new([(label, value.to_owned())]));
    }

    fn finish(self) -> String {
        let mut page = String::new();
        prometheus_text::encode(&mut page, &self.0).expect("writing to a String cannot fail");
        page
    }
}

/// What the ServiceAccount-token authenticator
/// ([`crate::auth::KubernetesAuthenticator`]) counts. Clones count together.
#[derive(Debug, Clone)]
pub struct TokenReviewMetrics {
    /// TokenReviews sent to the apiserver, by result: `authenticated`,
    /// `denied` (not authenticated) or `error` (no answer in time, or an error).
    pub reviews: LabeledCounter,
    /// ServiceAccount-token authentications by what the cache held for the
    /// token: `hit` (a decision still standing: no review), `shared` (a review
    /// of the same token in flight, waited for) or `miss` (a review of its own).
    pub cache: LabeledCounter,
}

impl Default for TokenReviewMetrics {
    fn default() -> Self {
        Self {
            reviews: LabeledCounter::new("result"),
            cache: LabeledCounter::new("result"),
        }
    }
}

/// What a [`crate::Server`] counts.
#[derive(Debug)]
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
    /// ServiceAccount-token reviews and cache answers (shared with the
    /// server's [`crate::auth::KubernetesAuthenticator`], if it has one).
    pub token_reviews: TokenReviewMetrics,
    /// Lease rounds (renew this server's Lease, count the others), by
    /// result: `ok` or `error` (the last good count is kept).
    pub lease_updates: LabeledCounter,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self {
            dials: LabeledCounter::new("result"),
            dial_duration: latency_histogram(),
            tunnels_active: Gauge::default(),
            tunnels_stalled: Counter::default(),
            bytes_to_targets: Counter::default(),
            bytes_from_targets: Counter::default(),
            agent_rejections: LabeledCounter::new("reason"),
            agent_connections: Counter::default(),
            refused_agent_streams: Counter::default(),
            go_aways: LabeledCounter::new("direction"),
            token_reviews: TokenReviewMetrics::default(),
            lease_updates: LabeledCounter::new("result"),
        }
    }
}

impl ServerMetrics {
    /// Renders the page; `agents` are the agents connected now, by
    /// transport, `unadmitted` the connections not yet admitted,
    /// `server_count` the replica count this server reports to agents.
    pub fn render(
        &self,
        server_id: &str,
        agents: &[(&str, usize)],
        unadmitted: crate::server::Unadmitted,
        server_count: u16,
    ) -> String {
        let mut page = Page::new();
        page.info(
            "connector_server",
            "This server replica's id (always 1).",
            "server_id",
            server_id,
        );
        page.gauge(
            "connector_server_replicas",
            "Server replicas this server reports to agents in its Welcome: server-count, or the unexpired Leases it counts.",
            i64::from(server_count),
        );
        page.gauges_by(
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
        page.gauges_by(
            "connector_server_agents_connected",
            "Agents connected now, by transport (QUIC, or the TCP fallback).",
            "transport",
            &by_transport,
        );
        page.add(
            "connector_server_agent_connections",
            "Agent connections admitted (each reconnect counts).",
            self.agent_connections.clone(),
        );
        page.add(
            "connector_server_agent_rejections",
            "Agent connections refused, by reason.",
            self.agent_rejections.clone(),
        );
        page.add(
            "connector_server_refused_agent_streams",
            "Streams opened by agents other than their control stream, refused.",
            self.refused_agent_streams.clone(),
        );
        page.add(
            "connector_server_token_reviews",
            "TokenReviews of agents' ServiceAccount tokens sent to the apiserver, by result (authenticated, denied, error).",
            self.token_reviews.reviews.clone(),
        );
        page.add(
            "connector_server_token_review_cache",
            "ServiceAccount-token authentications by what the review cache held: hit (no review), shared (waited for a review of the same token in flight), miss (reviewed).",
            self.token_reviews.cache.clone(),
        );
        page.add(
            "connector_server_lease_updates",
            "Lease rounds (renew this server's Lease, count the replicas' unexpired Leases), by result (ok, error).",
            self.lease_updates.clone(),
        );
        page.add(
            "connector_server_go_aways",
            "GoAways, by direction: sent to agents while draining, received from agents leaving or moving, acknowledged by agents (answered with a GoAway or a close).",
            self.go_aways.clone(),
        );
        page.add(
            "connector_server_dials",
            "Dials through agents, by result.",
            self.dials.clone(),
        );
        page.add(
            "connector_server_dial_duration_seconds",
            "Time from a dial to its answer.",
            self.dial_duration.clone(),
        );
        page.add(
            "connector_server_tunnels_active",
            "Tunnelled connections open now.",
            self.tunnels_active.clone(),
        );
        page.add(
            "connector_server_tunnels_stalled",
            "Tunnelled connections the agent closed because one side read nothing for its stall timeout.",
            self.tunnels_stalled.clone(),
        );
        page.add(
            "connector_server_bytes_to_targets",
            "Bytes sent through tunnels towards targets.",
            self.bytes_to_targets.clone(),
        );
        page.add(
            "connector_server_bytes_from_targets",
            "Bytes received through tunnels from targets.",
            self.bytes_from_targets.clone(),
        );
        page.finish()
    }
}

/// What an [`crate::Agent`] counts.
#[derive(Debug)]
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

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            connects: Counter::default(),
            connect_failures: LabeledCounter::new("reason"),
            dials: LabeledCounter::new("result"),
            tunnels_active: Gauge::default(),
            go_aways: Counter::default(),
            tunnels_idle_closed: Counter::default(),
            tunnels_stalled: Counter::default(),
        }
    }
}

impl AgentMetrics {
    /// Renders the page: `connected` distinct server replicas held out of
    /// `expected`, and live sessions per transport.
    pub fn render(&self, agent_id: &str, connected: usize, expected: usize, transports: &[(&str, usize)]) -> String {
        let mut page = Page::new();
        page.info("connector_agent", "This agent's id (always 1).", "agent_id", agent_id);
        page.gauge(
            "connector_agent_connected",
            "1 while the agent holds a session with at least one server.",
            i64::from(connected > 0),
        );
        page.gauge(
            "connector_agent_servers_connected",
            "Distinct server replicas the agent holds a session with.",
            connected as i64,
        );
        page.gauge(
            "connector_agent_servers_expected",
            "Server replicas the agent should hold (listed addresses, or the count the servers report).",
            expected as i64,
        );
        let live = |transport: &str| {
            transports
                .iter()
                .find(|(t, _)| *t == transport)
                .map_or(0, |(_, n)| *n as i64)
        };
        page.gauges_by(
            "connector_agent_sessions",
            "Live sessions by transport (QUIC, or the TCP fallback).",
            "transport",
            &[("quic", live("quic")), ("tcp", live("tcp"))],
        );
        page.add(
            "connector_agent_go_aways",
            "GoAways received from servers (a replica draining); the agent connected elsewhere.",
            self.go_aways.clone(),
        );
        page.add(
            "connector_agent_connects",
            "Sessions established (the first and every reconnect).",
            self.connects.clone(),
        );
        page.add(
            "connector_agent_connect_failures",
            "Connection attempts that failed or were rejected, by reason.",
            self.connect_failures.clone(),
        );
        page.add("connector_agent_dials", "Dials served, by result.", self.dials.clone());
        page.add(
            "connector_agent_tunnels_active",
            "Tunnelled connections open now.",
            self.tunnels_active.clone(),
        );
        page.add(
            "connector_agent_tunnels_idle_closed",
            "Tunnelled connections closed because no byte moved for the idle timeout.",
            self.tunnels_idle_closed.clone(),
        );
        page.add(
            "connector_agent_tunnels_stalled",
            "Tunnelled connections closed on both ends because one side read nothing for the stall timeout.",
            self.tunnels_stalled.clone(),
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
    let mut page = Page::new();
    page.gauge(
        "connector_runtime_alive_tasks",
        "Tasks spawned on the process's tokio runtime and not yet finished.",
        runtime.num_alive_tasks() as i64,
    );
    page.gauge(
        "connector_runtime_workers",
        "Worker threads of the process's tokio runtime.",
        runtime.num_workers() as i64,
    );
    page.finish()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::server::Unadmitted;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let metrics = ServerMetrics::default();
        for seconds in [
            Duration::from_micros(300),
            Duration::from_millis(3),
            Duration::from_secs(60),
        ] {
            metrics.dial_duration.observe(seconds.as_secs_f64());
        }
        let text = metrics.render("s", &[], Unadmitted::default(), 1);
        let name = "connector_server_dial_duration_seconds";
        assert!(text.contains(&format!("# TYPE {name} histogram\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.0005\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.005\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{le=\"30\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{le=\"+Inf\"}} 3\n")), "{text}");
        assert!(text.contains(&format!("{name}_count 3\n")), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let page = AgentMetrics::default().render("a\"b\\c\nd", 0, 1, &[]);
        assert!(
            page.contains("connector_agent_info{agent_id=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{page}"
        );
    }

    /// Counters keep their `_total` names in `HELP` and `TYPE` too, a
    /// labelled counter has both before its first series, help texts end
    /// in one full stop, and the page has no OpenMetrics `# EOF`.
    #[test]
    fn the_page_keeps_its_names_types_and_help_texts() {
        let metrics = ServerMetrics::default();
        metrics.go_aways.inc("sent");
        metrics.go_aways.inc("sent");
        metrics.agent_connections.inc();
        let page = metrics.render("s", &[("quic", 2), ("memory", 1)], Unadmitted::default(), 1);
        for line in [
            "# HELP connector_server_info This server replica's id (always 1).\n",
            "# TYPE connector_server_info gauge\n",
            "connector_server_info{server_id=\"s\"} 1\n",
            "# HELP connector_server_agent_connections_total Agent connections admitted (each reconnect counts).\n",
            "# TYPE connector_server_agent_connections_total counter\n",
            "connector_server_agent_connections_total 1\n",
            "# HELP connector_server_dials_total Dials through agents, by result.\n",
            "# TYPE connector_server_dials_total counter\n",
            "# TYPE connector_server_go_aways_total counter\n",
            "connector_server_go_aways_total{direction=\"sent\"} 2\n",
            "connector_server_agents_connected{transport=\"quic\"} 2\n",
            "connector_server_agents_connected{transport=\"tcp\"} 0\n",
            "connector_server_agents_connected{transport=\"memory\"} 1\n",
            "# TYPE connector_server_tunnels_active gauge\n",
            "connector_server_tunnels_active 0\n",
        ] {
            assert!(page.contains(line), "no {line:?} in:\n{page}");
        }
        assert!(!page.contains("connector_server_dials_total{"), "{page}");
        assert!(!page.contains(".."), "{page}");
        assert!(!page.contains("# EOF"), "{page}");
        assert_eq!(metrics.go_aways.get("sent"), 2);
        assert_eq!(metrics.go_aways.get("received"), 0);
        assert_eq!(metrics.go_aways.total(), 2);
    }
}
