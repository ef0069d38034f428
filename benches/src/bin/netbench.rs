//! `netbench`: the measuring side of `benches/compare.sh`.
//!
//! * `serve`: the [`connector_benches::target`] service on TCP;
//! * `run`: measures a path to that service (directly, through a port
//!   forwarder, or through an HTTP CONNECT proxy) and appends one row;
//! * `quic-serve` / `quic-run`: the same measurements over raw QUIC (quinn,
//!   one connection, one stream per "connection"): the QUIC ceiling;
//! * `impair`: the shared UDP impairment proxy (`connector_testkit::netsim`) with a fixed delay and random loss each way;
//! * `tun-impair`: the same at the IP level, between TUN devices in two network namespaces (for TCP peers too);
//! * `idle`: opens many idle connections and reports the tunnel's RSS growth;
//! * `isolation`: healthy bulk and new dials beside k stalled tunnels, with the
//!   tunnel's RSS (issue 15), a row per k and direction;
//! * `attack`: the agent port under anonymous load while agents register
//!   ([`connector_benches::attack`]);
//! * `failover`: agents re-registering when a server replica stops and its
//!   replacement starts ([`connector_benches::failover`]);
//! * `table`: prints the collected rows (of `run` or `isolation`) with ratios.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use connector_benches::client::{self, percentile};
use connector_benches::{CHUNK, status_kib, target};
use connector_core::pki::ThrowawayCa;
use connector_core::tls::{AgentTls, ServerTls};
use connector_core::transport::congestion::CongestionControl;
use connector_core::transport::quic::{MAX_UDP_PAYLOAD, QuicSettings, endpoint};
use connector_testkit::netsim::{Impairment, UdpImpairProxy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

#[derive(Parser)]
#[command(about = "Measures throughput, round trip, dial rate, HOL isolation, CPU and RSS of a path")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The target service (echo / sink / source) on TCP.
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Measures a TCP path and appends a row to --out.
    Run(RunArgs),
    /// Raw QUIC server: every bidirectional stream is served like a target connection.
    QuicServe {
        /// UDP address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Where to write the CA certificate (PEM) the client must trust.
        #[arg(long)]
        ca_out: PathBuf,
        /// Congestion controller, as connector's `--congestion-control`.
        #[arg(long, default_value = "auto")]
        congestion_control: CongestionControl,
    },
    /// Measures raw QUIC (one connection, a stream per dial) and appends a row.
    QuicRun(RunArgs),
    /// Healthy bulk and new dials beside k stalled tunnels of a TCP path; appends a row per k and direction.
    Isolation(IsolationArgs),
    /// UDP impairment proxy: fixed one-way delay and random loss in both directions.
    Impair {
        /// Address clients send to.
        #[arg(long)]
        listen: SocketAddr,
        /// Address datagrams are relayed to.
        #[arg(long)]
        upstream: SocketAddr,
        #[command(flatten)]
        path: PathImpairment,
    },
    /// IP-level impairment between two network namespaces: copies packets between the TUN device
    /// --a-dev of --a-netns and --b-dev of --b-netns with a fixed one-way delay and random loss.
    TunImpair {
        /// Network namespace of the first device (`/var/run/netns/NAME`).
        #[arg(long)]
        a_netns: PathBuf,
        /// TUN device in the first namespace.
        #[arg(long)]
        a_dev: String,
        /// Network namespace of the second device.
        #[arg(long)]
        b_netns: PathBuf,
        /// TUN device in the second namespace.
        #[arg(long)]
        b_dev: String,
        #[command(flatten)]
        path: PathImpairment,
    },
    /// Opens --n idle echo connections through --addr and reports the RSS growth of --pids.
    Idle {
        /// Where to connect.
        #[arg(long)]
        addr: String,
        /// How many connections.
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        /// Processes whose RSS counts (comma-separated).
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
    },
    /// Starts --n agents in this process against a running server and reports the server's RSS
    /// growth and this process's memory (peak and settled).
    Agents {
        /// The server's QUIC address (`host:port`).
        #[arg(long)]
        server: String,
        /// CA (PEM) of the server's certificate.
        #[arg(long)]
        ca: PathBuf,
        /// File holding a bearer token the server accepts.
        #[arg(long)]
        token_file: PathBuf,
        /// The token's identity: agent i takes the id `<agent-id>/idle-<i>`.
        #[arg(long, default_value = "node-a")]
        agent_id: String,
        /// How many agents.
        #[arg(long, default_value_t = 2_000)]
        n: usize,
        /// The server process.
        #[arg(long)]
        server_pid: u32,
    },
    /// The server's agent port under anonymous load while legitimate agents register.
    Attack(connector_benches::attack::AttackArgs),
    /// Two server replicas and many agents: re-registration time when one replica is stopped and replaced.
    Failover(connector_benches::failover::FailoverArgs),
    /// Retries dial + first echo through a path until it works (at most 60 s): a readiness check.
    Probe {
        /// Where to connect (`host:port` or `unix:PATH`).
        #[arg(long)]
        addr: String,
        /// Send `CONNECT <this>` first.
        #[arg(long)]
        connect_target: Option<String>,
    },
    /// Prints the rows of a results file as a table with ratios.
    Table {
        /// The results file written by `run` (or by `isolation`).
        #[arg(long)]
        input: PathBuf,
    },
}

/// What `impair` and `tun-impair` do to each direction of the path.
#[derive(clap::Args, Clone, Copy)]
struct PathImpairment {
    /// One-way delay added in each direction, milliseconds.
    #[arg(long, default_value_t = 10)]
    delay_ms: u64,
    /// Probability that a datagram (or packet) is dropped, each direction.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Seed of the random losses (the same seed drops the same packets of the same sequence).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl PathImpairment {
    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms)
    }
}

/// The path under test and the label of its rows (`run`, `quic-run`, `isolation`).
#[derive(clap::Args, Clone)]
struct PathArgs {
    /// Row label.
    #[arg(long)]
    label: String,
    /// Where to connect (`host:port`); with --connect-target, the CONNECT proxy (`unix:PATH` or `host:port`).
    #[arg(long)]
    addr: String,
    /// Send `CONNECT <this>` first on every connection (an HTTP CONNECT proxy at --addr).
    #[arg(long)]
    connect_target: Option<String>,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    path: PathArgs,
    /// CA (PEM) of the raw QUIC server (`quic-run`).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// `quic-run`: congestion controller, as connector's `--congestion-control`.
    #[arg(long, default_value = "auto")]
    congestion_control: CongestionControl,
    /// Tunnel processes (server, agent): their CPU and peak RSS are reported.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Endpoint processes besides this one (the target service): counted in the "all" CPU figure.
    #[arg(long, value_delimiter = ',')]
    endpoint_pids: Vec<u32>,
    /// Seconds per bulk measurement.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Skip the dial and HOL measurements.
    #[arg(long)]
    bulk_and_rtt_only: bool,
    /// Results file (tab-separated, appended).
    #[arg(long)]
    out: PathBuf,
}

/// Which way the stalled tunnels' bytes go (and the healthy transfer beside them).
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Stalled clients: the target sends, the client stopped reading (a paused
    /// `kubectl logs -f`); the healthy transfer is a download.
    Down,
    /// Stalled targets: the client sends, the target never reads (`kubectl cp`
    /// into a frozen process); the healthy transfer is an upload.
    Up,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Down => "down",
            Direction::Up => "up",
        }
    }
}

#[derive(clap::Args, Clone)]
struct IsolationArgs {
    #[command(flatten)]
    path: PathArgs,
    /// The target service's own address (`host:port`), reached without the path under test:
    /// how much the stalled sources wrote is asked there, and the never-reading sinks are released there.
    #[arg(long)]
    target_direct: String,
    /// Numbers of stalled tunnels: a row each, per direction.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    ks: Vec<usize>,
    /// Directions of the stall (`down`: clients stopped reading; `up`: targets stopped reading).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "down,up")]
    directions: Vec<Direction>,
    /// Seconds of the healthy bulk transfer.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// New dials beside the stalled tunnels (all at once); each must echo a byte.
    #[arg(long, default_value_t = 20)]
    dials: usize,
    /// Seconds a dial, or the opening of a stalled tunnel, may take before it counts as failed.
    #[arg(long, default_value_t = 10.0)]
    dial_timeout: f64,
    /// Most seconds to wait for the stalled tunnels' senders to stop making progress.
    #[arg(long, default_value_t = 20.0)]
    settle_timeout: f64,
    /// Most seconds to wait, once the stalled tunnels are closed, for a dial to work again.
    #[arg(long, default_value_t = 30.0)]
    recovery_timeout: f64,
    /// The tunnel's server process (its RSS is reported).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The tunnel's agent process (its RSS is reported).
    #[arg(long)]
    agent_pid: Option<u32>,
    /// Results file (tab-separated, appended).
    #[arg(long)]
    out: PathBuf,
}

/// The `connector` binary's allocator, so that raw QUIC stays the ceiling of the same build.
/// `--features system-allocator` leaves glibc's malloc in place, which heaptrack can follow.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // As the `connector` binary does (connector-cli/src/main.rs, `GLOBAL`):
    // mimalloc's memory on transparent huge pages made idle agents cost 2 MiB each.
    rustix::thread::disable_transparent_huge_pages(true)?;
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { listen } => multi_thread()?.block_on(async move {
            let addr = target::bind_and_serve(listen).await?;
            eprintln!("netbench target on {addr}");
            std::future::pending::<anyhow::Result<()>>().await
        }),
        Cmd::Run(args) => current_thread()?.block_on(run(args.clone(), Arc::new(TcpDialer::new(&args.path)))),
        Cmd::QuicServe {
            listen,
            ca_out,
            congestion_control,
        } => multi_thread()?.block_on(quic_serve(listen, ca_out, congestion_control)),
        Cmd::QuicRun(mut args) => current_thread()?.block_on(async move {
            // Both QUIC endpoints are "the tunnel" here: this process is the client one.
            args.pids.push(std::process::id());
            let dialer = QuicDialer::connect(&args).await?;
            run(args, Arc::new(dialer)).await
        }),
        Cmd::Isolation(args) => current_thread()?.block_on(isolation(args)),
        Cmd::Impair { listen, upstream, path } => {
            multi_thread()?.block_on(impair(listen, upstream, path.delay(), path.loss, path.seed))
        }
        Cmd::TunImpair {
            a_netns,
            a_dev,
            b_netns,
            b_dev,
            path,
        } => {
            let a = connector_benches::tun_impair::open_tun_in(&a_netns, &a_dev).context("opening --a-dev")?;
            let b = connector_benches::tun_impair::open_tun_in(&b_netns, &b_dev).context("opening --b-dev")?;
            eprintln!(
                "tun-impair: {a_dev} <-> {b_dev}, {} ms each way, loss {}",
                path.delay_ms, path.loss
            );
            current_thread()?.block_on(connector_benches::tun_impair::forward(
                a,
                b,
                path.delay(),
                path.loss,
                path.seed,
            ))?;
            Ok(())
        }
        Cmd::Idle { addr, n, pids } => current_thread()?.block_on(idle(addr, n, pids)),
        Cmd::Agents {
            server,
            ca,
            token_file,
            agent_id,
            n,
            server_pid,
        } => multi_thread()?.block_on(agents(AgentsArgs {
            server,
            ca,
            token_file,
            agent_id,
            n,
            server_pid,
        })),
        Cmd::Attack(args) => multi_thread()?.block_on(connector_benches::attack::run(args)),
        Cmd::Failover(args) => multi_thread()?.block_on(connector_benches::failover::run(args)),
        Cmd::Probe { addr, connect_target } => current_thread()?.block_on(probe(TcpDialer { addr, connect_target })),
        Cmd::Table { input } => table(&input),
    }
}

fn multi_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// A byte stream of any kind.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type BoxIo = Box<dyn Io>;
type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Opens a new connection of the path under test.
trait Dialer: Send + Sync + 'static {
    fn dial(&self) -> BoxFuture<'_, anyhow::Result<BoxIo>>;
}

struct TcpDialer {
    addr: String,
    connect_target: Option<String>,
}

impl TcpDialer {
    fn new(path: &PathArgs) -> Self {
        Self {
            addr: path.addr.clone(),
            connect_target: path.connect_target.clone(),
        }
    }
}

impl Dialer for TcpDialer {
    fn dial(&self) -> BoxFuture<'_, anyhow::Result<BoxIo>> {
        Box::pin(async move {
            let mut io: BoxIo = match self.addr.strip_prefix("unix:") {
                Some(path) => Box::new(UnixStream::connect(path).await?),
                None => {
                    let tcp = TcpStream::connect(&self.addr).await?;
                    tcp.set_nodelay(true)?;
                    Box::new(tcp)
                }
            };
            if let Some(target) = &self.connect_target {
                http_connect(&mut io, target).await?;
            }
            Ok(io)
        })
    }
}

/// `CONNECT target`, as kube-apiserver's egress dialer sends it; reads the
/// response head byte by byte so that no tunnelled byte is consumed.
async fn http_connect(io: &mut BoxIo, target: &str) -> anyhow::Result<()> {
    io.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::with_capacity(128);
    while !head.ends_with(b"\r\n\r\n") {
        head.push(io.read_u8().await?);
        if head.len() > 8192 {
            bail!("CONNECT response head too long");
        }
    }
    let status = String::from_utf8_lossy(&head);
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        bail!("CONNECT refused: {}", status.lines().next().unwrap_or(""));
    }
    Ok(())
}

struct QuicDialer {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl QuicDialer {
    async fn connect(args: &RunArgs) -> anyhow::Result<Self> {
        let ca_path = args.ca.as_ref().context("quic-run needs --ca")?;
        let cas = connector_core::tls::certs_from_file(ca_path)?;
        let tls = AgentTls {
            server_cas: cas.into(),
            server_name: "localhost".into(),
            client_identity: None,
        };
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.rustls_config()?)?;
        let addr: SocketAddr = args.path.addr.parse()?;
        // Any local address of the server's family: the server may be beyond loopback (wan-ip.sh).
        let local: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
        let mut endpoint = endpoint(local, None, MAX_UDP_PAYLOAD)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(args.congestion_control)));
        endpoint.set_default_client_config(config);
        let conn = endpoint.connect(addr, "localhost")?.await?;
        Ok(Self {
            conn,
            _endpoint: endpoint,
        })
    }
}

impl Dialer for QuicDialer {
    fn dial(&self) -> BoxFuture<'_, anyhow::Result<BoxIo>> {
        Box::pin(async move {
            let (send, recv) = self.conn.open_bi().await?;
            Ok(Box::new(tokio::io::join(recv, send)) as BoxIo)
        })
    }
}

/// Connector's own QUIC configuration (stream window, MTU bound, controller),
/// so that raw QUIC is the ceiling of the same configuration.
fn transport_config(congestion: CongestionControl) -> quinn::TransportConfig {
    let settings = QuicSettings {
        congestion,
        ..QuicSettings::default()
    };
    connector_core::transport::quic::transport_config(&settings, 20_000)
}

async fn quic_serve(listen: SocketAddr, ca_out: PathBuf, congestion: CongestionControl) -> anyhow::Result<()> {
    let ca = ThrowawayCa::new("netbench raw QUIC CA")?;
    let tls = ServerTls {
        identity: ca
            .issue("netbench raw QUIC server", &["localhost", "127.0.0.1"])?
            .identity(),
        client_cas: None,
    };
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.rustls_config()?)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(congestion)));
    let endpoint = endpoint(listen, Some(config), MAX_UDP_PAYLOAD)?;
    std::fs::write(&ca_out, ca.cert_pem())?;
    eprintln!("netbench raw QUIC on {}", endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let Ok(mode) = recv.read_u8().await else { return };
                    let _ = target::serve_mode(mode, &mut recv, &mut send).await;
                });
            }
        });
    }
    Ok(())
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after ") ".
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|&p| cpu_seconds(p)).sum()
}

/// Reads for `secs` from an endless source; returns bytes per second.
async fn timed_download(dialer: &dyn Dialer, secs: f64) -> anyhow::Result<(f64, u64)> {
    let mut io = dialer.dial().await?;
    client::start_download(&mut io, u64::MAX).await?;
    let mut buf = vec![0u8; CHUNK];
    // The first byte starts the clock, so that dial time does not count.
    let n = io.read(&mut buf).await?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut got = n as u64;
    loop {
        match tokio::time::timeout_at(deadline.into(), io.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => bail!("source closed early"),
            Ok(Ok(n)) => got += n as u64,
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok((got as f64 / start.elapsed().as_secs_f64(), got))
}

/// Writes for `secs` into a sink, then waits for its count; returns bytes per second.
async fn timed_upload(dialer: &dyn Dialer, secs: f64) -> anyhow::Result<(f64, u64)> {
    let mut io = dialer.dial().await?;
    io.write_all(&[target::SINK]).await?;
    let mut buf = vec![0xa5u8; CHUNK + 4];
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    while Instant::now() < deadline {
        sent += client::upload_chunk(&mut io, &mut buf).await?;
    }
    let seen = client::finish_upload(&mut io).await?;
    if seen != sent {
        bail!("sink saw {seen} of {sent} bytes");
    }
    Ok((seen as f64 / start.elapsed().as_secs_f64(), seen))
}

/// Small-message ping-pong on one connection; sorted round trips in µs.
async fn round_trips(dialer: &dyn Dialer, secs: f64) -> anyhow::Result<Vec<f64>> {
    let mut io = dialer.dial().await?;
    client::start_echo(&mut io).await?;
    let msg = [0x42u8; 64];
    let mut scratch = [0u8; 64];
    for _ in 0..20 {
        client::round_trip(&mut io, &msg, &mut scratch).await?;
    }
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut samples = Vec::new();
    while Instant::now() < end && samples.len() < 1_000_000 {
        let t = Instant::now();
        client::round_trip(&mut io, &msg, &mut scratch).await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// Dial → first echoed byte, `concurrency` loops for `secs`; sorted latencies (µs) and dials per second.
async fn dial_loop(dialer: Arc<dyn Dialer>, concurrency: usize, secs: f64) -> anyhow::Result<(Vec<f64>, f64)> {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let dialer = dialer.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                let mut io = dialer.dial().await?;
                client::first_echo(&mut io).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                let _ = io.shutdown().await;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((all, rate))
}

/// One stalled download (its reader stopped) next to a bulk download:
/// returns the bulk one's rate.
async fn hol(dialer: &dyn Dialer, secs: f64) -> anyhow::Result<f64> {
    let mut stalled = dialer.dial().await?;
    client::start_download(&mut stalled, u64::MAX).await?;
    let mut first = [0u8; 1];
    stalled.read_exact(&mut first).await?;
    // From here on nobody reads `stalled`: its data piles up in every buffer on the way.
    let result = tokio::time::timeout(Duration::from_secs_f64(secs * 3.0 + 10.0), timed_download(dialer, secs)).await;
    drop(stalled);
    match result {
        Ok(Ok((rate, _))) => Ok(rate),
        // Stalled completely (no first byte within the limit).
        Err(_) => Ok(0.0),
        Ok(Err(e)) => Err(e),
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const HEADER: &str = "label\tup_gbps\tdown_gbps\trtt_p50_us\trtt_p99_us\tdial_p50_us\tdials_per_s\thol\tcpu_tunnel_s_per_gib\tcpu_all_s_per_gib\tpeak_rss_mib";

async fn run(args: RunArgs, dialer: Arc<dyn Dialer>) -> anyhow::Result<()> {
    let secs = args.secs;
    let mut all_pids = args.pids.clone();
    all_pids.extend(&args.endpoint_pids);
    all_pids.push(std::process::id());
    // Warm-up: one connection end to end.
    {
        let mut io = dialer.dial().await.context("first dial")?;
        client::first_echo(&mut io).await.context("first echo")?;
    }
    let (cpu_t0, cpu_a0) = (total_cpu(&args.pids), total_cpu(&all_pids));
    let (down, down_bytes) = timed_download(dialer.as_ref(), secs).await.context("download")?;
    let (up, up_bytes) = timed_upload(dialer.as_ref(), secs).await.context("upload")?;
    let gib = (down_bytes + up_bytes) as f64 / GIB;
    let cpu_tunnel = (total_cpu(&args.pids) - cpu_t0) / gib;
    let cpu_all = (total_cpu(&all_pids) - cpu_a0) / gib;
    eprintln!(
        "{}: down {:.2} Gbit/s, up {:.2} Gbit/s",
        args.path.label,
        down * 8e-9,
        up * 8e-9
    );
    let rtts = round_trips(dialer.as_ref(), secs.min(3.0))
        .await
        .context("round trips")?;
    let (dial_p50, dial_rate, hol_frac) = if args.bulk_and_rtt_only {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        let (lat, _) = dial_loop(dialer.clone(), 1, secs.min(3.0)).await.context("dial loop")?;
        let (_, rate) = dial_loop(dialer.clone(), 8, secs.min(3.0))
            .await
            .context("parallel dial loop")?;
        let solo = timed_download(dialer.as_ref(), secs).await.context("solo download")?.0;
        let beside = hol(dialer.as_ref(), secs).await.context("HOL")?;
        eprintln!(
            "{}: HOL solo {:.2} Gbit/s, beside a stalled reader {:.2} Gbit/s",
            args.path.label,
            solo * 8e-9,
            beside * 8e-9
        );
        (percentile(&lat, 50.0).unwrap_or(f64::NAN), rate, beside / solo)
    };
    let rss_kib: u64 = args.pids.iter().map(|&p| status_kib(p, "VmHWM:")).sum();
    let row = format!(
        "{}\t{:.4}\t{:.4}\t{:.1}\t{:.1}\t{:.1}\t{:.0}\t{:.3}\t{:.3}\t{:.3}\t{:.1}",
        args.path.label,
        up * 8e-9,
        down * 8e-9,
        percentile(&rtts, 50.0).unwrap_or(f64::NAN),
        percentile(&rtts, 99.0).unwrap_or(f64::NAN),
        dial_p50,
        dial_rate,
        hol_frac,
        if args.pids.is_empty() { f64::NAN } else { cpu_tunnel },
        cpu_all,
        if args.pids.is_empty() {
            f64::NAN
        } else {
            rss_kib as f64 / 1024.0
        },
    );
    let new = !args.out.exists();
    let mut file = OpenOptions::new().create(true).append(true).open(&args.out)?;
    if new {
        writeln!(file, "{HEADER}")?;
    }
    writeln!(file, "{row}")?;
    eprintln!("{row}");
    Ok(())
}

/// Sender progress must stand still this long for stalled tunnels to count as stalled.
const STALL_QUIET: Duration = Duration::from_secs(1);
const MIB: f64 = 1024.0 * 1024.0;
const ISOLATION_HEADER: &str = "label\tdirection\tk\topened\tsettled\theld_mib\tgbps\tratio\tdials_ok\tdials\tdial_p50_ms\tserver_rss_mib\tagent_rss_mib\trecovered_s";

/// One row of `isolation`: a direction and a number of stalled tunnels (0: the transfer alone).
struct IsolationRow {
    direction: Direction,
    k: usize,
    /// Stalled tunnels that opened (the target's first byte, or its hold answer, came back).
    opened: usize,
    /// Whether the stalled tunnels' senders stopped making progress within --settle-timeout.
    settled: bool,
    /// Bytes the stalled tunnels' senders pushed into them that nobody read.
    held: u64,
    /// Healthy transfer, bytes per second (0: nothing moved).
    rate: f64,
    dials_ok: usize,
    dials: usize,
    /// Median dial → first echo of the dials that worked, milliseconds.
    dial_p50_ms: f64,
    /// Peak VmRSS of server and agent during the measurement, KiB.
    rss_kib: [u64; 2],
    /// Seconds after the stalled tunnels closed until a dial worked again (`None`: not within --recovery-timeout).
    recovered: Option<f64>,
}

impl IsolationRow {
    fn tsv(&self, label: &str, alone: f64) -> String {
        let na = |v: Option<f64>| v.map_or("nan".to_owned(), |v| format!("{v:.3}"));
        let stalled = self.k > 0;
        format!(
            "{label}\t{}\t{}\t{}\t{}\t{:.2}\t{:.4}\t{:.3}\t{}\t{}\t{:.2}\t{:.1}\t{:.1}\t{}",
            self.direction.name(),
            self.k,
            self.opened,
            if stalled {
                u8::from(self.settled).to_string()
            } else {
                "nan".into()
            },
            self.held as f64 / MIB,
            self.rate * 8e-9,
            if alone > 0.0 { self.rate / alone } else { f64::NAN },
            self.dials_ok,
            self.dials,
            self.dial_p50_ms,
            self.rss_kib[0] as f64 / 1024.0,
            self.rss_kib[1] as f64 / 1024.0,
            if stalled { na(self.recovered) } else { "nan".into() },
        )
    }
}

/// k stalled tunnels, kept stalled until their tasks end (dropping this aborts them).
struct Stalled {
    /// A task per tunnel, holding it (aborted on drop).
    tunnels: tokio::task::JoinSet<()>,
    /// Tunnels that opened.
    opened: usize,
    /// `down`: bytes the client read from the sources before they stalled.
    read: Arc<AtomicU64>,
    /// `up`: bytes the client wrote into the never-reading sinks.
    written: Arc<AtomicU64>,
}

/// `netbench isolation`: per direction, the healthy transfer alone, then beside
/// each k of stalled tunnels; a row each, appended to --out as it is measured.
async fn isolation(args: IsolationArgs) -> anyhow::Result<()> {
    let dialer: Arc<dyn Dialer> = Arc::new(TcpDialer::new(&args.path));
    let dial_timeout = Duration::from_secs_f64(args.dial_timeout);
    let pids = [args.server_pid, args.agent_pid];
    tokio::time::timeout(dial_timeout, dial_and_echo(dialer.as_ref()))
        .await
        .context("first dial: no echo within --dial-timeout")?
        .context("first dial")?;
    let new = !args.out.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("opening {}", args.out.display()))?;
    if new {
        writeln!(file, "{ISOLATION_HEADER}")?;
    }
    let mut lines = vec![ISOLATION_HEADER.to_owned()];
    for &direction in &args.directions {
        let ((rate, (dials_ok, dial_p50_ms)), rss_kib) = peak_rss(&pids, async {
            let rate = healthy_transfer(dialer.as_ref(), direction, args.secs, dial_timeout).await;
            (rate, dial_burst(dialer.clone(), args.dials, dial_timeout).await)
        })
        .await;
        let alone = IsolationRow {
            direction,
            k: 0,
            opened: 0,
            settled: true,
            held: 0,
            rate,
            dials_ok,
            dials: args.dials,
            dial_p50_ms,
            rss_kib,
            recovered: None,
        };
        eprintln!(
            "{} {}: alone {:.2} Gbit/s, dials {dials_ok}/{}",
            args.path.label,
            direction.name(),
            rate * 8e-9,
            args.dials
        );
        let line = alone.tsv(&args.path.label, rate);
        writeln!(file, "{line}")?;
        lines.push(line);
        for &k in &args.ks {
            let row = isolation_row(&args, dialer.clone(), direction, k)
                .await
                .with_context(|| format!("{} k={k}", direction.name()))?;
            let line = row.tsv(&args.path.label, alone.rate);
            writeln!(file, "{line}")?;
            lines.push(line);
        }
    }
    print_isolation_table(&lines.join("\n"));
    Ok(())
}

/// One k of one direction: stall k tunnels, measure beside them, close them, wait for recovery.
async fn isolation_row(
    args: &IsolationArgs,
    dialer: Arc<dyn Dialer>,
    direction: Direction,
    k: usize,
) -> anyhow::Result<IsolationRow> {
    let dial_timeout = Duration::from_secs_f64(args.dial_timeout);
    let key: u64 = rand::random();
    // A backstop only (the group is released below): past every bounded phase of this row.
    let hold_secs =
        (args.dial_timeout * 4.0 + args.settle_timeout + args.secs * 2.0 + args.recovery_timeout + 60.0) as u32;
    let mut stalled = open_stalled(dialer.clone(), direction, k, key, hold_secs, dial_timeout).await;
    let settle_limit = Duration::from_secs_f64(args.settle_timeout);
    // What the senders pushed into the stalled tunnels and nobody read: bytes waiting on the way.
    let (held, settled) = match direction {
        Direction::Down => {
            let (sent, settled) = settle(settle_limit, async || {
                Ok(target_group(&args.target_direct, target::STATUS, key).await?.0)
            })
            .await?;
            (sent.saturating_sub(stalled.read.load(Ordering::Relaxed)), settled)
        }
        Direction::Up => {
            let written = stalled.written.clone();
            settle(settle_limit, async || Ok(written.load(Ordering::Relaxed))).await?
        }
    };
    eprintln!(
        "{} {} k={k}: {}/{k} stalled tunnels open, {:.1} MiB sent into them unread, {}",
        args.path.label,
        direction.name(),
        stalled.opened,
        held as f64 / MIB,
        if settled {
            "senders stopped"
        } else {
            "senders still moving at --settle-timeout"
        }
    );
    let pids = [args.server_pid, args.agent_pid];
    let ((rate, (dials_ok, dial_p50_ms)), rss_kib) = peak_rss(&pids, async {
        let rate = healthy_transfer(dialer.as_ref(), direction, args.secs, dial_timeout).await;
        (rate, dial_burst(dialer.clone(), args.dials, dial_timeout).await)
    })
    .await;
    // Close the stalled tunnels: the clients go away (their tasks end, dropping
    // the connections), and the target ends its side.
    stalled.tunnels.shutdown().await;
    let closed = Instant::now();
    if let Err(e) = target_group(&args.target_direct, target::RELEASE, key).await {
        eprintln!("{} {} k={k}: release failed: {e:#}", args.path.label, direction.name());
    }
    let recovered = recover(
        dialer.as_ref(),
        closed,
        Duration::from_secs_f64(args.recovery_timeout),
        dial_timeout,
    )
    .await;
    eprintln!(
        "{} {} k={k}: beside them {:.2} Gbit/s, dials {dials_ok}/{}, RSS server {:.1} MiB agent {:.1} MiB, {}",
        args.path.label,
        direction.name(),
        rate * 8e-9,
        args.dials,
        rss_kib[0] as f64 / 1024.0,
        rss_kib[1] as f64 / 1024.0,
        match recovered {
            Some(s) => format!("a dial worked again {s:.2} s after they closed"),
            None => "no dial worked after they closed".into(),
        }
    );
    Ok(IsolationRow {
        direction,
        k,
        opened: stalled.opened,
        settled,
        held,
        rate,
        dials_ok,
        dials: args.dials,
        dial_p50_ms,
        rss_kib,
        recovered,
    })
}

/// Opens k tunnels at once, then stalls them all together, so that each of
/// them is open before the first one stalls. `down`: each asks the target for
/// an endless counted source of group `key` and reads (and drops) what comes
/// until every tunnel has opened or failed to, then reads nothing more. `up`:
/// each asks for a never-reading sink of group `key`; once every tunnel has
/// opened or failed to, each writes into its sink without end. A tunnel opens
/// when the source's first byte, or the sink's answer, is back within
/// `dial_timeout`; one that does not is closed and not counted.
async fn open_stalled(
    dialer: Arc<dyn Dialer>,
    direction: Direction,
    k: usize,
    key: u64,
    hold_secs: u32,
    dial_timeout: Duration,
) -> Stalled {
    let (stall, stall_now) = tokio::sync::watch::channel(false);
    // Nothing is sent on it: each task drops its sender once its attempt is
    // over, so the channel closes when every attempt is.
    let (attempting, mut attempts) = tokio::sync::mpsc::channel::<()>(1);
    let opened = Arc::new(AtomicUsize::new(0));
    let read = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let chunk: Arc<[u8]> = vec![0xa5u8; CHUNK].into();
    let mut tunnels = tokio::task::JoinSet::new();
    for _ in 0..k {
        let (dialer, mut stall_now, attempting) = (dialer.clone(), stall_now.clone(), attempting.clone());
        let (opened, read, written, chunk) = (opened.clone(), read.clone(), written.clone(), chunk.clone());
        tunnels.spawn(async move {
            let open = tokio::time::timeout(dial_timeout, async {
                let mut io = dialer.dial().await?;
                match direction {
                    Direction::Down => {
                        client::start_counted_download(&mut io, key).await?;
                        let mut first = [0u8; 1];
                        io.read_exact(&mut first).await?;
                        read.fetch_add(1, Ordering::Relaxed);
                    }
                    Direction::Up => client::start_hold(&mut io, key, hold_secs).await?,
                }
                anyhow::Ok(io)
            })
            .await;
            drop(attempting);
            let Ok(Ok(mut io)) = open else { return };
            opened.fetch_add(1, Ordering::Relaxed);
            match direction {
                Direction::Down => {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        tokio::select! {
                            _ = stall_now.wait_for(|stall| *stall) => break,
                            n = io.read(&mut buf) => match n {
                                Ok(n @ 1..) => read.fetch_add(n as u64, Ordering::Relaxed),
                                _ => return,
                            },
                        };
                    }
                    // Stalled: the connection stays open, nobody reads it.
                    std::future::pending::<()>().await
                }
                Direction::Up => {
                    let _ = stall_now.wait_for(|stall| *stall).await;
                    while let Ok(n @ 1..) = io.write(&chunk).await {
                        written.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    drop(attempting);
    // Every attempt is over within `dial_timeout`.
    let _ = attempts.recv().await;
    stall.send_replace(true);
    Stalled {
        tunnels,
        opened: opened.load(Ordering::Relaxed),
        read,
        written,
    }
}

/// Polls a sender's progress (a byte count) until it has not grown for
/// [`STALL_QUIET`]; at most `limit`. Returns the last count and whether it settled.
async fn settle(
    limit: Duration,
    mut progress: impl AsyncFnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<(u64, bool)> {
    let end = Instant::now() + limit;
    let mut last = progress().await?;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = progress().await?;
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= STALL_QUIET {
            return Ok((now, true));
        }
        if Instant::now() >= end {
            return Ok((now, false));
        }
    }
}

/// A [`target::STATUS`] or [`target::RELEASE`] request to the target service itself.
async fn target_group(direct: &str, mode: u8, key: u64) -> anyhow::Result<(u64, u64)> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut tcp = TcpStream::connect(direct)
            .await
            .with_context(|| format!("connecting to the target at {direct}"))?;
        client::group_request(&mut tcp, mode, key)
            .await
            .with_context(|| format!("group request to the target at {direct}"))
    })
    .await
    .with_context(|| format!("the target at {direct} did not answer within 5 s"))?
}

/// The healthy transfer of `direction` (bytes per second); bounded in time.
async fn healthy_transfer(dialer: &dyn Dialer, direction: Direction, secs: f64, dial_timeout: Duration) -> f64 {
    let result = match direction {
        Direction::Down => bounded_download(dialer, secs, dial_timeout).await,
        Direction::Up => bounded_upload(dialer, secs, dial_timeout).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("healthy {} transfer: {e:#}", direction.name());
        0.0
    })
}

/// [`timed_download`] that cannot hang: no connection within `dial_timeout`,
/// or no first byte within `secs`, is a rate of 0; the read phase ends after
/// `secs` whatever arrived.
async fn bounded_download(dialer: &dyn Dialer, secs: f64, dial_timeout: Duration) -> anyhow::Result<f64> {
    let mut io = tokio::time::timeout(dial_timeout, async {
        let mut io = dialer.dial().await?;
        client::start_download(&mut io, u64::MAX).await?;
        anyhow::Ok(io)
    })
    .await
    .context("no connection within the dial timeout")??;
    let mut buf = vec![0u8; CHUNK];
    // The first byte starts the clock, as in `timed_download`.
    let first = match tokio::time::timeout(Duration::from_secs_f64(secs), io.read(&mut buf)).await {
        Err(_) => return Ok(0.0),
        Ok(n) => n.context("first read")?,
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut got = first as u64;
    loop {
        match tokio::time::timeout_at(deadline.into(), io.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => bail!("source closed early"),
            Ok(Ok(n)) => got += n as u64,
            Ok(Err(e)) => return Err(e).context("download"),
        }
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

/// [`timed_upload`] that cannot hang: frames are written for `secs`; a frame
/// the deadline cuts, the end frame and the sink's count get `grace` more.
/// Only bytes the sink acknowledged count: a count that does not come is a
/// rate of 0.
async fn bounded_upload(dialer: &dyn Dialer, secs: f64, grace: Duration) -> anyhow::Result<f64> {
    let mut io = tokio::time::timeout(grace, async {
        let mut io = dialer.dial().await?;
        io.write_all(&[target::SINK]).await?;
        anyhow::Ok(io)
    })
    .await
    .context("no connection within the dial timeout")??;
    let mut frame = vec![0xa5u8; CHUNK + 4];
    frame[..4].copy_from_slice(&(CHUNK as u32).to_be_bytes());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let hard = deadline + grace;
    let mut sent = 0u64;
    'frames: while Instant::now() < deadline {
        let mut off = 0;
        while off < frame.len() {
            // A frame is finished once begun: the sink cannot count a partial one.
            let limit = if off == 0 { deadline } else { hard };
            match tokio::time::timeout_at(limit.into(), io.write(&frame[off..])).await {
                Err(_) if off == 0 => break 'frames,
                Err(_) => return Ok(0.0),
                Ok(Ok(0)) => bail!("upload: connection closed"),
                Ok(Ok(n)) => off += n,
                Ok(Err(e)) => return Err(e).context("upload"),
            }
        }
        sent += CHUNK as u64;
    }
    match tokio::time::timeout_at(hard.into(), client::finish_upload(&mut io)).await {
        Err(_) => Ok(0.0),
        Ok(Ok(seen)) if seen == sent => Ok(seen as f64 / start.elapsed().as_secs_f64()),
        Ok(Ok(seen)) => bail!("sink saw {seen} of {sent} bytes"),
        Ok(Err(e)) => Err(e).context("upload count"),
    }
}

async fn dial_and_echo(dialer: &dyn Dialer) -> anyhow::Result<()> {
    let mut io = dialer.dial().await?;
    client::first_echo(&mut io).await?;
    Ok(())
}

/// `n` dials at once, each to its first echoed byte within `timeout`: how many
/// worked, and their median time in milliseconds.
async fn dial_burst(dialer: Arc<dyn Dialer>, n: usize, timeout: Duration) -> (usize, f64) {
    let mut dials = tokio::task::JoinSet::new();
    for _ in 0..n {
        let dialer = dialer.clone();
        dials.spawn(async move {
            let t = Instant::now();
            let ok = matches!(
                tokio::time::timeout(timeout, dial_and_echo(dialer.as_ref())).await,
                Ok(Ok(()))
            );
            ok.then(|| t.elapsed().as_secs_f64() * 1e3)
        });
    }
    let mut ms: Vec<f64> = dials.join_all().await.into_iter().flatten().collect();
    ms.sort_by(f64::total_cmp);
    (ms.len(), percentile(&ms, 50.0).unwrap_or(f64::NAN))
}

/// After the stalled tunnels closed at `closed`: dials (each within
/// `dial_timeout`) until one echoes, at most `limit`; seconds since `closed`.
async fn recover(dialer: &dyn Dialer, closed: Instant, limit: Duration, dial_timeout: Duration) -> Option<f64> {
    let end = closed + limit;
    while Instant::now() < end {
        let attempt = dial_timeout.min(end - Instant::now());
        if let Ok(Ok(())) = tokio::time::timeout(attempt, dial_and_echo(dialer)).await {
            return Some(closed.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Runs `work` while sampling the VmRSS of `pids` every 100 ms; returns its
/// output and each process's peak (KiB; 0 for a pid not given).
async fn peak_rss<T>(pids: &[Option<u32>; 2], work: impl std::future::Future<Output = T>) -> (T, [u64; 2]) {
    let mut peaks = [0u64; 2];
    let sample = |peaks: &mut [u64; 2]| {
        for (peak, pid) in peaks.iter_mut().zip(pids) {
            if let Some(pid) = pid {
                *peak = (*peak).max(status_kib(*pid, "VmRSS:"));
            }
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => {
                sample(&mut peaks);
                return (out, peaks);
            }
            _ = tick.tick() => sample(&mut peaks),
        }
    }
}

/// Prints `isolation` rows (the TSV, header included) as a markdown table.
fn print_isolation_table(text: &str) {
    let num = |r: &[&str], i: usize| r.get(i).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
    let show = |v: Option<f64>| v.map(format_value).unwrap_or_else(|| "–".into());
    println!(
        "| path | stalled | k | stalled open | MiB unread in them | senders stopped | healthy Gbit/s | ÷ alone | dials ok | dial p50 ms | server RSS MiB | agent RSS MiB | recovered after s |"
    );
    println!("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for line in text
        .lines()
        .filter(|l| !l.starts_with("label\t") && !l.trim().is_empty())
    {
        let r: Vec<&str> = line.split('\t').collect();
        let stalled = match r.get(1).copied() {
            Some("down") => "clients (down)",
            Some("up") => "targets (up)",
            _ => "?",
        };
        let k = num(&r, 2).unwrap_or(0.0);
        let opened = num(&r, 3).unwrap_or(0.0);
        let alone = k == 0.0;
        println!(
            "| {} | {stalled} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} |",
            r[0],
            if alone { "0 (alone)".into() } else { format!("{k:.0}") },
            if alone {
                "–".into()
            } else {
                format!("{opened:.0}/{k:.0}")
            },
            if alone { "–".into() } else { show(num(&r, 5)) },
            match num(&r, 4) {
                Some(v) if v > 0.0 => "yes",
                Some(_) => "no",
                None => "–",
            },
            show(num(&r, 6)),
            show(num(&r, 7)),
            r.get(8).unwrap_or(&"?"),
            r.get(9).unwrap_or(&"?"),
            show(num(&r, 10)),
            show(num(&r, 11)),
            show(num(&r, 12)),
            if alone {
                "–".into()
            } else {
                num(&r, 13).map(format_value).unwrap_or_else(|| "never".into())
            },
        );
    }
}

/// Runs the shared UDP impairment proxy ([`UdpImpairProxy`]) at `listen` until killed:
/// every datagram delayed by `delay` and dropped with probability `loss`, in both directions.
async fn impair(listen: SocketAddr, upstream: SocketAddr, delay: Duration, loss: f64, seed: u64) -> anyhow::Result<()> {
    let proxy = UdpImpairProxy::start_on(listen, vec![upstream], seed)
        .await
        .with_context(|| format!("impair: cannot listen on {listen}"))?;
    proxy.set(Impairment {
        drop: loss,
        delay,
        ..Default::default()
    });
    eprintln!(
        "impair: {} -> {upstream}, +{delay:?} each way, {:.2}% loss each way",
        proxy.local_addr(),
        loss * 100.0
    );
    std::future::pending::<()>().await;
    Ok(())
}

/// What `netbench agents` is given.
struct AgentsArgs {
    server: String,
    ca: PathBuf,
    token_file: PathBuf,
    agent_id: String,
    n: usize,
    server_pid: u32,
}

/// Starts the agents one after another, waits until each is connected (failing on the first
/// refusal), and prints the server's RSS growth per agent and this process's own memory: its
/// peak (VmHWM, the transient while connecting included) and its RSS once all are idle.
async fn agents(args: AgentsArgs) -> anyhow::Result<()> {
    use connector_core::agent::AgentStatus;
    use connector_core::auth::StaticCredential;
    use connector_core::proto::{Credential, Secret};
    let AgentsArgs {
        server,
        ca,
        token_file,
        agent_id,
        n,
        server_pid,
    } = args;
    let cas = connector_core::tls::certs_from_file(&ca)?;
    let token = std::fs::read_to_string(&token_file)?.trim().to_owned();
    let own = std::process::id();
    let own_before = status_kib(own, "VmRSS:");
    let before = status_kib(server_pid, "VmRSS:");
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let mut setup =
            connector_core::setup::AgentSetup::new(server.clone(), cas.clone(), format!("{agent_id}/idle-{i}"));
        setup.credentials = Some(Arc::new(StaticCredential(Credential::Bearer(Secret::new(
            token.clone(),
        )))));
        agents.push(setup.start()?);
    }
    for (i, agent) in agents.iter().enumerate() {
        match agent
            .wait_for(|s| matches!(s, AgentStatus::Connected { .. } | AgentStatus::Rejected { .. }))
            .await
        {
            AgentStatus::Connected { .. } => {}
            other => bail!("agent {i} was not admitted: {other:?}"),
        }
    }
    let after = status_kib(server_pid, "VmRSS:");
    let own_after = status_kib(own, "VmRSS:");
    let own_peak = status_kib(own, "VmHWM:");
    let per = after.saturating_sub(before) as f64 * 1024.0 / n as f64;
    let own_per = own_after.saturating_sub(own_before) as f64 / n as f64;
    println!(
        "agents\t{n}\tserver_before_kib={before}\tserver_after_kib={after}\tper_agent_bytes={per:.0}\tper_agent_kib={:.2}\t\
         agents_rss_kib={own_after}\tagents_peak_kib={own_peak}\tagents_rss_per_agent_kib={own_per:.1}",
        per / 1024.0
    );
    Ok(())
}

async fn probe(dialer: TcpDialer) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            let mut io = dialer.dial().await?;
            client::first_echo(&mut io).await?;
            anyhow::Ok(())
        })
        .await;
        match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if Instant::now() > deadline => {
                return Err(e.context(format!("{} never became ready", dialer.addr)));
            }
            Err(_) if Instant::now() > deadline => bail!("{} never became ready", dialer.addr),
            // Not ready yet (listener not bound, agent not registered): poll again shortly.
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn idle(addr: String, n: usize, pids: Vec<u32>) -> anyhow::Result<()> {
    let rss = |pids: &[u32]| -> u64 { pids.iter().map(|&p| status_kib(p, "VmRSS:")).sum() };
    let before = rss(&pids);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut tcp = TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connection {i}"))?;
        client::first_echo(&mut tcp)
            .await
            .with_context(|| format!("echo {i}"))?;
        conns.push(tcp);
    }
    let after = rss(&pids);
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    println!(
        "idle\t{n}\tbefore_kib={before}\tafter_kib={after}\tper_connection_bytes={per:.0}\tper_connection_kib={:.2}",
        per / 1024.0
    );
    Ok(())
}

fn table(input: &PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(input)?;
    if text.starts_with(ISOLATION_HEADER) {
        print_isolation_table(&text);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| !l.starts_with("label\t") && !l.trim().is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    let find = |label: &str| rows.iter().find(|r| r[0] == label).cloned();
    let base_direct = find("direct-tcp");
    let base_noise = find("rathole-noise");
    let cols = [
        (1, "up Gbit/s"),
        (2, "down Gbit/s"),
        (3, "RTT p50 µs"),
        (4, "RTT p99 µs"),
        (5, "dial p50 µs"),
        (6, "dials/s (8 par.)"),
        (7, "HOL fraction"),
        (8, "CPU s/GiB tunnel"),
        (9, "CPU s/GiB all"),
        (10, "peak RSS MiB"),
    ];
    let num = |r: &[String], i: usize| r.get(i).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
    let ratio = |r: &[String], base: &Option<Vec<String>>, i: usize| -> String {
        match (num(r, i), base.as_ref().and_then(|b| num(b, i))) {
            (Some(v), Some(b)) if b != 0.0 => format!("{:.2}×", v / b),
            _ => "–".into(),
        }
    };
    let header = || {
        print!("| path |");
        for (_, name) in cols {
            print!(" {name} |");
        }
        println!();
        print!("|---|");
        for _ in cols {
            print!("---:|");
        }
        println!();
    };
    println!("Measured values:\n");
    header();
    for r in &rows {
        print!("| {} |", r[0]);
        for (i, _) in cols {
            print!(" {} |", num(r, i).map(format_value).unwrap_or_else(|| "–".into()));
        }
        println!();
    }
    for (base, name) in [(&base_direct, "direct-tcp"), (&base_noise, "rathole-noise")] {
        println!("\nRatio to {name} (higher is better for throughput, dials/s and HOL; lower for the rest):\n");
        header();
        for r in &rows {
            print!("| {} |", r[0]);
            for (i, _) in cols {
                print!(" {} |", ratio(r, base, i));
            }
            println!();
        }
    }
    Ok(())
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
