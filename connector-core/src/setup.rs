//! Ready-made assembly of a QUIC [`Server`] or [`Agent`] from plain settings:
//! certificates, tokens, limits. The `connector` binary and the language
//! bindings all start servers and agents through here, so each setting means
//! the same thing everywhere.
//!
//! ```no_run
//! # fn example(identity: connector_core::tls::Identity) -> Result<(), Box<dyn std::error::Error>> {
//! use connector_core::auth::TokenAuthenticator;
//! use connector_core::setup::ServerSetup;
//!
//! # let rt = tokio::runtime::Runtime::new()?; let _guard = rt.enter();
//! let mut setup = ServerSetup::new("0.0.0.0:8443".parse()?, identity);
//! setup.tokens = Some(TokenAuthenticator::from_file("/etc/connector/tokens")?);
//! let started = setup.start()?; // needs a tokio runtime
//! println!("agents connect to {}", started.local_addr);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::Identifiers;
use crate::agent::{Agent, AgentConfig, DestinationPolicy};
use crate::auth::{
    Authenticator, CertificateAuthenticator, CredentialSource, FirstOf, KubernetesAuthenticator, TokenAuthenticator,
};
use crate::metrics::ServerMetrics;
use crate::server::leases::{LeaseController, LeaseNameError, lease_name};
use crate::server::{Limits, ProxyStrategy, Server, ServerConfig};
use crate::tls::{AgentTls, CaBundle, Identity, ServerTls};
use crate::transport::Connector;
use crate::transport::congestion::CongestionControl;
use crate::transport::fallback::{FallbackConnector, FallbackSettings, TransportMode};
use crate::transport::qmux::proxy::{ProxyChoice, ProxyError};
use crate::transport::qmux::{QmuxConnector, QmuxListener, QmuxSettings, QmuxSetupError};
use crate::transport::quic::{QuicConnector, QuicListener, QuicSettings, QuicSetupError};

/// Why a server or agent could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The server was given no way to authenticate agents.
    #[error(
        "no way to authenticate agents: configure tokens, client CAs, Kubernetes ServiceAccounts and/or an authenticator"
    )]
    NoAuthentication,
    /// The server id cannot name the server's Lease.
    #[error(transparent)]
    LeaseName(#[from] LeaseNameError),
    /// The agent was given no server address.
    #[error("no server address: configure at least one")]
    NoServer,
    /// A TCP fallback address was given for a list of servers (each uses its own address).
    #[error("a separate TCP server address only works with a single server address")]
    TcpServerWithList,
    /// The agent was given no credential.
    #[error("no agent credential: configure a token (file) and/or a client certificate")]
    NoCredential,
    /// The agent's server address has no usable host part for TLS.
    #[error("cannot take a TLS server name from {0:?}; set the server name explicitly")]
    ServerName(String),
    /// The QUIC endpoint could not be set up (TLS material, UDP bind).
    #[error(transparent)]
    Quic(#[from] QuicSetupError),
    /// The TCP (QMux) listener or connector could not be set up.
    #[error(transparent)]
    Qmux(#[from] QmuxSetupError),
    /// The proxy setting is unusable.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The bound socket's address could not be read.
    #[error("cannot read the listener's address: {0}")]
    LocalAddr(std::io::Error),
}

/// Everything a QUIC server needs. Start from [`ServerSetup::new`] and set
/// what differs from the defaults.
pub struct ServerSetup {
    /// UDP address agents connect to (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The certificate and key presented to agents.
    pub identity: Identity,
    /// Bearer-token agents.
    pub tokens: Option<TokenAuthenticator>,
    /// CAs for agents' client certificates; enables mTLS (TLS then asks
    /// agents for a certificate and verifies its chain).
    pub client_cas: Option<CaBundle>,
    /// What a verified client certificate decides (with `client_cas`).
    pub client_certificates: ClientCertificates,
    /// ServiceAccount-token agents (TokenReview, bound to their node), asked
    /// after tokens and certificates; its counts join the server's `/metrics`.
    pub kubernetes: Option<KubernetesAuthenticator>,
    /// The user's own verifiers, asked after tokens, certificates and
    /// ServiceAccount tokens.
    pub authenticators: Vec<Arc<dyn Authenticator>>,
    /// This replica's id, reported to agents.
    pub server_id: String,
    /// Replicas behind the agents' server address (with `leases`: until
    /// their first count).
    pub server_count: u16,
    /// Counts the replicas by their Leases and reports that count instead
    /// (holding the Lease `connector-<server_id>` while the server runs).
    pub leases: Option<LeaseController>,
    /// Resource bounds.
    pub limits: Limits,
    /// QUIC keepalive interval.
    pub keepalive: Duration,
    /// An agent silent this long is gone.
    pub idle_timeout: Duration,
    /// Congestion controller for what the server sends (tunnelled bytes towards agents).
    pub congestion: CongestionControl,
    /// Upper bound of QUIC path MTU discovery ([`QuicSettings::max_udp_payload`]).
    pub max_udp_payload: u16,
    /// How host dials find an agent.
    pub proxy_strategies: Vec<ProxyStrategy>,
    /// Where the TCP fallback transport (TLS + QMux) listens.
    pub tcp_listen: TcpListen,
}

/// What a client certificate that TLS verified against
/// [`ServerSetup::client_cas`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCertificates {
    /// It authenticates the agent by itself ([`CertificateAuthenticator`]:
    /// its common name is the identity, its DNS/IP names what it may claim),
    /// before [`ServerSetup::authenticators`] are asked.
    #[default]
    Authenticate,
    /// TLS only verifies the chain; tokens and [`ServerSetup::authenticators`]
    /// decide, seeing the chain in [`PeerInfo::certificates`](crate::transport::PeerInfo)
    /// (e.g. a user authenticator that maps certificate names through its own
    /// revocation list, using [`CertificateAuthenticator::identity_of`]).
    /// Needs tokens or an authenticator.
    VerifyOnly,
}

/// Where a server's TCP fallback listener listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpListen {
    /// The same IP and port as the bound QUIC (UDP) socket.
    #[default]
    SameAsQuic,
    /// Not at all: QUIC only.
    Off,
    /// This address.
    At(SocketAddr),
}

/// A TCP listen address that is neither `same`, `off` nor `IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid TCP listen address {given:?} ({source}): expected IP:PORT or off")]
pub struct TcpListenParseError {
    /// The text given.
    pub given: String,
    /// Why it is no `IP:PORT`.
    #[source]
    pub source: std::net::AddrParseError,
}

impl std::str::FromStr for TcpListen {
    type Err = TcpListenParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" | "none" => Ok(Self::Off),
            "same" => Ok(Self::SameAsQuic),
            addr => addr.parse().map(Self::At).map_err(|source| TcpListenParseError {
                given: addr.to_owned(),
                source,
            }),
        }
    }
}

/// A server that is listening.
pub struct StartedServer {
    /// The dialer; clone it freely.
    pub server: Server,
    /// Where agents connect (the bound UDP address).
    pub local_addr: SocketAddr,
    /// Where agents connect over the TCP fallback, when it is on.
    pub tcp_addr: Option<SocketAddr>,
}

impl ServerSetup {
    /// Defaults: no authentication yet, id `connector`, one replica, default limits.
    pub fn new(listen: SocketAddr, identity: Identity) -> Self {
        let quic = QuicSettings::default();
        Self {
            listen,
            identity,
            tokens: None,
            client_cas: None,
            client_certificates: ClientCertificates::Authenticate,
            kubernetes: None,
            authenticators: Vec::new(),
            server_id: "connector".into(),
            server_count: 1,
            leases: None,
            limits: Limits::default(),
            keepalive: quic.keepalive,
            idle_timeout: quic.idle_timeout,
            congestion: quic.congestion,
            max_udp_payload: quic.max_udp_payload,
            proxy_strategies: crate::server::DEFAULT_STRATEGIES.to_vec(),
            tcp_listen: TcpListen::SameAsQuic,
        }
    }

    /// Checks what [`ServerSetup::start`] would refuse, without binding anything.
    pub fn check(&self) -> Result<(), SetupError> {
        let certificates_authenticate =
            self.client_cas.is_some() && self.client_certificates == ClientCertificates::Authenticate;
        if self.tokens.is_none()
            && !certificates_authenticate
            && self.kubernetes.is_none()
            && self.authenticators.is_empty()
        {
            return Err(SetupError::NoAuthentication);
        }
        if self.leases.is_some() {
            lease_name(&self.server_id)?;
        }
        Ok(())
    }

    /// Binds the QUIC listener (and the TCP one) and starts accepting agents. Must be called
    /// within a tokio runtime, which then drives the server.
    pub fn start(self) -> Result<StartedServer, SetupError> {
        self.check()?;
        if let Some((_, key)) = self.identity.files() {
            crate::secret_file::warn_if_exposed(key, "TLS key file");
        }
        let mut authenticators: Vec<Arc<dyn Authenticator>> = Vec::new();
        if let Some(tokens) = self.tokens {
            authenticators.push(Arc::new(tokens));
        }
        if self.client_cas.is_some() && self.client_certificates == ClientCertificates::Authenticate {
            authenticators.push(Arc::new(CertificateAuthenticator));
        }
        let metrics = Arc::new(ServerMetrics::default());
        if let Some(kubernetes) = self.kubernetes {
            authenticators.push(Arc::new(kubernetes.with_metrics(metrics.token_reviews.clone())));
        }
        authenticators.extend(self.authenticators);
        let tls = ServerTls {
            identity: self.identity,
            client_cas: self.client_cas,
        };
        let settings = QuicSettings {
            keepalive: self.keepalive,
            idle_timeout: self.idle_timeout,
            congestion: self.congestion,
            max_udp_payload: self.max_udp_payload,
            ..Default::default()
        };
        let tcp_settings = QmuxSettings {
            keepalive: self.keepalive,
            idle_timeout: self.idle_timeout,
            ..Default::default()
        };
        // With port 0 the UDP port is free but the same TCP port may not be:
        // pick another pair a few times before giving up.
        let attempts = if self.listen.port() == 0 && matches!(self.tcp_listen, TcpListen::SameAsQuic) {
            16
        } else {
            1
        };
        let mut attempt = 0;
        let (listener, local_addr, tcp_listener) = loop {
            attempt += 1;
            let listener = QuicListener::bind(self.listen, &tls, &settings)?;
            let local_addr = listener.local_socket_addr().map_err(SetupError::LocalAddr)?;
            let tcp = match self.tcp_listen {
                TcpListen::Off => Ok(None),
                TcpListen::SameAsQuic => QmuxListener::bind(local_addr, &tls, &tcp_settings).map(Some),
                TcpListen::At(addr) => QmuxListener::bind(addr, &tls, &tcp_settings).map(Some),
            };
            match tcp {
                Ok(tcp) => break (listener, local_addr, tcp),
                Err(_) if attempt < attempts => continue,
                Err(err) => return Err(err.into()),
            }
        };
        let tcp_addr = match &tcp_listener {
            Some(l) => Some(l.local_socket_addr().map_err(SetupError::LocalAddr)?),
            None => None,
        };
        // Even a single authenticator goes through `FirstOf`, which refuses
        // an identity with an unusable name (`auth::check_identity_name`)
        // with a clear reason.
        let authenticator: Arc<dyn Authenticator> = Arc::new(FirstOf(authenticators));
        let mut config = ServerConfig::new(self.server_id, authenticator);
        config.server_count = self.server_count;
        config.keepalive = self.keepalive;
        config.idle_timeout = self.idle_timeout;
        config.limits = self.limits;
        config.proxy_strategies = self.proxy_strategies;
        config.metrics = metrics;
        let server = Server::new(config);
        if let Some(leases) = self.leases {
            leases.start(&server)?;
        }
        server.serve(Arc::new(listener));
        if let Some(tcp) = tcp_listener {
            server.serve(Arc::new(tcp));
        }
        Ok(StartedServer {
            server,
            local_addr,
            tcp_addr,
        })
    }
}

/// Everything a QUIC agent needs. Start from [`AgentSetup::new`].
pub struct AgentSetup {
    /// Server addresses, `host:port`, resolved at every connection attempt.
    /// One address may front several replicas (the agent connects until it
    /// holds each); several addresses are one replica each.
    pub servers: Vec<String>,
    /// Name expected on the server certificate (default: the host part of each address).
    pub server_name: Option<String>,
    /// CAs the server certificate must chain to.
    pub server_cas: CaBundle,
    /// This agent's id.
    pub agent_id: String,
    /// What the agent claims to serve (empty: whatever its identity allows).
    pub identifiers: Identifiers,
    /// Where the credential in each `Hello` comes from (token file, static token).
    pub credentials: Option<Arc<dyn CredentialSource>>,
    /// Client certificate for mTLS.
    pub client_identity: Option<Identity>,
    /// Destinations the agent may connect to.
    pub policy: DestinationPolicy,
    /// Tunnelled connections served at once.
    pub max_connections: usize,
    /// Closes a tunnelled connection idle this long in both directions
    /// (default `None`: never; see [`AgentConfig::tunnel_idle_timeout`]).
    pub tunnel_idle_timeout: Option<Duration>,
    /// Closes a tunnelled connection one side of which reads nothing of what
    /// waits for it this long (default 3 minutes, `None`: never; see
    /// [`AgentConfig::tunnel_stall_timeout`]).
    pub tunnel_stall_timeout: Option<Duration>,
    /// QUIC keepalive interval.
    pub keepalive: Duration,
    /// The server is gone after this long without an answer.
    pub idle_timeout: Duration,
    /// Congestion controller for what the agent sends (tunnelled bytes towards the server).
    pub congestion: CongestionControl,
    /// Upper bound of QUIC path MTU discovery ([`QuicSettings::max_udp_payload`]).
    pub max_udp_payload: u16,
    /// QUIC, TCP, or QUIC with automatic fallback to TCP (the default).
    pub transport: TransportMode,
    /// The server's TCP fallback address, `host:port` (default: the same as each
    /// server address; only with a single server address).
    pub tcp_server: Option<String>,
    /// HTTP proxy for the TCP transport: `None` follows `HTTPS_PROXY`/`NO_PROXY`.
    pub proxy: Option<ProxyChoice>,
    /// QUIC attempt bound, return probes and degradation thresholds (auto mode).
    pub fallback: FallbackSettings,
}

impl AgentSetup {
    /// Defaults: no credential yet, no identifiers, the default destination policy.
    pub fn new(server: impl Into<String>, server_cas: impl Into<CaBundle>, agent_id: impl Into<String>) -> Self {
        let quic = QuicSettings::default();
        Self {
            servers: vec![server.into()],
            server_name: None,
            server_cas: server_cas.into(),
            agent_id: agent_id.into(),
            identifiers: Identifiers::default(),
            credentials: None,
            client_identity: None,
            policy: DestinationPolicy::default(),
            max_connections: crate::agent::DEFAULT_MAX_CONNECTIONS,
            tunnel_idle_timeout: None,
            tunnel_stall_timeout: Some(crate::agent::DEFAULT_TUNNEL_STALL_TIMEOUT),
            keepalive: quic.keepalive,
            idle_timeout: quic.idle_timeout,
            congestion: quic.congestion,
            max_udp_payload: quic.max_udp_payload,
            transport: TransportMode::Auto,
            tcp_server: None,
            proxy: None,
            fallback: FallbackSettings::default(),
        }
    }

    /// Checks what [`AgentSetup::start`] would refuse, without connecting.
    pub fn check(&self) -> Result<(), SetupError> {
        if self.servers.is_empty() {
            return Err(SetupError::NoServer);
        }
        if self.tcp_server.is_some() && self.servers.len() > 1 {
            return Err(SetupError::TcpServerWithList);
        }
        for server in &self.servers {
            self.tls_server_name(server)?;
        }
        if self.credentials.is_none() && self.client_identity.is_none() {
            return Err(SetupError::NoCredential);
        }
        Ok(())
    }

    fn tls_server_name(&self, server: &str) -> Result<String, SetupError> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => host_part(server).ok_or_else(|| SetupError::ServerName(server.to_owned())),
        }
    }

    /// Starts the agent's connect loops. Must be called within a tokio runtime.
    pub fn start(self) -> Result<Agent, SetupError> {
        self.check()?;
        if let Some((_, key)) = self.client_identity.as_ref().and_then(|identity| identity.files()) {
            crate::secret_file::warn_if_exposed(key, "TLS key file");
        }
        let connectors = self
            .servers
            .iter()
            .map(|server| self.connector(server))
            .collect::<Result<Vec<_>, _>>()?;
        let credentials = match self.credentials {
            Some(source) => source,
            None => Arc::new(crate::auth::StaticCredential::default()),
        };
        let mut config = AgentConfig::new(self.agent_id, credentials);
        config.identifiers = self.identifiers;
        config.policy = self.policy;
        config.max_connections = self.max_connections;
        config.tunnel_idle_timeout = self.tunnel_idle_timeout;
        config.tunnel_stall_timeout = self.tunnel_stall_timeout;
        Ok(Agent::start_with_servers(connectors, config))
    }

    /// The connector for one server address.
    fn connector(&self, server: &str) -> Result<Arc<dyn Connector>, SetupError> {
        let tls = AgentTls {
            server_cas: self.server_cas.clone(),
            server_name: self.tls_server_name(server)?,
            client_identity: self.client_identity.clone(),
        };
        let settings = QuicSettings {
            keepalive: self.keepalive,
            idle_timeout: self.idle_timeout,
            congestion: self.congestion,
            max_udp_payload: self.max_udp_payload,
            // The server opens one stream per tunnelled connection, plus headroom
            // so that excess dials get an `Overloaded` answer rather than waiting.
            max_tunnelled_streams: u32::try_from(self.max_connections)
                .unwrap_or(u32::MAX)
                .saturating_add(64),
            ..Default::default()
        };
        let tcp_settings = QmuxSettings {
            keepalive: settings.keepalive,
            idle_timeout: settings.idle_timeout,
            max_tunnelled_streams: settings.max_tunnelled_streams,
            ..Default::default()
        };
        // The TCP fallback listens on the same host:port as QUIC unless told otherwise.
        let tcp_server = self.tcp_server.clone().unwrap_or_else(|| server.to_owned());
        let tcp =
            QmuxConnector::new(tcp_server, &tls, &tcp_settings)?.with_proxy(self.proxy.clone().unwrap_or_default());
        let quic = QuicConnector::new(server, &tls, &settings)?;
        let fallback = FallbackSettings {
            mode: self.transport,
            ..self.fallback.clone()
        };
        Ok(Arc::new(FallbackConnector::new(quic, tcp, fallback)))
    }
}

/// The host part of `host:port` / `[v6]:port`.
fn host_part(server: &str) -> Option<String> {
    let (host, _port) = server.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::{ClientCertificates, ServerSetup, SetupError, host_part};
    use crate::pki::ThrowawayCa;

    #[test]
    fn verify_only_certificates_need_another_authenticator() {
        let ca = ThrowawayCa::new("test ca").unwrap();
        let identity = ca.issue("server", &["localhost"]).unwrap().identity();
        let mut setup = ServerSetup::new("127.0.0.1:0".parse().unwrap(), identity);
        setup.client_cas = Some(vec![ca.cert_der()].into());
        assert!(setup.check().is_ok(), "certificates authenticate by default");
        setup.client_certificates = ClientCertificates::VerifyOnly;
        assert!(matches!(setup.check(), Err(SetupError::NoAuthentication)));
        setup
            .authenticators
            .push(std::sync::Arc::new(crate::auth::CertificateAuthenticator));
        assert!(setup.check().is_ok());
    }

    #[test]
    fn server_names_come_from_the_host_part() {
        assert_eq!(
            host_part("connector.example:8443").as_deref(),
            Some("connector.example")
        );
        assert_eq!(host_part("[::1]:8443").as_deref(), Some("::1"));
        assert_eq!(host_part(":8443"), None);
        assert_eq!(host_part("no-port"), None);
    }
}
