//! End-to-end behaviour of the tunnel, run over real QUIC and real TCP (TLS +
//! QMux) on loopback and over the in-memory transport (each test body runs
//! once per transport).

use crate::common::*;
use connector_core::agent::{Agent, AgentStatus, DestinationPolicy};
use connector_core::proto::{DialCode, RejectCode, StreamCode};
use connector_core::server::{DialError, Selector, TunnelStream};
use connector_core::transport::StreamReset;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_all_transports!(
    bulk_64_mib_each_way_arrives_intact,
    two_hundred_concurrent_connections_through_one_agent,
    half_close_reaches_the_target_and_the_reply_still_arrives,
    closed_port_fails_with_refused,
    wrong_token_is_rejected_and_other_agents_keep_working,
    identity_bound_to_one_node_cannot_claim_another,
    restarted_agent_reconnects_and_serves_new_dials,
    dial_without_matching_agent_fails_at_once,
    default_policy_denies_loopback,
    dials_are_routed_by_host_and_by_agent_id,
    dropping_a_stream_resets_the_target_connection,
    names_resolve_on_the_agent_and_policy_applies_to_addresses,
    first_bytes_sent_with_the_dial_reach_the_target_first_and_once,
    first_bytes_of_a_refused_dial_go_nowhere,
    bytes_relayed_during_the_dial_reach_the_target_in_order_and_once,
    a_refused_dial_fails_while_relaying,
    a_client_failing_during_the_dial_fails_it,
    a_target_reset_reaches_the_dialer_as_a_target_reset,
    the_target_closing_first_still_receives_the_dialers_bytes,
    a_name_that_does_not_resolve_fails_with_the_dns_code,
);

async fn bulk_64_mib_each_way_arrives_intact(kind: Kind) {
    const LEN: usize = 64 * 1024 * 1024;
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let echo = echo_target().await;
    let stream = h
        .server
        .dial(&Selector::Agent("node-a".into()), &echo.to_string())
        .await
        .unwrap();
    let data = pattern(LEN, 42);
    let back = echo_all(stream, &data).await;
    assert_eq!(back.len(), LEN);
    assert_eq!(sha256(&back), sha256(&data));
}

async fn two_hundred_concurrent_connections_through_one_agent(kind: Kind) {
    const N: usize = 200;
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let echo = echo_target().await.to_string();
    // All 200 dial at once, are all open together (counted while every task
    // waits at the second barrier), then transfer at once.
    let all_open = Arc::new(tokio::sync::Barrier::new(N + 1));
    let counted = Arc::new(tokio::sync::Barrier::new(N + 1));
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (server, echo) = (h.server.clone(), echo.clone());
            let (all_open, counted) = (all_open.clone(), counted.clone());
            tokio::spawn(async move {
                let mut stream = server.dial(&Selector::Agent("node-a".into()), &echo).await.unwrap();
                all_open.wait().await;
                counted.wait().await;
                let data = pattern(64 * 1024 + i, i as u64);
                let (mut r, mut w) = tokio::io::split(&mut stream);
                let send = async {
                    w.write_all(&data).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let mut back = Vec::new();
                let ((), read) = tokio::join!(send, r.read_to_end(&mut back));
                read.unwrap();
                assert_eq!(back, data, "connection {i} corrupted");
            })
        })
        .collect();
    all_open.wait().await;
    assert_eq!(h.server.agents()[0].active_streams as usize, N);
    counted.wait().await;
    for task in tasks {
        task.await.unwrap();
    }
    h.server.wait_for_agents(|a| a[0].active_streams == 0).await;
}

async fn half_close_reaches_the_target_and_the_reply_still_arrives(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let target = digest_target().await;
    let mut stream = h.server.dial(&Selector::Any, &target.to_string()).await.unwrap();
    let data = pattern(3 * 1024 * 1024 + 17, 7);
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, sha256(&data));
}

async fn closed_port_fails_with_refused(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let port = closed_port();
    let err = h
        .server
        .dial(&Selector::Any, &format!("127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DialError::Failed {
                code: DialCode::Refused,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), DialCode::Refused);
}

async fn wrong_token_is_rejected_and_other_agents_keep_working(kind: Kind) {
    let h = Harness::new(kind).await;
    let good = h.agent("node-a").await;
    let bad = Agent::start(
        h.connector(None),
        h.agent_config(
            "node-b",
            connector_core::proto::Credential::Bearer(connector_core::proto::Secret::new("wrong")),
        ),
    );
    let status = bad.wait_for(|s| matches!(s, AgentStatus::Rejected { .. })).await;
    match status {
        AgentStatus::Rejected { code, reason } => {
            assert_eq!(code, RejectCode::Unauthenticated);
            assert!(reason.contains("not recognised"), "{reason}");
            assert!(
                !reason.contains("wrong"),
                "the reason must not echo the token: {reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let agents = h.server.agents();
    assert_eq!(
        agents.iter().map(|a| a.agent_id.as_str()).collect::<Vec<_>>(),
        ["node-a"]
    );
    let echo = echo_target().await;
    let mut stream = h
        .server
        .dial(&Selector::Agent("node-a".into()), &echo.to_string())
        .await
        .unwrap();
    stream.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    bad.stop().await;
    good.stop().await;
}

async fn identity_bound_to_one_node_cannot_claim_another(kind: Kind) {
    let h = Harness::new(kind).await;
    // node-a's identity allows host=node-a and 127.0.0.0/8: another node's name,
    // an address outside that range, or a wider range are all refused.
    for claim in ["host=node-b", "ipv4=10.9.9.9", "ipv6=fd00::5", "cidr=126.0.0.0/7"] {
        let mut config = h.agent_config("node-a", token("node-a"));
        config.identifiers = claim.parse().unwrap();
        let agent = Agent::start(h.connector(None), config);
        match agent.wait_for(|s| matches!(s, AgentStatus::Rejected { .. })).await {
            AgentStatus::Rejected { code, reason } => {
                assert_eq!(code, RejectCode::IdentifiersNotAllowed, "{claim}");
                assert!(reason.contains(claim), "{reason}");
            }
            other => panic!("{claim}: {other:?}"),
        }
        assert!(h.server.agents().is_empty());
        agent.stop().await;
    }
    // Claiming nothing registers what the identity allows.
    let mut config = h.agent_config("node-a", token("node-a"));
    config.identifiers = Default::default();
    let agent = Agent::start(h.connector(None), config);
    agent.connected().await;
    let info = &h.server.agents()[0];
    assert_eq!(info.identity, "node-a");
    assert!(info.identifiers.serves("node-a") && !info.identifiers.serves("node-b"));
    assert!(info.identifiers.serves("127.0.0.9") && info.identifiers.default_route);
    agent.stop().await;
}

async fn restarted_agent_reconnects_and_serves_new_dials(kind: Kind) {
    let h = Harness::new(kind).await;
    let echo = echo_target().await.to_string();
    let agent = h.agent("node-a").await;
    h.server.dial(&Selector::Agent("node-a".into()), &echo).await.unwrap();
    agent.stop().await;
    h.server.wait_for_agents(|a| a.is_empty()).await;
    let err = h
        .server
        .dial(&Selector::Agent("node-a".into()), &echo)
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::NoAgent(_)), "{err}");
    let _agent = h.agent("node-a").await;
    let mut stream = h.server.dial(&Selector::Agent("node-a".into()), &echo).await.unwrap();
    stream.write_all(b"x").await.unwrap();
    let mut one = [0u8];
    stream.read_exact(&mut one).await.unwrap();

    drop(stream);

    // A connection the server closes is re-established by the agent on its own:
    // a second agent with the same id replaces the first one's connection...
    let mut config = h.agent_config("node-a", token("node-a"));
    config.backoff.initial = std::time::Duration::from_secs(3600);
    let replacement = Agent::start(h.connector(None), config);
    replacement.connected().await;
    // ...the first one reconnects (replacing the second, which waits an hour to retry)...
    _agent
        .wait_for(|s| matches!(s, AgentStatus::Connected { session: 2, .. }))
        .await;
    h.server.wait_for_agents(|a| a.len() == 1).await;
    // ...and serves new dials.
    let mut stream = h.server.dial(&Selector::Agent("node-a".into()), &echo).await.unwrap();
    stream.write_all(b"y").await.unwrap();
    stream.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"y");
    replacement.stop().await;
}

async fn dial_without_matching_agent_fails_at_once(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let err = h
        .server
        .dial(&Selector::for_target("node-z:10250"), "node-z:10250")
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::NoAgent(_)), "{err}");
    let err = h.server.dial(&Selector::Any, "no-port").await.unwrap_err();
    assert!(matches!(err, DialError::InvalidTarget { .. }), "{err}");
}

async fn default_policy_denies_loopback(kind: Kind) {
    let h = Harness::new(kind).await;
    let mut config = h.agent_config("node-a", token("node-a"));
    config.policy = DestinationPolicy::default();
    let agent = Agent::start(h.connector(None), config);
    agent.connected().await;
    let echo = echo_target().await;
    let err = h.server.dial(&Selector::Any, &echo.to_string()).await.unwrap_err();
    assert_eq!(err.code(), DialCode::DeniedByPolicy, "{err}");
    assert!(err.to_string().contains("guarded range"), "{err}");
    agent.stop().await;
}

async fn dials_are_routed_by_host_and_by_agent_id(kind: Kind) {
    let h = Harness::new(kind).await;
    let _a = h.agent("node-a").await;
    let _b = h.agent("node-b").await;
    let echo = echo_target().await.to_string();
    for node in ["node-a", "node-b"] {
        let stream = h.server.dial(&Selector::Host(node.into()), &echo).await.unwrap();
        assert_eq!(stream.agent_id(), node);
        let stream = h.server.dial(&Selector::Agent(node.into()), &echo).await.unwrap();
        assert_eq!(stream.agent_id(), node);
    }
    // Both agents serve 127.0.0.1: new dials are spread over them.
    let s1 = h.server.dial(&Selector::Host("127.0.0.1".into()), &echo).await.unwrap();
    let s2 = h.server.dial(&Selector::Host("127.0.0.1".into()), &echo).await.unwrap();
    assert_ne!(s1.agent_id(), s2.agent_id());
}

async fn dropping_a_stream_resets_the_target_connection(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let (mut stream, mut accepted) = dial_a_fresh_target(&h).await;
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).await.unwrap();
    drop(stream);
    let mut rest = Vec::new();
    let err = accepted.read_to_end(&mut rest).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    h.server.wait_for_agents(|a| a[0].active_streams == 0).await;
}

async fn names_resolve_on_the_agent_and_policy_applies_to_addresses(kind: Kind) {
    let h = Harness::new(kind).await;
    let echo = echo_target().await;
    let target = format!("localhost:{}", echo.port());
    // "localhost" is resolved by the agent; 127.0.0.1 is allowed, so the dial succeeds.
    let agent = h.agent("node-a").await;
    let mut stream = h.server.dial(&Selector::Any, &target).await.unwrap();
    stream.write_all(b"resolved").await.unwrap();
    let mut buf = [0u8; 8];
    stream.read_exact(&mut buf).await.unwrap();
    agent.stop().await;
    h.server.wait_for_agents(|a| a.is_empty()).await;
    // A name rule does not unlock a guarded address the name resolves to.
    let mut config = h.agent_config("node-a", token("node-a"));
    config.policy = DestinationPolicy::new(vec!["localhost".parse().unwrap()]);
    let agent = Agent::start(h.connector(None), config);
    agent.connected().await;
    let err = h.server.dial(&Selector::Any, &target).await.unwrap_err();
    assert_eq!(err.code(), DialCode::DeniedByPolicy, "{err}");
    agent.stop().await;
}

async fn first_bytes_sent_with_the_dial_reach_the_target_first_and_once(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let target = digest_target().await;
    let first = pattern(5_000, 3);
    let rest = pattern(1024 * 1024, 4);
    let mut stream = h
        .server
        .dial_sending(&Selector::Any, &target.to_string(), &first)
        .await
        .unwrap();
    stream.write_all(&rest).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, sha256(&[first, rest].concat()));
}

async fn first_bytes_of_a_refused_dial_go_nowhere(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let port = closed_port();
    let err = h
        .server
        .dial_sending(&Selector::Any, &format!("127.0.0.1:{port}"), b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap_err();
    assert_eq!(err.code(), DialCode::Refused, "{err}");
    next_dial_is_served(&h).await;
}

async fn bytes_relayed_during_the_dial_reach_the_target_in_order_and_once(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let target = digest_target().await;
    // Several dials: each hands over from relaying to copying at its own byte.
    for seed in 0..8 {
        let data = pattern(2 * 1024 * 1024, seed);
        // A client that keeps writing from before the dial until after it: some
        // bytes go while the dial is answered, the rest through the open tunnel.
        let (mut client, mut local) = tokio::io::duplex(64 * 1024);
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                client.write_all(&data).await.unwrap();
                client.shutdown().await.unwrap();
                let mut reply = Vec::new();
                client.read_to_end(&mut reply).await.unwrap();
                reply
            })
        };
        let mut stream = h
            .server
            .dial_relaying(&Selector::Any, &target.to_string(), &mut local)
            .await
            .unwrap();
        connector_core::server::copy_tunnel(&mut local, &mut stream)
            .await
            .unwrap();
        assert_eq!(writer.await.unwrap(), sha256(&data), "dial {seed}");
    }
}

async fn a_refused_dial_fails_while_relaying(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let port = closed_port();
    let (mut client, mut local) = tokio::io::duplex(64 * 1024);
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let err = h
        .server
        .dial_relaying(&Selector::Any, &format!("127.0.0.1:{port}"), &mut local)
        .await
        .unwrap_err();
    assert_eq!(err.code(), DialCode::Refused, "{err}");
    next_dial_is_served(&h).await;
}

async fn a_client_failing_during_the_dial_fails_it(kind: Kind) {
    /// A client connection that was reset.
    struct Reset;
    impl tokio::io::AsyncRead for Reset {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
        }
    }
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let echo = echo_target().await;
    let err = h
        .server
        .dial_relaying(&Selector::Any, &echo.to_string(), &mut Reset)
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::ClientFailed { .. }), "{err}");
    // Nothing stays open for it, and the agent serves the next dial.
    assert_eq!(h.server.agents()[0].active_streams, 0);
    next_dial_is_served(&h).await;
}

async fn a_target_reset_reaches_the_dialer_as_a_target_reset(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let (mut stream, accepted) = dial_a_fresh_target(&h).await;
    // Linger 0: closing sends a TCP RST instead of a FIN.
    socket2::SockRef::from(&accepted)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(accepted);
    let mut rest = Vec::new();
    let err = stream.read_to_end(&mut rest).await.unwrap_err();
    assert_eq!(StreamReset::from_io(&err), Some(StreamCode::TargetReset), "{err}");
    next_dial_is_served(&h).await;
}

async fn the_target_closing_first_still_receives_the_dialers_bytes(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let (mut stream, mut accepted) = dial_a_fresh_target(&h).await;
    // The target says its piece and shuts down its write side first...
    accepted.write_all(b"bye").await.unwrap();
    accepted.shutdown().await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"bye");
    // ...and still receives everything the dialer sends after that, up to its FIN.
    let data = pattern(2 * 1024 * 1024 + 5, 11);
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut received = Vec::new();
    accepted.read_to_end(&mut received).await.unwrap();
    assert_eq!(sha256(&received), sha256(&data));
}

async fn a_name_that_does_not_resolve_fails_with_the_dns_code(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    // `.invalid` never resolves (RFC 6761).
    let err = h
        .server
        .dial(&Selector::Agent("node-a".into()), "no-such-host.invalid:80")
        .await
        .unwrap_err();
    assert_eq!(err.code(), DialCode::DnsFailure, "{err}");
    assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
    next_dial_is_served(&h).await;
}

/// Dials a fresh loopback listener through any agent: the tunnelled stream,
/// and the target's end of it.
async fn dial_a_fresh_target(h: &Harness) -> (TunnelStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let stream = h.server.dial(&Selector::Any, &target).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (stream, accepted)
}

/// A loopback port nothing listens on (bound, read, released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
