//! `Agent`: an agent started from Python, running on the shared runtime.

use std::sync::Arc;

use connector_core::Identifiers;
use connector_core::agent::{AgentObserver, AgentStatus, DestinationPolicy, Rule};
use connector_core::auth::StaticCredential;
use connector_core::proto::{Credential, Secret};
use connector_core::setup::{AgentSetup, SetupError};
use connector_core::tls::{Identity, certs_from_pem};
use connector_core::transport::fallback::TransportMode;
use connector_core::transport::qmux::proxy::ProxyChoice;
use pyo3::prelude::*;
use tokio::sync::watch;

use crate::errors::Failure;
use crate::runtime::{runtime, seconds, wait};

/// Largest `max_connections` accepted.
const MAX_CONNECTIONS: usize = 1_000_000;

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
    #[new]
    #[pyo3(signature = (
        *, servers, ca_pem, agent_id, token=None, token_file=None, cert_pem=None, key_pem=None,
        server_name=None, identifiers="", allow=Vec::new(), max_connections=None,
        tunnel_idle_timeout=None, tunnel_stall_timeout=None, keepalive=None, idle_timeout=None, transport=None,
        tcp_server=None, proxy=None, quic_connect_timeout=None, quic_probe_interval=None,
        congestion=None, max_udp_payload=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        servers: Vec<String>,
        ca_pem: Vec<u8>,
        agent_id: String,
        token: Option<String>,
        token_file: Option<String>,
        cert_pem: Option<Vec<u8>>,
        key_pem: Option<Vec<u8>>,
        server_name: Option<String>,
        identifiers: &str,
        allow: Vec<String>,
        max_connections: Option<usize>,
        tunnel_idle_timeout: Option<f64>,
        tunnel_stall_timeout: Option<f64>,
        keepalive: Option<f64>,
        idle_timeout: Option<f64>,
        transport: Option<&str>,
        tcp_server: Option<String>,
        proxy: Option<&str>,
        quic_connect_timeout: Option<f64>,
        quic_probe_interval: Option<f64>,
        congestion: Option<&str>,
        max_udp_payload: Option<u16>,
    ) -> PyResult<Self> {
        let config = |e: &dyn std::fmt::Display| Failure::Config(e.to_string());
        if agent_id.is_empty() {
            return Err(Failure::Config("agent_id must not be empty".into()).into());
        }
        let cas = certs_from_pem(&ca_pem, "ca").map_err(|e| Failure::Config(e.to_string()))?;
        let mut setup = AgentSetup::new(String::new(), cas, agent_id.clone());
        setup.servers = servers;
        setup.server_name = server_name;
        setup.identifiers = identifiers
            .parse::<Identifiers>()
            .map_err(|e| Failure::Config(e.to_string()))?;
        let rules = allow
            .iter()
            .map(|r| r.parse::<Rule>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::Config(e.to_string()))?;
        setup.policy = DestinationPolicy::new(rules);
        setup.credentials = match (token, token_file) {
            (Some(_), Some(_)) => return Err(Failure::Config("pass token= or token_file=, not both".into()).into()),
            (Some(token), None) => Some(Arc::new(StaticCredential(Credential::Bearer(Secret::new(token))))),
            (None, Some(path)) => Some(Arc::new(connector_core::auth::TokenFile(path.into()))),
            (None, None) => None,
        };
        setup.client_identity = match (cert_pem, key_pem) {
            (Some(cert), Some(key)) => {
                Some(Identity::from_pem(&cert, &key).map_err(|e| Failure::Config(e.to_string()))?)
            }
            (None, None) => None,
            _ => return Err(Failure::Config("pass both cert= and key= for a client certificate".into()).into()),
        };
        if let Some(n) = max_connections {
            if n == 0 || n > MAX_CONNECTIONS {
                return Err(
                    Failure::Config(format!("max_connections must be in 1..={MAX_CONNECTIONS}, not {n}")).into(),
                );
            }
            setup.max_connections = n;
        }
        if let Some(d) = seconds("keepalive", keepalive)? {
            setup.keepalive = d;
        }
        setup.tunnel_idle_timeout = seconds("tunnel_idle_timeout", tunnel_idle_timeout)?;
        if let Some(d) = seconds("tunnel_stall_timeout", tunnel_stall_timeout)? {
            // 0 turns it off; None keeps the default.
            setup.tunnel_stall_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(d) = seconds("idle_timeout", idle_timeout)? {
            setup.idle_timeout = d;
        }
        if let Some(mode) = transport {
            setup.transport = mode.parse::<TransportMode>().map_err(|e| config(&e))?;
        }
        setup.tcp_server = tcp_server;
        if let Some(url) = proxy {
            setup.proxy = Some(ProxyChoice::parse(url).map_err(|e| config(&e))?);
        }
        if let Some(d) = seconds("quic_connect_timeout", quic_connect_timeout)? {
            setup.fallback.quic_connect_timeout = d;
        }
        if let Some(d) = seconds("quic_probe_interval", quic_probe_interval)? {
            setup.fallback.probe_interval = d;
        }
        if let Some(name) = congestion {
            setup.congestion = name.parse().map_err(|e: String| config(&e))?;
        }
        if let Some(n) = max_udp_payload {
            setup.max_udp_payload = n;
        }
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
    /// `TimeoutError` after `timeout` seconds, `ClosedError` if stopped.
    #[pyo3(signature = (timeout=None))]
    fn wait_connected(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<String> {
        let timeout = seconds("timeout", timeout)?;
        let mut status = self.status.clone();
        let agent_id = self.agent_id.clone();
        let reached = wait(py, timeout, "waiting for the agent to connect", async move {
            let reached = status
                .wait_for(|s| {
                    matches!(
                        s,
                        AgentStatus::Connected { .. } | AgentStatus::Rejected { .. } | AgentStatus::Stopped
                    )
                })
                .await
                .map(|s| s.clone())
                .unwrap_or(AgentStatus::Stopped);
            Ok(reached)
        })?;
        match reached {
            AgentStatus::Connected { server_id, .. } => Ok(server_id),
            AgentStatus::Rejected { code, reason } => Err(Failure::Auth {
                code: format!("{code:?}"),
                reason,
            }
            .into()),
            _ => Err(Failure::Closed(format!("agent {agent_id:?} is stopped")).into()),
        }
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
