//! The operator's view of connected agents: `GET /agents` on a server's
//! admin listener (what `connector agents` reads), over QUIC and TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::common::*;
use connector_core::admin::{self, AdminTarget, AgentsReport};
use connector_core::server::Selector;
use tokio::net::TcpListener;

/// Serves `target`'s admin endpoints on a loopback port.
async fn admin_listener(target: Arc<dyn AdminTarget>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(admin::serve(listener, target));
    addr
}

/// `GET /agents`, checked to be JSON, parsed.
async fn agents_page(addr: SocketAddr) -> AgentsReport {
    let response = admin::get(&addr.to_string(), "/agents").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.content_type.as_deref(), Some("application/json"));
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.body))
}

async fn agents_page_reports_an_agent_its_bytes_and_its_last_disconnect(kind: Kind) {
    let h = Harness::new(kind).await;
    let admin = admin_listener(Arc::new(h.server.clone())).await;
    let agent = h.agent("node-a").await;

    let report = agents_page(admin).await;
    assert_eq!(report.server_id, "test-server");
    assert!(report.disconnected.is_empty(), "{report:?}");
    let [a] = &report.agents[..] else {
        panic!("one agent expected: {report:?}");
    };
    assert_eq!(a.agent_id, "node-a");
    assert_eq!(a.identity, "node-a");
    assert_eq!(a.identifiers, "host=node-a,ipv4=127.0.0.1");
    assert_eq!(a.transport, if kind == Kind::Quic { "quic" } else { "tcp" });
    assert_eq!(a.server_id, "test-server");
    assert!(
        a.remote_addr.as_deref().is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{a:?}"
    );
    let since = &a.connected_since;
    assert!(
        since.len() >= 20 && since.ends_with('Z') && since.as_bytes()[10] == b'T',
        "{since}"
    );
    assert_eq!((a.open_connections, a.bytes_to_agent, a.bytes_from_agent), (0, 0, 0));
    assert_eq!(a.last_disconnect, None);
    if kind == Kind::Quic {
        // QUIC measures it from the handshake on; TCP once a keepalive is answered.
        assert!(a.rtt_ms.is_some(), "{a:?}");
    }

    // A tunnel carries known bytes each way: 1,000 sent with the dial, 99,000
    // after it, all echoed back.
    let echo = echo_target().await;
    let data = pattern(100_000, 7);
    let stream = h
        .server
        .dial_sending(&Selector::Any, &echo.to_string(), &data[..1_000])
        .await
        .unwrap();
    let during = agents_page(admin).await;
    assert_eq!(during.agents[0].open_connections, 1);
    let back = echo_all(stream, &data[1_000..]).await;
    assert_eq!(back, data);
    let after = agents_page(admin).await;
    let a = &after.agents[0];
    assert_eq!(a.open_connections, 0);
    assert_eq!(a.bytes_to_agent, 100_000, "{a:?}");
    assert_eq!(a.bytes_from_agent, 100_000, "{a:?}");

    // The agent stops: the server remembers why its connection ended.
    agent.stop().await;
    h.server.wait_for_agents(|agents| agents.is_empty()).await;
    let gone = agents_page(admin).await;
    assert!(gone.agents.is_empty());
    let [d] = &gone.disconnected[..] else {
        panic!("one disconnect expected: {gone:?}");
    };
    assert_eq!(d.agent_id, "node-a");
    assert!(!d.reason.is_empty());
    assert!(d.at.ends_with('Z'), "{d:?}");

    // It comes back: listed again, with that disconnect as its last one and
    // fresh counters for the new connection.
    let _agent = h.agent("node-a").await;
    let back = agents_page(admin).await;
    assert!(back.disconnected.is_empty(), "node-a is connected again: {back:?}");
    let a = &back.agents[0];
    assert_eq!(a.last_disconnect.as_ref(), Some(d), "{a:?}");
    assert_eq!((a.bytes_to_agent, a.bytes_from_agent), (0, 0));
    // The same, through the library.
    let info = &h.server.agents()[0];
    assert_eq!(
        info.last_disconnect.as_ref().map(|d| d.reason.as_str()),
        Some(d.reason.as_str())
    );
    assert_eq!(info.transport, a.transport);
}

on_tls_transports!(agents_page_reports_an_agent_its_bytes_and_its_last_disconnect);

/// An agent's admin listener has no `/agents`: it says whose address to ask.
#[tokio::test]
async fn an_agents_admin_listener_answers_404_for_agents() {
    guard(async {
        let h = Harness::new(Kind::Memory).await;
        let agent = h.agent("node-a").await;
        let admin = admin_listener(Arc::new(agent.observer())).await;
        let response = admin::get(&admin.to_string(), "/agents").await.unwrap();
        assert_eq!(response.status, 404);
        assert!(response.body.contains("server's --admin"), "{}", response.body);
    })
    .await
}

/// A replaced connection's end is recorded as such, and shown as the last
/// disconnect of the agent that replaced it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_connection_is_the_last_disconnect_of_its_agent() {
    guard(async {
        let h = Harness::new(Kind::Memory).await;
        let first = h.agent("node-a").await;
        // A second agent process with the same id (the first one restarted
        // and its old connection lingers): the server replaces the older one.
        let second = h.agent("node-a").await;
        h.server
            .wait_for_agents(|agents| {
                agents.len() == 1
                    && agents[0]
                        .last_disconnect
                        .as_ref()
                        .is_some_and(|d| d.reason.contains("replaced by a newer connection"))
            })
            .await;
        drop((first, second));
    })
    .await
}
