//! `connector demo`: the whole tunnel in one process, with a report a
//! newcomer can read. A throw-away CA, a server on loopback, an agent that
//! dials out to it, and a TCP echo service that only the agent "reaches";
//! then real traffic through the tunnel, measured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use connector_core::agent::{Agent, AgentConfig, DestinationPolicy};
use connector_core::auth::{Allowance, StaticCredential, TokenAuthenticator, TokenEntry};
use connector_core::pki::ThrowawayCa;
use connector_core::proto::{Credential, Secret};
use connector_core::server::{DialError, Selector, Server, ServerConfig, TunnelStream};
use connector_core::tls::{AgentTls, ServerTls};
use connector_core::transport::memory;
use connector_core::transport::quic::{QuicConnector, QuicListener, QuicSettings};
use connector_core::transport::{Connector, Listener};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::units::parse_size;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Transport {
    /// Real QUIC (quinn + rustls, TLS 1.3) on loopback.
    Quic,
    /// In-process pipes: shows connector's own overhead without QUIC or TLS.
    Memory,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Bytes to send each way through one tunnelled connection.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    bytes: u64,
    /// Concurrent tunnelled connections in the fan-out step.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Small-message round trips on one tunnelled connection.
    #[arg(long, default_value_t = 1000)]
    round_trips: usize,
    /// Transport between agent and server.
    #[arg(long, value_enum, default_value = "quic")]
    transport: Transport,
}

const AGENT_ID: &str = "demo-node";

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    println!("connector demo: a server, an agent and a target service in one process\n");
    let (server, connector, token) = start_server(args.transport).await?;
    let target = echo_target().await?;
    step(
        3,
        format!("target service: a TCP echo server on {target}, reached only from the agent's side"),
    );
    let agent = start_agent(&server, connector, token, target).await?;

    let by_host = Selector::Host(AGENT_ID.into());
    let target = target.to_string();
    let measured = measure(&server, &by_host, &target, &args).await?;
    let (refused, nobody) = dials_that_fail(&server, &by_host).await?;

    agent.stop().await;
    server.shutdown();
    println!(
        "\nsummary: {:.2} Gbit/s each way, round trip p50 {}, {:.0} dials/s, data {}",
        gbits(args.bytes, measured.bulk.elapsed),
        us(percentile(&measured.round_trips, 50.0)),
        args.connections as f64 / measured.fan_out.elapsed.as_secs_f64(),
        if measured.bulk.intact { "intact" } else { "CORRUPTED" }
    );
    anyhow::ensure!(measured.bulk.intact, "data corrupted in the tunnel");
    anyhow::ensure!(
        matches!(&refused, Err(e) if e.code() == connector_core::proto::DialCode::Refused),
        "the dial to a closed port did not fail as refused: {}",
        outcome(&refused)
    );
    anyhow::ensure!(
        matches!(&nobody, Err(DialError::NoAgent(_))),
        "the dial to a node with no agent did not fail as such: {}",
        outcome(&nobody)
    );
    Ok(())
}

/// Steps 1 and 2: a throw-away CA and token, and a server listening on
/// `transport`; returns the server, the agent's way to it and its token.
async fn start_server(transport: Transport) -> anyhow::Result<(Server, Arc<dyn Connector>, Secret)> {
    let t = Instant::now();
    let ca = ThrowawayCa::new("connector demo CA")?;
    let server_cert = ca.issue_server("connector demo server", &["localhost", "127.0.0.1"])?;
    let token = Secret::new(format!("demo-{:016x}", rand::random::<u64>()));
    step(
        1,
        format!(
            "generated a throw-away CA, a server certificate and an agent token in {}",
            ms(t.elapsed())
        ),
    );

    let allowed = "host=demo-node,ipv4=127.0.0.1".parse()?;
    let auth = TokenAuthenticator::from_entries(vec![TokenEntry::new(&token, AGENT_ID, Allowance::Only(allowed))]);
    let server = Server::new(ServerConfig::new("demo-server", Arc::new(auth)));
    let (listener, connector): (Arc<dyn Listener>, Arc<dyn Connector>) = match transport {
        Transport::Quic => {
            let tls = ServerTls {
                identity: server_cert.identity(),
                client_cas: None,
            };
            let listener = QuicListener::bind("127.0.0.1:0".parse()?, &tls, &QuicSettings::default())?;
            let agent_tls = AgentTls {
                server_cas: vec![ca.cert_der()].into(),
                server_name: "localhost".into(),
                client_identity: None,
            };
            let settings = QuicSettings::default();
            let addr = listener.local_socket_addr()?;
            (
                Arc::new(listener),
                Arc::new(QuicConnector::new(addr.to_string(), &agent_tls, &settings)?),
            )
        }
        Transport::Memory => {
            let (listener, connector) = memory::pair();
            (Arc::new(listener), Arc::new(connector))
        }
    };
    let transport_name = match transport {
        Transport::Quic => format!("QUIC on udp://{} (TLS 1.3, ALPN connector/1)", listener.local_addr()),
        Transport::Memory => "the in-memory transport (no QUIC, no TLS)".to_owned(),
    };
    server.serve(listener);
    step(
        2,
        format!("server \"demo-server\" listening for agents over {transport_name}"),
    );
    Ok((server, connector, token))
}

/// Step 4: an agent that may reach `target` dials out to the server and registers.
async fn start_agent(
    server: &Server,
    connector: Arc<dyn Connector>,
    token: Secret,
    target: SocketAddr,
) -> anyhow::Result<Agent> {
    let t = Instant::now();
    let mut config = AgentConfig::new(AGENT_ID, Arc::new(StaticCredential(Credential::Bearer(token))));
    config.identifiers = "host=demo-node".parse()?;
    config.policy = DestinationPolicy::new(vec![format!("{}/32", target.ip()).parse()?]);
    let agent = Agent::start(connector, config);
    let connected = tokio::time::timeout(Duration::from_secs(10), agent.connected())
        .await
        .context("the agent did not connect within 10 s")?;
    let info = server
        .agents()
        .into_iter()
        .next()
        .context("agent missing from the registry")?;
    step(
        4,
        format!(
            "agent \"{AGENT_ID}\" dialled out, authenticated with its token and registered with \"{connected}\" in {}\n       it serves: {}",
            ms(t.elapsed()),
            info.identifiers
        ),
    );
    Ok(agent)
}

/// What steps 5 to 8 measured.
struct Measured {
    bulk: Bulk,
    round_trips: Vec<Duration>,
    fan_out: FanOut,
}

/// Steps 5 to 8: a first dial, bulk both ways, round trips and a fan-out through the tunnel.
async fn measure(server: &Server, by_host: &Selector, target: &str, args: &DemoArgs) -> anyhow::Result<Measured> {
    let t = Instant::now();
    let mut stream = server.dial(by_host, target).await?;
    stream.write_all(b"!").await?;
    let mut one = [0u8; 1];
    stream.read_exact(&mut one).await?;
    step(
        5,
        format!(
            "server.dial(host={AGENT_ID}, {target}): connected, first byte echoed back after {}",
            ms(t.elapsed())
        ),
    );

    let bulk = bulk(&mut stream, args.bytes).await?;
    drop(stream);
    step(
        6,
        format!(
            "bulk: {} each way through one tunnelled connection in {}: {:.2} Gbit/s each way, SHA-256 {}",
            mib(args.bytes),
            secs(bulk.elapsed),
            gbits(args.bytes, bulk.elapsed),
            if bulk.intact { "identical" } else { "MISMATCH" }
        ),
    );

    let rtts = round_trips(server, by_host, target, args.round_trips).await?;
    step(
        7,
        format!(
            "round trips: {} x 64-byte request/response on one connection: p50 {}, p99 {}",
            args.round_trips,
            us(percentile(&rtts, 50.0)),
            us(percentile(&rtts, 99.0))
        ),
    );

    let fan = fan_out(server, by_host, target, args.connections).await?;
    step(
        8,
        format!(
            "fan-out: {} concurrent tunnelled connections dialled, 16 KiB echoed on each, closed: {} in all\n       dial time p50 {}, p99 {}; {:.0} dials/s",
            args.connections,
            secs(fan.elapsed),
            ms(percentile(&fan.dials, 50.0)),
            ms(percentile(&fan.dials, 99.0)),
            args.connections as f64 / fan.elapsed.as_secs_f64()
        ),
    );
    Ok(Measured {
        bulk,
        round_trips: rtts,
        fan_out: fan,
    })
}

type DialOutcome = Result<TunnelStream, DialError>;

/// Steps 9 and 10: a dial to a closed port and one to a node without an agent, which must fail.
async fn dials_that_fail(server: &Server, by_host: &Selector) -> anyhow::Result<(DialOutcome, DialOutcome)> {
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let t = Instant::now();
    let refused = server.dial(by_host, &format!("127.0.0.1:{closed_port}")).await;
    step(
        9,
        format!(
            "dial to a closed port, failed after {} as it should:\n       {}",
            ms(t.elapsed()),
            outcome(&refused)
        ),
    );
    let t = Instant::now();
    let nobody = server
        .dial(&Selector::Host("node-without-agent".into()), "node-without-agent:10250")
        .await;
    step(
        10,
        format!(
            "dial to a node with no agent, failed after {} as it should:\n       {}",
            ms(t.elapsed()),
            outcome(&nobody)
        ),
    );
    Ok((refused, nobody))
}

fn step(n: usize, text: String) {
    println!("[{n:>2}] {text}");
}

fn outcome(result: &Result<TunnelStream, DialError>) -> String {
    match result {
        Ok(_) => "connected (unexpected)".into(),
        Err(err) => err.to_string(),
    }
}

struct Bulk {
    elapsed: Duration,
    intact: bool,
}

/// Sends `bytes` through an echo connection while reading them back, and checks the digest.
async fn bulk(stream: &mut TunnelStream, bytes: u64) -> anyhow::Result<Bulk> {
    let chunk: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let (mut r, mut w) = tokio::io::split(stream);
    let t = Instant::now();
    let writer = async {
        let mut hasher = Sha256::new();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n]).await?;
            hasher.update(&chunk[..n]);
            left -= n as u64;
        }
        w.shutdown().await?;
        anyhow::Ok(hasher.finalize())
    };
    let reader = async {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        anyhow::Ok((hasher.finalize(), total))
    };
    let (sent, (received, total)) = tokio::try_join!(writer, reader)?;
    Ok(Bulk {
        elapsed: t.elapsed(),
        intact: sent == received && total == bytes,
    })
}

async fn round_trips(
    server: &Server,
    selector: &Selector,
    target: &str,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut stream = server.dial(selector, target).await?;
    let message = [7u8; 64];
    let mut back = [0u8; 64];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        stream.write_all(&message).await?;
        stream.read_exact(&mut back).await?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

struct FanOut {
    elapsed: Duration,
    dials: Vec<Duration>,
}

async fn fan_out(server: &Server, selector: &Selector, target: &str, count: usize) -> anyhow::Result<FanOut> {
    let t = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (server, selector, target) = (server.clone(), selector.clone(), target.to_owned());
            tokio::spawn(async move {
                let t = Instant::now();
                let mut stream = server.dial(&selector, &target).await?;
                let dialled = t.elapsed();
                let data = vec![i as u8; 16 * 1024];
                stream.write_all(&data).await?;
                stream.shutdown().await?;
                let mut back = Vec::new();
                stream.read_to_end(&mut back).await?;
                anyhow::ensure!(back == data, "connection {i} corrupted");
                anyhow::Ok(dialled)
            })
        })
        .collect();
    let mut dials = Vec::with_capacity(count);
    for task in tasks {
        dials.push(task.await??);
    }
    Ok(FanOut {
        elapsed: t.elapsed(),
        dials,
    })
}

async fn echo_target() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes as f64 / (1 << 20) as f64)
}
fn gbits(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}
