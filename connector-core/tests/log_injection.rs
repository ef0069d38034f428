//! Text a peer chooses reaches the other side's text log as one line
//! (issue 16, item 7): a `GoAway` reason, a `Reject` reason, a close reason
//! and a `DialResult` message holding a newline, a forged log record and
//! terminal escape codes show up escaped inside the record that reports
//! them. The gRPC frontend's error statuses (item 9) are checked here too,
//! since they are logged.
//!
//! The whole binary captures every log record (DEBUG and up) into one
//! buffer; each test looks for its own marker in it.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use connector_core::agent::{Agent, AgentStatus};
use connector_core::fuzzing::{read_frame, write_frame};
use connector_core::proto::{
    ConnectionCode, DialCode, DialResult, Frame, GoAway, Hello, MAX_FRAME_PAYLOAD, Reject, RejectCode,
};
use connector_core::server::{DialError, Selector};
use connector_core::transport::{BiStream, Connection, TransportError};

/// The binary's log, as the `connector` binary writes it (text, no colours).
fn logs() -> &'static CapturedLog {
    static LOGS: OnceLock<CapturedLog> = OnceLock::new();
    LOGS.get_or_init(|| CapturedLog::install("connector_core=debug"))
}

/// A peer's text that tries to forge a log record and steer the terminal.
fn forged(marker: &str) -> String {
    format!("bye\n2026-01-01T00:00:00.000000Z  INFO connector: {marker} admin logged in\x1b[2K\x1b[1A\r")
}

/// Waits until a log line contains `marker`, then checks that exactly one
/// line does, that it is the record `record` and shows the text escaped.
async fn assert_logged_once(marker: &str, record: &str) {
    let lines = within("the log record", async {
        loop {
            let text = logs().text();
            let lines: Vec<String> = text.lines().filter(|l| l.contains(marker)).map(String::from).collect();
            if !lines.is_empty() {
                break lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(lines.len(), 1, "the peer's text split the record: {lines:#?}");
    let line = &lines[0];
    assert!(line.contains(record), "{line}");
    assert!(
        line.contains(&format!(
            r"bye\n2026-01-01T00:00:00.000000Z  INFO connector: {marker} admin logged in\u{{1b}}[2K\u{{1b}}[1A\r"
        )),
        "not escaped: {line}"
    );
    assert!(!logs().text().contains('\x1b'), "a raw escape code reached the log");
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A hand-driven agent `node-a`, registered with `h`'s server.
async fn register_by_hand(h: &Harness) -> (Arc<dyn Connection>, BiStream) {
    let conn = h.connector(None).connect().await.unwrap();
    let mut control = conn.open_bi().await.unwrap();
    let hello = Frame::Hello(Hello::new("node-a", Default::default(), token("node-a")));
    write_frame(&mut control.send, &hello).await.unwrap();
    assert!(matches!(
        read_frame(&mut control.recv, MAX_FRAME_PAYLOAD).await.unwrap(),
        Frame::Welcome(_)
    ));
    (conn, control)
}

/// The server's log of an agent's `GoAway`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_away_reason_from_an_agent_is_one_escaped_log_line() {
    logs();
    guard(async {
        let h = Harness::new(Kind::Memory).await;
        let (_conn, mut control) = register_by_hand(&h).await;
        let go_away = Frame::GoAway(GoAway {
            code: ConnectionCode::Draining,
            grace_ms: 1000,
            reason: forged("forged-agent-go-away"),
        });
        write_frame(&mut control.send, &go_away).await.unwrap();
        assert_logged_once("forged-agent-go-away", "agent is going away").await;
    })
    .await
}

/// The agent's log of a server's `GoAway`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_away_reason_from_a_server_is_one_escaped_log_line() {
    logs();
    guard(async {
        let raw = RawTransport::new(Kind::Memory);
        let agent = Agent::start(
            raw.connector(None),
            Harness::agent_config_for("node-a", token("node-a")),
        );
        let (_conn, mut control, _) = accept_agent(&raw).await;
        welcome_agent(&mut control, &agent).await;
        let go_away = Frame::GoAway(GoAway {
            code: ConnectionCode::Shutdown,
            grace_ms: 1000,
            reason: forged("forged-server-go-away"),
        });
        write_frame(&mut control.send, &go_away).await.unwrap();
        assert_logged_once("forged-server-go-away", "the server is going away").await;
        agent.stop().await;
    })
    .await
}

/// The agent's log of a `Reject`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_reason_is_one_escaped_log_line() {
    logs();
    guard(async {
        let raw = RawTransport::new(Kind::Memory);
        let agent = Agent::start(
            raw.connector(None),
            Harness::agent_config_for("node-a", token("node-a")),
        );
        let (_conn, mut control, _) = accept_agent(&raw).await;
        let reject = Frame::Reject(Reject {
            code: RejectCode::Unauthenticated,
            reason: forged("forged-reject"),
        });
        write_frame(&mut control.send, &reject).await.unwrap();
        assert_logged_once("forged-reject", "the server rejected this agent").await;
        // The status keeps the text as sent, for the program to show as it likes.
        match agent.wait_for(|s| matches!(s, AgentStatus::Rejected { .. })).await {
            AgentStatus::Rejected { reason, .. } => assert_eq!(reason, forged("forged-reject")),
            other => panic!("{other:?}"),
        }
        agent.stop().await;
    })
    .await
}

/// The agent's log of a connection the server closed, with a reason,
/// instead of answering its `Hello`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_reason_is_one_escaped_log_line() {
    logs();
    guard(async {
        let raw = RawTransport::new(Kind::Memory);
        let agent = Agent::start(
            raw.connector(None),
            Harness::agent_config_for("node-a", token("node-a")),
        );
        let (conn, _control, _) = accept_agent(&raw).await;
        conn.close(ConnectionCode::Rejected, &forged("forged-close"));
        assert_logged_once("forged-close", "could not connect to the server").await;
        agent.stop().await;
    })
    .await
}

/// The server's log and error of a failed dial whose `DialResult` message
/// the agent chose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_result_message_is_one_escaped_log_line_and_error() {
    logs();
    guard(async {
        let h = Harness::new(Kind::Memory).await;
        let (conn, _control) = register_by_hand(&h).await;
        let server = h.server.clone();
        let dial = tokio::spawn(async move { server.dial(&Selector::Agent("node-a".into()), "10.0.0.5:10250").await });
        let mut stream = conn.accept_bi().await.unwrap();
        let Frame::Dial(d) = read_frame(&mut stream.recv, MAX_FRAME_PAYLOAD).await.unwrap() else {
            panic!("expected Dial")
        };
        let result = Frame::DialResult(DialResult {
            request_id: d.request_id,
            code: DialCode::Refused,
            message: forged("forged-dial-result"),
        });
        write_frame(&mut stream.send, &result).await.unwrap();
        let Err(err) = dial.await.unwrap() else {
            panic!("the dial succeeded")
        };
        assert!(matches!(err, DialError::Failed { .. }), "{err:?}");
        assert_logged_once("forged-dial-result", "dial failed").await;
        // Frontends log and answer with the error's text: one line too.
        let shown = err.to_string();
        assert!(!shown.contains(['\n', '\r', '\x1b']), "{shown:?}");
        assert!(shown.contains(r"bye\n2026"), "{shown}");
    })
    .await
}

/// Errors that carry a peer's text display it escaped.
#[test]
fn transport_errors_display_peer_text_escaped() {
    for err in [
        TransportError::ClosedByPeer {
            code: ConnectionCode::Shutdown,
            reason: forged("x"),
        },
        TransportError::Lost(format!("peer closed with QMux transport error 0x1: {}", forged("x"))),
        TransportError::Connect(format!("TLS handshake: {}", forged("x"))),
    ] {
        let shown = err.to_string();
        assert!(!shown.contains(['\n', '\r', '\x1b']), "{shown:?}");
        assert!(shown.contains(r"bye\n2026") && shown.contains(r"\u{1b}[2K"), "{shown}");
    }
}

#[cfg(feature = "grpc")]
mod grpc {
    //! Issue 16, item 9: a packet the gRPC frontend cannot take ends the
    //! stream with an error status (it used to end with `grpc-status: 0`,
    //! as if all was well) and a WARN line.

    use std::path::PathBuf;

    use bytes::Bytes;
    use connector_core::frontend::grpc::pb;
    use prost::Message;
    use tokio::net::UnixStream;

    use super::*;

    /// A gRPC message frame: flag, length, bytes.
    fn message(flag: u8, body: &[u8]) -> Vec<u8> {
        let mut framed = vec![flag];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(body);
        framed
    }

    fn packet(kind: pb::PacketType, payload: Option<pb::packet::Payload>) -> Vec<u8> {
        pb::Packet {
            r#type: kind as i32,
            payload,
        }
        .encode_to_vec()
    }

    /// Opens one `Proxy` stream, sends `bytes` (then ends the request when
    /// `end`), and returns the `grpc-status` and `grpc-message` it ends with.
    async fn proxy_call(path: &PathBuf, bytes: Vec<u8>, end: bool) -> (String, String) {
        let io = UnixStream::connect(path).await.unwrap();
        let (client, connection) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let (response, mut send) = client.send_request(proxy_request(), false).unwrap();
        send.send_data(Bytes::from(bytes), end).unwrap();
        let response = within("the response head", response).await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        let mut body = response.into_body();
        while let Some(chunk) = within("the response body", body.data()).await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = within("the trailers", body.trailers())
            .await
            .unwrap()
            .unwrap_or_default();
        let field = |name: &str| {
            trailers
                .get(name)
                .or_else(|| headers.get(name))
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        drop(send);
        (field("grpc-status"), field("grpc-message"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_packets_end_the_stream_with_an_error_status_and_a_warning() {
        logs();
        guard(async {
            let h = Harness::new(Kind::Memory).await;
            let path = grpc_frontend_on_unix(&h.server, "bad-packets");
            const INVALID_ARGUMENT: &str = "3";
            const RESOURCE_EXHAUSTED: &str = "8";
            let dial_rsp = packet(
                pb::PacketType::DialRsp,
                Some(pb::packet::Payload::DialResponse(pb::DialResponse::default())),
            );
            let cases: [(&str, Vec<u8>, bool, &str); 6] = [
                // Not protobuf at all.
                ("malformed", message(0, &[0xff; 12]), false, INVALID_ARGUMENT),
                // A message announcing 100 bytes, of which 10 come before the end.
                (
                    "truncated",
                    message(0, &[0; 100])[..15].to_vec(),
                    true,
                    INVALID_ARGUMENT,
                ),
                // Above tonic's 4 MiB limit: refused from the length alone.
                ("over-long", [0, 0, 0x50, 0, 0].to_vec(), false, RESOURCE_EXHAUSTED),
                // The compressed flag, without a grpc-encoding.
                ("compressed", message(1, &dial_rsp), false, INVALID_ARGUMENT),
                // What only a server sends, and a packet without payload.
                ("unexpected", message(0, &dial_rsp), false, INVALID_ARGUMENT),
                (
                    "empty",
                    message(0, &packet(pb::PacketType::Data, None)),
                    false,
                    INVALID_ARGUMENT,
                ),
            ];
            for (what, bytes, end, code) in cases {
                let (status, message) = proxy_call(&path, bytes, end).await;
                assert_eq!(status, code, "{what}: grpc-status {status:?} ({message})");
                assert!(!message.is_empty(), "{what}: no grpc-message");
            }
            let text = logs().text();
            let warnings = text
                .lines()
                .filter(|l| l.contains("WARN") && l.contains("ending a client stream on a bad packet"))
                .count();
            assert_eq!(warnings, 6, "{text}");
        })
        .await
    }

    /// A DIAL_REQ address is the client's text: logged as one line.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dial_address_is_one_escaped_log_line() {
        logs();
        guard(async {
            let h = Harness::new(Kind::Memory).await;
            let path = grpc_frontend_on_unix(&h.server, "address");
            let dial = packet(
                pb::PacketType::DialReq,
                Some(pb::packet::Payload::DialRequest(pb::DialRequest {
                    protocol: "tcp".into(),
                    address: forged("forged-grpc-address"),
                    random: 7,
                })),
            );
            let io = UnixStream::connect(&path).await.unwrap();
            let (client, connection) = h2::client::handshake(io).await.unwrap();
            tokio::spawn(connection);
            let mut client = client.ready().await.unwrap();
            let (_response, mut send) = client.send_request(proxy_request(), false).unwrap();
            send.send_data(Bytes::from(message(0, &dial)), false).unwrap();
            assert_logged_once("forged-grpc-address", "dial failed").await;
        })
        .await
    }
}
