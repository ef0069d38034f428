//! [`connector_agent`]: an agent that dials out to a server and serves its dials.

use std::ffi::c_char;
use std::future::Future;
use std::sync::{Arc, Mutex};

use connector_core::agent::{Agent, AgentStatus};
use connector_core::auth::{CredentialSource, StaticCredential};
use connector_core::proto::Credential;

use crate::cancel::{self, connector_cancel};
use crate::config::{AGENT_CONFIGS, Config, connector_agent_config};
use crate::connector_result;
use crate::error::{Error, check_out, fill_string_out, guard, to_c_string, write_out};
use crate::handle::Registry;
use crate::runtime::OwnedRuntime;

/// A running agent (it reconnects with backoff until freed).
pub struct connector_agent {
    rt: Arc<OwnedRuntime>,
    agent: Mutex<Option<Arc<Agent>>>,
    closed: connector_cancel,
}

pub(crate) static AGENTS: Registry<connector_agent> = Registry::new("agent");

/// How long freeing an agent waits for its connection to close cleanly.
const STOP_GRACE_US: u64 = 5_000_000;

fn start(config: &connector_agent_config) -> Result<connector_agent, Error> {
    let s = config.snapshot();
    if s.token.is_some() && s.settings.token_file.is_some() {
        return Err(Error::invalid("set either a token or a token file, not both"));
    }
    if s.client_identity.is_some() && s.settings.cert.is_some() {
        return Err(Error::invalid(
            "set the client certificate either in memory or as files, not both",
        ));
    }
    let mut setup = s.settings.into_setup_with(s.server_cas).map_err(Error::setup)?;
    if let Some(token) = s.token {
        setup.credentials = Some(Arc::new(StaticCredential(Credential::Bearer(token))) as Arc<dyn CredentialSource>);
    }
    if s.client_identity.is_some() {
        setup.client_identity = s.client_identity;
    }
    setup.check().map_err(Error::setup)?;
    let rt = OwnedRuntime::new(s.worker_threads)?;
    let agent = {
        let _entered = rt.handle().enter();
        setup.start().map_err(Error::setup)?
    };
    Ok(connector_agent {
        rt,
        agent: Mutex::new(Some(Arc::new(agent))),
        closed: connector_cancel::new(),
    })
}

impl connector_agent {
    fn running(&self) -> Result<Arc<Agent>, Error> {
        self.agent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::new(connector_result::CONNECTOR_ERR_CLOSED, "the agent was stopped"))
    }
}

/// Looks up the agent and the cancel handle, then blocks on `wait` (given
/// the running agent) until it ends, `timeout_us` passes, `cancel` fires or
/// the agent is freed.
fn wait_on<T, F: Future<Output = T>>(
    agent: *const connector_agent,
    timeout_us: u64,
    cancel: *const connector_cancel,
    wait: impl FnOnce(Arc<Agent>) -> F,
) -> Result<T, Error> {
    let (agent, cancel) = cancel::with_handle(&AGENTS, agent, cancel)?;
    let running = agent.running()?;
    agent
        .rt
        .block(timeout_us, cancel.as_deref(), Some(&agent.closed), async {
            Ok(wait(running).await)
        })
}

/// Starts an agent from `config` (which stays usable and must still be
/// freed). It connects in the background; see [`connector_agent_wait_connected`].
///
/// # Safety
/// `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_start(
    config: *const connector_agent_config,
    out: *mut *mut connector_agent,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || AGENTS.insert_out(out, || start(&*AGENT_CONFIGS.get(config)?)))
}

/// Waits until the agent is registered with a server (`CONNECTOR_OK`) or
/// refused (`CONNECTOR_ERR_REJECTED`, with the server's reason; the agent
/// keeps retrying), at most `timeout_us` microseconds (0: no limit).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_wait_connected(
    agent: *const connector_agent,
    timeout_us: u64,
    cancel: *const connector_cancel,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        let outcome = wait_on(agent, timeout_us, cancel, |running| async move {
            running
                .wait_for(|s| {
                    matches!(
                        s,
                        AgentStatus::Connected { .. } | AgentStatus::Rejected { .. } | AgentStatus::Stopped
                    )
                })
                .await
        })?;
        match outcome {
            AgentStatus::Rejected { code, reason } => Err(Error::new(
                connector_result::CONNECTOR_ERR_REJECTED,
                format!("the server refused the agent: {reason} ({code})"),
            )),
            AgentStatus::Stopped => Err(Error::new(connector_result::CONNECTOR_ERR_CLOSED, "the agent stopped")),
            _ => Ok(()),
        }
    })
}

/// The agent's status as text (`connecting`, `connected to SERVER`,
/// `rejected: ...`, `disconnected: ...`, `stopped`), in `*out` (free with
/// `connector_string_free`).
///
/// # Safety
/// `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_status(
    agent: *const connector_agent,
    out: *mut *mut c_char,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        fill_string_out(out, || {
            Ok(match AGENTS.get(agent)?.running()?.status() {
                AgentStatus::Connecting => "connecting".to_owned(),
                AgentStatus::Connected { server_id, .. } => format!("connected to {server_id}"),
                AgentStatus::Rejected { code, reason } => format!("rejected: {reason} ({code})"),
                AgentStatus::Disconnected { reason } => format!("disconnected: {reason}"),
                AgentStatus::Stopped => "stopped".to_owned(),
            })
        })
    })
}

/// The server replicas the agent holds a session with, one line each,
/// `SERVER_ID TRANSPORT` (`quic` or `tcp`), in `*out` (empty when none; free
/// with `connector_string_free`), and in `*expected` how many it should hold:
/// the number of server addresses, or the replica count the servers announce.
///
/// # Safety
/// `out` and `expected` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_sessions(
    agent: *const connector_agent,
    out: *mut *mut c_char,
    expected: *mut usize,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        check_out(out, "out")?;
        check_out(expected, "expected")?;
        let running = AGENTS.get(agent)?.running()?;
        let lines: Vec<String> = running
            .servers()
            .iter()
            .map(|s| format!("{} {}", s.server_id, s.transport))
            .collect();
        write_out(expected, running.observer().expected_servers(), "expected")?;
        write_out(out, to_c_string(&lines.join("\n")), "out")
    })
}

/// Waits until the agent holds sessions with at least `count` server
/// replicas (see [`connector_agent_sessions`]), at most `timeout_us`
/// microseconds (0: no limit).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_wait_sessions(
    agent: *const connector_agent,
    count: usize,
    timeout_us: u64,
    cancel: *const connector_cancel,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        wait_on(agent, timeout_us, cancel, |running| async move {
            running.wait_for_servers(|held| held.len() >= count).await;
        })
    })
}

/// The agent's metrics in the Prometheus text format (the
/// `connector_agent_*` series `connector agent --admin` serves at
/// `/metrics`: sessions, reconnects, `GoAway`s received, dials served...),
/// in `*out` (free with `connector_string_free`).
///
/// # Safety
/// `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_metrics(
    agent: *const connector_agent,
    out: *mut *mut c_char,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        fill_string_out(out, || Ok(AGENTS.get(agent)?.running()?.observer().render_metrics()))
    })
}

/// Stops the agent (closing its connection, which ends its tunnelled
/// connections) and frees the handle.
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_free(
    agent: *mut connector_agent,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        let agent = AGENTS.remove(agent)?;
        agent.closed.fire();
        let running = agent.agent.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(running) = running.and_then(|a| Arc::try_unwrap(a).ok()) {
            // A clean close when possible; dropping the agent stops it anyway.
            let _ = agent.rt.block(STOP_GRACE_US, None, None, async {
                running.stop().await;
                Ok(())
            });
        }
        Ok(())
    })
}
