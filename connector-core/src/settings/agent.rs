//! [`AgentSettings`]: what `connector agent`, `connector_agent_config_*`
//! and Python's `Agent(...)` take.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{Schema, SettingsError, check_range, check_udp_payload, settings_schema};
use crate::Identifiers;
use crate::agent::{DEFAULT_MAX_CONNECTIONS, DEFAULT_TUNNEL_STALL_TIMEOUT, DestinationPolicy, Rule};
use crate::auth::TokenFile;
use crate::setup::AgentSetup;
use crate::tls::{CaBundle, Identity};
use crate::transport::congestion::CongestionControl;
use crate::transport::fallback::{FallbackSettings, TransportMode};
use crate::transport::qmux::proxy::ProxyChoice;
use crate::transport::quic::{MAX_UDP_PAYLOAD, QuicSettings};

/// Largest `max-connections` accepted.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// Longest agent id accepted, in bytes.
pub const MAX_AGENT_ID: usize = 128;

settings_schema! {
    /// An agent's settings (see the [module](super)); `Default` is what a
    /// setting left out means.
    pub struct AgentSettings {
        /// Server address (`host:port`), resolved at every connection attempt. One address may
        /// front several replicas (the agent connects until it holds each replica the servers
        /// report); list one address per replica otherwise.
        pub server: Vec<String> = Vec::new(),
        /// CA bundle (PEM file) the server's certificate must chain to (the certificate
        /// needs EKU serverAuth); followed: a changed file is used from the next handshake.
        pub ca: Option<PathBuf> = None,
        /// Name expected on the server's certificate (default: the host part of each server address).
        pub server_name: Option<String> = None,
        /// This agent's id, 1 to 128 bytes (default: the host name for `connector agent`;
        /// the libraries need one).
        pub agent_id: Option<String> = None,
        /// What this agent serves, Konnectivity-style:
        /// `host=NODE,ipv4=10.0.0.5,ipv6=fd00::5,cidr=10.0.0.0/24,default-route=true`.
        /// Empty: whatever the agent's identity allows.
        pub identifiers: Identifiers = Identifiers::default(),
        /// File holding the bearer token, re-read at each connection (rotation-safe). It
        /// must be readable at start-up; one that goes away later is waited for.
        pub token_file: Option<PathBuf> = None,
        /// Client certificate chain (PEM file) for mTLS; it needs EKU clientAuth, and its
        /// common name is the agent's identity.
        pub cert: Option<PathBuf> = None,
        /// Private key of the client certificate (PEM file).
        pub key: Option<PathBuf> = None,
        /// Destinations the agent may connect to: a network, address or
        /// host-name pattern with optional ports, e.g. `10.0.0.0/8`, `10.0.0.5:10250`,
        /// `*.svc.cluster.local:443`. Default: anything except loopback, unspecified,
        /// link-local and cloud-metadata addresses (in any IPv6 form that carries them).
        pub allow: Vec<Rule> = Vec::new(),
        /// Most tunnelled connections served at once (1 to 1,000,000); further dials are
        /// answered `Overloaded` (HTTP CONNECT: 503).
        pub max_connections: usize = DEFAULT_MAX_CONNECTIONS,
        /// Close a tunnelled connection that moved no byte either way for this long
        /// (both ends see an `idle_timeout` reset). `off` (default) never closes
        /// one: `kubectl exec`/`attach` sessions may be quiet for hours.
        pub tunnel_idle_timeout: Option<Duration> = None,
        /// Close a tunnelled connection one side of which (the client or the
        /// target) has read none of the bytes waiting for it for this long; both
        /// ends see a `stalled` reset. A stalled connection stops no other, but
        /// holds up to 4 MiB on each end. `off` (or 0) never closes one.
        pub tunnel_stall_timeout: Option<Duration> = Some(DEFAULT_TUNNEL_STALL_TIMEOUT),
        /// Keepalive interval on the server connection.
        pub keepalive: Duration = QuicSettings::default().keepalive,
        /// The server is considered gone after this long without an answer (QUIC applies
        /// the smaller of this and the server's value).
        pub idle_timeout: Duration = QuicSettings::default().idle_timeout,
        /// QUIC congestion controller for what this side sends: `auto` (Cubic on paths
        /// under 5 ms, BBR on longer ones), `cubic`, or `bbr` (keeps its throughput on
        /// lossy long paths: 1 % random loss does not shrink its window).
        pub congestion_control: CongestionControl = CongestionControl::Auto,
        /// Largest QUIC packet (UDP payload, bytes) this side sends and accepts: the upper
        /// bound of path MTU discovery, which starts at 1200 and settles at what the path
        /// carries (about 1472 on Ethernet). 1200 turns discovery off.
        pub max_udp_payload: u16 = MAX_UDP_PAYLOAD,
        /// Transport to the server: `auto` (QUIC, falling back to TLS over TCP when UDP is
        /// blocked or degraded, and back when QUIC works again), `quic` or `tcp`.
        pub transport: TransportMode = TransportMode::Auto,
        /// The server's TCP address (`host:port`) for the TCP transport (default: the
        /// server address; only with a single server address).
        pub tcp_server: Option<String> = None,
        /// HTTP proxy for the TCP transport, `http://[user:password@]host:port`, or `off`.
        /// Default: `HTTPS_PROXY`/`https_proxy`, except for servers listed in `NO_PROXY`.
        pub proxy: Option<ProxyChoice> = None,
        /// How long a QUIC connection attempt may take before the TCP transport is used (auto).
        pub quic_connect_timeout: Duration = FallbackSettings::default().quic_connect_timeout,
        /// How often to try QUIC again while on the TCP transport (auto; ±25% jitter).
        pub quic_probe_interval: Duration = FallbackSettings::default().probe_interval,
    }
}

/// Checks a `host:port` address.
fn check_address(key: &str, address: &str) -> Result<(), SettingsError> {
    if !address.contains(':') {
        return Err(SettingsError::invalid(key, format!("{address:?} is not host:port")));
    }
    Ok(())
}

impl AgentSettings {
    /// The range of one setting (by its Rust name); [`Schema::set`] calls it.
    fn check_field(&self, key: &str) -> Result<(), SettingsError> {
        match key {
            "server" => self.server.iter().try_for_each(|s| check_address("server", s)),
            "tcp_server" => self.tcp_server.iter().try_for_each(|s| check_address("tcp-server", s)),
            "agent_id" => match &self.agent_id {
                Some(id) if id.is_empty() || id.len() > MAX_AGENT_ID => Err(SettingsError::invalid(
                    "agent-id",
                    format!("must be 1 to {MAX_AGENT_ID} bytes"),
                )),
                _ => Ok(()),
            },
            "server_name" if self.server_name.as_deref() == Some("") => {
                Err(SettingsError::invalid("server-name", "must not be empty"))
            }
            "max_connections" => check_range("max-connections", self.max_connections, 1..=MAX_CONNECTIONS),
            "max_udp_payload" => check_udp_payload(self.max_udp_payload),
            _ => Ok(()),
        }
    }

    /// Checks every range and every rule between settings.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for field in Self::FIELDS {
            self.check_field(field.key)?;
        }
        if self.tcp_server.is_some() && self.server.len() > 1 {
            return Err(SettingsError::invalid(
                "tcp-server",
                "a separate TCP server address only works with a single server address",
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(SettingsError::invalid(
                if self.cert.is_some() { "key" } else { "cert" },
                "cert and key go together",
            ));
        }
        Ok(())
    }

    /// Validates, reads the files (CA bundle, client certificate) and
    /// assembles the setup; server, ca and agent-id are needed.
    pub fn into_setup(self) -> Result<AgentSetup, SettingsError> {
        self.into_setup_with(CaBundle::default())
    }

    /// Like [`AgentSettings::into_setup`], with more CAs given in memory
    /// (`server_cas`; then ca is not needed).
    pub fn into_setup_with(self, mut server_cas: CaBundle) -> Result<AgentSetup, SettingsError> {
        self.validate()?;
        if self.server.is_empty() {
            return Err(SettingsError::Missing {
                key: "server".into(),
                reason: "the agent needs at least one server address".into(),
            });
        }
        if let Some(path) = &self.ca {
            server_cas.extend(CaBundle::from_file(path).map_err(|e| SettingsError::file("ca", e))?);
        }
        if server_cas.is_empty() {
            return Err(SettingsError::Missing {
                key: "ca".into(),
                reason: "the agent needs the CA the server certificate chains to".into(),
            });
        }
        let Some(agent_id) = self.agent_id else {
            return Err(SettingsError::Missing {
                key: "agent-id".into(),
                reason: "the agent needs an id".into(),
            });
        };
        let mut setup = AgentSetup::new(String::new(), server_cas, agent_id);
        setup.servers = self.server;
        setup.server_name = self.server_name;
        setup.identifiers = self.identifiers;
        if let Some(path) = self.token_file {
            let file = TokenFile(path);
            file.check().map_err(|e| SettingsError::file("token-file", e))?;
            setup.credentials = Some(Arc::new(file));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            setup.client_identity = Some(Identity::from_files(cert, key).map_err(|e| SettingsError::file("cert", e))?);
        }
        setup.policy = DestinationPolicy::new(self.allow);
        setup.max_connections = self.max_connections;
        setup.tunnel_idle_timeout = self.tunnel_idle_timeout;
        setup.tunnel_stall_timeout = self.tunnel_stall_timeout;
        setup.keepalive = self.keepalive;
        setup.idle_timeout = self.idle_timeout;
        setup.congestion = self.congestion_control;
        setup.max_udp_payload = self.max_udp_payload;
        setup.transport = self.transport;
        setup.tcp_server = self.tcp_server;
        setup.proxy = self.proxy;
        setup.fallback.quic_connect_timeout = self.quic_connect_timeout;
        setup.fallback.probe_interval = self.quic_probe_interval;
        Ok(setup)
    }
}
