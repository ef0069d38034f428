//! Who may connect as an agent, and what it may serve.
//!
//! The server hands every agent's `Hello` and TLS peer information to an
//! [`Authenticator`]; the identity it returns decides which identifiers
//! (node names, addresses, networks, default route) the agent may claim.
//! Built in: bearer tokens ([`TokenAuthenticator`]), client certificates
//! ([`CertificateAuthenticator`]) and [`FirstOf`] to accept either.
//! On the agent, a [`CredentialSource`] supplies the credential at each
//! connection attempt.

mod certificate;
mod credential;
mod token;

pub use certificate::CertificateAuthenticator;
pub use credential::{CredentialError, CredentialSource, StaticCredential, TokenFile};
pub use token::{TokenAuthenticator, TokenEntry, TokenFileError, parse_tokens};

#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::identifiers::Identifiers;
use crate::proto::{Hello, RejectCode};
use crate::transport::{BoxFuture, PeerInfo};

/// What an authenticator sees of a connecting agent.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    /// The agent's `Hello` (its id, claimed identifiers and credential).
    pub hello: &'a Hello,
    /// The transport's view of the peer (address, verified certificate chain).
    pub peer: &'a PeerInfo,
}

/// Which identifiers an authenticated agent may claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowance {
    /// Anything (for trusted, operator-issued credentials).
    Any,
    /// Only identifiers covered by these. An agent that claims nothing is
    /// registered as serving exactly these.
    Only(Identifiers),
}

/// The outcome of a successful authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// Who the agent is, as established by its credential (for logs and policy).
    pub name: String,
    /// What it may serve.
    pub allowance: Allowance,
}

/// A refusal, sent to the agent in a `Reject` frame. The reason must never
/// contain the credential itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({code})")]
pub struct AuthRejection {
    /// Reject code for the wire.
    pub code: RejectCode,
    /// Human-readable reason.
    pub reason: String,
}

impl AuthRejection {
    /// An `Unauthenticated` rejection.
    pub fn unauthenticated(reason: impl Into<String>) -> Self {
        Self {
            code: RejectCode::Unauthenticated,
            reason: reason.into(),
        }
    }
}

/// Decides whether an agent may connect, and as whom. Implement this to plug
/// in your own verifier (for example a Kubernetes TokenReview).
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates one agent.
    fn authenticate<'a>(&'a self, request: AuthRequest<'a>) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>>;
}

/// Tries several authenticators in order; the first to accept wins. When all
/// refuse, the reasons are joined.
pub struct FirstOf(pub Vec<Arc<dyn Authenticator>>);

impl Authenticator for FirstOf {
    fn authenticate<'a>(&'a self, request: AuthRequest<'a>) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>> {
        Box::pin(async move {
            let mut reasons = Vec::new();
            for auth in &self.0 {
                match auth.authenticate(request).await {
                    Ok(identity) => return Ok(identity),
                    Err(rejection) => reasons.push(rejection.reason),
                }
            }
            if reasons.is_empty() {
                reasons.push("no authenticator is configured".into());
            }
            Err(AuthRejection::unauthenticated(reasons.join("; ")))
        })
    }
}

/// Checks that `agent_id` is an id the authenticated identity may register
/// under. The agent id selects the agent (`Selector::Agent`) and a newer
/// connection with the same id replaces the older one, so it must come from
/// the credential, never from the agent's word alone. Allowed:
/// - anything, for an [`Allowance::Any`] identity;
/// - the identity's name itself (`node-a`);
/// - `<name>/<instance>`, for replicas that share one credential and need
///   distinct ids (`workload-agents/pod-0`);
/// - a host name the allowance lists (compared lower-cased, without a
///   trailing dot), e.g. a certificate's DNS name.
///
/// Otherwise the rejection (code `IdentifiersNotAllowed`) names the identity
/// and what it may use.
pub fn check_agent_id(identity: &AgentIdentity, agent_id: &str) -> Result<(), AuthRejection> {
    let allowed = match &identity.allowance {
        Allowance::Any => return Ok(()),
        Allowance::Only(allowed) => allowed,
    };
    let instance_of_name = agent_id
        .strip_prefix(identity.name.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|instance| !instance.is_empty());
    let listed_host = crate::identifiers::valid_host(agent_id)
        && allowed.hosts.contains(&crate::identifiers::normalize_host(agent_id));
    if agent_id == identity.name || instance_of_name || listed_host {
        return Ok(());
    }
    Err(AuthRejection {
        code: RejectCode::IdentifiersNotAllowed,
        reason: format!(
            "identity {:?} may not use agent id {agent_id:?}: use {:?}, {:?}/<instance> or a host name it may claim ({allowed})",
            identity.name, identity.name, identity.name
        ),
    })
}

/// Resolves what an authenticated agent will serve: its claims if they are
/// all allowed, its allowance if it claimed nothing, or a rejection naming
/// the claims its identity does not cover.
pub fn served_identifiers(identity: &AgentIdentity, claimed: &Identifiers) -> Result<Identifiers, AuthRejection> {
    match &identity.allowance {
        Allowance::Any => Ok(claimed.clone()),
        Allowance::Only(allowed) if claimed.is_empty() => Ok(allowed.clone()),
        Allowance::Only(allowed) => {
            let uncovered = allowed.uncovered(claimed);
            if uncovered.is_empty() {
                Ok(claimed.clone())
            } else {
                Err(AuthRejection {
                    code: RejectCode::IdentifiersNotAllowed,
                    reason: format!(
                        "identity {:?} may not claim {} (it may claim: {})",
                        identity.name,
                        uncovered.join(","),
                        allowed
                    ),
                })
            }
        }
    }
}
