//! Who may connect as an agent, and what it may serve.
//!
//! The server hands every agent's `Hello` and TLS peer information to an
//! [`Authenticator`]; the identity it returns decides which identifiers
//! (node names, addresses, networks, default route) the agent may claim.
//! Built in: bearer tokens ([`TokenAuthenticator`]), client certificates
//! ([`CertificateAuthenticator`]), Kubernetes ServiceAccount tokens bound
//! to the agent's node ([`KubernetesAuthenticator`], checked with a
//! TokenReview) and [`FirstOf`] to accept any of them.
//! On the agent, a [`CredentialSource`] supplies the credential at each
//! connection attempt.

mod certificate;
mod credential;
pub mod kubernetes;
mod token;

pub use certificate::CertificateAuthenticator;
pub use credential::{CredentialError, CredentialSource, StaticCredential, TokenFile};
pub use kubernetes::{KubernetesAuthConfig, KubernetesAuthenticator, ServiceAccount, UnboundTokens};
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
    /// Who the agent is, as established by its credential (for logs and
    /// policy). Must pass [`check_identity_name`]: the server refuses an
    /// agent whose identity name does not.
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

/// Tries several authenticators in order; the first to accept wins, if the
/// identity it returns has a valid name ([`check_identity_name`]; otherwise
/// the agent is refused). When all refuse, the reasons are joined (a lone
/// refusal keeps its code).
pub struct FirstOf(pub Vec<Arc<dyn Authenticator>>);

impl Authenticator for FirstOf {
    fn authenticate<'a>(&'a self, request: AuthRequest<'a>) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>> {
        Box::pin(async move {
            let mut rejections = Vec::new();
            for auth in &self.0 {
                match auth.authenticate(request).await {
                    Ok(identity) => {
                        check_identity_name(&identity.name).map_err(AuthRejection::from)?;
                        return Ok(identity);
                    }
                    Err(rejection) => rejections.push(rejection),
                }
            }
            if rejections.len() == 1 {
                return Err(rejections.remove(0));
            }
            let mut reasons: Vec<String> = rejections.into_iter().map(|r| r.reason).collect();
            if reasons.is_empty() {
                reasons.push("no authenticator is configured".into());
            }
            Err(AuthRejection::unauthenticated(reasons.join("; ")))
        })
    }
}

/// Why a string cannot be an identity name. The name is quoted escaped, so
/// control characters never reach a log line raw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityNameError {
    /// The name is empty.
    #[error("an identity name must not be empty")]
    Empty,
    /// The name contains `/`.
    #[error(
        "identity name {0:?} contains '/', which separates an identity's name from an instance in agent ids (NAME/INSTANCE), so it could be another identity's instance id: choose a name without '/'"
    )]
    Slash(String),
    /// The name contains a control character (newline, escape, NUL, ...).
    #[error("identity name {0:?} contains a control character: choose a printable name")]
    Control(String),
}

impl From<IdentityNameError> for AuthRejection {
    fn from(err: IdentityNameError) -> Self {
        AuthRejection::unauthenticated(format!("the credential names an unusable identity: {err}"))
    }
}

/// Checks that `name` can be an identity's name: not empty, no `/` and no
/// control characters. Spaces and other printable characters are allowed
/// (certificate common names often have them).
///
/// An identity may register under the agent id `<name>/<instance>`
/// ([`check_agent_id`]); a name containing `/` could be exactly such an id of
/// another identity (identity `team` would own `team/victim`, the whole
/// name of identity `team/victim`), and the two would replace each other's
/// connection. Tokens files are checked when loaded, certificate common
/// names when mapped ([`CertificateAuthenticator::identity_of`]), any
/// authenticator's result in [`FirstOf`] and again in [`check_agent_id`].
pub fn check_identity_name(name: &str) -> Result<(), IdentityNameError> {
    if name.is_empty() {
        Err(IdentityNameError::Empty)
    } else if name.contains('/') {
        Err(IdentityNameError::Slash(name.to_owned()))
    } else if name.chars().any(char::is_control) {
        Err(IdentityNameError::Control(name.to_owned()))
    } else {
        Ok(())
    }
}

/// Checks that `agent_id` is an id the authenticated identity may register
/// under. The agent id selects the agent (`Selector::Agent`) and a newer
/// connection with the same id replaces the older one, so it must come from
/// the credential, never from the agent's word alone. An identity whose name
/// fails [`check_identity_name`] may use no id at all (code
/// `Unauthenticated`), whatever authenticator returned it. Allowed:
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
    check_identity_name(&identity.name)?;
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
