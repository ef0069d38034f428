//! Pluggable agent authentication across the boundary: a C callback sees an
//! agent's `Hello` (id, claimed identifiers, bearer token, client
//! certificate, address) and decides with [`connector_auth_accept`] or
//! [`connector_auth_reject`].

use std::ffi::{CString, c_char, c_void};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use connector_core::auth::{AgentIdentity, AuthRejection, AuthRequest, Authenticator};
use connector_core::proto::{Credential, RejectCode};
use connector_core::transport::BoxFuture;

use crate::config::parse_allowance;
use crate::connector_result;
use crate::error::{Error, arg_str, guard};

/// What the callback is told about a connecting agent. Every pointer is
/// valid only during the callback.
#[repr(C)]
pub struct connector_auth_request {
    /// The agent's self-chosen id.
    pub agent_id: *const c_char,
    /// What it claims to serve, comma-separated (`host=node-a,ipv4=10.0.0.5`), possibly empty.
    pub identifiers: *const c_char,
    /// The bearer token it presented, or null.
    pub token: *const u8,
    /// Length of `token`.
    pub token_len: usize,
    /// Its verified client certificate (DER, end-entity), or null.
    pub certificate: *const u8,
    /// Length of `certificate`.
    pub certificate_len: usize,
    /// Its network address (`ip:port`), or an empty string.
    pub remote_addr: *const c_char,
}

/// Where the callback records its decision (valid only during the callback).
pub struct connector_auth_decision {
    outcome: Mutex<Option<Result<AgentIdentity, AuthRejection>>>,
}

/// Decides on one agent. Runs on a library thread (blocking is allowed
/// there, e.g. for a TokenReview request, but the callback must not make
/// blocking connector calls). It must call [`connector_auth_accept`] or
/// [`connector_auth_reject`] on `decision` before returning; with neither the
/// agent is rejected.
pub type connector_auth_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        request: *const connector_auth_request,
        decision: *mut connector_auth_decision,
    ),
>;

/// Accepts the agent as identity `name`, allowed to claim `allowed` (`"*"`
/// for anything, or identifiers such as `"host=node-a"`).
///
/// # Safety
/// `decision` the pointer given to the callback; strings NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_auth_accept(
    decision: *mut connector_auth_decision,
    name: *const c_char,
    allowed: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        let decision = decision_ref(decision)?;
        let name = arg_str(name, "name")?;
        if name.is_empty() {
            return Err(Error::invalid("name is empty"));
        }
        let allowance = parse_allowance(arg_str(allowed, "allowed")?)?;
        *decision.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ok(AgentIdentity {
            name: name.to_owned(),
            allowance,
        }));
        Ok(())
    })
}

/// Rejects the agent; `reason` (never the credential) is sent to it.
///
/// # Safety
/// `decision` the pointer given to the callback; `reason` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_auth_reject(
    decision: *mut connector_auth_decision,
    reason: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        let decision = decision_ref(decision)?;
        let reason = arg_str(reason, "reason")?;
        *decision.outcome.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Err(AuthRejection::unauthenticated(reason.to_owned())));
        Ok(())
    })
}

fn decision_ref<'a>(decision: *mut connector_auth_decision) -> Result<&'a connector_auth_decision, Error> {
    if decision.is_null() {
        return Err(Error::new(
            connector_result::CONNECTOR_ERR_INVALID_HANDLE,
            "decision is null",
        ));
    }
    // SAFETY: during the callback, `decision` points at a live decision on the caller's stack.
    Ok(unsafe { &*decision })
}

/// The C callback's signature, once known to be non-null.
pub(crate) type RawCallback =
    unsafe extern "C" fn(*mut c_void, *const connector_auth_request, *mut connector_auth_decision);

/// An [`Authenticator`] that asks a C callback.
pub(crate) struct CallbackAuthenticator {
    pub(crate) callback: RawCallback,
    pub(crate) user_data: usize,
    pub(crate) gate: Arc<CallbackGate>,
}

/// Tracks calls in progress so that freeing the server can wait for them:
/// once [`CallbackGate::close`] returns, the callback is never called
/// again and the caller may free `user_data`.
#[derive(Default)]
pub(crate) struct CallbackGate {
    state: Mutex<(bool, usize)>,
    idle: Condvar,
}

impl CallbackGate {
    /// Counts a call in, unless closed.
    fn enter(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 {
            return false;
        }
        state.1 += 1;
        true
    }

    fn leave(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1 -= 1;
        if state.1 == 0 {
            self.idle.notify_all();
        }
    }

    /// Refuses further calls and waits (at most `limit`) for running ones.
    /// Called from a callback itself, it cannot wait for that call and returns at once.
    pub(crate) fn close(&self, limit: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = true;
        if tokio::runtime::Handle::try_current().is_ok() {
            return;
        }
        let _ = self
            .idle
            .wait_timeout_while(state, limit, |s| s.1 > 0)
            .unwrap_or_else(|p| p.into_inner());
    }
}

impl Authenticator for CallbackAuthenticator {
    fn authenticate<'a>(&'a self, request: AuthRequest<'a>) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>> {
        let c_string = |s: String| CString::new(s.replace('\0', "")).expect("NULs removed");
        let agent_id = c_string(request.hello.agent_id.clone());
        let identifiers = c_string(request.hello.identifiers.to_string());
        let remote = c_string(request.peer.remote_addr.map(|a| a.to_string()).unwrap_or_default());
        let token = match &request.hello.credential {
            Credential::Bearer(secret) => Some(secret.expose().to_vec()),
            Credential::None => None,
        };
        let certificate = request.peer.certificates.first().map(|c| c.as_ref().to_vec());
        let callback = self.callback;
        let user_data = self.user_data;
        let gate = self.gate.clone();
        Box::pin(async move {
            let call = move || {
                if !gate.enter() {
                    return Some(Err(AuthRejection {
                        code: RejectCode::ShuttingDown,
                        reason: "the server is shutting down".into(),
                    }));
                }
                let raw = connector_auth_request {
                    agent_id: agent_id.as_ptr(),
                    identifiers: identifiers.as_ptr(),
                    token: token.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
                    token_len: token.as_ref().map_or(0, |t| t.len()),
                    certificate: certificate.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                    certificate_len: certificate.as_ref().map_or(0, |c| c.len()),
                    remote_addr: remote.as_ptr(),
                };
                let mut decision = connector_auth_decision {
                    outcome: Mutex::new(None),
                };
                // SAFETY: the callback was registered as valid for the server's lifetime;
                // every pointer in `raw` and `decision` outlives the call.
                unsafe { callback(user_data as *mut c_void, &raw, &mut decision) };
                gate.leave();
                decision.outcome.into_inner().unwrap_or_else(|p| p.into_inner())
            };
            match tokio::task::spawn_blocking(call).await {
                Ok(Some(outcome)) => outcome,
                Ok(None) => Err(AuthRejection::unauthenticated("the authenticator made no decision")),
                Err(_) => Err(AuthRejection {
                    code: RejectCode::Internal,
                    reason: "the authenticator failed".into(),
                }),
            }
        })
    }
}
