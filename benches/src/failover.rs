//! `netbench failover`: how long agents take to re-register when a server
//! replica stops and its replacement comes up on the same address (a rolling
//! update, issue 17).
//!
//! Two `connector server` replicas (`a` and `b`, child processes of this
//! one, each on its own loopback port for QUIC and TCP) and `--agents`
//! agents in this process, each holding a session with both. At t0 replica
//! `a` gets `--signal` (SIGTERM: it drains; SIGKILL: it vanishes); as soon as
//! its process has exited, its replacement `a2` starts on the same address
//! (as kubelet restarts a static pod). Per agent: the time from t0 until it
//! no longer holds `a` and until it holds a session with `a2`.
//!
//! Reported (one TSV line on stdout, a summary on stderr): p50/p99/max of
//! t0 → re-registered, agents never back within `--bound-secs`, agents whose
//! transport changed, and the split t0 → `a` exited → `a2` listening →
//! agents back; the agents' connection failures by reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use connector_core::agent::Agent;
use connector_core::auth::StaticCredential;
use connector_core::proto::{Credential, Secret};
use connector_core::transport::fallback::TransportMode;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::client::percentile;
use crate::status_kib;

/// Options of `netbench failover`.
#[derive(clap::Args, Clone, Debug)]
pub struct FailoverArgs {
    /// The `connector` binary the replicas run.
    #[arg(long)]
    pub connector: PathBuf,
    /// A `connector dev-pki` directory (server.pem, server-key.pem, tokens, ca.pem, node-a.token).
    #[arg(long)]
    pub pki: PathBuf,
    /// Where the replicas' logs go (`a.log`, `b.log`, `a2.log`).
    #[arg(long)]
    pub logs: PathBuf,
    /// Agents in this process, each holding a session with both replicas.
    #[arg(long, default_value_t = 1_000)]
    pub agents: usize,
    /// Agents started at once; the next batch starts when this one holds both replicas.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// The agents' transport: `quic`, `tcp` or `auto`.
    #[arg(long, default_value = "quic")]
    pub transport: TransportMode,
    /// What replica `a` gets at t0.
    #[arg(long, value_enum, default_value_t = Signal::Term)]
    pub signal: Signal,
    /// Replica `a`'s address (UDP for QUIC and TCP for the fallback, same port), then its replacement's.
    #[arg(long, default_value = "127.0.0.1:18543")]
    pub a: SocketAddr,
    /// Replica `b`'s address.
    #[arg(long, default_value = "127.0.0.1:18544")]
    pub b: SocketAddr,
    /// The replicas' `--drain-grace`.
    #[arg(long, default_value = "20s")]
    pub drain_grace: String,
    /// An agent not back with the replacement this long after t0 counts as never back.
    #[arg(long, default_value_t = 60.0)]
    pub bound_secs: f64,
    /// Seconds to wait between "every agent holds both replicas" and t0.
    #[arg(long, default_value_t = 0.0)]
    pub settle_secs: f64,
    /// Label of the TSV line.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Log filter for the agents of this process (`connector_core=debug`); their log goes to `agents.log`.
    #[arg(long)]
    pub agent_log: Option<String>,
}

/// The signal replica `a` gets.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: the server drains (GoAway, grace, close) and exits.
    Term,
    /// SIGKILL: the server vanishes without a word.
    Kill,
}

/// One replica process and the moment its listeners were up.
struct Replica {
    child: Child,
    /// When both listeners (QUIC and TCP) had logged "accepting agents".
    ready: Instant,
}

/// Starts `connector server` with `server_id` on `addr`, logging to
/// `logs/server_id.log`; returns once both listeners accept agents.
async fn start_replica(args: &FailoverArgs, server_id: &str, addr: SocketAddr) -> anyhow::Result<Replica> {
    let pki = &args.pki;
    let mut cmd = Command::new(&args.connector);
    cmd.arg("server")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--cert")
        .arg(pki.join("server.pem"))
        .arg("--key")
        .arg(pki.join("server-key.pem"))
        .arg("--tokens")
        .arg(pki.join("tokens"))
        .args(["--server-id", server_id, "--server-count", "2"])
        .args(["--drain-grace", &args.drain_grace])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the replica dies with this process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", args.connector.display()))?;
    let log = Arc::new(std::sync::Mutex::new(std::fs::File::create(
        args.logs.join(format!("{server_id}.log")),
    )?));
    let (listening, mut listening_rx) = watch::channel(0usize);
    let listening = Arc::new(listening);
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    tokio::spawn(copy_log(stdout, log.clone(), listening.clone()));
    tokio::spawn(copy_log(stderr, log, listening));
    let ready = tokio::select! {
        r = listening_rx.wait_for(|n| *n >= 2) => {
            r.context("the replica's log ended")?;
            Instant::now()
        }
        status = child.wait() => bail!("replica {server_id} exited before listening: {status:?} (see its log)"),
        _ = tokio::time::sleep(Duration::from_secs(30)) => bail!("replica {server_id} not listening after 30 s"),
    };
    Ok(Replica { child, ready })
}

/// Copies a replica's output lines to its log; counts "accepting agents" lines.
async fn copy_log(
    from: impl AsyncRead + Unpin,
    log: Arc<std::sync::Mutex<std::fs::File>>,
    listening: Arc<watch::Sender<usize>>,
) {
    use std::io::Write as _;
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains("accepting agents") {
            listening.send_modify(|n| *n += 1);
        }
        let _ = writeln!(log.lock().unwrap(), "{line}");
    }
}

/// What happened to one agent after t0.
struct Outcome {
    /// When it no longer held `a`.
    lost: Option<Instant>,
    /// When it held a session with `a2`, and over which transport.
    back: Option<(Instant, &'static str)>,
    /// Whether it still held `b` at the end.
    kept_b: bool,
    /// `b`'s transport at the end, if held.
    b_transport: Option<&'static str>,
}

fn start_agent(
    args: &FailoverArgs,
    i: usize,
    cas: &[rustls::pki_types::CertificateDer<'static>],
    token: &str,
) -> anyhow::Result<Agent> {
    let mut setup =
        connector_core::setup::AgentSetup::new(args.a.to_string(), cas.to_vec(), format!("node-a/failover-{i}"));
    setup.servers = vec![args.a.to_string(), args.b.to_string()];
    setup.credentials = Some(Arc::new(StaticCredential(Credential::Bearer(Secret::new(
        token.to_owned(),
    )))));
    setup.transport = args.transport;
    Ok(setup.start()?)
}

/// Runs the measurement and prints the report.
pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.logs)?;
    if let Some(filter) = &args.agent_log {
        let file = std::fs::File::create(args.logs.join("agents.log"))?;
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter)?)
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .init();
    }
    let cas = connector_core::tls::certs_from_file(args.pki.join("ca.pem"))?;
    let token = read_token(&args.pki.join("node-a.token"))?;
    let mut a = start_replica(&args, "a", args.a).await?;
    let mut b = start_replica(&args, "b", args.b).await?;

    let started = Instant::now();
    let mut agents: Vec<Arc<Agent>> = Vec::with_capacity(args.agents);
    for first in (0..args.agents).step_by(args.batch.max(1)) {
        let end = (first + args.batch.max(1)).min(args.agents);
        for i in first..end {
            agents.push(Arc::new(start_agent(&args, i, &cas, &token)?));
        }
        for agent in &agents[first..end] {
            let both = agent
                .wait_for_servers(|s| s.iter().any(|x| x.server_id == "a") && s.iter().any(|x| x.server_id == "b"));
            if tokio::time::timeout(Duration::from_secs(120), both).await.is_err() {
                bail!(
                    "an agent did not hold both replicas within 120 s of its start: {:?}",
                    agent.status()
                );
            }
        }
    }
    let registered_in = started.elapsed();
    let startup_failures = failures(&agents);
    let transport_before: Vec<&'static str> = agents
        .iter()
        .map(|agent| {
            let servers = agent.servers();
            servers.iter().find(|s| s.server_id == "a").map_or("?", |s| s.transport)
        })
        .collect();
    eprintln!(
        "failover: {} agents hold a and b after {:.1} s (startup connection failures: {})",
        agents.len(),
        registered_in.as_secs_f64(),
        show_failures(&startup_failures),
    );
    if args.settle_secs > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    }
    // A session lost since (a starved machine) is waited for again.
    for agent in &agents {
        let both =
            agent.wait_for_servers(|s| s.iter().any(|x| x.server_id == "a") && s.iter().any(|x| x.server_id == "b"));
        if tokio::time::timeout(Duration::from_secs(120), both).await.is_err() {
            bail!(
                "an agent did not hold both replicas again within 120 s: {:?}",
                agent.status()
            );
        }
    }
    let self_rss_before = status_kib(std::process::id(), "VmRSS:");

    // Watchers first, so that no change after t0 is missed.
    let bound = Duration::from_secs_f64(args.bound_secs);
    let mut watchers = Vec::with_capacity(agents.len());
    for agent in &agents {
        let agent = agent.clone();
        watchers.push(tokio::spawn(async move {
            let gone = async {
                let gone = agent.wait_for_servers(|s| !s.iter().any(|x| x.server_id == "a"));
                tokio::time::timeout(bound, gone).await.ok().map(|_| Instant::now())
            };
            let back = async {
                let back = agent.wait_for_servers(|s| s.iter().any(|x| x.server_id == "a2"));
                let servers = tokio::time::timeout(bound, back).await.ok()?;
                let now = Instant::now();
                servers.iter().find(|x| x.server_id == "a2").map(|s| (now, s.transport))
            };
            let (lost, back) = tokio::join!(gone, back);
            (lost, back)
        }));
    }

    let pid = a.child.id().context("replica a has no pid")?;
    let t0 = Instant::now();
    let signal = match args.signal {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: kill(2) on our own child's pid, which is not reaped before the wait below.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        bail!("kill: {}", std::io::Error::last_os_error());
    }
    let status = a.child.wait().await?;
    let a_exited = Instant::now();
    let a2 = start_replica(&args, "a2", args.a).await?;

    let mut outcomes = Vec::with_capacity(agents.len());
    for (watcher, agent) in watchers.into_iter().zip(&agents) {
        let (lost, back) = watcher.await?;
        let servers = agent.servers();
        let b_session = servers.iter().find(|s| s.server_id == "b");
        outcomes.push(Outcome {
            lost,
            back,
            kept_b: b_session.is_some(),
            b_transport: b_session.map(|s| s.transport),
        });
    }
    let self_rss_peak = status_kib(std::process::id(), "VmHWM:");
    let all_failures = failures(&agents);

    let report = Report::new(&args, t0, a_exited, a2.ready, &outcomes, &transport_before);
    let after_failures: Vec<(&'static str, u64)> = all_failures
        .iter()
        .map(|(label, n)| {
            let before = startup_failures.iter().find(|(l, _)| l == label).map_or(0, |(_, n)| *n);
            (*label, n - before)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    report.print(&args, &status, &after_failures, self_rss_before, self_rss_peak);

    drop(agents);
    let _ = b.child.kill().await;
    drop(a2);
    Ok(())
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

/// The reasons an agent counts a failed connection attempt under: no
/// connection, or the server's `Reject` code.
const FAILURE_REASONS: &[&str] = &[
    "connection_failed",
    "shutting_down",
    "overloaded",
    "unauthenticated",
    "identifiers_not_allowed",
    "unsupported_version",
    "malformed",
    "internal",
    "other",
];

/// Connection failures of all agents, summed by reason.
fn failures(agents: &[Arc<Agent>]) -> Vec<(&'static str, u64)> {
    FAILURE_REASONS
        .iter()
        .map(|&reason| {
            let total = agents
                .iter()
                .map(|agent| agent.observer().metrics().connect_failures.get(reason))
                .sum();
            (reason, total)
        })
        .filter(|(_, total)| *total > 0)
        .collect()
}

fn show_failures(failures: &[(&'static str, u64)]) -> String {
    if failures.iter().all(|(_, n)| *n == 0) {
        return "none".into();
    }
    failures
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(l, n)| format!("{l}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The figures of one run.
struct Report {
    agents: usize,
    /// t0 → back with `a2`, per agent that came back, sorted.
    back: Vec<Duration>,
    /// `a2` listening → back, per agent that came back, sorted (0 if before).
    after_ready: Vec<Duration>,
    /// t0 → no longer holding `a`, sorted.
    lost: Vec<Duration>,
    never: usize,
    switches: usize,
    lost_b: usize,
    b_switches: usize,
    a_exit: Duration,
    a2_ready: Duration,
}

impl Report {
    fn new(
        args: &FailoverArgs,
        t0: Instant,
        a_exited: Instant,
        a2_ready: Instant,
        outcomes: &[Outcome],
        transport_before: &[&'static str],
    ) -> Self {
        let mut back: Vec<Duration> = outcomes.iter().filter_map(|o| o.back.map(|(t, _)| t - t0)).collect();
        back.sort();
        let mut after_ready: Vec<Duration> = outcomes
            .iter()
            .filter_map(|o| o.back.map(|(t, _)| t.saturating_duration_since(a2_ready)))
            .collect();
        after_ready.sort();
        let mut lost: Vec<Duration> = outcomes.iter().filter_map(|o| o.lost.map(|t| t - t0)).collect();
        lost.sort();
        let switches = outcomes
            .iter()
            .zip(transport_before)
            .filter(|(o, before)| o.back.is_some_and(|(_, t)| t != **before))
            .count();
        let b_switches = outcomes
            .iter()
            .zip(transport_before)
            .filter(|(o, before)| o.b_transport.is_some_and(|t| t != **before))
            .count();
        Self {
            agents: args.agents,
            never: outcomes.iter().filter(|o| o.back.is_none()).count(),
            back,
            after_ready,
            lost,
            switches,
            lost_b: outcomes.iter().filter(|o| !o.kept_b).count(),
            b_switches,
            a_exit: a_exited - t0,
            a2_ready: a2_ready - a_exited,
        }
    }

    fn print(
        &self,
        args: &FailoverArgs,
        status: &std::process::ExitStatus,
        failures: &[(&'static str, u64)],
        rss_before_kib: u64,
        rss_peak_kib: u64,
    ) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // Percentiles over all agents: one never back counts as beyond every time.
        let over_all = |sorted: &[Duration], p: f64| -> String {
            let idx = ((p / 100.0) * (self.agents.max(1) - 1) as f64).round() as usize;
            match sorted.get(idx) {
                Some(d) => format!("{:.0}", ms(*d)),
                None => "inf".into(),
            }
        };
        let pct = |sorted: &[Duration], p: f64| percentile(sorted, p).map_or("-".into(), |d| format!("{:.0}", ms(d)));
        let max = |sorted: &[Duration]| sorted.last().map_or("-".into(), |d| format!("{:.0}", ms(*d)));
        let signal = match args.signal {
            Signal::Term => "term",
            Signal::Kill => "kill",
        };
        println!(
            "failover\tlabel={}\tsignal={signal}\ttransport={}\tagents={}\tback_p50_ms={}\tback_p99_ms={}\tback_max_ms={}\tnever={}\tswitches={}\ta_exit_ms={:.0}\ta2_ready_ms={:.0}\tafter_ready_p50_ms={}\tafter_ready_p99_ms={}\tlost_a_p50_ms={}\tlost_a_p99_ms={}\tlost_b={}\tb_switches={}\tfailures={}\trss_before_mib={:.0}\trss_peak_mib={:.0}",
            args.label,
            args.transport,
            self.agents,
            over_all(&self.back, 50.0),
            over_all(&self.back, 99.0),
            max(&self.back),
            self.never,
            self.switches,
            ms(self.a_exit),
            ms(self.a2_ready),
            pct(&self.after_ready, 50.0),
            pct(&self.after_ready, 99.0),
            pct(&self.lost, 50.0),
            pct(&self.lost, 99.0),
            self.lost_b,
            self.b_switches,
            show_failures(failures),
            rss_before_kib as f64 / 1024.0,
            rss_peak_kib as f64 / 1024.0,
        );
        eprintln!(
            "failover ({signal}, {}): a exited {:.0} ms after t0 ({status}); a2 listening {:.0} ms later; \
             {} of {} agents back with a2: p50 {} ms, p99 {} ms, max {} ms after t0 \
             ({} / {} ms after a2 listened); {} never within {:.0} s; {} changed transport; \
             a dropped by the agents p50 {} / p99 {} ms after t0; {} lost b; \
             connection failures after t0: {}",
            args.transport,
            ms(self.a_exit),
            ms(self.a2_ready),
            self.back.len(),
            self.agents,
            over_all(&self.back, 50.0),
            over_all(&self.back, 99.0),
            max(&self.back),
            pct(&self.after_ready, 50.0),
            pct(&self.after_ready, 99.0),
            self.never,
            args.bound_secs,
            self.switches,
            pct(&self.lost, 50.0),
            pct(&self.lost, 99.0),
            self.lost_b,
            show_failures(failures),
        );
    }
}
