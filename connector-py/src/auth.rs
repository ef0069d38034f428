//! A Python callable as the server's authenticator.
//!
//! The callable gets an [`AuthRequest`] and returns [`Accept`] or
//! [`Reject`]. It runs on a blocking thread (never on the runtime's), with
//! the GIL. An exception or a wrong return value rejects the agent and is
//! logged on `connector.auth`; it never reaches the server.

use std::sync::Arc;

use connector_core::Identifiers;
use connector_core::auth::{AgentIdentity, Allowance, AuthRejection, Authenticator, CertificateAuthenticator};
use connector_core::proto::{Credential, RejectCode};
use connector_core::transport::BoxFuture;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors::Failure;

/// What the server knows about a connecting agent. `token` is a secret: it
/// is left out of `repr()`; never log it.
#[pyclass(module = "connector._connector", name = "AuthRequest", frozen, get_all)]
pub struct AuthRequest {
    /// The id the agent announced.
    agent_id: String,
    /// What it claims to serve (`host=...,ipv4=...`, empty if nothing).
    identifiers: String,
    /// Its bearer token, if it sent one.
    token: Option<String>,
    /// Its network address (`ip:port`).
    remote_addr: Option<String>,
    /// Its TLS client certificate chain (DER, leaf first), verified against the
    /// server's `client_ca`; empty if it presented none (or without `client_ca`).
    certificates: Vec<Py<PyBytes>>,
    /// The client certificate's subject common name.
    certificate_name: Option<String>,
    /// The DNS/IP names of the client certificate, as identifiers (`host=...,ipv4=...`):
    /// what the certificate alone would let the agent claim.
    certificate_identifiers: Option<String>,
}

#[pymethods]
impl AuthRequest {
    fn __repr__(&self) -> String {
        format!(
            "AuthRequest(agent_id={:?}, identifiers={:?}, token={}, remote_addr={:?}, certificate_name={:?})",
            self.agent_id,
            self.identifiers,
            if self.token.is_some() { "<redacted>" } else { "None" },
            self.remote_addr,
            self.certificate_name,
        )
    }
}

/// The authenticator's "yes": the agent is `identity` and may claim what
/// `allow` covers (`"*"`, the default: anything; or identifiers such as
/// `"host=node-a,cidr=10.0.0.0/24"`).
#[pyclass(module = "connector._connector", name = "Accept", frozen)]
pub struct Accept {
    identity: String,
    allow: String,
    allowance: Allowance,
}

#[pymethods]
impl Accept {
    #[new]
    #[pyo3(signature = (identity, allow="*"))]
    fn new(identity: String, allow: &str) -> PyResult<Self> {
        if identity.is_empty() {
            return Err(Failure::Config("Accept needs a non-empty identity".into()).into());
        }
        let allowance = match allow.trim() {
            "*" => Allowance::Any,
            ids => Allowance::Only(ids.parse::<Identifiers>().map_err(|e| Failure::Config(e.to_string()))?),
        };
        Ok(Self {
            identity,
            allow: allow.to_owned(),
            allowance,
        })
    }

    /// Who the agent is.
    #[getter]
    fn identity(&self) -> &str {
        &self.identity
    }

    /// What it may claim.
    #[getter]
    fn allow(&self) -> &str {
        &self.allow
    }

    fn __repr__(&self) -> String {
        format!("Accept({:?}, allow={:?})", self.identity, self.allow)
    }
}

/// The authenticator's "no", with a reason sent to the agent (never put a
/// credential in it).
#[pyclass(module = "connector._connector", name = "Reject", frozen, get_all)]
pub struct Reject {
    /// Why.
    reason: String,
}

#[pymethods]
impl Reject {
    #[new]
    #[pyo3(signature = (reason="rejected by the server's authenticator".to_owned()))]
    fn new(reason: String) -> Self {
        Self { reason }
    }

    fn __repr__(&self) -> String {
        format!("Reject({:?})", self.reason)
    }
}

/// The Python callable, as the core's [`Authenticator`].
pub struct PythonAuthenticator {
    callable: Arc<Py<PyAny>>,
}

impl PythonAuthenticator {
    /// Wraps `callable` (checked to be callable).
    pub fn new(callable: &Bound<'_, PyAny>) -> Result<Self, Failure> {
        if !callable.is_callable() {
            return Err(Failure::Config(
                "authenticator must be a callable taking an AuthRequest".into(),
            ));
        }
        Ok(Self {
            callable: Arc::new(callable.clone().unbind()),
        })
    }
}

/// The parts of a request the callable sees, owned so they can move to the blocking thread.
struct Snapshot {
    agent_id: String,
    identifiers: String,
    token: Option<String>,
    remote_addr: Option<String>,
    certificates: Vec<Vec<u8>>,
}

fn internal(reason: &str) -> AuthRejection {
    AuthRejection {
        code: RejectCode::Internal,
        reason: reason.to_owned(),
    }
}

impl Authenticator for PythonAuthenticator {
    fn authenticate<'a>(
        &'a self,
        request: connector_core::auth::AuthRequest<'a>,
    ) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>> {
        let snapshot = Snapshot {
            agent_id: request.hello.agent_id.clone(),
            identifiers: request.hello.identifiers.to_string(),
            token: match &request.hello.credential {
                Credential::Bearer(secret) => Some(String::from_utf8_lossy(secret.expose()).into_owned()),
                _ => None,
            },
            remote_addr: request.peer.remote_addr.map(|a| a.to_string()),
            certificates: request.peer.certificates.iter().map(|c| c.to_vec()).collect(),
        };
        let callable = self.callable.clone();
        Box::pin(async move {
            let call = tokio::task::spawn_blocking(move || {
                Python::try_attach(|py| call(py, &callable, snapshot))
                    .unwrap_or_else(|| Err(internal("the server is shutting down")))
            });
            call.await
                .unwrap_or_else(|_| Err(internal("the server's authenticator failed")))
        })
    }
}

fn call(py: Python<'_>, callable: &Py<PyAny>, snapshot: Snapshot) -> Result<AgentIdentity, AuthRejection> {
    let agent_id = snapshot.agent_id.clone();
    match call_inner(py, callable, snapshot) {
        Ok(outcome) => outcome,
        Err(err) => {
            log_failure(py, &agent_id, &err);
            Err(internal("the server's authenticator failed"))
        }
    }
}

fn call_inner(
    py: Python<'_>,
    callable: &Py<PyAny>,
    snapshot: Snapshot,
) -> PyResult<Result<AgentIdentity, AuthRejection>> {
    let leaf = snapshot
        .certificates
        .first()
        .and_then(|der| CertificateAuthenticator::identity_of(der).ok());
    let (certificate_name, certificate_identifiers) = match leaf {
        Some(AgentIdentity {
            name,
            allowance: Allowance::Only(ids),
        }) => (Some(name), Some(ids.to_string())),
        Some(AgentIdentity { name, .. }) => (Some(name), None),
        None => (None, None),
    };
    let request = AuthRequest {
        agent_id: snapshot.agent_id,
        identifiers: snapshot.identifiers,
        token: snapshot.token,
        remote_addr: snapshot.remote_addr,
        certificates: snapshot
            .certificates
            .iter()
            .map(|der| PyBytes::new(py, der).unbind())
            .collect(),
        certificate_name,
        certificate_identifiers,
    };
    let answer = callable.bind(py).call1((request,))?;
    if let Ok(accept) = answer.cast::<Accept>() {
        let accept = accept.get();
        return Ok(Ok(AgentIdentity {
            name: accept.identity.clone(),
            allowance: accept.allowance.clone(),
        }));
    }
    if let Ok(reject) = answer.cast::<Reject>() {
        return Ok(Err(AuthRejection::unauthenticated(reject.get().reason.clone())));
    }
    let kind = answer.get_type().name()?.to_string();
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "the authenticator returned a {kind}; it must return connector.Accept or connector.Reject"
    )))
}

/// Logs an authenticator failure with its traceback on `connector.auth`.
fn log_failure(py: Python<'_>, agent_id: &str, err: &PyErr) {
    let logged = (|| -> PyResult<()> {
        let logger = py.import("logging")?.call_method1("getLogger", ("connector.auth",))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", err.value(py))?;
        logger.call_method(
            "error",
            ("the authenticator failed for agent %r; the agent is rejected", agent_id),
            Some(&kwargs),
        )?;
        Ok(())
    })();
    if logged.is_err() {
        err.print(py);
    }
}
