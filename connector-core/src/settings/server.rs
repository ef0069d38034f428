//! [`ServerSettings`]: what `connector server`, `connector_server_config_*`
//! and Python's `Server(...)` take.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Schema, SettingsError, check_range, check_udp_payload, settings_schema};
use crate::auth::kubernetes::{DEFAULT_AUDIENCE, DEFAULT_CACHE_TTL, MAX_CACHE_TTL};
use crate::auth::{ServiceAccount, TokenAuthenticator, UnboundTokens};
use crate::kubernetes::{Label, is_dns_label};
use crate::server::leases::{DEFAULT_LEASE_DURATION, DEFAULT_RENEW_INTERVAL, lease_name};
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
        /// Kubernetes ServiceAccounts (`NAMESPACE/NAME`) whose tokens admit agents, checked
        /// with a TokenReview (the agent's token-file is its projected ServiceAccount token).
        /// A token bound to a pod may serve only that pod's node: `host=NODE` and the Node's
        /// addresses. Empty (default): ServiceAccount tokens are not accepted.
        pub kube_service_accounts: Vec<ServiceAccount> = Vec::new(),
        /// Audiences the agents' ServiceAccount tokens must be issued for (the projected
        /// token's `audience`), asked for in each TokenReview; at least one.
        pub kube_audiences: Vec<String> = vec![DEFAULT_AUDIENCE.to_owned()],
        /// What an agent whose ServiceAccount token names no node may claim: `none` (it is
        /// refused: the default, as anyone allowed to create tokens for the ServiceAccount
        /// could mint one), `*` (anything), or identifiers such as
        /// `cidr=10.0.0.0/16,default-route=true`.
        pub kube_unbound_identifiers: UnboundTokens = UnboundTokens::Refuse,
        /// How long a TokenReview's answer is reused for the same token, never past the
        /// token's expiry (a failed review is not reused, a refused token 10s at most;
        /// `0`: not reused; concurrent agents with one token always share one review).
        pub kube_review_cache_ttl: Duration = DEFAULT_CACHE_TTL,
        /// Kubeconfig file for the apiserver that reviews ServiceAccount tokens, serves
        /// Node addresses and holds the Leases (default: the pod's in-cluster
        /// ServiceAccount). Its user needs RBAC: create tokenreviews, get nodes, and
        /// get/list/create/patch/delete leases in lease-namespace.
        pub kubeconfig: Option<PathBuf> = None,
        /// This replica's id, reported to agents (default: the host name for
        /// `connector server`, `connector` in the libraries).
        pub server_id: Option<String> = None,
        /// Number of server replicas behind the agents' address (with lease-namespace:
        /// until the first count of the Leases).
        pub server_count: u16 = 1,
        /// Count server replicas by their Leases in this namespace (e.g. `kube-system`):
        /// this server holds the Lease `connector-<server-id>`, renews it, and reports the
        /// unexpired Leases with lease-label to agents as the server count. Unset
        /// (default): no Leases, server-count is reported.
        pub lease_namespace: Option<String> = None,
        /// Label of the replicas' Leases, `KEY=VALUE`: the same on every replica.
        pub lease_label: Label = Label {
            key: "k8s-app".into(),
            value: "connector-server".into(),
        },
        /// A replica whose Lease is not renewed for this long drops out of the count
        /// (whole seconds, 1s to 1h); a draining replica deletes its Lease at once.
        pub lease_duration: Duration = DEFAULT_LEASE_DURATION,
        /// How often a server renews its Lease and counts the replicas; shorter than
        /// lease-duration.
        pub lease_renew_interval: Duration = DEFAULT_RENEW_INTERVAL,
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
            "kube_review_cache_ttl" if self.kube_review_cache_ttl > MAX_CACHE_TTL => Err(SettingsError::invalid(
                "kube-review-cache-ttl",
                format!("must be at most {MAX_CACHE_TTL:?}"),
            )),
            "lease_namespace" => match self.lease_namespace.as_deref() {
                Some(namespace) if !is_dns_label(namespace) => Err(SettingsError::invalid(
                    "lease-namespace",
                    format!("{namespace:?} is not a namespace name (lower-case letters, digits and '-')"),
                )),
                _ => Ok(()),
            },
            "lease_duration" => {
                let whole = self.lease_duration.subsec_nanos() == 0;
                if whole && (1..=3600).contains(&self.lease_duration.as_secs()) {
                    Ok(())
                } else {
                    Err(SettingsError::invalid(
                        "lease-duration",
                        "must be whole seconds from 1s to 1h (a Lease counts in seconds)",
                    ))
                }
            }
            "lease_renew_interval" if self.lease_renew_interval < Duration::from_millis(100) => {
                Err(SettingsError::invalid("lease-renew-interval", "must be at least 100ms"))
            }
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
        if !self.kube_service_accounts.is_empty() && self.kube_audiences.is_empty() {
            return Err(SettingsError::invalid(
                "kube-audiences",
                "name at least one audience: without one the apiserver accepts tokens meant for the Kubernetes API itself (any pod's token of the ServiceAccount)",
            ));
        }
        if self.lease_renew_interval >= self.lease_duration {
            return Err(SettingsError::invalid(
                "lease-renew-interval",
                format!(
                    "must be shorter than lease-duration ({:?}), or replicas drop out of each other's count between renewals",
                    self.lease_duration
                ),
            ));
        }
        if self.kubeconfig.is_some() && !self.uses_kubernetes() {
            return Err(SettingsError::invalid(
                "kubeconfig",
                "is set, but nothing uses the apiserver: set kube-service-accounts and/or lease-namespace",
            ));
        }
        Ok(())
    }

    /// Whether a setting needs the apiserver (kube-service-accounts, lease-namespace).
    fn uses_kubernetes(&self) -> bool {
        !self.kube_service_accounts.is_empty() || self.lease_namespace.is_some()
    }

    /// Builds the ServiceAccount-token authenticator and the Lease
    /// controller the settings ask for.
    #[cfg(feature = "kubernetes")]
    fn kubernetes_into(&self, setup: &mut ServerSetup) -> Result<(), SettingsError> {
        use std::sync::Arc;

        use crate::auth::{KubernetesAuthConfig, KubernetesAuthenticator};
        use crate::kubernetes::KubeClient;
        use crate::server::leases::{LeaseController, LeaseSettings};

        if !self.uses_kubernetes() {
            return Ok(());
        }
        let client =
            Arc::new(KubeClient::new(self.kubeconfig.as_deref()).map_err(|e| SettingsError::file("kubeconfig", e))?);
        if !self.kube_service_accounts.is_empty() {
            let mut config = KubernetesAuthConfig::new(self.kube_service_accounts.clone());
            config.audiences = self.kube_audiences.clone();
            config.unbound = self.kube_unbound_identifiers.clone();
            config.cache_ttl = self.kube_review_cache_ttl;
            // A rotated token and its successor may both be in use.
            config.cache_capacity = self.max_agents.saturating_mul(2).max(1024);
            // Within the authentication timeout, so that the agents sharing a
            // review are refused with its own reason.
            config.review_timeout = self.auth_timeout.mul_f64(0.75);
            setup.kubernetes = Some(KubernetesAuthenticator::new(client.clone(), config));
        }
        if let Some(namespace) = &self.lease_namespace {
            let settings = LeaseSettings {
                duration: self.lease_duration,
                renew_interval: self.lease_renew_interval,
            };
            let store = Arc::new(client.leases(namespace, &self.lease_label));
            setup.leases = Some(LeaseController::new(store, settings));
        }
        Ok(())
    }

    /// Without the cargo feature `kubernetes`: refuses the settings that need it.
    #[cfg(not(feature = "kubernetes"))]
    fn kubernetes_into(&self, _setup: &mut ServerSetup) -> Result<(), SettingsError> {
        if !self.uses_kubernetes() {
            return Ok(());
        }
        Err(SettingsError::invalid(
            if self.kube_service_accounts.is_empty() {
                "lease-namespace"
            } else {
                "kube-service-accounts"
            },
            "this build has no Kubernetes support: build connector-core with its cargo feature `kubernetes` \
             (the `connector` binary, the C library and the Python package have it)",
        ))
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
        if self.lease_namespace.is_some() {
            let id = self.server_id.as_deref().unwrap_or(&setup.server_id);
            lease_name(id).map_err(|e| SettingsError::invalid("server-id", e.to_string()))?;
        }
        self.kubernetes_into(&mut setup)?;
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
