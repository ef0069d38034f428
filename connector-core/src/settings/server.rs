//! [`ServerSettings`]: what `connector server`, `connector_server_config_*`
//! and Python's `Server(...)` take.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Schema, SettingsError, check_range, check_udp_payload, settings_schema};
use crate::auth::TokenAuthenticator;
use crate::server::{DEFAULT_MAX_HANDSHAKES, DEFAULT_MAX_PENDING_DIALS, DEFAULT_MAX_PRE_HELLO};
use crate::server::{DEFAULT_MAX_UNADMITTED_PER_SOURCE, DEFAULT_STRATEGIES, Limits, ProxyStrategy};
use crate::setup::{ClientCertificates, ServerSetup, TcpListen};
use crate::tls::{CaBundle, Identity};
use crate::transport::congestion::CongestionControl;
use crate::transport::quic::{MAX_UDP_PAYLOAD, QuicSettings};

settings_schema! {
    /// A server's settings (see the [module](super)); `Default` is what a
    /// setting left out means.
    pub struct ServerSettings {
        /// UDP address agents connect to (port 0 picks a free one).
        pub listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8443)),
        /// TCP address of the fallback transport (TLS + QMux) for agents without UDP:
        /// `same` (the listen address and port), an `IP:PORT`, or `off`.
        pub tcp_listen: TcpListen = TcpListen::SameAsQuic,
        /// Server certificate chain (PEM file), presented to agents; it needs EKU serverAuth.
        pub cert: Option<PathBuf> = None,
        /// Private key of the server certificate (PEM file).
        pub key: Option<PathBuf> = None,
        /// Tokens file for bearer-token agents: lines of `TOKEN IDENTITY [IDENTIFIERS|*]`;
        /// re-read when it changes.
        pub tokens: Option<PathBuf> = None,
        /// CA bundle (PEM file) for agents' client certificates (mTLS). The certificate's
        /// common name becomes the identity (no '/' or control characters); its
        /// DNS/IP SANs are what it may serve; it needs EKU clientAuth. Followed: a
        /// changed file is used from the next handshake.
        pub client_ca: Option<PathBuf> = None,
        /// What a client certificate verified against client-ca decides: `authenticate`
        /// (it admits the agent by itself) or `verify-only` (TLS checks the chain;
        /// tokens or an authenticator decide).
        pub client_certificates: ClientCertificates = ClientCertificates::Authenticate,
        /// This replica's id, reported to agents (default: the host name for
        /// `connector server`, `connector` in the libraries).
        pub server_id: Option<String> = None,
        /// Number of server replicas behind the agents' address.
        pub server_count: u16 = 1,
        /// Most agents connected at once; further agents are rejected `Overloaded`
        /// and retry with backoff.
        pub max_agents: usize = Limits::default().max_agents,
        /// Most tunnelled connections through one agent at once; further dials
        /// through it fail at once (HTTP CONNECT: 503).
        pub max_streams_per_agent: u32 = Limits::default().max_streams_per_agent,
        /// Most dials waiting for their agent's answer at once, across all agents;
        /// further dials fail at once (HTTP CONNECT: 503).
        pub max_pending_dials: usize = DEFAULT_MAX_PENDING_DIALS,
        /// Most agent connections at once past their handshake and not yet
        /// admitted or refused (Hello, authentication); a new one closes the one
        /// that has waited longest (with a reason; it retries with backoff), so
        /// silent peers cannot keep agents out.
        pub max_pre_hello: usize = DEFAULT_MAX_PRE_HELLO,
        /// Most QUIC or TLS handshakes in progress at once; a new one drops the
        /// one in progress longest.
        pub max_handshakes: usize = DEFAULT_MAX_HANDSHAKES,
        /// Most connections not yet admitted from one source address at once;
        /// further attempts from it are dropped before their handshake.
        pub max_unadmitted_per_source: usize = DEFAULT_MAX_UNADMITTED_PER_SOURCE,
        /// Time the authenticator has to decide on an agent; it is then refused.
        pub auth_timeout: Duration = Limits::default().auth_timeout,
        /// Time a connecting agent has to send its Hello.
        pub hello_timeout: Duration = Limits::default().hello_timeout,
        /// Keepalive interval on agent connections.
        pub keepalive: Duration = QuicSettings::default().keepalive,
        /// An agent silent for this long is considered gone (QUIC applies the smaller of
        /// this and the agent's value).
        pub idle_timeout: Duration = QuicSettings::default().idle_timeout,
        /// Default deadline of a dial (HTTP CONNECT: 504 when it passes).
        pub dial_timeout: Duration = Limits::default().dial_timeout,
        /// How dials for a host pick an agent, in order (Konnectivity's --proxy-strategies):
        /// destHost (the agent serving the host), defaultRoute (an agent with
        /// default-route=true), default (any agent).
        pub proxy_strategies: Vec<ProxyStrategy> = DEFAULT_STRATEGIES.to_vec(),
        /// QUIC congestion controller for what this side sends: `auto` (Cubic on paths
        /// under 5 ms, BBR on longer ones), `cubic`, or `bbr` (keeps its throughput on
        /// lossy long paths: 1 % random loss does not shrink its window).
        pub congestion_control: CongestionControl = CongestionControl::Auto,
        /// Largest QUIC packet (UDP payload, bytes) this side sends and accepts: the upper
        /// bound of path MTU discovery, which starts at 1200 and settles at what the path
        /// carries (about 1472 on Ethernet). 1200 turns discovery off.
        pub max_udp_payload: u16 = MAX_UDP_PAYLOAD,
    }
}

impl ServerSettings {
    /// The range of one setting (by its Rust name); [`Schema::set`] calls it.
    fn check_field(&self, key: &str) -> Result<(), SettingsError> {
        match key {
            "server_id" if self.server_id.as_deref() == Some("") => {
                Err(SettingsError::invalid("server-id", "must not be empty"))
            }
            "server_count" => check_range("server-count", self.server_count, 1..=u16::MAX),
            "proxy_strategies" if self.proxy_strategies.is_empty() => Err(SettingsError::invalid(
                "proxy-strategies",
                "name at least one of destHost, defaultRoute, default",
            )),
            "max_udp_payload" => check_udp_payload(self.max_udp_payload),
            _ => Ok(()),
        }
    }

    /// Checks every range and every rule between settings.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for field in Self::FIELDS {
            self.check_field(field.key)?;
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(SettingsError::invalid(
                if self.cert.is_some() { "key" } else { "cert" },
                "cert and key go together",
            ));
        }
        Ok(())
    }

    /// Validates, reads the files (certificate, key, tokens, client CAs) and
    /// assembles the setup; cert and key are needed.
    pub fn into_setup(self) -> Result<ServerSetup, SettingsError> {
        self.into_setup_with(None)
    }

    /// Like [`ServerSettings::into_setup`], with the certificate and key
    /// given in memory (`identity`) instead of by cert and key.
    pub fn into_setup_with(self, identity: Option<Identity>) -> Result<ServerSetup, SettingsError> {
        self.validate()?;
        let identity = match (identity, &self.cert, &self.key) {
            (Some(_), Some(_), _) => {
                return Err(SettingsError::invalid(
                    "cert",
                    "a certificate is given both as a file and in memory",
                ));
            }
            (Some(identity), None, _) => identity,
            (None, Some(cert), Some(key)) => {
                Identity::from_files(cert, key).map_err(|e| SettingsError::file("cert", e))?
            }
            (None, _, _) => {
                return Err(SettingsError::Missing {
                    key: "cert".into(),
                    reason: "the server needs a certificate and its key".into(),
                });
            }
        };
        let mut setup = ServerSetup::new(self.listen, identity);
        if let Some(path) = &self.tokens {
            setup.tokens = Some(TokenAuthenticator::from_file(path).map_err(|e| SettingsError::file("tokens", e))?);
        }
        if let Some(path) = &self.client_ca {
            setup.client_cas = Some(CaBundle::from_file(path).map_err(|e| SettingsError::file("client-ca", e))?);
        }
        setup.client_certificates = self.client_certificates;
        if let Some(id) = self.server_id {
            setup.server_id = id;
        }
        setup.server_count = self.server_count;
        setup.limits = Limits {
            max_agents: self.max_agents,
            max_streams_per_agent: self.max_streams_per_agent,
            hello_timeout: self.hello_timeout,
            dial_timeout: self.dial_timeout,
            max_pending_dials: self.max_pending_dials,
            max_pre_hello: self.max_pre_hello,
            max_handshakes: self.max_handshakes,
            max_unadmitted_per_source: self.max_unadmitted_per_source,
            auth_timeout: self.auth_timeout,
        };
        setup.keepalive = self.keepalive;
        setup.idle_timeout = self.idle_timeout;
        setup.congestion = self.congestion_control;
        setup.max_udp_payload = self.max_udp_payload;
        setup.proxy_strategies = self.proxy_strategies;
        setup.tcp_listen = self.tcp_listen;
        Ok(setup)
    }
}
