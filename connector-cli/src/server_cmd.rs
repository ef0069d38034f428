//! `connector server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use connector_core::auth::{Authenticator, CertificateAuthenticator, FirstOf, TokenAuthenticator};
use connector_core::server::{Limits, ProxyStrategy, Server, ServerConfig};
use connector_core::tls::{Identity, ServerTls, certs_from_file};
use connector_core::transport::quic::{QuicListener, QuicSettings};

use crate::frontends::FrontendArgs;
use crate::units::parse_duration;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// UDP address agents connect to.
    #[arg(long, env = "CONNECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Server certificate chain (PEM), presented to agents.
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
    /// common name becomes the identity; its DNS/IP SANs are what it may serve.
    #[arg(long, env = "CONNECTOR_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// This replica's id, reported to agents (default: the host name).
    #[arg(long, env = "CONNECTOR_SERVER_ID")]
    server_id: Option<String>,
    /// Number of server replicas behind the agents' address.
    #[arg(long, default_value_t = 1)]
    server_count: u16,
    /// Most agents connected at once.
    #[arg(long, default_value_t = 10_000)]
    max_agents: usize,
    /// Most tunnelled connections through one agent at once.
    #[arg(long, default_value_t = 10_000)]
    max_streams_per_agent: u32,
    /// Keepalive interval on agent connections.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    keepalive: Duration,
    /// An agent silent for this long is considered gone.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Default deadline of a dial.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    dial_timeout: Duration,
    /// How dials for a host pick an agent, in order (Konnectivity's --proxy-strategies):
    /// destHost (the agent serving the host), defaultRoute (an agent with
    /// default-route=true), default (any agent).
    #[arg(long, default_value = "destHost,defaultRoute")]
    proxy_strategies: String,
    #[command(flatten)]
    frontends: FrontendArgs,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let mut authenticators: Vec<Arc<dyn Authenticator>> = Vec::new();
    if let Some(path) = &args.tokens {
        authenticators.push(Arc::new(TokenAuthenticator::from_file(path)?));
    }
    let client_cas = match &args.client_ca {
        Some(path) => {
            authenticators.push(Arc::new(CertificateAuthenticator));
            Some(certs_from_file(path)?)
        }
        None => None,
    };
    if authenticators.is_empty() {
        bail!("no way to authenticate agents: pass --tokens FILE and/or --client-ca FILE");
    }
    let tls = ServerTls {
        identity: Identity::from_files(&args.cert, &args.key)?,
        client_cas,
    };
    let settings = QuicSettings {
        keepalive: args.keepalive,
        idle_timeout: args.idle_timeout,
        ..Default::default()
    };
    let listener = QuicListener::bind(args.listen, &tls, &settings).context("starting the QUIC listener")?;
    let server_id = args.server_id.unwrap_or_else(host_name);
    let mut config = ServerConfig::new(server_id, Arc::new(FirstOf(authenticators)));
    config.server_count = args.server_count;
    config.keepalive = args.keepalive;
    config.idle_timeout = args.idle_timeout;
    config.limits = Limits {
        max_agents: args.max_agents,
        max_streams_per_agent: args.max_streams_per_agent,
        dial_timeout: args.dial_timeout,
        ..Limits::default()
    };
    config.proxy_strategies = ProxyStrategy::parse_list(&args.proxy_strategies)?;
    let server = Server::new(config);
    server.serve(Arc::new(listener));
    args.frontends.start(&server).await?;
    crate::shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown();
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
