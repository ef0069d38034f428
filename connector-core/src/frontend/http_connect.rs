//! The HTTP CONNECT frontend, as kube-apiserver's egress selector
//! (`proxyProtocol: HTTPConnect`) and tools like `curl -p -x` use it.
//!
//! The client writes `CONNECT host:port HTTP/1.1` and headers; the answer is
//! exactly `HTTP/1.1 200 Connection established` and an empty line, after
//! which the connection carries the tunnelled bytes (kube-apiserver treats any
//! byte after the response head as an error, so none is ever added). A
//! failed dial is answered with a status and a one-line reason, in the body
//! and in the status line's reason phrase (`HTTP/1.1 503 Service
//! Unavailable: no connected agent matches host "10.0.0.5"`): kube-apiserver
//! reports only the status line of a failed CONNECT, so that is where an
//! operator reads why.
//!
//! | failure | status |
//! |---|---|
//! | no agent serves the host, agent overloaded, too many pending dials, server shutting down | 503 |
//! | target refused / unreachable / DNS failure | 502 |
//! | agent's destination policy denies it | 403 |
//! | dial timed out | 504 |
//! | malformed request or target | 400 |
//! | method other than CONNECT | 405 |
//! | request head too large | 431 |
//! | request head not complete in time | 408 |

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

use super::listener::{FrontendConn, FrontendLimits, FrontendListener};
use crate::proto::{DialCode, escaped};
use crate::server::{DialError, Selector, Server};

/// Serves CONNECT requests from `listener` until the server shuts down.
pub async fn serve(server: Server, mut listener: FrontendListener, limits: FrontendLimits) {
    tracing::info!(listen = %listener.local_addr(), "HTTP CONNECT frontend listening");
    loop {
        let conn = tokio::select! {
            _ = server.stopped() => break,
            conn = listener.accept() => match conn {
                Some(conn) => conn,
                None => break,
            },
        };
        let span = tracing::info_span!("connect", peer = %conn.peer());
        tokio::spawn(handle(server.clone(), conn, limits.clone()).instrument(span));
    }
}

/// Why a request head was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The head grew past [`FrontendLimits::max_head`] (answered with 431).
    TooLarge,
    /// The bytes are not an HTTP/1.x request head (answered with 400).
    Malformed(String),
    /// The client closed the connection before its head was complete.
    Closed,
}

/// A parsed request head and the bytes that followed it.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// The request method (only `CONNECT` is served).
    pub method: String,
    /// The request target, `host:port` for CONNECT.
    pub target: String,
    /// Bytes the client sent after the head (the start of the tunnelled data).
    pub leftover: Vec<u8>,
}

/// Parses a complete request head from `buf`, if there is one: `Ok(None)`
/// means more bytes are needed. At most 64 headers are accepted. Public so
/// that the fuzz targets reach the exact parser the frontend uses.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(Head {
            method: request.method.unwrap_or_default().to_owned(),
            target: request.path.unwrap_or_default().to_owned(),
            leftover: buf[len..].to_vec(),
        })),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(err) => Err(HeadError::Malformed(format!("malformed request head: {err}"))),
    }
}

/// Reads until a complete head, never buffering more than `max` bytes.
async fn read_head(conn: &mut FrontendConn, max: usize) -> Result<Head, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let room = (max + 1).saturating_sub(buf.len()).min(chunk.len());
        let n = conn.read(&mut chunk[..room]).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf)? {
            return Ok(head);
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The status for a failed dial.
fn status_for(err: &DialError) -> (u16, &'static str) {
    match err {
        DialError::NoAgent(_)
        | DialError::AgentBusy { .. }
        | DialError::TooManyPendingDials { .. }
        | DialError::ShuttingDown => (503, "Service Unavailable"),
        DialError::InvalidTarget { .. } => (400, "Bad Request"),
        DialError::TimedOut { .. } => (504, "Gateway Timeout"),
        DialError::Transport { .. } | DialError::Protocol { .. } | DialError::ClientFailed { .. } => {
            (502, "Bad Gateway")
        }
        DialError::Failed { code, .. } => match code {
            DialCode::DeniedByPolicy => (403, "Forbidden"),
            DialCode::TimedOut => (504, "Gateway Timeout"),
            DialCode::Overloaded => (503, "Service Unavailable"),
            DialCode::InvalidTarget => (400, "Bad Request"),
            _ => (502, "Bad Gateway"),
        },
    }
}

/// Longest reason copied into a status line (the body carries it whole).
const MAX_REASON_PHRASE: usize = 200;

/// `text` and `reason` as a status line's reason phrase: what a peer sent in
/// `reason` is escaped (no control character can end the line or forge a
/// header) and a long one is cut.
fn reason_phrase(text: &str, reason: &str) -> String {
    let mut phrase = format!("{text}: {}", escaped(reason));
    if phrase.len() > MAX_REASON_PHRASE {
        let mut end = MAX_REASON_PHRASE;
        while !phrase.is_char_boundary(end) {
            end -= 1;
        }
        phrase.truncate(end);
        phrase.push_str("...");
    }
    phrase
}

/// Writes an error response with the reason in its status line and as a
/// one-line plain-text body, then closes.
async fn respond_error(conn: &mut FrontendConn, status: u16, text: &str, reason: &str, extra: &str) {
    let body = format!("{}\n", reason.replace(['\r', '\n'], " "));
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        reason_phrase(text, reason),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = conn.write_all(response.as_bytes()).await;
        let _ = conn.shutdown().await;
    })
    .await;
}

async fn handle(server: Server, mut conn: FrontendConn, limits: FrontendLimits) {
    let head = match tokio::time::timeout(limits.head_timeout, read_head(&mut conn, limits.max_head)).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::TooLarge)) => {
            let reason = format!("request head larger than {} bytes", limits.max_head);
            tracing::info!(status = 431, %reason, "refusing request");
            return respond_error(&mut conn, 431, "Request Header Fields Too Large", &reason, "").await;
        }
        Ok(Err(HeadError::Malformed(reason))) => {
            tracing::info!(status = 400, reason = %escaped(&reason), "refusing request");
            return respond_error(&mut conn, 400, "Bad Request", &reason, "").await;
        }
        Err(_) => {
            let reason = format!("request head not complete within {:?}", limits.head_timeout);
            tracing::info!(status = 408, %reason, "dropping client");
            return respond_error(&mut conn, 408, "Request Timeout", &reason, "").await;
        }
    };
    if head.method != "CONNECT" {
        let reason = format!("only CONNECT is supported, not {}", escaped(&head.method));
        tracing::info!(status = 405, %reason, "refusing request");
        return respond_error(&mut conn, 405, "Method Not Allowed", &reason, "Allow: CONNECT\r\n").await;
    }
    let selector = Selector::for_target(&head.target);
    let mut stream = match server.dial(&selector, &head.target).await {
        Ok(stream) => stream,
        Err(err) => {
            let (status, text) = status_for(&err);
            tracing::info!(target = %escaped(&head.target), status, reason = %err, "dial failed");
            return respond_error(&mut conn, status, text, &err.to_string(), "").await;
        }
    };
    tracing::debug!(target = %escaped(&head.target), agent = stream.agent_id(), request_id = stream.request_id(), "tunnel established");
    if conn
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    if !head.leftover.is_empty() && stream.write_all(&head.leftover).await.is_err() {
        return;
    }
    match crate::server::copy_tunnel(&mut conn, &mut stream).await {
        Ok((up, down)) => tracing::debug!(to_target = up, to_client = down, "tunnel closed"),
        Err(err) => tracing::debug!(%err, "tunnel aborted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_phrase_is_one_escaped_bounded_line() {
        assert_eq!(
            reason_phrase("Service Unavailable", "no agent serves 10.0.0.5"),
            "Service Unavailable: no agent serves 10.0.0.5"
        );
        let forged = reason_phrase("Bad Request", "x\r\nSet-Cookie: a\x1b[2K");
        assert!(!forged.contains(['\r', '\n', '\x1b']), "{forged}");
        let long = reason_phrase("Bad Gateway", &"é".repeat(500));
        assert!(long.len() <= MAX_REASON_PHRASE + 3 && long.ends_with("..."), "{long}");
    }

    #[test]
    fn parses_the_apiserver_request() {
        let head = parse_head(b"CONNECT 10.0.0.5:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\x16\x03\x01")
            .unwrap()
            .unwrap();
        assert_eq!(head.method, "CONNECT");
        assert_eq!(head.target, "10.0.0.5:10250");
        assert_eq!(head.leftover, b"\x16\x03\x01");
        assert_eq!(parse_head(b"CONNECT 10.0.0.5:10250 HTTP/1.1\r\nHost: 1"), Ok(None));
        assert!(matches!(
            parse_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn maps_dial_failures_to_statuses() {
        let failed = |code| DialError::Failed {
            agent: "a".into(),
            target: "t:1".into(),
            code,
            message: String::new(),
        };
        assert_eq!(status_for(&DialError::NoAgent("x".into())).0, 503);
        assert_eq!(status_for(&DialError::TooManyPendingDials { limit: 1 }).0, 503);
        assert_eq!(status_for(&failed(DialCode::Refused)).0, 502);
        assert_eq!(status_for(&failed(DialCode::Unreachable)).0, 502);
        assert_eq!(status_for(&failed(DialCode::DeniedByPolicy)).0, 403);
        assert_eq!(status_for(&failed(DialCode::TimedOut)).0, 504);
        let timeout = DialError::TimedOut {
            target: "t:1".into(),
            agent: "a".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(status_for(&timeout).0, 504);
    }
}
