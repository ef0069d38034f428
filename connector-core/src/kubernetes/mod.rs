//! What connector asks of a Kubernetes apiserver, behind two small traits so
//! that the logic built on them runs (and is tested) without one:
//!
//! - [`TokenReviewer`]: a TokenReview of an agent's ServiceAccount token and
//!   the addresses of a Node, for the ServiceAccount-token authenticator
//!   ([`crate::auth::KubernetesAuthenticator`]);
//! - [`LeaseStore`]: the `coordination.k8s.io/v1` Leases by which server
//!   replicas count each other ([`crate::server::leases`]).
//!
//! With the cargo feature `kubernetes` (on in the `connector` binary, the C
//! ABI and the Python package), [`KubeClient`] implements both over the
//! `kube` crate (rustls, no openssl), configured from a kubeconfig file or
//! from the pod's in-cluster ServiceAccount.

#[cfg(feature = "kubernetes")]
mod client;

#[cfg(feature = "kubernetes")]
pub use client::{KubeClient, KubeConfigError, KubeLeases};

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::proto::escaped;
use crate::transport::BoxFuture;

/// A request to the apiserver failed. Its text names the request and, for an
/// answer, the apiserver's status code and message (escaped: it is the
/// apiserver's text).
#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    /// The apiserver answered with an error status (`403`: the server's
    /// Kubernetes user lacks the RBAC of docs/security.md).
    #[error("{request}: the apiserver answered {code}: {}", escaped(.message))]
    Status {
        /// What was asked (`create TokenReview`, `get Node node-a`).
        request: String,
        /// HTTP status code.
        code: u16,
        /// The apiserver's message.
        message: String,
    },
    /// No answer: connection, TLS, a timeout or an unreadable answer.
    #[error("{request}: {source}")]
    Transport {
        /// What was asked.
        request: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The user a TokenReview authenticated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewedUser {
    /// `status.user.username` (`system:serviceaccount:NAMESPACE:NAME`).
    pub username: String,
    /// `status.user.extra` (the node name of a pod-bound token, the pod, ...).
    pub extra: BTreeMap<String, Vec<String>>,
    /// `status.audiences`: the audiences the token is valid for, among those asked.
    pub audiences: Vec<String>,
}

/// What a TokenReview decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    /// `status.authenticated: true`.
    Authenticated(ReviewedUser),
    /// Not authenticated (invalid, expired, revoked, wrong audience, bound
    /// object gone), with the apiserver's `status.error` when it gave one.
    Denied(String),
}

/// One entry of a Node's `status.addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP`, `Hostname`, `InternalDNS`, `ExternalDNS`.
    pub kind: String,
    /// The address or name.
    pub address: String,
}

/// The apiserver requests of the ServiceAccount-token authenticator.
/// [`KubeClient`] implements it; tests implement it in process.
pub trait TokenReviewer: Send + Sync + 'static {
    /// Sends a TokenReview of `token` for `audiences` (none: the apiserver's own).
    fn review<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> BoxFuture<'a, Result<Review, KubeApiError>>;

    /// The `status.addresses` of Node `name`, or `None` if there is no such Node.
    fn node_addresses<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<NodeAddress>>, KubeApiError>>;
}

/// One Lease as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `metadata.name`.
    pub name: String,
    /// `spec.holderIdentity`.
    pub holder: Option<String>,
    /// `spec.renewTime`.
    pub renewed: Option<SystemTime>,
    /// `spec.leaseDurationSeconds`.
    pub duration: Option<Duration>,
    /// `metadata.resourceVersion`, to delete exactly the version seen.
    pub resource_version: Option<String>,
}

/// A Lease to create or renew now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRenewal {
    /// `metadata.name`.
    pub name: String,
    /// `spec.holderIdentity` (the server id).
    pub holder: String,
    /// `spec.leaseDurationSeconds` (whole seconds).
    pub duration: Duration,
    /// `spec.renewTime`.
    pub renewed: SystemTime,
}

/// The Leases of one namespace carrying one label. [`KubeLeases`]
/// implements it; tests implement it in process.
pub trait LeaseStore: Send + Sync + 'static {
    /// Creates the Lease, or renews it if it exists, with the store's label.
    fn renew<'a>(&'a self, lease: &'a LeaseRenewal) -> BoxFuture<'a, Result<(), KubeApiError>>;

    /// Every Lease with the store's label.
    fn list(&self) -> BoxFuture<'_, Result<Vec<LeaseRecord>, KubeApiError>>;

    /// Deletes Lease `name` (only at `resource_version`, when given). `false`
    /// when it was already gone or has changed since.
    fn delete<'a>(
        &'a self,
        name: &'a str,
        resource_version: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, KubeApiError>>;
}

/// Whether `name` is a Kubernetes DNS-1123 label (a namespace's name): 1 to
/// 63 lower-case letters, digits and `-`, starting and ending with a letter
/// or digit.
pub fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `name` is a Kubernetes DNS-1123 subdomain (the name of a
/// ServiceAccount, a Node or a Lease): at most 253 bytes of dot-separated
/// DNS-1123 labels.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// A label `key=value` (a Lease label, Konnectivity's `--lease-label`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// `[prefix/]name`.
    pub key: String,
    /// The value (may be empty).
    pub value: String,
}

/// A label that is not `key=value` with Kubernetes' label syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid label {given:?}: {reason} (expected KEY=VALUE, e.g. k8s-app=connector-server: \
     a key of letters, digits, '-', '_' and '.' with an optional DNS prefix and '/', a value of at most 63 such characters)"
)]
pub struct LabelParseError {
    /// The text given.
    pub given: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// A label name or value: at most 63 letters, digits, `-`, `_` and `.`,
/// starting and ending with a letter or digit (a value may be empty).
fn label_part(part: &str, may_be_empty: bool) -> bool {
    if part.is_empty() {
        return may_be_empty;
    }
    part.len() <= 63
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && part.as_bytes()[0].is_ascii_alphanumeric()
        && part.as_bytes()[part.len() - 1].is_ascii_alphanumeric()
}

impl FromStr for Label {
    type Err = LabelParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| LabelParseError {
            given: text.to_owned(),
            reason,
        };
        let (key, value) = text.trim().split_once('=').ok_or_else(|| err("no '='"))?;
        let name = match key.split_once('/') {
            Some((prefix, name)) if is_dns_subdomain(prefix) => name,
            Some(_) => return Err(err("the key's prefix is not a DNS subdomain")),
            None => key,
        };
        if !label_part(name, false) {
            return Err(err("bad key"));
        }
        if !label_part(value, true) {
            return Err(err("bad value"));
        }
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names_and_labels() {
        for good in ["kube-system", "a", "a1", &"x".repeat(63)] {
            assert!(is_dns_label(good), "{good:?}");
        }
        for bad in ["", "-a", "a-", "Kube", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
        assert!(is_dns_subdomain("node-a.example.com"));
        assert!(!is_dns_subdomain("node-a..example"));
        assert!(!is_dns_subdomain("Node_A"));

        let label: Label = "k8s-app=connector-server".parse().unwrap();
        assert_eq!(
            (label.key.as_str(), label.value.as_str()),
            ("k8s-app", "connector-server")
        );
        assert_eq!(label.to_string(), "k8s-app=connector-server");
        assert!("app.kubernetes.io/name=x".parse::<Label>().is_ok());
        assert!("flag=".parse::<Label>().is_ok());
        for bad in [
            "no-equals",
            "=v",
            "k=-v",
            "Bad Prefix/k=v",
            "k=a b",
            &format!("k={}", "v".repeat(64)),
        ] {
            let err = bad.parse::<Label>().unwrap_err().to_string();
            assert!(err.contains("KEY=VALUE"), "{bad}: {err}");
        }
    }
}
