//! Pluggable agent authentication across the boundary: a C callback sees an
//! agent's `Hello` (id, claimed identifiers, bearer token, client
//! certificate, address) and decides with [`connector_auth_accept`] or
//! [`connector_auth_reject`].

use std::cell::Cell;
use std::ffi::{CString, c_char, c_void};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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
/// blocking connector calls nor free the server: both return
/// `CONNECTOR_ERR_WRONG_THREAD`). `connector_server_free` waits for it to
/// return, so it must not wait for the thread that frees the server. It
/// must call [`connector_auth_accept`] or [`connector_auth_reject`] on
/// `decision` before returning; with neither the agent is rejected.
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
    decide(decision, error, || {
        let name = arg_str(name, "name")?;
        if name.is_empty() {
            return Err(Error::invalid("name is empty"));
        }
        let allowance = parse_allowance(arg_str(allowed, "allowed")?)?;
        Ok(Ok(AgentIdentity {
            name: name.to_owned(),
            allowance,
        }))
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
    decide(decision, error, || {
        let reason = arg_str(reason, "reason")?;
        Ok(Err(AuthRejection::unauthenticated(reason.to_owned())))
    })
}

/// Runs one decision entry point: checks `decision`, then records the
/// outcome `outcome` reads from the arguments (a later decision replaces it).
fn decide(
    decision: *mut connector_auth_decision,
    error: *mut *mut c_char,
    outcome: impl FnOnce() -> Result<Result<AgentIdentity, AuthRejection>, Error>,
) -> connector_result {
    guard(error, || {
        let decision = decision_ref(decision)?;
        let outcome = outcome()?;
        *decision.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
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
/// once [`CallbackGate::close`] returns, no call is running and none will
/// start, so the caller may free `user_data`.
#[derive(Default)]
pub(crate) struct CallbackGate {
    state: Mutex<GateState>,
    idle: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    running: usize,
}

thread_local! {
    /// How many auth callbacks the current thread is inside (0 or 1).
    static IN_CALLBACK: Cell<usize> = const { Cell::new(0) };
}

/// Whether the current thread is inside an auth callback.
pub(crate) fn in_callback() -> bool {
    IN_CALLBACK.with(Cell::get) > 0
}

impl CallbackGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `call` counted as a call in progress, unless the gate is closed
    /// (then `None`).
    pub(crate) fn run<T>(&self, call: impl FnOnce() -> T) -> Option<T> {
        {
            let mut state = self.lock();
            if state.closed {
                return None;
            }
            state.running += 1;
        }
        /// Counts the call out even if `call` unwinds.
        struct Leave<'a>(&'a CallbackGate);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                IN_CALLBACK.with(|c| c.set(c.get() - 1));
                let mut state = self.0.lock();
                state.running -= 1;
                if state.running == 0 {
                    self.0.idle.notify_all();
                }
            }
        }
        IN_CALLBACK.with(|c| c.set(c.get() + 1));
        let _leave = Leave(self);
        Some(call())
    }

    /// Refuses further calls and waits, with no time limit, until no call
    /// is running. Must not be called from inside a call (it would wait for
    /// itself): [`crate::server::connector_server_free`] refuses that first.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        while state.running > 0 {
            state = self.idle.wait(state).unwrap_or_else(|p| p.into_inner());
        }
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
                // Counted in `gate`, so that freeing the server waits for
                // the call before its `user_data` may be released.
                let called = gate.run(|| {
                    // SAFETY: the callback and `user_data` stay valid until
                    // `connector_server_free` returns, which waits for this
                    // call; every pointer in `raw` and `decision` outlives it.
                    unsafe { callback(user_data as *mut c_void, &raw, &mut decision) }
                });
                if called.is_none() {
                    return Some(Err(AuthRejection {
                        code: RejectCode::ShuttingDown,
                        reason: "the server is shutting down".into(),
                    }));
                }
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// Generous bound that only catches a hang.
    const HANG_GUARD: Duration = Duration::from_secs(120);

    #[test]
    fn closing_the_gate_waits_for_a_running_call_however_long_it_takes() {
        let gate = Arc::new(CallbackGate::default());
        let (entered_tx, entered) = mpsc::channel();
        let (release_tx, release) = mpsc::channel::<()>();
        let finished = Arc::new(Mutex::new(false));
        let call = {
            let (gate, finished) = (gate.clone(), finished.clone());
            std::thread::spawn(move || {
                gate.run(|| {
                    assert!(in_callback());
                    entered_tx.send(()).unwrap();
                    release.recv().unwrap();
                    *finished.lock().unwrap() = true;
                })
            })
        };
        entered.recv_timeout(HANG_GUARD).unwrap();
        assert!(!in_callback(), "only the calling thread is inside the callback");
        let (closed_tx, closed) = mpsc::channel();
        let closer = {
            let (gate, finished) = (gate.clone(), finished.clone());
            std::thread::spawn(move || {
                gate.close();
                closed_tx.send(*finished.lock().unwrap()).unwrap();
            })
        };
        // The call is held well past a scheduling delay: close must still be waiting.
        let held = if cfg!(miri) {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(1)
        };
        assert_eq!(closed.recv_timeout(held), Err(mpsc::RecvTimeoutError::Timeout));
        release_tx.send(()).unwrap();
        let finished_first = closed.recv_timeout(HANG_GUARD).unwrap();
        assert!(finished_first, "close returned while the call was still running");
        assert_eq!(call.join().unwrap(), Some(()));
        closer.join().unwrap();
        // Closed: no call starts any more.
        assert_eq!(gate.run(|| unreachable!("called after close")), None::<()>);
    }

    #[test]
    fn closing_an_idle_gate_returns_at_once() {
        let gate = CallbackGate::default();
        assert_eq!(gate.run(|| 7), Some(7));
        assert!(!in_callback());
        gate.close(); // would hang if the finished call were still counted
        assert_eq!(gate.run(|| 8), None);
    }
}
