//! Peers that break the protocol: garbage and oversized frames on raw
//! streams, unknown versions, wrong certificates. Each gets a protocol error
//! and nothing else is disturbed.

use std::sync::Arc;

use crate::common::*;
use connector_core::agent::{Agent, AgentStatus};
use connector_core::fuzzing::{read_frame, write_frame};
use connector_core::proto::{
    Credential, Dial, DialCode, Frame, Hello, MAX_FRAME_PAYLOAD, Reject, RejectCode, StreamCode,
};
use connector_core::server::{DialError, Selector};
use connector_core::transport::{BiStream, Connection, StreamReset};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_all_transports!(
    agent_resets_garbage_streams_and_keeps_serving_the_others,
    server_rejects_garbage_hello_and_keeps_serving_other_agents,
    server_rejects_unknown_major_version_clearly,
    server_refuses_streams_opened_by_an_agent,
    stream_flood_from_an_agent_is_refused_and_counted,
    client_certificate_identifies_the_agent,
    a_token_for_one_node_cannot_take_another_nodes_agent_id,
    no_identity_can_be_named_like_another_identitys_instance,
    a_hello_sent_one_byte_at_a_time_is_read_or_timed_out,
    a_dial_dribbled_by_a_rogue_server_is_reset_after_the_dial_frame_timeout,
    a_dial_result_dribbled_by_a_rogue_agent_times_the_dial_out,
);

/// Writes `bytes` one byte per write, each write awaited and flushed.
/// Stops at the first failed write (the peer may close the stream meanwhile).
async fn dribble(send: &mut (impl tokio::io::AsyncWrite + Unpin + ?Sized), bytes: &[u8]) {
    for byte in bytes {
        if send.write_all(std::slice::from_ref(byte)).await.is_err() || send.flush().await.is_err() {
            return;
        }
    }
}

/// A frame minus its last byte: it can never complete.
fn all_but_the_last_byte(frame: &Frame) -> Vec<u8> {
    let mut bytes = frame.encode().unwrap();
    bytes.pop();
    bytes
}

/// Asserts the peer reset `stream` with a protocol error.
async fn assert_protocol_reset(stream: &mut BiStream) {
    let mut buf = [0u8; 64];
    let err = loop {
        match stream.recv.read(&mut buf).await {
            Ok(0) => panic!("stream ended cleanly; expected a protocol-error reset"),
            Ok(_) => continue,
            Err(err) => break err,
        }
    };
    assert_eq!(StreamReset::from_io(&err), Some(StreamCode::ProtocolError), "{err}");
}

/// The test plays the server for `agent` on `raw`: takes its connection and
/// `Hello` (as node-a), answers `Welcome`, and waits until the agent is
/// connected. The control stream is returned so that it stays open.
async fn play_server(raw: &RawTransport, agent: &Agent) -> (Arc<dyn Connection>, BiStream) {
    let (conn, mut control, hello) = accept_agent(raw).await;
    assert_eq!(hello.agent_id, "node-a");
    welcome_agent(&mut control, agent).await;
    (conn, control)
}

/// A `Dial` (request `id`) to the echo target on loopback `port`.
fn echo_dial(id: u64, port: u16) -> Frame {
    Frame::Dial(Dial {
        request_id: id,
        host: "127.0.0.1".into(),
        port,
        timeout_ms: 10_000,
    })
}

/// A hand-driven agent: connects to `h`'s server, says a valid `Hello` as
/// node-a and takes its `Welcome`. The control stream is returned so that it
/// stays open.
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

async fn echo_round_trip(stream: &mut BiStream, payload: &[u8]) {
    stream.send.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    stream.recv.read_exact(&mut back).await.unwrap();
    assert_eq!(back, payload);
}

async fn agent_resets_garbage_streams_and_keeps_serving_the_others(kind: Kind) {
    // The test plays the server.
    let raw = RawTransport::new(kind);
    let agent = Agent::start(
        raw.connector(None),
        Harness::agent_config_for("node-a", token("node-a")),
    );
    let (conn, _control) = play_server(&raw, &agent).await;

    // A healthy tunnelled connection, opened first and kept open throughout.
    let echo = echo_target().await;
    let dial = |id| echo_dial(id, echo.port());
    let mut good = conn.open_bi().await.unwrap();
    write_frame(&mut good.send, &dial(1)).await.unwrap();
    match read_frame(&mut good.recv, MAX_FRAME_PAYLOAD).await.unwrap() {
        Frame::DialResult(r) => assert_eq!((r.request_id, r.code), (1, DialCode::Ok)),
        other => panic!("{other:?}"),
    }
    echo_round_trip(&mut good, b"before").await;

    let hostile: [&[u8]; 4] = [
        b"\xff\x00garbage that is no frame at all",
        &[0x10, 0xff, 0xff, 0xff, 0xff], // a Dial announcing a 4 GiB payload
        &[0x10, 0, 0, 0, 3, 1, 2, 3],    // a Dial truncated inside its payload
        &Frame::Reject(Reject {
            code: RejectCode::Internal,
            reason: "wrong frame".into(),
        })
        .encode()
        .unwrap(),
    ];
    for bytes in hostile {
        let mut bad = conn.open_bi().await.unwrap();
        bad.send.write_all(bytes).await.unwrap();
        assert_protocol_reset(&mut bad).await;
    }

    // The healthy connection, the agent and new dials are unaffected.
    echo_round_trip(&mut good, b"after").await;
    assert!(matches!(agent.status(), AgentStatus::Connected { session: 1, .. }));
    let mut again = conn.open_bi().await.unwrap();
    write_frame(&mut again.send, &dial(2)).await.unwrap();
    assert!(
        matches!(read_frame(&mut again.recv, MAX_FRAME_PAYLOAD).await.unwrap(), Frame::DialResult(r) if r.code == DialCode::Ok)
    );
    echo_round_trip(&mut again, b"new").await;
    agent.stop().await;
}

async fn hello_exchange(conn: &dyn Connection, bytes: &[u8]) -> Reject {
    let mut control = conn.open_bi().await.unwrap();
    control.send.write_all(bytes).await.unwrap();
    match read_frame(&mut control.recv, MAX_FRAME_PAYLOAD).await.unwrap() {
        Frame::Reject(reject) => reject,
        other => panic!("expected Reject, got {other:?}"),
    }
}

async fn server_rejects_garbage_hello_and_keeps_serving_other_agents(kind: Kind) {
    let h = Harness::new(kind).await;
    let _good = h.agent("node-b").await;
    let cases: [(&[u8], &str); 3] = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "unknown frame type"),
        (&[0x01, 0x7f, 0xff, 0xff, 0xff], "exceeds"),
        (&[0x01, 0, 0, 0, 4, 0, 1, 0, 0], "truncated"),
    ];
    for (bytes, expected) in cases {
        let conn = h.connector(None).connect().await.unwrap();
        let reject = hello_exchange(conn.as_ref(), bytes).await;
        assert_eq!(reject.code, RejectCode::Malformed);
        assert!(reject.reason.contains(expected), "{}", reject.reason);
        // As a real agent does after a Reject: close, which lets the server finish at once.
        conn.close(connector_core::proto::ConnectionCode::Rejected, "rejected");
    }
    let echo = echo_target().await;
    let mut stream = h
        .server
        .dial(&Selector::Agent("node-b".into()), &echo.to_string())
        .await
        .unwrap();
    stream.write_all(b"ok").await.unwrap();
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(h.server.agents().len(), 1);
}

async fn server_rejects_unknown_major_version_clearly(kind: Kind) {
    let h = Harness::new(kind).await;
    let mut hello = Hello::new("future", Default::default(), token("node-a"));
    hello.version_major = 2;
    hello.version_minor = 3;
    let conn = h.connector(None).connect().await.unwrap();
    let reject = hello_exchange(conn.as_ref(), &Frame::Hello(hello).encode().unwrap()).await;
    assert_eq!(reject.code, RejectCode::UnsupportedVersion);
    assert!(
        reject.reason.contains("2.3") && reject.reason.contains("1.1"),
        "{}",
        reject.reason
    );
    // The server goes on serving agents that speak its version.
    let _agent = h.agent("node-a").await;
    next_dial_is_served(&h).await;
}

async fn server_refuses_streams_opened_by_an_agent(kind: Kind) {
    let h = Harness::new(kind).await;
    // A hand-driven agent: valid Hello, then it opens a stream of its own.
    let (conn, _control) = register_by_hand(&h).await;
    let mut rogue = conn.open_bi().await.unwrap();
    // The write may already fail: the server can refuse the stream before the bytes arrive.
    let _ = rogue.send.write_all(b"let me into the control plane").await;
    assert_protocol_reset(&mut rogue).await;
    assert_eq!(h.server.refused_agent_streams(), 1);
    // The agent is still registered and the server still dials through it.
    assert_eq!(h.server.agents().len(), 1);
    let server = h.server.clone();
    let dial = tokio::spawn(async move { server.dial(&Selector::Agent("node-a".into()), "10.0.0.5:10250").await });
    let mut incoming = conn.accept_bi().await.unwrap();
    let Frame::Dial(d) = read_frame(&mut incoming.recv, MAX_FRAME_PAYLOAD).await.unwrap() else {
        panic!()
    };
    assert_eq!((d.host.as_str(), d.port), ("10.0.0.5", 10250));
    let ok = connector_core::proto::DialResult {
        request_id: d.request_id,
        code: DialCode::Ok,
        message: String::new(),
    };
    write_frame(&mut incoming.send, &Frame::DialResult(ok)).await.unwrap();
    let mut stream = dial.await.unwrap().unwrap();
    stream.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    incoming.recv.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
}

async fn stream_flood_from_an_agent_is_refused_and_counted(kind: Kind) {
    const FLOOD: u64 = 200;
    let h = Harness::new(kind).await;
    let target = echo_target().await;
    let good = h.agent("node-b").await;
    // A hand-driven agent opens stream after stream (QUIC grants it only a
    // few at a time; each is refused and its credit returned).
    let (conn, _control) = register_by_hand(&h).await;
    for _ in 0..FLOOD {
        let mut rogue = conn.open_bi().await.unwrap();
        let _ = rogue.send.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
        assert_protocol_reset(&mut rogue).await;
    }
    assert_eq!(h.server.refused_agent_streams(), FLOOD);
    // Both agents are still registered and served.
    assert_eq!(h.server.agents().len(), 2);
    let mut stream = h
        .server
        .dial(&Selector::Agent("node-b".into()), &target.to_string())
        .await
        .unwrap();
    stream.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still here");
    good.stop().await;
}

/// node-a's credential with agent id `node-b` is refused before anything is
/// registered: the real node-b is not replaced and keeps serving its dials
/// (without the check the impostor's connection would replace node-b's and
/// capture `Selector::Agent("node-b")`).
async fn a_token_for_one_node_cannot_take_another_nodes_agent_id(kind: Kind) {
    let h = Harness::new(kind).await;
    let target = echo_target().await;
    let real = h.agent("node-b").await;
    let mut config = h.agent_config("node-b", token("node-a"));
    config.identifiers = Default::default(); // claims nothing beyond the id itself
    let impostor = Agent::start(h.connector(None), config);
    match impostor.wait_for(|s| matches!(s, AgentStatus::Rejected { .. })).await {
        AgentStatus::Rejected { code, reason } => {
            assert_eq!(code, RejectCode::IdentifiersNotAllowed);
            assert!(
                reason.contains("\"node-a\" may not use agent id \"node-b\""),
                "{reason}"
            );
            assert!(
                !reason.contains("token-node-a"),
                "the reason must not echo the token: {reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    impostor.stop().await;
    let agents = h.server.agents();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(
        (agents[0].agent_id.as_str(), agents[0].identity.as_str()),
        ("node-b", "node-b")
    );
    assert!(
        matches!(real.status(), AgentStatus::Connected { .. }),
        "{:?}",
        real.status()
    );
    assert_still_served(&h, "node-b", target).await;
    real.stop().await;
}

/// Accepts one token as one identity name, whatever the name (an embedder's
/// own authenticator, or a C or Python callback).
struct NamedBy {
    token: &'static str,
    name: &'static str,
}

impl connector_core::auth::Authenticator for NamedBy {
    fn authenticate<'a>(
        &'a self,
        request: connector_core::auth::AuthRequest<'a>,
    ) -> connector_core::transport::BoxFuture<
        'a,
        Result<connector_core::auth::AgentIdentity, connector_core::auth::AuthRejection>,
    > {
        use connector_core::auth::{AgentIdentity, Allowance, AuthRejection};
        Box::pin(async move {
            match &request.hello.credential {
                Credential::Bearer(token) if token.expose() == self.token.as_bytes() => Ok(AgentIdentity {
                    name: self.name.into(),
                    allowance: Allowance::Only("cidr=127.0.0.0/8".parse().unwrap()),
                }),
                _ => Err(AuthRejection::unauthenticated("not this authenticator's token")),
            }
        })
    }
}

/// Identity `team` may register as `team/<instance>`. When identity names
/// could contain `/`, identity `team/victim` registered as itself and `team`
/// took the same agent id, replacing the real agent (and the two kept
/// replacing each other). Now no authenticator yields such a name: the
/// would-be victim is refused with a reason, whether its name comes from a
/// token, a certificate or a custom authenticator, and other agents are
/// served throughout.
async fn no_identity_can_be_named_like_another_identitys_instance(kind: Kind) {
    use connector_core::auth::{
        Allowance, Authenticator, CertificateAuthenticator, FirstOf, TokenAuthenticator, TokenEntry,
    };
    use connector_core::proto::Secret;
    let entries = [
        ("token-team", "team"),
        ("token-victim", "team/victim"),
        ("token-node-b", "node-b"),
    ]
    .into_iter()
    .map(|(token, name)| {
        let allowed = match name {
            "node-b" => "host=node-b,cidr=127.0.0.0/8",
            _ => "cidr=127.0.0.0/8",
        };
        let allowed = allowed.parse().unwrap();
        TokenEntry::new(&Secret::new(token), name, Allowance::Only(allowed))
    })
    .collect();
    let authenticators: Vec<Arc<dyn Authenticator>> = vec![
        Arc::new(TokenAuthenticator::from_entries(entries)),
        Arc::new(CertificateAuthenticator),
        Arc::new(NamedBy {
            token: "token-custom",
            name: "team/custom",
        }),
    ];
    let h = Harness::with_config(kind, |c| c.authenticator = Arc::new(FirstOf(authenticators))).await;
    let target = echo_target().await;
    let good = h.agent("node-b").await;
    let config = |agent_id: &str, credential: Credential| {
        let mut config = h.agent_config("node-b", credential);
        config.agent_id = agent_id.into();
        config.identifiers = Default::default(); // serve what the identity allows
        config
    };
    let bearer = |token: &str| Credential::Bearer(Secret::new(token));

    // Token, certificate and custom authenticator each name a `team/...` identity.
    let victims = [
        (
            "token",
            Agent::start(h.connector(None), config("team/victim", bearer("token-victim"))),
        ),
        (
            "certificate",
            Agent::start(
                h.connector(Some(h.ca.issue("team/cert", &[]).unwrap().identity())),
                config("team/cert", Credential::None),
            ),
        ),
        (
            "custom",
            Agent::start(h.connector(None), config("team/custom", bearer("token-custom"))),
        ),
    ];
    for (what, victim) in victims {
        let status = victim
            .wait_for(|s| matches!(s, AgentStatus::Connected { .. } | AgentStatus::Rejected { .. }))
            .await;
        victim.stop().await;
        match status {
            AgentStatus::Rejected { code, reason } => {
                assert_eq!(code, RejectCode::Unauthenticated, "{what}: {reason}");
                assert!(
                    reason.contains("identity name") && reason.contains("'/'"),
                    "{what}: {reason}"
                );
                assert!(
                    !reason.contains("token-"),
                    "{what}: the reason echoes a token: {reason}"
                );
            }
            other => panic!("{what}: an identity named team/... was admitted: {other:?}"),
        }
    }

    // `team` may use the id `team/victim`: no other identity can own it.
    let team = Agent::start(h.connector(None), config("team/victim", bearer("token-team")));
    team.connected().await;
    let mut agents: Vec<_> = h
        .server
        .agents()
        .into_iter()
        .map(|a| (a.agent_id, a.identity))
        .collect();
    agents.sort();
    assert_eq!(
        agents,
        [
            ("node-b".to_owned(), "node-b".to_owned()),
            ("team/victim".to_owned(), "team".to_owned())
        ]
    );
    assert_still_served(&h, "node-b", target).await;
    assert_still_served(&h, "team/victim", target).await;
    team.stop().await;
    good.stop().await;
}

/// A `Hello` sent one byte per write is reassembled and answered; one that
/// stops a byte short of complete is closed when `hello_timeout` is up (the
/// timeout covers the whole `Hello`, not each read). A well-behaved agent is
/// served throughout.
async fn a_hello_sent_one_byte_at_a_time_is_read_or_timed_out(kind: Kind) {
    let h = Harness::with_config(kind, |c| c.limits.hello_timeout = std::time::Duration::from_millis(300)).await;
    let target = echo_target().await;
    let good = h.agent("node-b").await;
    let hello = Frame::Hello(Hello::new("node-a", Default::default(), token("node-a")));

    let dribbler = h.connector(None).connect().await.unwrap();
    let mut control = dribbler.open_bi().await.unwrap();
    dribble(&mut control.send, &all_but_the_last_byte(&hello)).await;
    let reason = dribbler.closed().await.to_string();
    assert!(reason.contains("no Hello in time"), "{reason}");
    assert_still_served(&h, "node-b", target).await;
    assert_eq!(h.server.agents().len(), 1);

    // With the default hello_timeout (10 s), the same Hello dribbled in full is answered.
    let patient = Harness::new(kind).await;
    let conn = patient.connector(None).connect().await.unwrap();
    let mut control = conn.open_bi().await.unwrap();
    dribble(&mut control.send, &hello.encode().unwrap()).await;
    match read_frame(&mut control.recv, MAX_FRAME_PAYLOAD).await.unwrap() {
        Frame::Welcome(_) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    good.stop().await;
}

/// A rogue server that dribbles a `Dial` one byte per write and never
/// completes it gets the stream reset once the agent's `dial_frame_timeout`
/// is up; the agent's other tunnelled connection and new dials are served.
async fn a_dial_dribbled_by_a_rogue_server_is_reset_after_the_dial_frame_timeout(kind: Kind) {
    let raw = RawTransport::new(kind);
    let mut config = Harness::agent_config_for("node-a", token("node-a"));
    config.dial_frame_timeout = std::time::Duration::from_millis(300);
    let agent = Agent::start(raw.connector(None), config);
    let (conn, _control) = play_server(&raw, &agent).await;
    let echo = echo_target().await;
    let dial = |id| echo_dial(id, echo.port());
    let mut good = conn.open_bi().await.unwrap();
    write_frame(&mut good.send, &dial(1)).await.unwrap();
    assert!(
        matches!(read_frame(&mut good.recv, MAX_FRAME_PAYLOAD).await.unwrap(), Frame::DialResult(r) if r.code == DialCode::Ok)
    );

    let mut slow = conn.open_bi().await.unwrap();
    dribble(&mut slow.send, &all_but_the_last_byte(&dial(2))).await;
    assert_protocol_reset(&mut slow).await;

    echo_round_trip(&mut good, b"still open").await;
    let mut again = conn.open_bi().await.unwrap();
    write_frame(&mut again.send, &dial(3)).await.unwrap();
    assert!(
        matches!(read_frame(&mut again.recv, MAX_FRAME_PAYLOAD).await.unwrap(), Frame::DialResult(r) if r.code == DialCode::Ok)
    );
    echo_round_trip(&mut again, b"new").await;
    agent.stop().await;
}

/// A rogue agent that answers a `Dial` with a `DialResult` dribbled one byte
/// per write, never completed, makes that dial fail with `TimedOut` at its
/// deadline (and has the stream cancelled); another agent is served.
async fn a_dial_result_dribbled_by_a_rogue_agent_times_the_dial_out(kind: Kind) {
    let h = Harness::new(kind).await;
    let target = echo_target().await;
    let good = h.agent("node-b").await;
    let (conn, _control) = register_by_hand(&h).await;
    let server = h.server.clone();
    let deadline = std::time::Duration::from_millis(300);
    let dial = tokio::spawn(async move {
        server
            .dial_timeout(&Selector::Agent("node-a".into()), "10.0.0.5:10250", deadline)
            .await
    });
    let mut incoming = conn.accept_bi().await.unwrap();
    let Frame::Dial(d) = read_frame(&mut incoming.recv, MAX_FRAME_PAYLOAD).await.unwrap() else {
        panic!("expected Dial")
    };
    let result = Frame::DialResult(connector_core::proto::DialResult {
        request_id: d.request_id,
        code: DialCode::Ok,
        message: String::new(),
    });
    dribble(&mut incoming.send, &all_but_the_last_byte(&result)).await;
    match dial.await.unwrap() {
        Err(DialError::TimedOut { agent, after, .. }) => assert_eq!((agent.as_str(), after), ("node-a", deadline)),
        Err(other) => panic!("expected TimedOut, got {other}"),
        Ok(_) => panic!("expected TimedOut, got a stream"),
    }
    let mut buf = [0u8; 8];
    let err = incoming.recv.read(&mut buf).await.unwrap_err();
    assert_eq!(StreamReset::from_io(&err), Some(StreamCode::Cancelled), "{err}");
    assert_still_served(&h, "node-b", target).await;
    good.stop().await;
}

async fn client_certificate_identifies_the_agent(kind: Kind) {
    let h = Harness::new(kind).await;
    let cert = h.ca.issue("node-c", &["node-c", "10.0.0.7"]).unwrap().identity();
    let mut config = h.agent_config("node-c", Credential::None);
    config.identifiers = Default::default(); // serve what the certificate allows
    let agent = Agent::start(h.connector(Some(cert.clone())), config);
    agent.connected().await;
    let info = &h.server.agents()[0];
    assert_eq!(info.identity, "node-c");
    assert!(info.identifiers.serves("node-c") && info.identifiers.serves("10.0.0.7"));
    agent.stop().await;

    let mut config = h.agent_config("node-c", Credential::None);
    config.identifiers = "host=node-a".parse().unwrap();
    let agent = Agent::start(h.connector(Some(cert)), config);
    match agent.wait_for(|s| matches!(s, AgentStatus::Rejected { .. })).await {
        AgentStatus::Rejected { code, .. } => assert_eq!(code, RejectCode::IdentifiersNotAllowed),
        other => panic!("{other:?}"),
    }
    agent.stop().await;

    // Neither token nor certificate: refused, with both reasons.
    let agent = Agent::start(h.connector(None), h.agent_config("anon", Credential::None));
    match agent.wait_for(|s| matches!(s, AgentStatus::Rejected { .. })).await {
        AgentStatus::Rejected { code, reason } => {
            assert_eq!(code, RejectCode::Unauthenticated);
            assert!(
                reason.contains("no bearer token") && reason.contains("no client certificate"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_server_with_an_untrusted_certificate() {
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let impostor_ca = RawTransport::new(Kind::Quic); // another CA, another listener
        let agent = Agent::start(
            impostor_ca.connector_with_ca(&h),
            h.agent_config("node-a", token("node-a")),
        );
        let status = agent.wait_for(|s| matches!(s, AgentStatus::Disconnected { .. })).await;
        let AgentStatus::Disconnected { reason } = status else {
            unreachable!()
        };
        assert!(
            reason.contains("the server's certificate is not signed by the CA certificate given directly"),
            "{reason}"
        );
        assert!(h.server.agents().is_empty());
        agent.stop().await;
        // The same agent settings towards the real server (its CA) are served.
        let _agent = h.agent("node-a").await;
        next_dial_is_served(&h).await;
    })
    .await
}

/// The agent listener's slow-loris (a connection that never sends its
/// `Hello`) is closed once `hello_timeout` is up, and a client certificate
/// from an untrusted CA fails the handshake; a well-behaved agent is served
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agents_and_untrusted_client_certificates_are_dropped() {
    guard(async {
        let h = Harness::with_config(Kind::Quic, |c| {
            c.limits.hello_timeout = std::time::Duration::from_millis(300)
        })
        .await;
        let target = echo_target().await;
        // Connects, opens nothing, says nothing.
        let silent = h.connector(None).connect().await.unwrap();
        let reason = silent.closed().await.to_string();
        assert!(reason.contains("no Hello in time"), "{reason}");

        // A certificate issued by a CA the server does not trust.
        let rogue_ca = connector_core::pki::ThrowawayCa::new("rogue CA").unwrap();
        let forged = rogue_ca.issue("node-a", &["node-a"]).unwrap().identity();
        let mut config = h.agent_config("node-a", Credential::None);
        config.identifiers = Default::default();
        let rogue = Agent::start(h.connector(Some(forged)), config);
        let status = rogue.wait_for(|s| matches!(s, AgentStatus::Disconnected { .. })).await;
        let AgentStatus::Disconnected { reason } = status else {
            unreachable!()
        };
        assert!(reason.to_lowercase().contains("certificate"), "{reason}");
        rogue.stop().await;
        assert!(h.server.agents().is_empty());

        let good = h.agent("node-b").await;
        assert_still_served(&h, "node-b", target).await;
        good.stop().await;
    })
    .await
}

/// Expired certificates are refused in both directions: an agent does not
/// talk to a server whose certificate has expired, and a server does not
/// admit an agent presenting an expired client certificate. A well-behaved
/// agent is served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificates_are_refused_both_ways() {
    use connector_core::tls::{AgentTls, ServerTls};
    use connector_core::transport::quic::{QuicConnector, QuicListener, QuicSettings};
    guard(async {
        let h = Harness::new(Kind::Quic).await;

        // A server (same CA the agent trusts) whose certificate has expired.
        let stale = ServerTls {
            identity: h
                .ca
                .issue_expired("connector server", &["localhost"])
                .unwrap()
                .identity(),
            client_cas: None,
        };
        let settings = QuicSettings::default();
        let stale_listener = QuicListener::bind("127.0.0.1:0".parse().unwrap(), &stale, &settings).unwrap();
        let agent_tls = AgentTls {
            server_cas: vec![h.ca.cert_der()].into(),
            server_name: "localhost".into(),
            client_identity: None,
        };
        let addr = stale_listener.local_socket_addr().unwrap().to_string();
        // Drive its handshakes (the connection never gets further).
        tokio::spawn(async move {
            use connector_core::transport::Listener;
            use std::future::IntoFuture;
            while let Some(handshake) = stale_listener.accept().await {
                tokio::spawn(handshake.into_future());
            }
        });
        let connector = std::sync::Arc::new(QuicConnector::new(addr, &agent_tls, &settings).unwrap());
        let agent = Agent::start(connector, h.agent_config("node-a", token("node-a")));
        let AgentStatus::Disconnected { reason } =
            agent.wait_for(|s| matches!(s, AgentStatus::Disconnected { .. })).await
        else {
            unreachable!()
        };
        assert!(reason.to_lowercase().contains("expired"), "{reason}");
        agent.stop().await;

        // An agent whose client certificate (from the trusted CA) has expired.
        let expired = h.ca.issue_expired("node-c", &["node-c"]).unwrap().identity();
        let mut config = h.agent_config("node-c", Credential::None);
        config.identifiers = Default::default();
        let agent = Agent::start(h.connector(Some(expired)), config);
        let status = agent
            .wait_for(|s| matches!(s, AgentStatus::Disconnected { .. } | AgentStatus::Rejected { .. }))
            .await;
        let reason = match status {
            AgentStatus::Disconnected { reason } | AgentStatus::Rejected { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason.to_lowercase().contains("expired"), "{reason}");
        agent.stop().await;
        assert!(h.server.agents().is_empty());

        let target = echo_target().await;
        let good = h.agent("node-b").await;
        assert_still_served(&h, "node-b", target).await;
        good.stop().await;
    })
    .await
}

/// An agent and a server that do not agree on the ALPN `connector/1` never
/// get past the handshake (TLS alert 120): neither a server offering only
/// `h3` nor one configured with no ALPN at all. (With rustls on both sides it
/// is the QUIC server that sends the alert; the agent's own refusal of a
/// handshake without ALPN, RFC 9001 §8.1, is rustls's and is not reachable
/// from a rustls server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_server_without_the_connector_alpn() {
    use connector_core::tls::ServerTls;
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        for alpn in [vec![b"h3".to_vec()], vec![]] {
            let tls = ServerTls {
                identity: h.ca.issue("connector server", &["localhost"]).unwrap().identity(),
                client_cas: None,
            };
            let mut rustls_config = tls.rustls_config().unwrap();
            rustls_config.alpn_protocols = alpn.clone();
            let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_config).unwrap();
            let config = quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto));
            let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = endpoint.local_addr().unwrap();
            tokio::spawn(async move {
                while let Some(incoming) = endpoint.accept().await {
                    tokio::spawn(async move {
                        // Hold an established connection open: the agent must leave by itself.
                        if let Ok(conn) = incoming.await {
                            conn.closed().await;
                        }
                    });
                }
            });
            let agent_tls = connector_core::tls::AgentTls {
                server_cas: vec![h.ca.cert_der()].into(),
                server_name: "localhost".into(),
                client_identity: None,
            };
            let settings = connector_core::transport::quic::QuicSettings::default();
            let connector =
                connector_core::transport::quic::QuicConnector::new(addr.to_string(), &agent_tls, &settings).unwrap();
            let agent = Agent::start(
                std::sync::Arc::new(connector),
                h.agent_config("node-a", token("node-a")),
            );
            let AgentStatus::Disconnected { reason } =
                agent.wait_for(|s| matches!(s, AgentStatus::Disconnected { .. })).await
            else {
                unreachable!()
            };
            agent.stop().await;
            assert!(
                reason.contains("error 120") || reason.to_lowercase().contains("application protocol"),
                "server ALPN {alpn:?}: {reason}"
            );
        }
        // The real server is unaffected.
        let _good = h.agent("node-b").await;
        next_dial_is_served(&h).await;
    })
    .await
}

/// An agent that accepts the server's streams but never reads them holds at
/// most `max_streams_per_agent` tunnelled connections: the next dial through
/// it fails at once with `AgentBusy`, other agents are served, and the pending
/// dials end when the agent goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_reads_holds_at_most_its_stream_limit() {
    const LIMIT: u32 = 8;
    guard(async {
        let h = Harness::with_config(Kind::Quic, |c| c.limits.max_streams_per_agent = LIMIT).await;
        let target = echo_target().await;
        let good = h.agent("node-b").await;
        let (conn, _control) = register_by_hand(&h).await;
        let pending: Vec<_> = (0..LIMIT)
            .map(|_| {
                let server = h.server.clone();
                tokio::spawn(async move { server.dial(&Selector::Agent("node-a".into()), "10.0.0.5:10250").await })
            })
            .collect();
        // Accepted, never read.
        let mut held = Vec::new();
        for _ in 0..LIMIT {
            held.push(conn.accept_bi().await.unwrap());
        }
        match h.server.dial(&Selector::Agent("node-a".into()), "10.0.0.5:10250").await {
            Err(DialError::AgentBusy { limit, .. }) => assert_eq!(limit, LIMIT),
            Err(other) => panic!("expected AgentBusy, got {other}"),
            Ok(_) => panic!("expected AgentBusy, got a stream"),
        }
        assert_still_served(&h, "node-b", target).await;
        // The hostile agent leaves: every pending dial ends with an error.
        conn.close(connector_core::proto::ConnectionCode::Normal, "bye");
        for dial in pending {
            assert!(dial.await.unwrap().is_err());
        }
        drop(held);
        good.stop().await;
    })
    .await
}

/// A well-behaved agent still carries a dial: `ok` echoed through `agent` to `target`.
async fn assert_still_served(h: &Harness, agent: &str, target: std::net::SocketAddr) {
    let mut stream = h
        .server
        .dial(&Selector::Agent(agent.into()), &target.to_string())
        .await
        .unwrap();
    stream.write_all(b"ok").await.unwrap();
    let mut back = [0u8; 2];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ok");
}
