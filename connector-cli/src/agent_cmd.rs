//! `connector agent`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use connector_core::Identifiers;
use connector_core::agent::{Agent, AgentConfig, DestinationPolicy, Rule};
use connector_core::auth::{CredentialSource, StaticCredential, TokenFile};
use connector_core::tls::{AgentTls, Identity, certs_from_file};
use connector_core::transport::quic::{QuicConnector, QuicSettings};

use crate::units::parse_duration;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Server address (`host:port`), resolved at every connection attempt.
    #[arg(long, env = "CONNECTOR_SERVER")]
    server: String,
    /// CA bundle (PEM) the server's certificate must chain to.
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
    /// Client certificate chain (PEM) for mTLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key of the client certificate (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Destinations the agent may connect to (repeatable): a network, address or
    /// host-name pattern with optional ports, e.g. `10.0.0.0/8`, `10.0.0.5:10250`,
    /// `*.svc.cluster.local:443`. Default: anything except loopback, unspecified
    /// and cloud-metadata addresses.
    #[arg(long = "allow", value_name = "RULE")]
    allow: Vec<Rule>,
    /// Most tunnelled connections served at once.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Keepalive interval on the server connection.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    keepalive: Duration,
    /// The server is considered gone after this long without an answer.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    idle_timeout: Duration,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let server_name = match args.server_name {
        Some(name) => name,
        None => server_host(&args.server).context("cannot take a server name from --server; pass --server-name")?,
    };
    let client_identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(Identity::from_files(cert, key)?),
        _ => None,
    };
    let credentials: Arc<dyn CredentialSource> = match &args.token_file {
        Some(path) => Arc::new(TokenFile(path.clone())),
        None if client_identity.is_some() => Arc::new(StaticCredential::default()),
        None => anyhow::bail!("no credential: pass --token-file FILE and/or --cert/--key"),
    };
    let tls = AgentTls {
        server_cas: certs_from_file(&args.ca)?,
        server_name,
        client_identity,
    };
    let settings = QuicSettings {
        keepalive: args.keepalive,
        idle_timeout: args.idle_timeout,
        // The server opens one stream per tunnelled connection, plus headroom
        // so that excess dials get an `Overloaded` answer rather than waiting.
        max_tunnelled_streams: u32::try_from(args.max_connections)
            .unwrap_or(u32::MAX)
            .saturating_add(64),
        ..Default::default()
    };
    let connector = QuicConnector::new(args.server.clone(), &tls, &settings)?;
    let agent_id = args.agent_id.unwrap_or_else(crate::server_cmd::host_name);
    let mut config = AgentConfig::new(agent_id, credentials);
    config.identifiers = args.identifiers;
    config.policy = DestinationPolicy::new(args.allow);
    config.max_connections = args.max_connections;
    let agent = Agent::start(Arc::new(connector), config);
    crate::shutdown_signal().await;
    tracing::info!("shutting down");
    agent.stop().await;
    Ok(())
}

/// The host part of `host:port` / `[v6]:port`.
fn server_host(server: &str) -> Option<String> {
    let (host, _port) = server.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_owned())
}
