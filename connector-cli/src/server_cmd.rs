//! `connector server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use connector_core::auth::TokenAuthenticator;
use connector_core::server::{Limits, ProxyStrategy};
use connector_core::setup::{ServerSetup, SetupError, TcpListen};
use connector_core::tls::{CaBundle, Identity};

use crate::frontends::FrontendArgs;
use crate::quic_args::QuicArgs;
use crate::units::parse_duration;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// UDP address agents connect to.
    #[arg(long, env = "CONNECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// TCP address of the fallback transport (TLS + QMux) for agents without UDP:
    /// `same` (the --listen address and port), an `IP:PORT`, or `off`.
    #[arg(
        long,
        env = "CONNECTOR_TCP_LISTEN",
        default_value = "same",
        value_name = "ADDR|same|off"
    )]
    tcp_listen: TcpListen,
    /// Server certificate chain (PEM), presented to agents; it needs EKU serverAuth.
    #[arg(long, env = "CONNECTOR_CERT")]
    cert: PathBuf,
    /// Private key of the server certificate (PEM).
    #[arg(long, env = "CONNECTOR_KEY")]
    key: PathBuf,
    /// Tokens file for bearer-token agents: lines of `TOKEN IDENTITY [IDENTIFIERS|*]`;
    /// re-read when it changes.
    #[arg(long, env = "CONNECTOR_TOKENS")]
    tokens: Option<PathBuf>,
    /// CA bundle (PEM) for agents' client certificates (mTLS). The certificate's
    /// common name becomes the identity (no '/' or control characters); its
    /// DNS/IP SANs are what it may serve; it needs EKU clientAuth. Followed: a
    /// changed file is used from the next handshake.
    #[arg(long, env = "CONNECTOR_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// This replica's id, reported to agents (default: the host name).
    #[arg(long, env = "CONNECTOR_SERVER_ID")]
    server_id: Option<String>,
    /// Number of server replicas behind the agents' address.
    #[arg(long, default_value_t = 1)]
    server_count: u16,
    /// Most agents connected at once; further agents are rejected `Overloaded`
    /// and retry with backoff.
    #[arg(long, env = "CONNECTOR_MAX_AGENTS", default_value_t = 10_000)]
    max_agents: usize,
    /// Most tunnelled connections through one agent at once; further dials
    /// through it fail at once (HTTP CONNECT: 503).
    #[arg(long, env = "CONNECTOR_MAX_STREAMS_PER_AGENT", default_value_t = 10_000)]
    max_streams_per_agent: u32,
    /// Most dials waiting for their agent's answer at once, across all agents;
    /// further dials fail at once (HTTP CONNECT: 503).
    #[arg(long, env = "CONNECTOR_MAX_PENDING_DIALS", default_value_t = connector_core::server::DEFAULT_MAX_PENDING_DIALS)]
    max_pending_dials: usize,
    /// Most agent connections at once past their handshake and not yet
    /// admitted or refused (Hello, authentication); a new one closes the one
    /// that has waited longest (with a reason; it retries with backoff), so
    /// silent peers cannot keep agents out.
    #[arg(long, env = "CONNECTOR_MAX_PRE_HELLO", default_value_t = connector_core::server::DEFAULT_MAX_PRE_HELLO)]
    max_pre_hello: usize,
    /// Most QUIC or TLS handshakes in progress at once; a new one drops the
    /// one in progress longest.
    #[arg(long, env = "CONNECTOR_MAX_HANDSHAKES", default_value_t = connector_core::server::DEFAULT_MAX_HANDSHAKES)]
    max_handshakes: usize,
    /// Most connections not yet admitted from one source address at once;
    /// further attempts from it are dropped before their handshake.
    #[arg(long, env = "CONNECTOR_MAX_UNADMITTED_PER_SOURCE", default_value_t = connector_core::server::DEFAULT_MAX_UNADMITTED_PER_SOURCE)]
    max_unadmitted_per_source: usize,
    /// Time the authenticator has to decide on an agent; it is then refused.
    #[arg(long, env = "CONNECTOR_AUTH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    auth_timeout: Duration,
    /// Time a connecting agent has to send its Hello.
    #[arg(long, env = "CONNECTOR_HELLO_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    hello_timeout: Duration,
    /// Keepalive interval on agent connections.
    #[arg(long, env = "CONNECTOR_KEEPALIVE", default_value = "5s", value_parser = parse_duration)]
    keepalive: Duration,
    /// An agent silent for this long is considered gone (QUIC applies the smaller of this and the agent's value).
    #[arg(long, env = "CONNECTOR_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Default deadline of a dial (HTTP CONNECT: 504 when it passes).
    #[arg(long, env = "CONNECTOR_DIAL_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    dial_timeout: Duration,
    /// How dials for a host pick an agent, in order (Konnectivity's --proxy-strategies):
    /// destHost (the agent serving the host), defaultRoute (an agent with
    /// default-route=true), default (any agent).
    #[arg(long, default_value = "destHost,defaultRoute")]
    proxy_strategies: String,
    /// On SIGTERM: agents are sent GoAway and new dials refused at once; open tunnelled
    /// connections may finish within this grace, then the server exits.
    #[arg(long, env = "CONNECTOR_DRAIN_GRACE", default_value = "20s", value_parser = parse_duration)]
    drain_grace: Duration,
    #[command(flatten)]
    quic: QuicArgs,
    /// Admin HTTP endpoints on this TCP address: /metrics (Prometheus), /healthz, /readyz.
    #[arg(long, env = "CONNECTOR_ADMIN", value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Check the settings (certificates, tokens, frontends, a `--config` file) and exit
    /// without starting: `connector server --check-config FILE`.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    #[command(flatten)]
    frontends: FrontendArgs,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let mut setup = ServerSetup::new(args.listen, Identity::from_files(&args.cert, &args.key)?);
    if let Some(path) = &args.tokens {
        setup.tokens = Some(TokenAuthenticator::from_file(path)?);
    }
    if let Some(path) = &args.client_ca {
        setup.client_cas = Some(CaBundle::from_file(path)?);
    }
    setup.server_id = args.server_id.unwrap_or_else(host_name);
    setup.server_count = args.server_count;
    setup.keepalive = args.keepalive;
    setup.idle_timeout = args.idle_timeout;
    setup.congestion = args.quic.congestion_control;
    setup.max_udp_payload = args.quic.max_udp_payload;
    setup.tcp_listen = args.tcp_listen;
    setup.limits = Limits {
        max_agents: args.max_agents,
        max_streams_per_agent: args.max_streams_per_agent,
        hello_timeout: args.hello_timeout,
        dial_timeout: args.dial_timeout,
        max_pending_dials: args.max_pending_dials,
        max_pre_hello: args.max_pre_hello,
        max_handshakes: args.max_handshakes,
        max_unadmitted_per_source: args.max_unadmitted_per_source,
        auth_timeout: args.auth_timeout,
    };
    setup.proxy_strategies = ProxyStrategy::parse_list(&args.proxy_strategies)?;
    if let Err(SetupError::NoAuthentication) = setup.check() {
        bail!("no way to authenticate agents: pass --tokens FILE and/or --client-ca FILE");
    }
    // Kept for the frontends: a TLS frontend must not admit every agent.
    let agent_client_cas = setup.client_cas.clone().unwrap_or_default();
    args.frontends.check(&agent_client_cas)?;
    if let Some(file) = &args.check_config {
        println!("{}: the server configuration is valid", file.display());
        return Ok(());
    }
    let started = setup.start().context("starting the server")?;
    match started.tcp_addr {
        Some(tcp) => tracing::info!(quic = %started.local_addr, %tcp, "listening for agents"),
        None => tracing::info!(quic = %started.local_addr, "listening for agents (TCP fallback off)"),
    }
    let server = started.server;
    args.frontends.start(&server, &agent_client_cas).await?;
    if let Some(addr) = args.admin {
        crate::admin::start(addr, std::sync::Arc::new(server.clone())).await?;
    }
    crate::shutdown_signal().await;
    tracing::info!(grace = ?args.drain_grace, "draining: agents are told to go away (signal again to stop at once)");
    tokio::select! {
        _ = server.drain(args.drain_grace) => tracing::info!("stopped"),
        _ = crate::shutdown_signal() => {
            tracing::info!("stopping at once");
            server.shutdown();
        }
    }
    Ok(())
}

/// The machine's host name, or `connector` if it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "connector".into())
}
