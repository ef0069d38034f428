//! `Agent`: an agent started from Python, running on the shared runtime.

use std::sync::Arc;
use std::time::Duration;

use connector_core::agent::{AgentObserver, AgentStatus};
use connector_core::auth::StaticCredential;
use connector_core::proto::{Credential, Secret};
use connector_core::settings::AgentSettings;
use connector_core::setup::SetupError;
use connector_core::tls::{Identity, certs_from_pem};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::watch;

use crate::errors::Failure;
use crate::runtime::{runtime, seconds, wait};
use crate::settings::{apply, config_error};
use crate::stream::awaitable;

/// An agent: connects out to a server and serves its dials until stopped.
/// Reconnects by itself with backoff when the connection ends.
#[pyclass(module = "connector._connector", name = "Agent", frozen)]
pub struct Agent {
    agent_id: String,
    status: watch::Receiver<AgentStatus>,
    observer: AgentObserver,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

/// Waits until the agent is connected (the server's id), rejected
/// (`AuthError`) or stopped (`ClosedError`), for at most `timeout`; the
/// timeout's error says why the agent is not connected.
async fn until_connected(
    mut status: watch::Receiver<AgentStatus>,
    agent_id: String,
    timeout: Option<Duration>,
) -> Result<String, Failure> {
    let settled = |s: &AgentStatus| {
        matches!(
            s,
            AgentStatus::Connected { .. } | AgentStatus::Rejected { .. } | AgentStatus::Stopped
        )
    };
    let reached = match timeout {
        Some(limit) => tokio::time::timeout(limit, status.wait_for(settled))
            .await
            .map(|s| s.map(|s| s.clone()).unwrap_or(AgentStatus::Stopped)),
        None => Ok(status
            .wait_for(settled)
            .await
            .map(|s| s.clone())
            .unwrap_or(AgentStatus::Stopped)),
    };
    let Ok(reached) = reached else {
        // Say why: the last attempt's failure (a bad CA, no server) is known.
        let why = match &*status.borrow() {
            AgentStatus::Disconnected { reason } => format!("; the last attempt: {reason}"),
            _ => "; no attempt has ended yet (the server does not answer?)".to_owned(),
        };
        let after = timeout.unwrap_or_default();
        return Err(Failure::Timeout(format!(
            "waiting for the agent to connect timed out after {after:?}{why}"
        )));
    };
    match reached {
        AgentStatus::Connected { server_id, .. } => Ok(server_id),
        AgentStatus::Rejected { code, reason } => Err(Failure::Auth {
            code: format!("{code:?}"),
            reason,
        }),
        _ => Err(Failure::Closed(format!("agent {agent_id:?} is stopped"))),
    }
}

fn setup_error(err: SetupError) -> Failure {
    match err {
        SetupError::NoCredential => {
            Failure::Config("no agent credential: pass token=, token_file= or cert=/key=".into())
        }
        other => Failure::Config(other.to_string()),
    }
}

#[pymethods]
impl Agent {
    /// `settings`: the schema's settings by name (`server`, `agent_id`,
    /// `max_connections`, ...); the rest is what is not a setting.
    #[new]
    #[pyo3(signature = (settings, *, ca_pem, token=None, cert_pem=None, key_pem=None))]
    fn new(
        py: Python<'_>,
        settings: &Bound<'_, PyDict>,
        ca_pem: Vec<u8>,
        token: Option<String>,
        cert_pem: Option<Vec<u8>>,
        key_pem: Option<Vec<u8>>,
    ) -> PyResult<Self> {
        let mut schema = AgentSettings::default();
        apply(&mut schema, settings)?;
        if token.is_some() && schema.token_file.is_some() {
            return Err(Failure::Config("pass token= or token_file=, not both".into()).into());
        }
        let agent_id = schema.agent_id.clone().unwrap_or_default();
        let cas = certs_from_pem(&ca_pem, "ca").map_err(|e| Failure::Config(e.to_string()))?;
        let mut setup = schema.into_setup_with(cas.into()).map_err(config_error)?;
        if let Some(token) = token {
            setup.credentials = Some(Arc::new(StaticCredential(Credential::Bearer(Secret::new(token)))));
        }
        setup.client_identity = match (cert_pem, key_pem) {
            (Some(cert), Some(key)) => {
                Some(Identity::from_pem(&cert, &key).map_err(|e| Failure::Config(e.to_string()))?)
            }
            (None, None) => None,
            _ => return Err(Failure::Config("pass both cert= and key= for a client certificate".into()).into()),
        };
        let agent = py.detach(|| {
            let _enter = runtime().enter();
            setup.start()
        });
        let agent = agent.map_err(setup_error)?;
        let observer = agent.observer();
        let (status_tx, status) = watch::channel(agent.status());
        let (stop, mut stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        // Owns the core agent: mirrors its status and stops it when asked
        // (or when this object is dropped, which drops `stop`).
        runtime().spawn(async move {
            loop {
                let current = status_tx.borrow().clone();
                tokio::select! {
                    next = agent.wait_for(|s| *s != current) => { status_tx.send_replace(next); }
                    _ = stop_rx.wait_for(|s| *s) => break,
                }
            }
            agent.stop().await;
            status_tx.send_replace(AgentStatus::Stopped);
            done_tx.send_replace(true);
        });
        Ok(Self {
            agent_id,
            status,
            observer,
            stop,
            done,
        })
    }

    /// This agent's id.
    #[getter]
    fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// `"connecting"`, `"connected"`, `"rejected"`, `"disconnected"` or `"stopped"`.
    #[getter]
    fn status(&self) -> &'static str {
        match *self.status.borrow() {
            AgentStatus::Connecting => "connecting",
            AgentStatus::Connected { .. } => "connected",
            AgentStatus::Rejected { .. } => "rejected",
            AgentStatus::Disconnected { .. } => "disconnected",
            AgentStatus::Stopped => "stopped",
        }
    }

    /// Why the agent is rejected or disconnected (`None` otherwise).
    #[getter]
    fn status_reason(&self) -> Option<String> {
        match &*self.status.borrow() {
            AgentStatus::Rejected { code, reason } => Some(format!("{reason} ({code})")),
            AgentStatus::Disconnected { reason } => Some(reason.clone()),
            _ => None,
        }
    }

    /// The agent's metrics in the Prometheus text format (the
    /// `connector_agent_*` series `connector agent --admin` serves).
    fn metrics(&self) -> String {
        self.observer.render_metrics()
    }

    /// Waits until the agent is registered with the server and returns the
    /// server's id. Raises `AuthError` if the server rejects it,
    /// `TimeoutError` after `timeout` seconds (saying why it is not
    /// connected), `ClosedError` if stopped.
    #[pyo3(signature = (timeout=None))]
    fn wait_connected(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<String> {
        let timeout = seconds("timeout", timeout)?;
        let waiting = until_connected(self.status.clone(), self.agent_id.clone(), timeout);
        Ok(wait(py, None, "waiting for the agent to connect", waiting)?)
    }

    /// `wait_connected` for asyncio: an awaitable of the server's id.
    /// Cancelling the awaiting task stops the wait.
    #[pyo3(signature = (timeout=None))]
    fn wait_connected_async<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let timeout = seconds("timeout", timeout)?;
        awaitable(py, until_connected(self.status.clone(), self.agent_id.clone(), timeout))
    }

    /// Closes the connection to the server and stops reconnecting. Safe to call twice.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.stop.send_replace(true);
        let mut done = self.done.clone();
        wait(py, None, "stopping the agent", async move {
            let _ = done.wait_for(|d| *d).await;
            Ok(())
        })?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("<connector.Agent {:?} {}>", self.agent_id, self.status())
    }
}
