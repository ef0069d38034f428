//! `connector agent`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use connector_core::Identifiers;
use connector_core::agent::{DestinationPolicy, Rule};
use connector_core::auth::TokenFile;
use connector_core::setup::{AgentSetup, SetupError};
use connector_core::tls::{CaBundle, Identity};
use connector_core::transport::fallback::TransportMode;
use connector_core::transport::qmux::proxy::ProxyChoice;

use crate::quic_args::QuicArgs;
use crate::units::{OptionalDuration, parse_duration, parse_optional_duration};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Server address (`host:port`), resolved at every connection attempt. One address may
    /// front several replicas (the agent connects until it holds each replica the servers
    /// report); repeat the flag or separate with commas to list one address per replica.
    #[arg(long, env = "CONNECTOR_SERVER", value_delimiter = ',', required = true)]
    server: Vec<String>,
    /// CA bundle (PEM) the server's certificate must chain to (the certificate
    /// needs EKU serverAuth); followed: a changed file is used from the next handshake.
    #[arg(long, env = "CONNECTOR_CA")]
    ca: PathBuf,
    /// Name expected on the server's certificate (default: the host part of --server).
    #[arg(long)]
    server_name: Option<String>,
    /// This agent's id (default: the host name).
    #[arg(long, env = "CONNECTOR_AGENT_ID")]
    agent_id: Option<String>,
    /// What this agent serves, Konnectivity-style:
    /// `host=NODE,ipv4=10.0.0.5,ipv6=fd00::5,cidr=10.0.0.0/24,default-route=true`.
    /// Empty: whatever the agent's identity allows.
    #[arg(long, default_value = "")]
    identifiers: Identifiers,
    /// File holding the bearer token, re-read at each connection (rotation-safe).
    #[arg(long, env = "CONNECTOR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mTLS; it needs EKU clientAuth, and its
    /// common name is the agent's identity.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key of the client certificate (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Destinations the agent may connect to (repeatable): a network, address or
    /// host-name pattern with optional ports, e.g. `10.0.0.0/8`, `10.0.0.5:10250`,
    /// `*.svc.cluster.local:443`. Default: anything except loopback, unspecified,
    /// link-local and cloud-metadata addresses (in any IPv6 form that carries them).
    #[arg(long = "allow", value_name = "RULE")]
    allow: Vec<Rule>,
    /// Most tunnelled connections served at once; further dials are answered
    /// `Overloaded` (HTTP CONNECT: 503).
    #[arg(long, env = "CONNECTOR_MAX_CONNECTIONS", default_value_t = connector_core::agent::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Close a tunnelled connection that moved no byte either way for this long
    /// (both ends see an `idle_timeout` reset). `off` (default) never closes
    /// one: `kubectl exec`/`attach` sessions may be quiet for hours.
    #[arg(long, env = "CONNECTOR_TUNNEL_IDLE_TIMEOUT", default_value = "off", value_parser = parse_optional_duration)]
    tunnel_idle_timeout: OptionalDuration,
    /// Close a tunnelled connection one side of which (the client or the
    /// target) has read none of the bytes waiting for it for this long; both
    /// ends see a `stalled` reset. A stalled connection stops no other, but
    /// holds up to 4 MiB on each end. `off` never closes one.
    #[arg(long, env = "CONNECTOR_TUNNEL_STALL_TIMEOUT", default_value = "3m", value_parser = parse_optional_duration)]
    tunnel_stall_timeout: OptionalDuration,
    /// Keepalive interval on the server connection.
    #[arg(long, env = "CONNECTOR_KEEPALIVE", default_value = "5s", value_parser = parse_duration)]
    keepalive: Duration,
    /// The server is considered gone after this long without an answer (QUIC applies the smaller of this
    /// and the server's value).
    #[arg(long, env = "CONNECTOR_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// On SIGTERM (node shutdown): servers are sent GoAway so they route no new dials
    /// here; open tunnelled connections may finish within this grace, then the agent exits.
    #[arg(long, env = "CONNECTOR_DRAIN_GRACE", default_value = "20s", value_parser = parse_duration)]
    drain_grace: Duration,
    #[command(flatten)]
    quic: QuicArgs,
    /// Transport to the server: `auto` (QUIC, falling back to TLS over TCP when UDP is
    /// blocked or degraded, and back when QUIC works again), `quic` or `tcp`.
    #[arg(long, env = "CONNECTOR_TRANSPORT", default_value = "auto")]
    transport: TransportMode,
    /// The server's TCP address (`host:port`) for the TCP transport (default: --server).
    #[arg(long, env = "CONNECTOR_TCP_SERVER", value_name = "HOST:PORT")]
    tcp_server: Option<String>,
    /// HTTP proxy for the TCP transport, `http://[user:password@]host:port`, or `off`.
    /// Default: `HTTPS_PROXY`/`https_proxy`, except for servers listed in `NO_PROXY`.
    #[arg(long, env = "CONNECTOR_PROXY", value_name = "URL")]
    proxy: Option<String>,
    /// How long a QUIC connection attempt may take before the TCP transport is used (auto).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    quic_connect_timeout: Duration,
    /// How often to try QUIC again while on the TCP transport (auto; ±25% jitter).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    quic_probe_interval: Duration,
    /// Admin HTTP endpoints on this TCP address: /metrics (Prometheus), /healthz, /readyz.
    #[arg(long, env = "CONNECTOR_ADMIN", value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
    /// Check the settings (certificates, token file, a `--config` file) and exit without
    /// connecting: `connector agent --check-config FILE`.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let agent_id = args.agent_id.unwrap_or_else(crate::server_cmd::host_name);
    let mut setup = AgentSetup::new(String::new(), CaBundle::from_file(&args.ca)?, agent_id);
    setup.servers = args.server;
    setup.server_name = args.server_name;
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        setup.client_identity = Some(Identity::from_files(cert, key)?);
    }
    if let Some(path) = &args.token_file {
        setup.credentials = Some(Arc::new(TokenFile(path.clone())));
    }
    setup.identifiers = args.identifiers;
    setup.policy = DestinationPolicy::new(args.allow);
    setup.max_connections = args.max_connections;
    setup.tunnel_idle_timeout = args.tunnel_idle_timeout.0;
    setup.tunnel_stall_timeout = args.tunnel_stall_timeout.0;
    setup.keepalive = args.keepalive;
    setup.idle_timeout = args.idle_timeout;
    setup.congestion = args.quic.congestion_control;
    setup.max_udp_payload = args.quic.max_udp_payload;
    setup.transport = args.transport;
    setup.tcp_server = args.tcp_server;
    // Parsed here rather than by clap, whose errors would echo the URL with its password.
    setup.proxy = match &args.proxy {
        Some(url) => Some(ProxyChoice::parse(url).map_err(|e| anyhow::anyhow!("--proxy: {e}"))?),
        None => None,
    };
    setup.fallback.quic_connect_timeout = args.quic_connect_timeout;
    setup.fallback.probe_interval = args.quic_probe_interval;
    match setup.check() {
        Err(SetupError::NoCredential) => anyhow::bail!("no credential: pass --token-file FILE and/or --cert/--key"),
        Err(SetupError::ServerName(server)) => {
            anyhow::bail!("cannot take a server name from --server {server:?}; pass --server-name")
        }
        checked => checked?,
    }
    if let Some(file) = &args.check_config {
        if let Some(path) = &args.token_file {
            std::fs::metadata(path).map_err(|err| anyhow::anyhow!("token-file {}: {err}", path.display()))?;
        }
        println!("{}: the agent configuration is valid", file.display());
        return Ok(());
    }
    let agent = setup.start()?;
    if let Some(addr) = args.admin {
        crate::admin::start(addr, Arc::new(agent.observer())).await?;
    }
    crate::shutdown_signal().await;
    tracing::info!(grace = ?args.drain_grace, "draining: servers are told to route no new dials here (signal again to stop at once)");
    tokio::select! {
        _ = agent.drain(args.drain_grace) => tracing::info!("stopped"),
        _ = crate::shutdown_signal() => tracing::info!("stopping at once"),
    }
    Ok(())
}
