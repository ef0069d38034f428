//! The control-stream handshake of a real server and a real agent, fed
//! arbitrary frames (Hello, Welcome, Reject, GoAway, Dial... in any order,
//! truncated or garbage) over the in-memory transport. Nothing here
//! re-implements the session: the bytes go to `Server`'s session task and to
//! `Agent`'s, and the target checks what a peer would see.
//!
//! The first input byte picks the side under test (`mode % 4`):
//! - 0: a peer writes the bytes as its control stream to the server;
//! - 1: the same after a valid `Hello` that the server accepts (so frames
//!   after registration reach the registered session);
//! - 2: a fake server reads the agent's `Hello` and answers with the bytes;
//! - 3: the same after a valid `Welcome`;
//! - 4: a `Hello` with node-a's valid token and an agent id taken from the
//!   bytes: the server welcomes it only under an id node-a's identity owns
//!   (`node-a`, `node-a/<instance>`, or its host name in any case), whatever
//!   the bytes.
//!
//! Checked for every input: no panic, no hang (libFuzzer's `-timeout`); the
//! server answers with well-formed frames only (at most one `Welcome` or
//! `Reject`, texts within their cap), ends the session when the peer ends
//! its stream, and forgets the peer afterwards; the agent stops cleanly from
//! whatever state the bytes left it in.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use connector_core::agent::{Agent, AgentConfig, BackoffConfig};
use connector_core::auth::{Allowance, StaticCredential, TokenAuthenticator, TokenEntry};
use connector_core::fuzzing::normalize_host;
use connector_core::fuzzing::read_frame;
use connector_core::proto::{Credential, Frame, FrameHeader, HEADER_LEN, Hello, MAX_FRAME_PAYLOAD, Secret, Welcome};
use connector_core::server::{Server, ServerConfig};
use connector_core::transport::memory::{self, MemoryConnector};
use connector_core::transport::{Connector, Listener};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const TOKEN: &str = "token-node-a";
/// Longest text a `Reject` carries (docs/protocol.md).
const MAX_TEXT: usize = 1024;

struct World {
    runtime: Runtime,
    server: Server,
    connector: MemoryConnector,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (server, connector) = runtime.block_on(async {
            let entry = TokenEntry::new(
                &Secret::new(TOKEN.to_owned()),
                "node-a",
                Allowance::Only("host=node-a,ipv4=10.0.0.5,cidr=10.1.0.0/16".parse().unwrap()),
            );
            let mut config = ServerConfig::new("fuzz-server", Arc::new(TokenAuthenticator::from_entries(vec![entry])));
            // A peer that ends its stream mid-frame is dropped at once; this bounds the rest.
            config.limits.hello_timeout = Duration::from_secs(2);
            let server = Server::new(config);
            let (listener, connector) = memory::pair();
            server.serve(Arc::new(listener));
            (server, connector)
        });
        World {
            runtime,
            server,
            connector,
        }
    })
}

fn valid_hello() -> Vec<u8> {
    hello_as("node-a").expect("node-a's Hello encodes")
}

/// node-a's `Hello` (its token, `host=node-a`) under `agent_id`; `None` if
/// the id cannot be encoded (too long).
fn hello_as(agent_id: &str) -> Option<Vec<u8>> {
    let hello = Hello::new(
        agent_id,
        "host=node-a".parse().unwrap(),
        Credential::Bearer(Secret::new(TOKEN.to_owned())),
    );
    Frame::Hello(hello).encode().ok()
}

fn valid_welcome() -> Vec<u8> {
    Frame::Welcome(Welcome {
        server_id: "fake-server".into(),
        server_count: 1,
        keepalive_ms: 5_000,
        idle_timeout_ms: 30_000,
        max_streams: 100,
        max_frame: MAX_FRAME_PAYLOAD as u32,
    })
    .encode()
    .unwrap()
}

/// A peer writes `bytes` on its control stream to the real server, ends the
/// stream and reads what the server answers until it ends the session.
/// Returns whether the server welcomed it.
async fn against_the_server(world: &World, bytes: Vec<u8>) -> bool {
    let connection = world.connector.connect().await.expect("in-memory connect");
    let mut control = connection.open_bi().await.expect("control stream");
    // The server may stop reading (and reset) early: a failed write is an answer too.
    let _ = control.send.write_all(&bytes).await;
    let _ = control.send.shutdown().await;
    let mut answer = Vec::new();
    let _ = control.recv.read_to_end(&mut answer).await;
    // Well-formed frames only, and at most one Welcome or Reject.
    let mut rest = &answer[..];
    let (mut verdicts, mut welcomed) = (0, false);
    while !rest.is_empty() {
        let header = FrameHeader::parse(
            *rest.first_chunk::<HEADER_LEN>().expect("a whole header"),
            MAX_FRAME_PAYLOAD,
        )
        .expect("the server's frame header is valid");
        let payload = rest[HEADER_LEN..].get(..header.len).expect("a whole frame");
        match header.decode_payload(payload).expect("the server's frame decodes") {
            Frame::Welcome(_) => {
                verdicts += 1;
                welcomed = true;
            }
            Frame::Reject(reject) => {
                verdicts += 1;
                assert!(reject.reason.len() <= MAX_TEXT, "Reject text over its cap");
            }
            Frame::GoAway(_) => {}
            other => panic!("the server sent {other:?} on the control stream"),
        }
        rest = &rest[HEADER_LEN + header.len..];
    }
    assert!(verdicts <= 1, "{verdicts} Welcome/Reject frames");
    connection.close(connector_core::proto::ConnectionCode::Normal, "done");
    // The server forgets the peer once its connection is gone.
    world.server.wait_for_agents(|agents| agents.is_empty()).await;
    welcomed
}

/// A fake server takes the real agent's `Hello`, answers with `bytes`, ends
/// the stream, and waits for the agent to end the connection.
async fn against_the_agent(bytes: Vec<u8>) {
    let (listener, connector) = memory::pair();
    let mut config = AgentConfig::new(
        "node-a",
        Arc::new(StaticCredential(Credential::Bearer(Secret::new(TOKEN.to_owned())))),
    );
    config.identifiers = "host=node-a".parse().unwrap();
    config.backoff = BackoffConfig {
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
        stable_after: Duration::from_secs(3600),
    };
    let agent = Agent::start(Arc::new(connector), config);
    let handshake = listener.accept().await.expect("the agent connects");
    let connection = handshake.await.expect("in-memory handshake");
    let mut control = connection.accept_bi().await.expect("the agent's control stream");
    match read_frame(&mut control.recv, MAX_FRAME_PAYLOAD).await {
        Ok(Frame::Hello(_)) => {}
        other => panic!("the agent opened with {other:?}"),
    }
    let _ = control.send.write_all(&bytes).await;
    let _ = control.send.shutdown().await;
    // Whatever it made of the bytes (a session, a drain after GoAway, a
    // protocol error, a reconnect wait), the agent stops from there and
    // closes this connection.
    agent.stop().await;
    let _ = connection.closed().await;
    listener.shutdown();
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let world = world();
    world.runtime.block_on(async {
        match mode % 5 {
            0 => {
                against_the_server(world, rest.to_vec()).await;
            }
            1 => {
                against_the_server(world, [valid_hello(), rest.to_vec()].concat()).await;
            }
            2 => against_the_agent(rest.to_vec()).await,
            3 => against_the_agent([valid_welcome(), rest.to_vec()].concat()).await,
            _ => {
                let id = String::from_utf8_lossy(rest);
                if let Some(hello) = hello_as(&id)
                    && against_the_server(world, hello).await
                {
                    // Its name, an instance of it, or (host names being
                    // case-insensitive, a final dot optional) the host it may claim.
                    let owned = id == "node-a"
                        || id.strip_prefix("node-a/").is_some_and(|i| !i.is_empty())
                        || normalize_host(&id) == "node-a";
                    assert!(owned, "node-a's token was welcomed as {id:?}");
                }
            }
        }
    });
});
