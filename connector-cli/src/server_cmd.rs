//! `connector server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use connector_core::settings::{ServerSettings, parse_duration};
use connector_core::setup::SetupError;

use crate::frontends::FrontendArgs;
use crate::settings_args::{SettingsArgs, flag_error};

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The settings of `connector_core::settings::ServerSettings`, one flag each.
    #[command(flatten)]
    pub(crate) settings: SettingsArgs<ServerSettings>,
    /// On SIGTERM: agents are sent GoAway and new dials refused at once; open tunnelled
    /// connections may finish within this grace, then the server exits.
    #[arg(long, env = "CONNECTOR_DRAIN_GRACE", default_value = "20s", value_parser = parse_duration)]
    drain_grace: Duration,
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
    let mut settings = args.settings.0;
    settings.server_id.get_or_insert_with(host_name);
    let setup = settings.into_setup().map_err(flag_error)?;
    if let Err(SetupError::NoAuthentication) = setup.check() {
        bail!(
            "no way to authenticate agents: pass --tokens FILE, --client-ca FILE and/or --kube-service-accounts NAMESPACE/NAME"
        );
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
