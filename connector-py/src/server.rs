//! `Server`: a QUIC server started from Python, its agents and its dials.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use connector_core::auth::{Allowance, TokenAuthenticator, TokenEntry};
use connector_core::proto::Secret;
use connector_core::server::{AgentInfo as CoreAgentInfo, Selector};
use connector_core::settings::ServerSettings;
use connector_core::setup::{ClientCertificates, SetupError};
use connector_core::tls::{CaBundle, Identity};
use connector_core::transport::qmux::QmuxSetupError;
use connector_core::transport::quic::QuicSetupError;
use connector_core::{Identifiers, Server as CoreServer, TunnelStream};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::auth::PythonAuthenticator;
use crate::errors::Failure;
use crate::runtime::{runtime, seconds, wait};
use crate::settings::{apply, config_error};
use crate::socket;
use crate::stream::{AsyncStream, Stream, awaitable};

/// A connected agent, as `Server.agents()` reports it.
#[pyclass(module = "connector._connector", name = "AgentInfo", frozen, get_all)]
pub struct AgentInfo {
    /// The id the agent announced.
    agent_id: String,
    /// The identity its credential established.
    identity: String,
    /// What it serves (`host=...,ipv4=...`).
    identifiers: String,
    /// Its network address (`ip:port`).
    remote_addr: Option<String>,
    /// `"quic"`, or `"tcp"` for the TLS/TCP fallback.
    transport: &'static str,
    /// The id of the server (replica) it is connected to.
    server_id: String,
    /// Tunnelled connections open through it now.
    active_streams: u32,
    /// Seconds since it connected.
    connected_for: f64,
    /// When it connected: seconds since the Unix epoch.
    connected_since: f64,
    /// Tunnelled bytes sent through it to targets over this connection.
    bytes_to_agent: u64,
    /// Tunnelled bytes received through it from targets over this connection.
    bytes_from_agent: u64,
    /// Smoothed round-trip time in seconds; `None` when not measured (TCP:
    /// until the first keepalive is answered).
    rtt: Option<f64>,
    /// Why its previous connection to this server ended, if it had one.
    last_disconnect: Option<String>,
    /// When that was: seconds since the Unix epoch.
    last_disconnect_at: Option<f64>,
}

/// Seconds since the Unix epoch.
fn unix_seconds(at: std::time::SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl From<CoreAgentInfo> for AgentInfo {
    fn from(info: CoreAgentInfo) -> Self {
        Self {
            agent_id: info.agent_id,
            identity: info.identity,
            identifiers: info.identifiers.to_string(),
            remote_addr: info.remote_addr.map(|a| a.to_string()),
            transport: info.transport,
            server_id: info.server_id,
            active_streams: info.active_streams,
            connected_for: info.connected_for.as_secs_f64(),
            connected_since: unix_seconds(info.connected_since),
            bytes_to_agent: info.bytes_to_agent,
            bytes_from_agent: info.bytes_from_agent,
            rtt: info.rtt.map(|rtt| rtt.as_secs_f64()),
            last_disconnect_at: info.last_disconnect.as_ref().map(|d| unix_seconds(d.at)),
            last_disconnect: info.last_disconnect.map(|d| d.reason),
        }
    }
}

#[pymethods]
impl AgentInfo {
    fn __repr__(&self) -> String {
        format!(
            "AgentInfo(agent_id={:?}, identity={:?}, identifiers={:?}, remote_addr={:?}, transport={:?}, server_id={:?}, active_streams={})",
            self.agent_id,
            self.identity,
            self.identifiers,
            self.remote_addr,
            self.transport,
            self.server_id,
            self.active_streams
        )
    }
}

/// A server that agents connect to, and that dials through them.
#[pyclass(module = "connector._connector", name = "Server", frozen)]
pub struct Server {
    server: CoreServer,
    local_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
}

/// One `(token, identity, allow)` entry; `allow` is `"*"` or identifiers,
/// `None` meaning `host=<identity>`.
type TokenSpec = (String, String, Option<String>);

fn token_entries(tokens: Vec<TokenSpec>) -> Result<Vec<TokenEntry>, Failure> {
    tokens
        .into_iter()
        .enumerate()
        .map(|(i, (token, identity, allow))| {
            if token.is_empty() || identity.is_empty() {
                return Err(Failure::Config(format!(
                    "token entry {i}: the token and the identity must not be empty"
                )));
            }
            let allowance = match allow.as_deref().map(str::trim) {
                Some("*") => Allowance::Any,
                Some(ids) => Allowance::Only(
                    ids.parse::<Identifiers>()
                        .map_err(|e| Failure::Config(format!("token entry {i} ({identity}): {e}")))?,
                ),
                None => Allowance::Only(
                    format!("host={identity}")
                        .parse::<Identifiers>()
                        .map_err(|e| Failure::Config(format!("token entry {i} ({identity}): {e}")))?,
                ),
            };
            Ok(TokenEntry::new(&Secret::new(token), identity, allowance))
        })
        .collect()
}

/// Waits until at least `count` agents are connected, including each of
/// `agent_ids`, for at most `timeout`; the timeout's error says who is missing.
async fn until_agents(
    server: CoreServer,
    count: usize,
    agent_ids: Vec<String>,
    timeout: Option<Duration>,
) -> Result<Vec<AgentInfo>, Failure> {
    let enough = |agents: &[CoreAgentInfo]| {
        agents.len() >= count && agent_ids.iter().all(|id| agents.iter().any(|a| a.agent_id == *id))
    };
    let waiting = server.wait_for_agents(enough);
    let reached = match timeout {
        Some(limit) => tokio::time::timeout(limit, waiting).await.is_ok(),
        None => {
            waiting.await;
            true
        }
    };
    let agents = server.agents();
    if !reached {
        let missing: Vec<&str> = agent_ids
            .iter()
            .filter(|id| !agents.iter().any(|a| a.agent_id == **id))
            .map(String::as_str)
            .collect();
        let missing = if missing.is_empty() {
            String::new()
        } else {
            format!("; not connected: {}", missing.join(", "))
        };
        let wanted = count.max(agent_ids.len());
        return Err(Failure::Timeout(format!(
            "waiting for agents timed out after {:?}: {} connected (waiting for at least {wanted}){missing}",
            timeout.unwrap_or_default(),
            agents.len()
        )));
    }
    Ok(agents.into_iter().map(AgentInfo::from).collect())
}

fn selector(target: &str, agent: Option<String>, host: Option<String>) -> Result<Selector, Failure> {
    match (agent, host) {
        (Some(_), Some(_)) => Err(Failure::Config("pass agent= or host=, not both".into())),
        (Some(agent), None) => Ok(Selector::Agent(agent)),
        (None, Some(host)) => Ok(Selector::Host(host)),
        (None, None) => Ok(Selector::for_target(target)),
    }
}

impl Server {
    fn dial_timeout(&self, timeout: Option<f64>) -> Result<Duration, Failure> {
        Ok(seconds("timeout", timeout)?.unwrap_or(self.server.config().limits.dial_timeout))
    }

    /// The dial every `dial*` method makes: `target` through the agent that
    /// `agent`/`host` pick, within `timeout` seconds (default: the server's
    /// dial timeout); the arguments are checked now, the future owns the rest.
    fn dialling(
        &self,
        target: String,
        agent: Option<String>,
        host: Option<String>,
        timeout: Option<f64>,
    ) -> Result<impl Future<Output = Result<TunnelStream, Failure>> + Send + 'static, Failure> {
        let selector = selector(&target, agent, host)?;
        let timeout = self.dial_timeout(timeout)?;
        let server = self.server.clone();
        Ok(async move { Ok(server.dial_timeout(&selector, &target, timeout).await?) })
    }
}

#[pymethods]
impl Server {
    /// `settings`: the schema's settings by name (`max_agents`, ...); the
    /// rest is what is not a setting.
    #[new]
    #[pyo3(signature = (settings, *, cert_pem, key_pem, tokens=None, client_ca_pem=None, authenticator=None))]
    fn new(
        py: Python<'_>,
        settings: &Bound<'_, PyDict>,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
        tokens: Option<Vec<TokenSpec>>,
        client_ca_pem: Option<Vec<u8>>,
        authenticator: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let config = |e: &dyn std::fmt::Display| Failure::Config(e.to_string());
        let mut schema = ServerSettings::default();
        // A Python authenticator decides, seeing the certificate, unless told otherwise.
        if authenticator.is_some() {
            schema.client_certificates = ClientCertificates::VerifyOnly;
        }
        apply(&mut schema, settings)?;
        if tokens.is_some() && schema.tokens.is_some() {
            return Err(Failure::Config("pass tokens= or tokens_file=, not both".into()).into());
        }
        let identity = Identity::from_pem(&cert_pem, &key_pem).map_err(|e| config(&e))?;
        let mut setup = schema.into_setup_with(Some(identity)).map_err(config_error)?;
        if let Some(tokens) = tokens {
            setup.tokens = Some(TokenAuthenticator::from_entries(token_entries(tokens)?));
        }
        if let Some(pem) = client_ca_pem {
            setup.client_cas = Some(CaBundle::from_pem(&pem, "client_ca").map_err(|e| config(&e))?);
        }
        if let Some(callable) = authenticator {
            setup
                .authenticators
                .push(Arc::new(PythonAuthenticator::new(&callable)?));
        }
        let started = py.detach(|| {
            let _enter = runtime().enter();
            setup.start()
        });
        let started = started.map_err(|e| match e {
            SetupError::NoAuthentication => Failure::Config(
                "no way to authenticate agents: pass tokens=, tokens_file=, client_ca=, kube_service_accounts= and/or authenticator=".into(),
            ),
            SetupError::Quic(QuicSetupError::Bind { ref source, .. })
            | SetupError::Qmux(QmuxSetupError::Bind { ref source, .. }) => Failure::Listen {
                errno: source.raw_os_error(),
                message: e.to_string(),
            },
            other => config(&other),
        })?;
        Ok(Self {
            server: started.server,
            local_addr: started.local_addr,
            tcp_addr: started.tcp_addr,
        })
    }

    /// Where agents connect: the bound UDP address, `ip:port`.
    #[getter]
    fn address(&self) -> String {
        self.local_addr.to_string()
    }

    /// The bound UDP port.
    #[getter]
    fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Where agents connect over the TCP fallback (`ip:port`), `None` when it is off.
    #[getter]
    fn tcp_address(&self) -> Option<String> {
        self.tcp_addr.map(|a| a.to_string())
    }

    /// This server's id, reported to agents.
    #[getter]
    fn server_id(&self) -> String {
        self.server.config().server_id.clone()
    }

    /// The connected agents, sorted by agent id.
    fn agents(&self, py: Python<'_>) -> Vec<AgentInfo> {
        let server = self.server.clone();
        py.detach(move || server.agents())
            .into_iter()
            .map(AgentInfo::from)
            .collect()
    }

    /// Waits until at least `count` agents are connected, and every one of
    /// `agent_ids`; returns `agents()`. `TimeoutError` after `timeout` seconds.
    #[pyo3(signature = (count=1, agent_ids=Vec::new(), timeout=None))]
    fn wait_for_agents(
        &self,
        py: Python<'_>,
        count: usize,
        agent_ids: Vec<String>,
        timeout: Option<f64>,
    ) -> PyResult<Vec<AgentInfo>> {
        let timeout = seconds("timeout", timeout)?;
        let server = self.server.clone();
        let agents = wait(
            py,
            None,
            "waiting for agents",
            until_agents(server, count, agent_ids, timeout),
        )?;
        Ok(agents)
    }

    /// `wait_for_agents` for asyncio: an awaitable of `agents()`. Cancelling
    /// the awaiting task stops the wait.
    #[pyo3(signature = (count=1, agent_ids=Vec::new(), timeout=None))]
    fn wait_for_agents_async<'py>(
        &self,
        py: Python<'py>,
        count: usize,
        agent_ids: Vec<String>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = seconds("timeout", timeout)?;
        let server = self.server.clone();
        awaitable(py, until_agents(server, count, agent_ids, timeout))
    }

    /// Opens a TCP connection to `target` (`host:port`) from an agent's
    /// network: the agent `agent` (by id), or the one serving `host`, or by
    /// default the one serving the target's host. Blocks (GIL released) for
    /// at most `timeout` seconds (default: the server's dial timeout).
    #[pyo3(signature = (target, agent=None, host=None, timeout=None))]
    fn dial(
        &self,
        py: Python<'_>,
        target: String,
        agent: Option<String>,
        host: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<Stream> {
        let stream = wait(py, None, "dial", self.dialling(target, agent, host, timeout)?)?;
        Ok(Stream::new(stream))
    }

    /// `dial` for asyncio: an awaitable of an `AsyncStream`. Cancelling the
    /// awaiting task cancels the dial.
    #[pyo3(signature = (target, agent=None, host=None, timeout=None))]
    fn dial_async<'py>(
        &self,
        py: Python<'py>,
        target: String,
        agent: Option<String>,
        host: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let dialling = self.dialling(target, agent, host, timeout)?;
        awaitable(py, async move { Ok(AsyncStream::new(dialling.await?)) })
    }

    /// `dial` as a socket: a connected Unix socket whose other end is
    /// spliced to the tunnelled connection on the runtime; returns its file
    /// descriptor (for `socket.socket(fileno=)`). Blocks (GIL released) like `dial`.
    #[pyo3(signature = (target, agent=None, host=None, timeout=None))]
    fn dial_socket(
        &self,
        py: Python<'_>,
        target: String,
        agent: Option<String>,
        host: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<i32> {
        let (python, spliced) = socket::spliced(self.dialling(target, agent, host, timeout)?)?;
        wait(py, None, "dial", spliced)?;
        Ok(socket::into_fd(python))
    }

    /// `dial_socket` for asyncio: the socket's file descriptor at once, and
    /// an awaitable that completes when the dial has (then the socket carries
    /// the connection; until then it is silent, and if the dial fails or the
    /// awaiting task is cancelled it reads end of file).
    #[pyo3(signature = (target, agent=None, host=None, timeout=None))]
    fn dial_socket_async<'py>(
        &self,
        py: Python<'py>,
        target: String,
        agent: Option<String>,
        host: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<(i32, Bound<'py, PyAny>)> {
        let (python, spliced) = socket::spliced(self.dialling(target, agent, host, timeout)?)?;
        let dialled = awaitable(py, spliced)?;
        Ok((socket::into_fd(python), dialled))
    }

    /// Drains the server, then shuts it down (what `connector server` does on
    /// SIGTERM): new dials fail and new agents are refused at once, every
    /// agent is told to go away, open connections may finish within `grace`
    /// seconds, then the rest is closed. Blocks (GIL released) until done:
    /// as soon as every agent has acknowledged and every connection has
    /// ended, at most `grace` plus 3 s. Ctrl-C stops the wait, not the drain.
    #[pyo3(signature = (grace=30.0))]
    fn drain(&self, py: Python<'_>, grace: f64) -> PyResult<()> {
        let grace = seconds("grace", Some(grace))?.unwrap_or_default();
        let server = self.server.clone();
        wait(py, None, "drain", async move {
            server.drain(grace).await;
            Ok(())
        })?;
        Ok(())
    }

    /// `drain` for asyncio: an awaitable of `None`. Cancelling the awaiting
    /// task stops the wait, not the drain.
    #[pyo3(signature = (grace=30.0))]
    fn drain_async<'py>(&self, py: Python<'py>, grace: f64) -> PyResult<Bound<'py, PyAny>> {
        let grace = seconds("grace", Some(grace))?.unwrap_or_default();
        let server = self.server.clone();
        awaitable(py, async move {
            server.drain(grace).await;
            Ok(())
        })
    }

    /// Stops accepting agents, refuses new dials and disconnects every agent. Safe to call twice.
    fn close(&self, py: Python<'_>) {
        let server = self.server.clone();
        py.detach(move || {
            let _enter = runtime().enter();
            server.shutdown();
        });
    }

    fn __repr__(&self) -> String {
        format!(
            "<connector.Server {} id={:?}>",
            self.local_addr,
            self.server.config().server_id
        )
    }
}

impl Server {
    /// The core server (for the testing helpers).
    pub fn core(&self) -> &CoreServer {
        &self.server
    }
}
