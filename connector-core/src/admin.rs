//! The admin HTTP listener of a server or an agent: `/metrics` (Prometheus
//! text format, plus the runtime's gauges from [`crate::metrics::render_runtime`]), `/healthz` (the process is alive) and `/readyz` (a server
//! accepts agents; an agent holds a session with its server); a server also
//! answers `/agents` with its connected agents as JSON ([`AgentsReport`]),
//! which `connector agents` reads with [`get`].
//!
//! A deliberately small HTTP/1.1 responder: `GET` only, one request per
//! connection, the request head bounded in size and time, so that a scraper
//! or probe that misbehaves costs nothing lasting. It has no authentication:
//! bind it to loopback or a pod-internal address only.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Server;
use crate::agent::AgentObserver;
use crate::server::{AgentInfo, Disconnect};

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head, unless [`serve_with_head_timeout`] says otherwise.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;

/// What the admin listener reports on.
pub trait AdminTarget: Send + Sync + 'static {
    /// The `/metrics` page.
    fn render_metrics(&self) -> String;
    /// `Ok` when ready, otherwise why not (the body of a `503` from `/readyz`).
    fn readiness(&self) -> Result<(), String>;
    /// The `/agents` page; `None` (a `404`) where there is none, as on an agent.
    fn agents(&self) -> Option<AgentsReport> {
        None
    }
}

/// The body of `GET /agents` on a server's admin listener (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentsReport {
    /// The server replica that answered.
    pub server_id: String,
    /// Its connected agents, sorted by agent id.
    pub agents: Vec<AgentRecord>,
    /// Agents it remembers a disconnect of and that are not connected to it
    /// now, newest first (at most [`crate::server::MAX_DISCONNECTS`]).
    pub disconnected: Vec<DisconnectRecord>,
}

/// One connected agent in an [`AgentsReport`] ([`AgentInfo`] as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The id the agent announced.
    pub agent_id: String,
    /// The identity its credential established.
    pub identity: String,
    /// What it serves (`host=…,ipv4=…`).
    pub identifiers: String,
    /// `quic`, or `tcp` for the TLS/TCP fallback (QMux).
    pub transport: String,
    /// The server replica it is connected to.
    pub server_id: String,
    /// Its address as this server sees it (`null` without one).
    pub remote_addr: Option<String>,
    /// When it connected, RFC 3339 UTC.
    pub connected_since: String,
    /// Seconds since it connected, by the server's clock.
    pub connected_for_secs: u64,
    /// Tunnelled connections open through it now.
    pub open_connections: u32,
    /// Tunnelled bytes sent to it (towards targets) over this connection.
    pub bytes_to_agent: u64,
    /// Tunnelled bytes received from it (from targets) over this connection.
    pub bytes_from_agent: u64,
    /// Smoothed round-trip time in milliseconds; `null` when not measured
    /// (TCP: until the first keepalive is answered).
    pub rtt_ms: Option<f64>,
    /// How its previous connection to this server ended, if it had one.
    pub last_disconnect: Option<DisconnectRecord>,
}

/// How an agent's connection ended ([`Disconnect`] as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisconnectRecord {
    /// The agent's id.
    pub agent_id: String,
    /// Why it ended.
    pub reason: String,
    /// When, RFC 3339 UTC.
    pub at: String,
}

/// `at` as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    let at = at.replace_millisecond(at.millisecond()).unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "invalid time".into())
}

impl From<&Disconnect> for DisconnectRecord {
    fn from(d: &Disconnect) -> Self {
        Self {
            agent_id: d.agent_id.clone(),
            reason: d.reason.clone(),
            at: rfc3339(d.at),
        }
    }
}

impl From<&AgentInfo> for AgentRecord {
    fn from(a: &AgentInfo) -> Self {
        Self {
            agent_id: a.agent_id.clone(),
            identity: a.identity.clone(),
            identifiers: a.identifiers.to_string(),
            transport: a.transport.to_owned(),
            server_id: a.server_id.clone(),
            remote_addr: a.remote_addr.map(|addr| addr.to_string()),
            connected_since: rfc3339(a.connected_since),
            connected_for_secs: a.connected_for.as_secs(),
            open_connections: a.active_streams,
            bytes_to_agent: a.bytes_to_agent,
            bytes_from_agent: a.bytes_from_agent,
            rtt_ms: a.rtt.map(|rtt| (rtt.as_micros() as f64) / 1000.0),
            last_disconnect: a.last_disconnect.as_ref().map(DisconnectRecord::from),
        }
    }
}

impl AgentsReport {
    /// What `server` reports now.
    pub fn of(server: &Server) -> Self {
        Self {
            server_id: server.config().server_id.clone(),
            agents: server.agents().iter().map(AgentRecord::from).collect(),
            disconnected: server.recent_disconnects().iter().map(DisconnectRecord::from).collect(),
        }
    }
}

impl AdminTarget for Server {
    fn render_metrics(&self) -> String {
        Server::render_metrics(self)
    }

    fn agents(&self) -> Option<AgentsReport> {
        Some(AgentsReport::of(self))
    }

    fn readiness(&self) -> Result<(), String> {
        if self.is_ready() {
            Ok(())
        } else {
            Err("not accepting agents (no listener, or shutting down)".into())
        }
    }
}

impl AdminTarget for AgentObserver {
    fn render_metrics(&self) -> String {
        AgentObserver::render_metrics(self)
    }

    fn readiness(&self) -> Result<(), String> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(format!(
                "holds a session with {} of {} server replicas: {:?}",
                self.servers().len(),
                self.expected_servers(),
                self.status()
            ))
        }
    }
}

/// Serves the admin endpoints on `listener` until the task is dropped.
/// A client has [`HEAD_TIMEOUT`] to send its request head.
pub async fn serve(listener: TcpListener, target: Arc<dyn AdminTarget>) {
    serve_with_head_timeout(listener, target, HEAD_TIMEOUT).await
}

/// [`serve`] with another time bound on request heads: a client that sends
/// nothing, or dribbles its head, is answered `408` and closed after
/// `head_timeout`.
pub async fn serve_with_head_timeout(listener: TcpListener, target: Arc<dyn AdminTarget>, head_timeout: Duration) {
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let pages = if target.agents().is_some() {
        "/metrics, /healthz, /readyz, /agents"
    } else {
        "/metrics, /healthz, /readyz"
    };
    tracing::info!(listen = %local, "admin endpoints listening ({pages})");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(%err, "admin accept failed");
                continue;
            }
        };
        let target = target.clone();
        tokio::spawn(async move {
            if let Err(err) = handle(tcp, target.as_ref(), head_timeout).await {
                tracing::debug!(%peer, %err, "admin request failed");
            }
            drop(slot);
        });
    }
}

async fn handle(mut tcp: TcpStream, target: &dyn AdminTarget, head_timeout: Duration) -> io::Result<()> {
    let head = match tokio::time::timeout(head_timeout, read_head(&mut tcp)).await {
        Ok(head) => head?,
        Err(_) => return respond(&mut tcp, 408, "text/plain", "request head not received in time\n").await,
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let (method, path) = match request.parse(&head) {
        Ok(httparse::Status::Complete(_)) => (request.method.unwrap_or(""), request.path.unwrap_or("")),
        _ => return respond(&mut tcp, 400, "text/plain", "malformed request\n").await,
    };
    if method != "GET" && method != "HEAD" {
        return respond(&mut tcp, 405, "text/plain", "only GET is served here\n").await;
    }
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/metrics" => {
            let mut page = target.render_metrics();
            page.push_str(&crate::metrics::render_runtime());
            respond(&mut tcp, 200, crate::metrics::CONTENT_TYPE, &page).await
        }
        "/healthz" | "/livez" => respond(&mut tcp, 200, "text/plain", "ok\n").await,
        "/readyz" => match target.readiness() {
            Ok(()) => respond(&mut tcp, 200, "text/plain", "ok\n").await,
            Err(reason) => respond(&mut tcp, 503, "text/plain", &format!("{reason}\n")).await,
        },
        "/agents" => match target.agents() {
            Some(report) => {
                let mut json = serde_json::to_string(&report).map_err(io::Error::other)?;
                json.push('\n');
                respond(&mut tcp, 200, "application/json", &json).await
            }
            None => {
                let body = "no /agents here: this admin listener is not a server's; ask the server's --admin address\n";
                respond(&mut tcp, 404, "text/plain", body).await
            }
        },
        _ => {
            respond(
                &mut tcp,
                404,
                "text/plain",
                "try /metrics, /healthz, /readyz or /agents\n",
            )
            .await
        }
    }
}

/// Reads until the end of the request head (or [`MAX_HEAD`]).
async fn read_head(tcp: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Ok(head);
        }
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the request head ended",
            ));
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

async fn respond(tcp: &mut TcpStream, status: u16, content_type: &str, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    tcp.shutdown().await
}

/// Largest response [`get`] reads (a report on 10,000 agents is a few MiB).
const MAX_RESPONSE: u64 = 64 << 20;

/// An answer of an admin listener ([`get`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The body (lossily UTF-8).
    pub body: String,
}

/// Why [`get`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminGetError {
    /// Nothing answered at the address.
    #[error("could not connect to the admin listener at {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The connection failed during the exchange.
    #[error("admin listener at {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// What came back is not an HTTP/1.1 response.
    #[error("admin listener at {addr} did not answer with HTTP: {reason}")]
    Malformed {
        /// The address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
}

/// `GET path` from the admin listener at `addr` (`host:port`): one request
/// on a fresh connection, read until the listener closes it (bounded in
/// size; the caller bounds the time).
pub async fn get(addr: &str, path: &str) -> Result<AdminResponse, AdminGetError> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| AdminGetError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let io_error = |source| AdminGetError::Io {
        addr: addr.to_owned(),
        source,
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.map_err(io_error)?;
    let mut raw = Vec::new();
    (&mut tcp)
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .await
        .map_err(io_error)?;
    let malformed = |reason: String| AdminGetError::Malformed {
        addr: addr.to_owned(),
        reason,
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(malformed("the response ended within its head".into())),
        Err(err) => return Err(malformed(err.to_string())),
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let mut body = &raw[head_len..];
    if let Some(len) = header("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        if body.len() < len {
            return Err(malformed(format!("body of {} bytes, {len} announced", body.len())));
        }
        body = &body[..len];
    }
    Ok(AdminResponse {
        status: response.code.unwrap_or_default(),
        content_type: header("content-type"),
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl AdminTarget for Nothing {
        fn render_metrics(&self) -> String {
            String::new()
        }

        fn readiness(&self) -> Result<(), String> {
            Ok(())
        }
    }

    /// `GET /metrics` from `addr`, returning the value of the sample `name`.
    async fn scrape(addr: std::net::SocketAddr, name: &str) -> i64 {
        let mut tcp = TcpStream::connect(addr).await.expect("connect to the admin listener");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(&format!("# TYPE {name} gauge\n")), "{response}");
        response
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in:\n{response}"))
    }

    #[tokio::test]
    async fn metrics_page_counts_the_runtime_alive_tasks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(Nothing)));
        let guard = Duration::from_secs(30);
        let before = tokio::time::timeout(guard, scrape(addr, "connector_runtime_alive_tasks"))
            .await
            .expect("first scrape hung");
        assert!(before >= 1, "the admin listener itself is a task, got {before}");

        let (release, parked) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let mut parked = parked.clone();
                tokio::spawn(async move { while parked.changed().await.is_ok() && !*parked.borrow() {} })
            })
            .collect();
        let during = tokio::time::timeout(guard, scrape(addr, "connector_runtime_alive_tasks"))
            .await
            .expect("second scrape hung");
        assert!(during >= before + 50, "50 parked tasks more: {before} -> {during}");
        assert!(
            tokio::time::timeout(guard, scrape(addr, "connector_runtime_workers"))
                .await
                .expect("hung")
                >= 1
        );

        release.send(true).unwrap();
        for task in tasks {
            tokio::time::timeout(guard, task)
                .await
                .expect("parked task did not end")
                .unwrap();
        }
        server.abort();
    }
}
