//! Secrets never reach logs, errors or `Debug` output. The whole test binary
//! captures every log record (tracing and the `log` records of quinn and
//! rustls) at TRACE level while a full session runs: agents connect with a
//! token, a dial is tunnelled, a wrong token and a token used to claim another
//! node are rejected. Then the captured text is searched for the tokens.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::sync::Arc;

use common::*;
use connector_core::agent::{Agent, AgentStatus};
use connector_core::auth::{Allowance, TokenAuthenticator, TokenEntry};
use connector_core::proto::{Credential, Hello, RejectCode, Secret};
use connector_core::server::{Selector, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GOOD: &str = "tok-9f86d081884c7d659a2feaa0c55ad015";
const WRONG: &str = "tok-wrong-2c26b46b68ffc68ff99b453c1d304134";

fn capture_all_logs() -> CapturedLog {
    CapturedLog::install("trace")
}

fn bearer(token: &str) -> Credential {
    Credential::Bearer(Secret::new(token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_logs_no_token() {
    let logs = capture_all_logs();
    guard(async {
        let dir = std::env::temp_dir().join(format!("connector-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, format!("{GOOD} node-a host=node-a,cidr=127.0.0.0/8\n")).unwrap();
        let auth = Arc::new(TokenAuthenticator::from_file(&tokens).unwrap());
        let h = Harness::with_config(Kind::Quic, |config: &mut ServerConfig| config.authenticator = auth).await;
        let target = echo_target().await;

        // A good agent, and a tunnelled connection through it.
        let agent = h.start_agent(h.agent_config("node-a", bearer(GOOD))).await;
        let mut stream = h
            .server
            .dial(&Selector::Agent("node-a".into()), &target.to_string())
            .await
            .unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).await.unwrap();
        drop(stream);

        // A wrong token, and the good token claiming another node's name
        // and another node's agent id.
        for (credential, agent_id, claims, code) in [
            (bearer(WRONG), "intruder", "host=node-x", RejectCode::Unauthenticated),
            (bearer(GOOD), "node-a", "host=node-b", RejectCode::IdentifiersNotAllowed),
            (bearer(GOOD), "node-b", "", RejectCode::IdentifiersNotAllowed),
        ] {
            let mut config = h.agent_config(agent_id, credential);
            config.identifiers = claims.parse().unwrap();
            let rogue = Agent::start(h.connector(None), config);
            match rogue.wait_for(|s| matches!(s, AgentStatus::Rejected { .. })).await {
                AgentStatus::Rejected { code: got, reason } => {
                    assert_eq!(got, code);
                    assert!(!reason.contains(GOOD) && !reason.contains(WRONG), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            rogue.stop().await;
        }
        // The good agent is still served after both rejections.
        assert_eq!(h.server.agents().len(), 1);
        let mut stream = h
            .server
            .dial(&Selector::Agent("node-a".into()), &target.to_string())
            .await
            .unwrap();
        stream.write_all(b"pong").await.unwrap();
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");

        // Debug output of everything holding a token.
        let debug = format!(
            "{:?} {:?} {:?} {:?}",
            bearer(GOOD),
            Hello::new("node-a", Default::default(), bearer(GOOD)),
            TokenEntry::new(&Secret::new(GOOD), "node-a", Allowance::Any),
            h.agent_config("node-a", bearer(GOOD)),
        );
        assert!(!debug.contains(GOOD), "{debug}");
        // Nor the metrics pages (what /metrics serves), after all of the above.
        let pages = format!(
            "{}{}{}",
            h.server.render_metrics(),
            agent.observer().render_metrics(),
            connector_core::metrics::render_runtime()
        );
        assert!(pages.contains("connector_server_"), "{pages}");
        for piece in token_pieces() {
            assert!(!pages.contains(piece), "part of a token in the metrics: {piece}");
        }
        agent.stop().await;
        h.server.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await;

    let text = logs.text();
    // The capture really saw the session, at every level, from every layer.
    for expected in [
        "agent connected",
        "rejecting agent",
        "TRACE",
        "DEBUG",
        "rustls",
        "quinn",
    ] {
        assert!(text.contains(expected), "log capture lacks {expected:?}");
    }
    // The node-a identity claiming node-b is logged with both identities.
    let claim = text
        .lines()
        .find(|l| l.contains("agent claims identifiers its identity does not allow"))
        .expect("identity mismatch logged");
    assert!(
        claim.contains("identity=node-a") && claim.contains("host=node-b"),
        "{claim}"
    );
    let id_claim = text
        .lines()
        .find(|l| l.contains("agent claims an agent id its identity does not own"))
        .expect("agent id mismatch logged");
    assert!(
        id_claim.contains("agent=node-b") && id_claim.contains("identity=node-a"),
        "{id_claim}"
    );
    for secret in [GOOD, WRONG] {
        assert!(!text.contains(secret), "a token appears in the logs");
    }
    // Nor any recognisable part of one.
    for piece in token_pieces() {
        assert!(!text.contains(piece), "part of a token appears in the logs: {piece}");
    }
}

/// Every 16-byte piece of the test's tokens.
fn token_pieces() -> impl Iterator<Item = &'static str> {
    [GOOD, WRONG]
        .into_iter()
        .flat_map(|secret| (0..=secret.len() - 16).map(move |i| &secret[i..i + 16]))
}
