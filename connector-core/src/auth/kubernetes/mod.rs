//! Kubernetes ServiceAccount tokens, bound to the agent's node.
//!
//! An agent presents a projected ServiceAccount token (audience-bound,
//! rotated by the kubelet; the agent re-reads its token file at every
//! connection attempt, [`super::TokenFile`]) as its bearer token. The server
//! asks the apiserver about it with a TokenReview for the configured
//! audiences, and admits the agent if the reviewed user is one of the
//! configured ServiceAccounts (`system:serviceaccount:NAMESPACE:NAME`).
//!
//! **Bound to the node.** A token bound to a pod names the node the pod runs
//! on (TokenReview `status.user.extra["authentication.kubernetes.io/node-name"]`,
//! Kubernetes 1.30+). Such an agent may serve that node only: `host=<node>`
//! and the node's own `status.addresses`, read from the Node object. A
//! DaemonSet agent on node A therefore cannot claim node B, although every
//! agent shares one ServiceAccount. A token without a node gets what
//! [`UnboundTokens`] says: by default it is refused.
//!
//! **Cache.** Decisions are kept by the SHA-256 of the token (the token
//! itself is neither stored nor logged) for [`KubernetesAuthConfig::cache_ttl`],
//! never beyond the token's expiry (its `exp` claim, read without verifying:
//! the review verifies), in an LRU of [`KubernetesAuthConfig::cache_capacity`]
//! entries; concurrent authentications of one token share one review. A
//! review that fails or times out refuses the agents waiting for it with the
//! reason and is not kept; a token the apiserver refuses is remembered for
//! [`DENIED_CACHE_TTL`] at most. Node addresses are cached by node name the
//! same way, and at most [`KubernetesAuthConfig::max_concurrent_requests`]
//! requests go to the apiserver at once: a storm of thousands of new tokens
//! must not overwhelm the apiserver the whole cluster depends on (the others
//! wait their turn within the review timeout). A cached admission outlives a revoked token
//! by the cache time at most, and only for new connections (a connected
//! agent is never re-checked, as with every authenticator).

mod cache;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{AgentIdentity, Allowance, AuthRejection, AuthRequest, Authenticator};
use crate::identifiers::{Identifiers, normalize_host, valid_host};
use crate::kubernetes::{NodeAddress, Review, ReviewedUser, TokenReviewer, is_dns_label, is_dns_subdomain};
use crate::metrics::TokenReviewMetrics;
use crate::proto::{Credential, RejectCode, escaped};
use crate::transport::BoxFuture;
use cache::{Cache, Entry};

/// What was decided for one token: the identity, or why the agent is refused.
type Decision = Entry<Result<AgentIdentity, AuthRejection>>;

/// A Node's addresses (`None`: no such Node), or why they could not be read.
type NodeLookup = Result<Option<Vec<NodeAddress>>, String>;

/// The TokenReview `user.extra` key naming the node of a pod-bound token.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The default audience of agents' tokens (the projected volume's `audience`).
pub const DEFAULT_AUDIENCE: &str = "connector";

/// Default of [`KubernetesAuthConfig::cache_ttl`] (kube-apiserver's own
/// webhook token cache keeps answers as long).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(120);

/// Longest [`KubernetesAuthConfig::cache_ttl`] accepted.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);

/// How long a token the apiserver did not authenticate (or whose node does
/// not exist) is remembered, at most: a storm of agents with a bad token
/// makes one review per token this often.
pub const DENIED_CACHE_TTL: Duration = Duration::from_secs(10);

/// The username prefix of ServiceAccounts.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// A ServiceAccount, `NAMESPACE/NAME` (Konnectivity's `--agent-namespace`
/// and `--agent-service-account`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    namespace: String,
    name: String,
}

/// Text that is not `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ServiceAccount {given:?}: {reason} (expected NAMESPACE/NAME, e.g. connector/connector-agent)")]
pub struct ServiceAccountParseError {
    /// The text given.
    pub given: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl ServiceAccount {
    /// The ServiceAccount `name` in `namespace`, if both are valid names.
    pub fn new(namespace: &str, name: &str) -> Result<Self, ServiceAccountParseError> {
        format!("{namespace}/{name}").parse()
    }

    /// Its namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The username its tokens authenticate as: `system:serviceaccount:NAMESPACE:NAME`.
    pub fn username(&self) -> String {
        format!("{SERVICE_ACCOUNT_PREFIX}{}:{}", self.namespace, self.name)
    }

    /// The ServiceAccount a username names, if it names one.
    pub fn from_username(username: &str) -> Option<Self> {
        let (namespace, name) = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')?;
        Self::new(namespace, name).ok()
    }
}

impl FromStr for ServiceAccount {
    type Err = ServiceAccountParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| ServiceAccountParseError {
            given: text.to_owned(),
            reason,
        };
        let (namespace, name) = text.trim().split_once('/').ok_or_else(|| err("no '/'"))?;
        if !is_dns_label(namespace) {
            return Err(err(
                "the namespace is not a DNS label (lower-case letters, digits, '-')",
            ));
        }
        if !is_dns_subdomain(name) {
            return Err(err(
                "the name is not a DNS subdomain (lower-case letters, digits, '-', '.')",
            ));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What an agent whose token is not bound to a node may claim: a token from
/// `kubectl create token` without `--bound-object-kind Pod`, a legacy Secret
/// token, or any token of a cluster before Kubernetes 1.30. Such a token
/// says nothing about where its holder runs, and anyone allowed to create
/// tokens for the ServiceAccount can mint one, so by default it is refused.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UnboundTokens {
    /// Refused (`none`, the default).
    #[default]
    Refuse,
    /// Admitted with this allowance (`*`, or identifiers such as
    /// `cidr=10.0.0.0/16,default-route=true`).
    Allow(Allowance),
}

impl FromStr for UnboundTokens {
    type Err = crate::IdentifierParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "none" => Ok(Self::Refuse),
            "*" => Ok(Self::Allow(Allowance::Any)),
            ids => Ok(Self::Allow(Allowance::Only(ids.parse()?))),
        }
    }
}

impl fmt::Display for UnboundTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refuse => f.write_str("none"),
            Self::Allow(Allowance::Any) => f.write_str("*"),
            Self::Allow(Allowance::Only(ids)) => write!(f, "{ids}"),
        }
    }
}

/// How [`KubernetesAuthenticator`] decides.
#[derive(Debug, Clone)]
pub struct KubernetesAuthConfig {
    /// The ServiceAccounts whose tokens admit agents.
    pub service_accounts: Vec<ServiceAccount>,
    /// The audiences the review asks for; the token must be valid for one of
    /// them (default [`DEFAULT_AUDIENCE`]). Empty would accept tokens meant
    /// for the Kubernetes API itself; [`crate::settings`] refuses that.
    pub audiences: Vec<String>,
    /// What a token without a node may claim (default: refused).
    pub unbound: UnboundTokens,
    /// How long a decision is reused (default [`DEFAULT_CACHE_TTL`]; never
    /// beyond the token's expiry; zero: not at all, concurrent
    /// authentications of one token still share one review).
    pub cache_ttl: Duration,
    /// Most tokens remembered (least recently used go first; default 20,000:
    /// two per agent of the default `max-agents`, as a rotated token and its
    /// successor may both be in use).
    pub cache_capacity: usize,
    /// Time the review and the Node read have together, waiting for their
    /// turn included; the agents waiting for them are then refused (default 5 s).
    pub review_timeout: Duration,
    /// Most requests (TokenReviews, Node reads) in flight to the apiserver
    /// at once (default 32); more wait for their turn.
    pub max_concurrent_requests: usize,
}

impl KubernetesAuthConfig {
    /// Tokens of `service_accounts` with the defaults of the other fields.
    pub fn new(service_accounts: Vec<ServiceAccount>) -> Self {
        Self {
            service_accounts,
            audiences: vec![DEFAULT_AUDIENCE.to_owned()],
            unbound: UnboundTokens::Refuse,
            cache_ttl: DEFAULT_CACHE_TTL,
            cache_capacity: 20_000,
            review_timeout: Duration::from_secs(5),
            max_concurrent_requests: 32,
        }
    }
}

/// Admits agents by their ServiceAccount token (see the [module](self)).
pub struct KubernetesAuthenticator {
    reviewer: Arc<dyn TokenReviewer>,
    config: KubernetesAuthConfig,
    /// Decisions by token digest.
    cache: Cache<Result<AgentIdentity, AuthRejection>>,
    /// Node addresses by node-name digest.
    nodes: Cache<NodeLookup>,
    /// Turns for requests to the apiserver.
    requests: tokio::sync::Semaphore,
    metrics: TokenReviewMetrics,
}

impl fmt::Debug for KubernetesAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesAuthenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The identity an authenticated ServiceAccount is, before its node's
/// addresses are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Binding {
    /// A token bound to a pod on `node`.
    Node {
        /// The ServiceAccount.
        account: ServiceAccount,
        /// The node name, lower-cased.
        node: String,
    },
    /// A token without a node, admitted with `allowance`.
    Unbound {
        /// The ServiceAccount.
        account: ServiceAccount,
        /// What it may claim.
        allowance: Allowance,
    },
}

impl KubernetesAuthenticator {
    /// Reviews tokens through `reviewer` (with the cargo feature
    /// `kubernetes`: a [`crate::kubernetes::KubeClient`]).
    pub fn new(reviewer: Arc<dyn TokenReviewer>, config: KubernetesAuthConfig) -> Self {
        Self {
            reviewer,
            cache: Cache::new(config.cache_capacity),
            nodes: Cache::new(config.cache_capacity),
            requests: tokio::sync::Semaphore::new(config.max_concurrent_requests.max(1)),
            config,
            metrics: TokenReviewMetrics::default(),
        }
    }

    /// Counts into `metrics` (a server's, so that its `/metrics` shows them)
    /// instead of counters of its own.
    pub fn with_metrics(mut self, metrics: TokenReviewMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// What it has counted: reviews by result, authentications by how the
    /// cache answered them.
    pub fn metrics(&self) -> &TokenReviewMetrics {
        &self.metrics
    }

    /// Tokens whose decision is held (or being made) now.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// How it decides.
    pub fn config(&self) -> &KubernetesAuthConfig {
        &self.config
    }

    async fn authenticate_token(&self, token: &[u8]) -> Result<AgentIdentity, AuthRejection> {
        let not_a_service_account_token = |reason: &str| {
            AuthRejection::unauthenticated(format!("the bearer token is not a ServiceAccount token: {reason}"))
        };
        let token = std::str::from_utf8(token).map_err(|_| not_a_service_account_token("not text"))?;
        let expiry = jwt_expiry(token).map_err(not_a_service_account_token)?;
        if let Some(expiry) = expiry
            && expiry <= SystemTime::now()
        {
            return Err(AuthRejection::unauthenticated(format!(
                "the ServiceAccount token expired at {}: the agent reads its token file at each attempt, so the kubelet has stopped refreshing it (is the pod still running?)",
                crate::admin::rfc3339(expiry)
            )));
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.cache
            .get_or_make(
                key,
                |found| self.metrics.cache.inc(found.label()),
                || self.decide(token, expiry),
            )
            .await
    }

    /// Reviews `token`, reads its node, and says until when the outcome stands.
    async fn decide(&self, token: &str, expiry: Option<SystemTime>) -> Decision {
        let limit = self.config.review_timeout;
        let deadline = Instant::now() + limit;
        let failed = |reason: String| {
            tracing::warn!(reason = %reason, "refusing the agents of one ServiceAccount token until a review succeeds");
            Decision {
                value: Err(AuthRejection {
                    code: RejectCode::Internal,
                    reason,
                }),
                until: None,
            }
        };
        // A turn for the review and the Node read, held until decided.
        let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, self.requests.acquire()).await else {
            self.metrics.reviews.inc("error");
            return failed(format!(
                "{} requests to the apiserver were in flight and this TokenReview found no turn within {limit:?}; the agent retries",
                self.config.max_concurrent_requests
            ));
        };
        let review = match tokio::time::timeout_at(deadline, self.reviewer.review(token, &self.config.audiences)).await
        {
            Err(_) => {
                self.metrics.reviews.inc("error");
                return failed(format!(
                    "the apiserver did not answer the TokenReview within {limit:?}; the agent retries"
                ));
            }
            Ok(Err(err)) => {
                self.metrics.reviews.inc("error");
                return failed(format!("the TokenReview failed ({err}); the agent retries"));
            }
            Ok(Ok(review)) => review,
        };
        let user = match review {
            Review::Denied(reason) => {
                self.metrics.reviews.inc("denied");
                let reason = if reason.is_empty() {
                    "no reason given".into()
                } else {
                    reason
                };
                return self.decided(
                    Err(AuthRejection::unauthenticated(format!(
                        "the apiserver did not authenticate the ServiceAccount token: {}",
                        escaped(&reason)
                    ))),
                    DENIED_CACHE_TTL,
                    expiry,
                );
            }
            Review::Authenticated(user) => {
                self.metrics.reviews.inc("authenticated");
                user
            }
        };
        let binding = match binding_of(&self.config, &user) {
            Ok(binding) => binding,
            Err(rejection) => return self.decided(Err(rejection), self.config.cache_ttl, expiry),
        };
        let (account, node) = match binding {
            Binding::Unbound { account, allowance } => {
                let identity = AgentIdentity {
                    name: account.username(),
                    allowance,
                };
                return self.decided(Ok(identity), self.config.cache_ttl, expiry);
            }
            Binding::Node { account, node } => (account, node),
        };
        let addresses = match self.node_addresses(&node, deadline).await {
            Err(reason) => return failed(reason),
            Ok(None) => {
                return self.decided(
                    Err(AuthRejection::unauthenticated(format!(
                        "the ServiceAccount token is bound to node {node}, which does not exist"
                    ))),
                    DENIED_CACHE_TTL,
                    expiry,
                );
            }
            Ok(Some(addresses)) => addresses,
        };
        let identity = AgentIdentity {
            name: node_identity_name(&account, &node),
            allowance: Allowance::Only(node_identifiers(&node, &addresses)),
        };
        self.decided(Ok(identity), self.config.cache_ttl, expiry)
    }

    /// `result`, reused for `ttl` (and the configured cache time) at most,
    /// and never past the token's `expiry`.
    fn decided(
        &self,
        result: Result<AgentIdentity, AuthRejection>,
        ttl: Duration,
        expiry: Option<SystemTime>,
    ) -> Decision {
        let mut ttl = ttl.min(self.config.cache_ttl);
        if let Some(expiry) = expiry {
            ttl = ttl.min(expiry.duration_since(SystemTime::now()).unwrap_or_default());
        }
        Entry::lasting(result, ttl)
    }

    /// Node `node`'s addresses, from the cache or read once for all who ask
    /// at once (by `deadline`); `Err` says why they could not be read.
    async fn node_addresses(&self, node: &str, deadline: Instant) -> NodeLookup {
        let key: [u8; 32] = Sha256::digest(node.as_bytes()).into();
        self.nodes
            .get_or_make(key, |_| {}, || async {
                let limit = self.config.review_timeout;
                let value = match tokio::time::timeout_at(deadline, self.reviewer.node_addresses(node)).await {
                    Err(_) => Err(format!(
                        "the apiserver did not answer the read of Node {node} (the token's node) within {limit:?}; the agent retries"
                    )),
                    Ok(Err(err)) => Err(format!(
                        "cannot read Node {node}, the token's node ({err}); the agent retries"
                    )),
                    Ok(Ok(addresses)) => Ok(addresses),
                };
                let ttl = match &value {
                    Err(_) => Duration::ZERO,
                    Ok(None) => DENIED_CACHE_TTL.min(self.config.cache_ttl),
                    Ok(Some(_)) => self.config.cache_ttl,
                };
                Entry::lasting(value, ttl)
            })
            .await
    }
}

impl Authenticator for KubernetesAuthenticator {
    fn authenticate<'a>(&'a self, request: AuthRequest<'a>) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>> {
        Box::pin(async move {
            match &request.hello.credential {
                Credential::Bearer(token) => self.authenticate_token(token.expose()).await,
                Credential::None => Err(AuthRejection::unauthenticated(
                    "no bearer token: a ServiceAccount-token agent presents its projected token (token-file)",
                )),
            }
        })
    }
}

/// The identity name of `account`'s agent on `node`:
/// `system:serviceaccount:NAMESPACE:NAME@NODE`. Distinct per node, so that
/// one node's agent cannot take another node's `NAME/<instance>` agent id.
pub fn node_identity_name(account: &ServiceAccount, node: &str) -> String {
    format!("{}@{node}", account.username())
}

/// What an agent bound to `node` may serve: `host=<node>` and each of the
/// Node's `status.addresses` (an address as `ipv4=`/`ipv6=`, a name as
/// `host=`), which is what kube-apiserver dials for that node's kubelet
/// (`--kubelet-preferred-address-types`).
pub fn node_identifiers(node: &str, addresses: &[NodeAddress]) -> Identifiers {
    let mut ids = Identifiers {
        hosts: vec![normalize_host(node)],
        ..Identifiers::default()
    };
    for entry in addresses {
        let text = entry.address.trim();
        if let Ok(ip) = text.parse::<IpAddr>() {
            if !ids.addresses.contains(&ip) {
                ids.addresses.push(ip);
            }
        } else if valid_host(text) && !text.contains('*') {
            let host = normalize_host(text);
            if !ids.hosts.contains(&host) {
                ids.hosts.push(host);
            }
        }
    }
    ids
}

/// Checks a reviewed user against `config`: one of its ServiceAccounts, for
/// one of its audiences, bound to a node or admitted unbound.
pub(crate) fn binding_of(config: &KubernetesAuthConfig, user: &ReviewedUser) -> Result<Binding, AuthRejection> {
    let allowed = || {
        config
            .service_accounts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let account = ServiceAccount::from_username(&user.username)
        .filter(|account| config.service_accounts.contains(account))
        .ok_or_else(|| {
            AuthRejection::unauthenticated(format!(
                "the token authenticates {}, which is not one of the agents' ServiceAccounts (kube-service-accounts: {})",
                escaped(&user.username),
                allowed()
            ))
        })?;
    if !config.audiences.is_empty() && !user.audiences.iter().any(|a| config.audiences.contains(a)) {
        return Err(AuthRejection::unauthenticated(format!(
            "the token of {account} is not for audience {} (kube-audiences)",
            config.audiences.join(", ")
        )));
    }
    match user.extra.get(NODE_NAME_EXTRA).map(Vec::as_slice) {
        Some([node]) if valid_host(node) && !node.contains('*') => Ok(Binding::Node {
            account,
            node: normalize_host(node),
        }),
        Some(values) => Err(AuthRejection::unauthenticated(format!(
            "the token of {account} names no usable node ({NODE_NAME_EXTRA}: {})",
            escaped(&values.join(","))
        ))),
        None => match &config.unbound {
            UnboundTokens::Allow(allowance) => Ok(Binding::Unbound {
                account,
                allowance: allowance.clone(),
            }),
            UnboundTokens::Refuse => Err(AuthRejection {
                code: RejectCode::IdentifiersNotAllowed,
                reason: format!(
                    "the token of {account} is not bound to a node (no {NODE_NAME_EXTRA}: use the pod's projected token, \
                     Kubernetes 1.30 or newer), and kube-unbound-identifiers is none"
                ),
            }),
        },
    }
}

/// The `exp` claim of a JWT, read without checking its signature (the
/// TokenReview checks it); `Err` says why `token` is no JWT.
pub(crate) fn jwt_expiry(token: &str) -> Result<Option<SystemTime>, &'static str> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT (three parts separated by '.')");
    };
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let claims = engine.decode(payload).map_err(|_| "its payload is not base64url")?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).map_err(|_| "its payload is not JSON")?;
    let claims = claims.as_object().ok_or("its payload is not a JSON object")?;
    match claims.get("exp") {
        None => Ok(None),
        Some(exp) => {
            let seconds = exp.as_u64().ok_or("its exp claim is not a number of seconds")?;
            Ok(UNIX_EPOCH.checked_add(Duration::from_secs(seconds)))
        }
    }
}
