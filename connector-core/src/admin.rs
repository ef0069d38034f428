//! The admin HTTP listener of a server or an agent: `/metrics` (Prometheus
//! text format, plus the runtime's gauges from [`crate::metrics::render_runtime`]), `/healthz` (the process is alive) and `/readyz` (a server
//! accepts agents; an agent holds a session with its server).
//!
//! A deliberately small HTTP/1.1 responder: `GET` only, one request per
//! connection, the request head bounded in size and time, so that a scraper
//! or probe that misbehaves costs nothing lasting.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Server;
use crate::agent::AgentObserver;

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
}

impl AdminTarget for Server {
    fn render_metrics(&self) -> String {
        Server::render_metrics(self)
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
    tracing::info!(listen = %local, "admin endpoints listening (/metrics, /healthz, /readyz)");
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
            respond(&mut tcp, 200, "text/plain; version=0.0.4; charset=utf-8", &page).await
        }
        "/healthz" | "/livez" => respond(&mut tcp, 200, "text/plain", "ok\n").await,
        "/readyz" => match target.readiness() {
            Ok(()) => respond(&mut tcp, 200, "text/plain", "ok\n").await,
            Err(reason) => respond(&mut tcp, 503, "text/plain", &format!("{reason}\n")).await,
        },
        _ => respond(&mut tcp, 404, "text/plain", "try /metrics, /healthz or /readyz\n").await,
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
