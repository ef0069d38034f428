//! `connector server` flags for the frontends that let kube-apiserver and
//! other clients reach the dialer: HTTP CONNECT, Konnectivity gRPC, forwards.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use connector_core::frontend::{self, FrontendBind, FrontendLimits, FrontendProtocol};
use connector_core::server::{Selector, Server};
use connector_core::tls::{CaBundle, FrontendTls};

use crate::units::parse_duration;

#[derive(Debug, Args)]
#[command(next_help_heading = "Frontends (how the apiserver reaches the tunnel)")]
pub struct FrontendArgs {
    /// HTTP CONNECT on this Unix socket (kube-apiserver egress `proxyProtocol: HTTPConnect`, `transport.uds`).
    #[arg(long, value_name = "PATH")]
    connect_uds: Option<PathBuf>,
    /// HTTP CONNECT on this TCP address with mutual TLS (`transport.tcp` with client certificates).
    #[arg(long, value_name = "ADDR", requires = "frontend_cert")]
    connect_tls: Option<SocketAddr>,
    /// HTTP CONNECT on plain TCP, loopback addresses only, for local tools (`curl -p -x`). No authentication.
    #[arg(long, value_name = "ADDR")]
    connect_plain: Option<SocketAddr>,
    /// Konnectivity gRPC on this Unix socket (`proxyProtocol: GRPC`, `transport.uds`).
    #[arg(long, value_name = "PATH")]
    grpc_uds: Option<PathBuf>,
    /// Konnectivity gRPC on this TCP address with mutual TLS.
    #[arg(long, value_name = "ADDR", requires = "frontend_cert")]
    grpc_tls: Option<SocketAddr>,
    /// Certificate (PEM) of the TLS frontends.
    #[arg(long, value_name = "FILE", requires_all = ["frontend_key", "frontend_client_ca"])]
    frontend_cert: Option<PathBuf>,
    /// Private key (PEM) of the TLS frontends.
    #[arg(long, value_name = "FILE")]
    frontend_key: Option<PathBuf>,
    /// CA bundle (PEM) that frontend clients' certificates must chain to; followed:
    /// a changed file is used from the next handshake. Client certificates need
    /// EKU clientAuth. Use a CA of frontend clients only: the server refuses to
    /// start when this is also the agents' --client-ca, unless
    /// --frontend-allow-client lists the clients.
    #[arg(long, value_name = "FILE")]
    frontend_client_ca: Option<PathBuf>,
    /// Admit only this client on the TLS frontends (repeatable): a client
    /// certificate is admitted when its subject common name equals NAME, or one
    /// of its DNS names equals NAME ignoring case. Without it, any certificate
    /// --frontend-client-ca issued is admitted.
    #[arg(long = "frontend-allow-client", value_name = "NAME")]
    frontend_allow_client: Vec<String>,
    /// File mode of the frontends' Unix sockets (octal).
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    uds_mode: u32,
    /// Group (name or numeric id) of the frontends' Unix sockets; with
    /// `--uds-mode 660` its members may connect.
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    uds_group: Option<u32>,
    /// Forward a local TCP port to a target through an agent (repeatable):
    /// `LISTEN=HOST:PORT`, routed by HOST, or `LISTEN=HOST:PORT,agent=ID`.
    /// No authentication: LISTEN must be a loopback address; at most
    /// --frontend-max-connections connections per forward.
    #[arg(long, value_name = "SPEC")]
    forward: Vec<ForwardSpec>,
    /// Frontend client connections served at once (per listener and per
    /// forward); more are closed on arrival.
    #[arg(long, env = "CONNECTOR_FRONTEND_MAX_CONNECTIONS", default_value_t = 10_000)]
    frontend_max_connections: usize,
    /// Time a frontend client has for its TLS handshake, and again for its
    /// request head (HTTP CONNECT: the CONNECT head, else 408; gRPC: the HTTP/2
    /// preface and first request header block).
    #[arg(long, env = "CONNECTOR_FRONTEND_HEAD_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    frontend_head_timeout: Duration,
    /// Largest HTTP CONNECT request head accepted (HTTP CONNECT: 431 beyond it).
    #[arg(long, env = "CONNECTOR_FRONTEND_MAX_HEAD", default_value = "8KiB", value_parser = parse_frontend_head)]
    frontend_max_head: usize,
}

/// A request-head size: at least 1 KiB (a real CONNECT head needs a few
/// hundred bytes), at most 1 MiB (the head is buffered whole).
fn parse_frontend_head(text: &str) -> Result<usize, String> {
    let size = crate::units::parse_size(text)?;
    if !(1024..=1 << 20).contains(&size) {
        return Err(format!(
            "{text:?}: the request-head limit must be between 1KiB and 1MiB"
        ));
    }
    Ok(size as usize)
}

/// A numeric group id, or a group name looked up in `/etc/group`.
fn parse_group(text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").map_err(|e| format!("cannot read /etc/group: {e}"))?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse().ok()?;
            Some((name, gid))
        })
        .find_map(|(name, gid)| (name == text).then_some(gid))
        .ok_or_else(|| format!("no group {text:?} in /etc/group; pass a numeric group id"))
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{text:?} is not an octal file mode like 600"))
}

/// One `--forward` specification.
#[derive(Debug, Clone)]
pub struct ForwardSpec {
    listen: SocketAddr,
    target: String,
    selector: Selector,
}

impl FromStr for ForwardSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{s:?}: expected LISTEN=HOST:PORT or LISTEN=HOST:PORT,agent=ID");
        let (listen, rest) = s.split_once('=').ok_or_else(usage)?;
        let listen: SocketAddr = listen.parse().map_err(|_| usage())?;
        // Checked again when it starts; here so that --check-config catches it too.
        frontend::require_loopback(listen).map_err(|e| format!("{s:?}: {e}"))?;
        let (target, selector) = match rest.split_once(",agent=") {
            Some((_, "")) => return Err(usage()),
            Some((target, agent)) => (target.to_owned(), Selector::Agent(agent.to_owned())),
            None => (rest.to_owned(), Selector::for_target(rest)),
        };
        if !target.contains(':') || target.ends_with(':') || target.starts_with(':') {
            return Err(usage());
        }
        Ok(ForwardSpec {
            listen,
            target,
            selector,
        })
    }
}

impl FrontendArgs {
    /// The TLS frontends' settings, refused when a TLS frontend would admit
    /// every client of the agents' CA (`agent_client_cas`, the server's
    /// --client-ca).
    fn tls(&self, agent_client_cas: &CaBundle) -> anyhow::Result<Option<FrontendTls>> {
        let (Some(cert), Some(key), Some(ca)) = (&self.frontend_cert, &self.frontend_key, &self.frontend_client_ca)
        else {
            return Ok(None);
        };
        let mut tls = FrontendTls::from_files(cert, key, ca)?;
        connector_core::warn_if_exposed(key, "frontend TLS key file");
        tls.allowed_clients = self.frontend_allow_client.clone();
        if self.connect_tls.is_some() || self.grpc_tls.is_some() {
            tls.check_trust_domains(agent_client_cas)
                .with_context(|| format!("--frontend-client-ca {}", ca.display()))?;
        }
        Ok(Some(tls))
    }

    /// Checks the frontend settings (TLS material, sockets' directories) without binding.
    pub fn check(&self, agent_client_cas: &CaBundle) -> anyhow::Result<()> {
        let tls = self.tls(agent_client_cas)?;
        if tls.is_none() && (self.connect_tls.is_some() || self.grpc_tls.is_some()) {
            anyhow::bail!("TLS frontends need --frontend-cert, --frontend-key and --frontend-client-ca");
        }
        Ok(())
    }

    /// Binds every configured frontend and starts serving on `server`, whose
    /// agents' client certificates chain to `agent_client_cas`.
    pub async fn start(&self, server: &Server, agent_client_cas: &CaBundle) -> anyhow::Result<()> {
        let limits = FrontendLimits {
            max_connections: self.frontend_max_connections,
            head_timeout: self.frontend_head_timeout,
            max_head: self.frontend_max_head,
        };
        let tls = self.tls(agent_client_cas)?;
        let tls_bind = |addr: SocketAddr| -> anyhow::Result<FrontendBind> {
            let tls = tls
                .clone()
                .context("TLS frontends need --frontend-cert, --frontend-key and --frontend-client-ca")?;
            Ok(FrontendBind::Tls { addr, tls })
        };
        let unix = |path: &PathBuf| FrontendBind::Unix {
            path: path.clone(),
            mode: self.uds_mode,
            group: self.uds_group,
        };
        let mut binds = Vec::new();
        binds.extend(
            self.connect_uds
                .as_ref()
                .map(|p| (FrontendProtocol::HttpConnect, unix(p))),
        );
        if let Some(addr) = self.connect_tls {
            binds.push((FrontendProtocol::HttpConnect, tls_bind(addr)?));
        }
        binds.extend(
            self.connect_plain
                .map(|addr| (FrontendProtocol::HttpConnect, FrontendBind::PlainLoopback { addr })),
        );
        binds.extend(self.grpc_uds.as_ref().map(|p| (FrontendProtocol::Grpc, unix(p))));
        if let Some(addr) = self.grpc_tls {
            binds.push((FrontendProtocol::Grpc, tls_bind(addr)?));
        }
        for (protocol, bind) in binds {
            frontend::start(server, protocol, &bind, &limits)?;
        }
        for spec in &self.forward {
            frontend::start_forward_with_limits(
                server,
                spec.listen,
                spec.selector.clone(),
                spec.target.clone(),
                &limits,
            )
            .await
            .with_context(|| format!("--forward {}", spec.listen))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs_parse_with_and_without_an_agent() {
        let spec: ForwardSpec = "127.0.0.1:8080=10.0.0.5:80".parse().unwrap();
        assert_eq!(spec.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(spec.target, "10.0.0.5:80");
        assert_eq!(
            spec.selector.to_string(),
            Selector::for_target("10.0.0.5:80").to_string()
        );

        let spec: ForwardSpec = "[::1]:9000=db.internal:5432,agent=node-a".parse().unwrap();
        assert_eq!(spec.listen, "[::1]:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(spec.target, "db.internal:5432");
        assert!(matches!(&spec.selector, Selector::Agent(id) if id == "node-a"));
    }

    #[test]
    fn bad_forward_specs_say_what_is_expected() {
        for bad in [
            "",
            "127.0.0.1:8080",
            "127.0.0.1:8080=",
            "127.0.0.1:8080=no-port",
            "127.0.0.1:8080=host:",
            "127.0.0.1:8080=:80",
            "127.0.0.1:8080=10.0.0.5:80,agent=",
            "localhost:8080=10.0.0.5:80",
            "8080=10.0.0.5:80",
        ] {
            let err = bad.parse::<ForwardSpec>().unwrap_err();
            assert!(err.contains("expected LISTEN=HOST:PORT"), "{bad:?}: {err}");
        }
        for open in [
            "0.0.0.0:8080=10.0.0.5:80",
            "[::]:8080=10.0.0.5:80",
            "192.0.2.1:8080=x:1",
        ] {
            let err = open.parse::<ForwardSpec>().unwrap_err();
            assert!(err.contains("not a loopback address"), "{open:?}: {err}");
        }
    }
}
