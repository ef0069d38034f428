//! `netbench attack`: the server's agent port under anonymous load, as the
//! internet can offer it, while legitimate agents register.
//!
//! Against a running `connector server` (its QUIC and TCP agent ports), from
//! attacker addresses spread over `127.0.1.1..` (so that a cap per source
//! address alone cannot be what saves the day):
//! * QUIC connection attempts that send their first Initial packet and never
//!   answer (half-open handshakes), renewed every `--refresh-secs`;
//! * TCP connections to the fallback listener that never send a TLS
//!   ClientHello, renewed likewise;
//! * random datagrams at `--garbage-per-sec` to the QUIC port;
//!
//! while `--agents` legitimate agents (bearer token) register one after
//! another. Then, separately, `--parkers` connections that complete their
//! QUIC handshake and try to make the server buffer data without ever
//! sending a valid `Hello` (a `Hello` header announcing the largest payload,
//! then as much as the server takes, and extra streams).
//!
//! Reported: registration time p50/p99, agents that never registered,
//! refusals the agents saw, and the server's RSS above its idle RSS (peak
//! during each phase). Time is what a benchmark measures; the suite's tests
//! show the behaviour (`connector-core/tests/it/limits.rs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use connector_core::auth::StaticCredential;
use connector_core::proto::{Credential, Secret};
use connector_core::tls::AgentTls;
use connector_core::transport::quic::{MAX_UDP_PAYLOAD, QuicSettings, endpoint, transport_config};
use rand::{RngCore, SeedableRng};

use crate::client::percentile;
use crate::status_kib;

/// Options of `netbench attack`.
#[derive(clap::Args, Clone, Debug)]
pub struct AttackArgs {
    /// The server's QUIC agent address.
    #[arg(long)]
    pub quic: SocketAddr,
    /// The server's TCP (QMux) agent address; no TCP attack without it.
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
    /// CA (PEM) of the server's certificate.
    #[arg(long)]
    pub ca: PathBuf,
    /// File holding `node-a`'s bearer token (agents register as `node-a/legit-N`).
    #[arg(long)]
    pub token_file: PathBuf,
    /// The server process (for its RSS).
    #[arg(long)]
    pub server_pid: u32,
    /// QUIC handshakes started and never finished, held at once.
    #[arg(long, default_value_t = 1_000)]
    pub half_open_quic: usize,
    /// Idle TCP connections (no ClientHello) held at once.
    #[arg(long, default_value_t = 1_000)]
    pub idle_tcp: usize,
    /// Random datagrams per second to the QUIC port.
    #[arg(long, default_value_t = 10_000)]
    pub garbage_per_sec: u64,
    /// How often every half-open attempt and idle connection is renewed.
    #[arg(long, default_value_t = 10.0)]
    pub refresh_secs: f64,
    /// Legitimate agents that register, one after another, during the attack.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Unauthenticated connections that try to park data (second phase; 0: skip).
    #[arg(long, default_value_t = 1_000)]
    pub parkers: usize,
    /// Attacker addresses (127.0.1.1 onwards).
    #[arg(long, default_value_t = 16)]
    pub attacker_addresses: u8,
    /// Which phase to run (each is best run against a fresh server, so that
    /// its RSS is measured from idle).
    #[arg(long, value_enum, default_value_t = Phase::Both)]
    pub phase: Phase,
    /// How long an agent may take to register before it counts as locked out.
    #[arg(long, default_value_t = 10.0)]
    pub registration_limit_secs: f64,
}

/// The phases of `netbench attack`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Admission under attack while agents register.
    Attack,
    /// Unauthenticated connections that try to park data.
    Park,
    /// Both, one after the other.
    Both,
}

/// Runs both phases and prints the report.
pub async fn run(args: AttackArgs) -> anyhow::Result<()> {
    let cas = connector_core::tls::certs_from_file(&args.ca)?;
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading {}", args.token_file.display()))?
        .trim()
        .to_owned();
    let tls = AgentTls {
        server_cas: cas.clone().into(),
        server_name: args.quic.ip().to_string(),
        client_identity: None,
    };
    let idle_kib = status_kib(args.server_pid, "VmRSS:");
    let peak = Arc::new(AtomicU64::new(idle_kib));
    let sampling = Arc::new(AtomicBool::new(true));
    tokio::spawn(sample_rss(args.server_pid, peak.clone(), sampling.clone()));

    if args.phase != Phase::Park {
        attack_phase(&args, &tls, &cas, &token, idle_kib, &peak).await;
    }
    if args.phase != Phase::Attack && args.parkers > 0 {
        if args.phase == Phase::Both {
            // Let the server shed the first phase (half-open handshakes time out).
            tokio::time::sleep(Duration::from_secs(12)).await;
        }
        let before = status_kib(args.server_pid, "VmRSS:");
        peak.store(before, Ordering::Relaxed);
        let parked = park(&args, &tls).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let parked_peak = peak.load(Ordering::Relaxed);
        println!(
            "park\tparkers={}\tconnected={}\tbytes_written_mib={:.1}\tserver_before_mib={:.1}\tserver_peak_above_before_mib={:.1}",
            args.parkers,
            parked.connected,
            parked.bytes_taken as f64 / (1 << 20) as f64,
            before as f64 / 1024.0,
            parked_peak.saturating_sub(before) as f64 / 1024.0,
        );
        drop(parked);
    }
    sampling.store(false, Ordering::Relaxed);
    Ok(())
}

/// Phase 1: the attackers run while the legitimate agents register.
async fn attack_phase(
    args: &AttackArgs,
    tls: &AgentTls,
    cas: &[rustls::pki_types::CertificateDer<'static>],
    token: &str,
    idle_kib: u64,
    peak: &AtomicU64,
) {
    let args = args.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    attackers.push(tokio::spawn(half_open_quic(args.clone(), tls.clone(), stop.clone())));
    if let Some(tcp) = args.tcp {
        attackers.push(tokio::spawn(idle_tcp(args.clone(), tcp, stop.clone())));
    }
    attackers.push(tokio::spawn(garbage(args.clone(), stop.clone())));
    // Let the first wave land before the agents come.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (times, locked_out, refusals) = register_agents(&args, cas, token).await;
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        let _ = attacker.await;
    }
    let attack_peak = peak.load(Ordering::Relaxed);
    let mut sorted = times.clone();
    sorted.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "attack\tagents={}\tregistered={}\tlocked_out={locked_out}\trefusals={refusals}\tregister_p50_ms={:.1}\tregister_p99_ms={:.1}\tserver_idle_mib={:.1}\tserver_peak_above_idle_mib={:.1}",
        args.agents,
        times.len(),
        percentile(&sorted, 50.0).map_or(0.0, ms),
        percentile(&sorted, 99.0).map_or(0.0, ms),
        idle_kib as f64 / 1024.0,
        attack_peak.saturating_sub(idle_kib) as f64 / 1024.0,
    );
}

/// Attacker address `i` (spread over `attacker_addresses` addresses).
fn attacker_ip(args: &AttackArgs, i: usize) -> IpAddr {
    let n = args.attacker_addresses.max(1) as usize;
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i % n) as u8))
}

/// Keeps `peak` at the highest RSS seen, every 50 ms, while `on`.
async fn sample_rss(pid: u32, peak: Arc<AtomicU64>, on: Arc<AtomicBool>) {
    while on.load(Ordering::Relaxed) {
        peak.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one QUIC Initial from each of `half_open_quic` sockets and never
/// answers; renews them all every refresh.
async fn half_open_quic(args: AttackArgs, tls: AgentTls, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.rustls_config()?)?;
    let config = quinn_proto::ClientConfig::new(Arc::new(crypto));
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut held = Vec::with_capacity(args.half_open_quic);
        for i in 0..args.half_open_quic {
            let mut endpoint =
                quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, false, None);
            let now = Instant::now();
            let Ok((_, mut conn)) = endpoint.connect(now, config.clone(), args.quic, "localhost") else {
                continue;
            };
            let mut buf = Vec::new();
            let Some(transmit) = conn.poll_transmit(now, 1, &mut buf) else {
                continue;
            };
            let socket = tokio::net::UdpSocket::bind((attacker_ip(&args, i), 0)).await?;
            let _ = socket.send_to(&buf[..transmit.size], args.quic).await;
            held.push(socket);
        }
        wait_refresh(&args, started, &stop).await;
    }
    Ok(())
}

/// Holds `idle_tcp` TCP connections that send nothing; renews them every refresh.
async fn idle_tcp(args: AttackArgs, addr: SocketAddr, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut held = Vec::with_capacity(args.idle_tcp);
        for i in 0..args.idle_tcp {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(attacker_ip(&args, i), 0))?;
            if let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(1), socket.connect(addr)).await {
                held.push(tcp);
            }
        }
        wait_refresh(&args, started, &stop).await;
    }
    Ok(())
}

async fn wait_refresh(args: &AttackArgs, started: Instant, stop: &AtomicBool) {
    let until = started + Duration::from_secs_f64(args.refresh_secs);
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Random datagrams to the QUIC port at `garbage_per_sec`.
async fn garbage(args: AttackArgs, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let socket = tokio::net::UdpSocket::bind((attacker_ip(&args, 0), 0)).await?;
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut datagram = vec![0u8; 1_200];
    let per_tick = (args.garbage_per_sec / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for _ in 0..per_tick {
            rng.fill_bytes(&mut datagram);
            let _ = socket.send_to(&datagram, args.quic).await;
        }
    }
    Ok(())
}

/// Registers the legitimate agents one after another; returns each
/// registration time, how many never registered, and the refusals they saw.
async fn register_agents(
    args: &AttackArgs,
    cas: &[rustls::pki_types::CertificateDer<'static>],
    token: &str,
) -> (Vec<Duration>, usize, u64) {
    let (mut times, mut locked_out, mut refusals) = (Vec::new(), 0, 0);
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let mut setup =
            connector_core::setup::AgentSetup::new(args.quic.to_string(), cas.to_vec(), format!("node-a/legit-{i}"));
        setup.credentials = Some(Arc::new(StaticCredential(Credential::Bearer(Secret::new(
            token.to_owned(),
        )))));
        setup.transport = connector_core::transport::fallback::TransportMode::Quic;
        let started = Instant::now();
        let Ok(agent) = setup.start() else {
            locked_out += 1;
            continue;
        };
        match tokio::time::timeout(Duration::from_secs_f64(args.registration_limit_secs), agent.connected()).await {
            Ok(_) => times.push(started.elapsed()),
            Err(_) => locked_out += 1,
        }
        let observer = agent.observer();
        refusals += observer.metrics().connect_failures.total();
        agents.push(agent);
    }
    for agent in agents {
        agent.stop().await;
    }
    (times, locked_out, refusals)
}

/// Connections that parked what they could, kept open until dropped.
struct Parked {
    connected: usize,
    bytes_taken: u64,
    _held: Vec<(quinn::Endpoint, quinn::Connection)>,
}

/// Opens `parkers` QUIC connections that never send a valid `Hello` and
/// push as much as the server takes on the control stream and extra streams.
async fn park(args: &AttackArgs, tls: &AgentTls) -> Parked {
    let mut parked = Parked {
        connected: 0,
        bytes_taken: 0,
        _held: Vec::new(),
    };
    let Ok(rustls_config) = tls.rustls_config() else {
        return parked;
    };
    let Ok(crypto) = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_config) else {
        return parked;
    };
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(&QuicSettings::default(), 0)));
    let taken = Arc::new(AtomicU64::new(0));
    for i in 0..args.parkers {
        let Ok(endpoint) = endpoint(SocketAddr::new(attacker_ip(args, i), 0), None, MAX_UDP_PAYLOAD) else {
            continue;
        };
        let Ok(connecting) = endpoint.connect_with(config.clone(), args.quic, &tls.server_name) else {
            continue;
        };
        let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(5), connecting).await else {
            continue;
        };
        parked.connected += 1;
        // A Hello header announcing the largest payload, then filler; and
        // three more streams, each filled, if the server grants them.
        for s in 0..4 {
            let (conn, taken) = (conn.clone(), taken.clone());
            tokio::spawn(async move {
                let Ok(Ok((mut send, _recv))) = tokio::time::timeout(Duration::from_secs(2), conn.open_bi()).await
                else {
                    return;
                };
                if s == 0 {
                    let _ = send.write_all(&[0x01, 0x00, 0x01, 0x00, 0x00]).await;
                }
                let filler = vec![0x55u8; 64 * 1024];
                while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), send.write(&filler)).await {
                    taken.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
        parked._held.push((endpoint, conn));
    }
    // What each could push within its credit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    parked.bytes_taken = taken.load(Ordering::Relaxed);
    parked
}
