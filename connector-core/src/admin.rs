//! The admin HTTP listener of a server or an agent: `/metrics` (Prometheus
//! text format, plus the runtime's gauges from
//! [`crate::metrics::render_runtime`]), `/healthz` (the process is alive) and
//! `/readyz` (a server accepts agents; an agent holds a session with its
//! server); a server also answers `/agents` with its connected agents as
//! JSON ([`AgentsReport`], serde_json), which `connector agents` reads with
//! [`get`].
//!
//! HTTP/1.1 is hyper's, both ways: its server connection parses requests,
//! bounds the request head in size ([`MAX_HEAD`], `431` beyond) and in time
//! ([`HEAD_TIMEOUT`]), and writes responses; its client connection is
//! [`get`]. What is ours: `GET` and `HEAD` only (`405` otherwise), one
//! request per connection (scrapers and probes send one and read to the
//! end; some, like the soak test's, do not say `Connection: close`), at most
//! [`MAX_CONNECTIONS`] connections served at once (more wait in the accept
//! queue), and the `408` to a client whose head is late, which hyper's
//! head timeout does not send (it closes without a word). So a scraper or
//! probe that misbehaves costs nothing lasting. There is no
//! authentication: bind the listener to loopback or a pod-internal address
//! only.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::Server;
use crate::agent::AgentObserver;
use crate::server::{AgentInfo, Disconnect};

/// Largest request head (request line and headers) read; larger ones are answered `431`.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines in a request head; more are answered `431`.
const MAX_HEADERS: usize = 32;
/// Time a client has to send its request head, unless [`serve_with_head_timeout`] says otherwise.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 64;

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
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(false);
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
        let http = http.clone();
        let target = target.clone();
        tokio::spawn(async move {
            if let Err(err) = handle(&http, tcp, target).await {
                tracing::debug!(%peer, %err, "admin request failed");
            }
            drop(slot);
        });
    }
}

/// Serves one connection: one request, or a `408` if its head is late.
async fn handle(http: &http1::Builder, mut tcp: TcpStream, target: Arc<dyn AdminTarget>) -> io::Result<()> {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = answer(&request, target.as_ref());
        async move { Ok::<_, Infallible>(response) }
    });
    match http.serve_connection(TokioIo::new(&mut tcp), service).await {
        Ok(()) => Ok(()),
        Err(err) if err.is_timeout() => {
            let body = "request head not received in time\n";
            let response = format!(
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(response.as_bytes()).await?;
            tcp.shutdown().await
        }
        Err(err) => Err(io::Error::other(err)),
    }
}

/// The response to `request`.
fn answer(request: &Request<Incoming>, target: &dyn AdminTarget) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served here\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let mut page = target.render_metrics();
            page.push_str(&crate::metrics::render_runtime());
            respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, page)
        }
        "/healthz" | "/livez" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match target.readiness() {
            Ok(()) => respond(StatusCode::OK, "text/plain", "ok\n"),
            Err(reason) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{reason}\n")),
        },
        "/agents" => match target.agents().map(|report| serde_json::to_string(&report)) {
            Some(Ok(mut json)) => {
                json.push('\n');
                respond(StatusCode::OK, "application/json", json)
            }
            Some(Err(err)) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("the report could not be written as JSON: {err}\n"),
            ),
            None => {
                let body = "no /agents here: this admin listener is not a server's; ask the server's --admin address\n";
                respond(StatusCode::NOT_FOUND, "text/plain", body)
            }
        },
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz, /readyz or /agents\n",
        ),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Largest response [`get`] reads (a report on 10,000 agents is a few MiB).
const MAX_RESPONSE: usize = 64 << 20;

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
    /// What came back is not an HTTP/1.1 response (or a larger one than [`get`] reads).
    #[error("admin listener at {addr} did not answer with HTTP: {reason}")]
    Malformed {
        /// The address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
}

/// `GET path` from the admin listener at `addr` (`host:port`): one request
/// on a fresh connection (bounded in size; the caller bounds the time).
pub async fn get(addr: &str, path: &str) -> Result<AdminResponse, AdminGetError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| AdminGetError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let failed = |err: hyper::Error| {
        if err.is_parse() || err.is_incomplete_message() {
            AdminGetError::Malformed {
                addr: addr.to_owned(),
                reason: err.to_string(),
            }
        } else {
            AdminGetError::Io {
                addr: addr.to_owned(),
                source: io::Error::other(err),
            }
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(failed)?;
    let request = Request::get(path)
        .header(header::HOST, addr)
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|err| AdminGetError::Malformed {
            addr: addr.to_owned(),
            reason: format!("cannot ask for {path:?}: {err}"),
        })?;
    let exchange = async {
        let response = sender.send_request(request).await.map_err(failed)?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|err| match err.downcast::<hyper::Error>() {
                Ok(err) => failed(*err),
                Err(err) => AdminGetError::Malformed {
                    addr: addr.to_owned(),
                    reason: err.to_string(),
                },
            })?
            .to_bytes();
        Ok(AdminResponse {
            status: parts.status.as_u16(),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    // The connection is driven until the response is in; once it ends, the
    // exchange has everything it will get.
    let mut exchange = std::pin::pin!(exchange);
    tokio::select! {
        result = &mut exchange => result,
        _ = conn => exchange.await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncReadExt;

    use super::*;

    /// A hang guard, not a threshold: every step here finishes at once.
    const GUARD: Duration = Duration::from_secs(30);

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

    /// Serves `target` on a loopback port with `head_timeout`.
    async fn start(
        target: Arc<dyn AdminTarget>,
        head_timeout: Duration,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (
            addr,
            tokio::spawn(serve_with_head_timeout(listener, target, head_timeout)),
        )
    }

    /// Sends `request` on a fresh connection and reads until the listener closes it.
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(GUARD, tcp.read_to_end(&mut response))
            .await
            .expect("no answer")
            .unwrap();
        String::from_utf8(response).unwrap()
    }

    #[tokio::test]
    async fn only_get_and_head_are_served_and_a_head_is_bounded_in_size() {
        let (addr, server) = start(Arc::new(Nothing), HEAD_TIMEOUT).await;
        let post = exchange(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{post}");
        assert!(post.contains("\r\nallow: GET, HEAD\r\n"), "{post}");
        assert!(post.ends_with("\r\n\r\nonly GET is served here\n"), "{post}");

        let head = exchange(addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-length: 3\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "a HEAD answer has no body: {head}");

        // A head that reaches the bound unfinished (exactly MAX_HEAD bytes,
        // all of which the listener reads before it answers and closes).
        let mut large = b"GET /healthz HTTP/1.1\r\nX-Large: ".to_vec();
        large.resize(MAX_HEAD, b'a');
        let large = exchange(addr, &large).await;
        assert!(
            large.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{large}"
        );

        // A client that shuts its side down once its request is sent is still answered.
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        half.shutdown().await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(GUARD, half.read_to_string(&mut response))
            .await
            .expect("no answer after a half-close")
            .unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("\r\n\r\nok\n"),
            "{response}"
        );

        let ok = get(&addr.to_string(), "/healthz?probe=1").await.unwrap();
        assert_eq!(
            (ok.status, ok.content_type.as_deref(), ok.body.as_str()),
            (200, Some("text/plain"), "ok\n")
        );
        let metrics = get(&addr.to_string(), "/metrics").await.unwrap();
        assert_eq!(
            metrics.content_type.as_deref(),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(
            metrics.body.contains("# TYPE connector_runtime_workers gauge\n"),
            "{}",
            metrics.body
        );
        let missing = get(&addr.to_string(), "/agents").await.unwrap();
        assert_eq!(missing.status, 404, "{missing:?}");
        assert!(missing.body.contains("not a server's"), "{missing:?}");
        server.abort();
    }

    /// Counts the `/readyz` requests it answers.
    #[derive(Default)]
    struct Readies(AtomicUsize);

    impl AdminTarget for Readies {
        fn render_metrics(&self) -> String {
            String::new()
        }

        fn readiness(&self) -> Result<(), String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// With [`MAX_CONNECTIONS`] connections held open (silent, the head
    /// timeout far away), one more is not served; it is once one of them
    /// leaves. The listener accepts in arrival order, so a connection that
    /// is answered tells that every one opened before it holds its slot.
    #[tokio::test]
    async fn a_connection_beyond_the_bound_waits_until_one_is_released() {
        let target = Arc::new(Readies::default());
        let (addr, server) = start(target.clone(), Duration::from_secs(3600)).await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS - 1 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        let answered = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answered.starts_with("HTTP/1.1 200 OK\r\n"), "{answered}");
        // That one's slot is given back; the next silent connection, accepted
        // before anything opened after it, takes it: all slots are held.
        held.push(TcpStream::connect(addr).await.unwrap());
        let mut waiting = TcpStream::connect(addr).await.unwrap();
        waiting
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // A round trip through another listener on this (single-threaded)
        // runtime: by its end the runtime has seen the waiting connection
        // arrive, so a listener without the bound would have answered it.
        let (other, other_server) = start(Arc::new(Nothing), HEAD_TIMEOUT).await;
        let barrier = exchange(other, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(barrier.starts_with("HTTP/1.1 200 OK\r\n"), "{barrier}");
        let mut byte = [0u8; 1];
        assert!(
            matches!(waiting.try_read(&mut byte), Err(err) if err.kind() == io::ErrorKind::WouldBlock),
            "answered while {MAX_CONNECTIONS} connections are held"
        );
        assert_eq!(
            target.0.load(Ordering::SeqCst),
            0,
            "served while {MAX_CONNECTIONS} connections are held"
        );

        drop(held.swap_remove(0));
        let mut response = String::new();
        tokio::time::timeout(GUARD, waiting.read_to_string(&mut response))
            .await
            .expect("not served after a held connection left")
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert_eq!(target.0.load(Ordering::SeqCst), 1);
        server.abort();
        other_server.abort();
    }
}
