//! Trust domains on the agent transport: a certificate is accepted only for
//! the purpose its extended key usage (EKU) names. An agent does not take a
//! client certificate (another agent's, with clientAuth only or with no EKU
//! at all) for the server's, and the server does not take a server
//! certificate, or one without any EKU, for an agent's. Each refusal is
//! followed by a properly issued certificate being accepted, on QUIC and on
//! TCP (QMux).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::common::*;
use connector_core::agent::{Agent, AgentStatus};
use connector_core::pki::ThrowawayCa;
use connector_core::proto::Credential;
use connector_core::server::{Server, ServerConfig};
use connector_core::tls::{AgentTls, Identity, KeyPurpose, ServerTls};
use connector_core::transport::Connector;
use connector_core::transport::qmux::proxy::ProxyChoice;
use connector_core::transport::qmux::{QmuxConnector, QmuxListener, QmuxSettings};
use connector_core::transport::quic::{QuicConnector, QuicListener, QuicSettings};

/// A server on QUIC or TCP presenting `identity`, trusting `ca` for agents'
/// client certificates, with the harness's tokens.
fn server_presenting(kind: Kind, ca: &ThrowawayCa, identity: Identity) -> (Server, SocketAddr) {
    init_tracing();
    let tls = ServerTls {
        identity,
        client_cas: Some(vec![ca.cert_der()].into()),
    };
    let server = Server::new(ServerConfig::new("test-server", authenticator()));
    let addr = match kind {
        Kind::Quic => {
            let listener = QuicListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &QuicSettings::default()).unwrap();
            let addr = listener.local_socket_addr().unwrap();
            server.serve(Arc::new(listener));
            addr
        }
        Kind::Tcp => {
            let listener = QmuxListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &QmuxSettings::default()).unwrap();
            let addr = listener.local_socket_addr().unwrap();
            server.serve(Arc::new(listener));
            addr
        }
        Kind::Memory => unreachable!("no TLS in memory"),
    };
    (server, addr)
}

/// An agent connector to `addr` that trusts `ca` and presents `client`.
fn agent_connector(kind: Kind, addr: SocketAddr, ca: &ThrowawayCa, client: Option<Identity>) -> Arc<dyn Connector> {
    let tls = AgentTls {
        server_cas: vec![ca.cert_der()].into(),
        server_name: "localhost".into(),
        client_identity: client,
    };
    match kind {
        Kind::Quic => Arc::new(QuicConnector::new(addr.to_string(), &tls, &QuicSettings::default()).unwrap()),
        Kind::Tcp => Arc::new(
            QmuxConnector::new(addr.to_string(), &tls, &QmuxSettings::default())
                .unwrap()
                .with_proxy(ProxyChoice::Direct),
        ),
        Kind::Memory => unreachable!("no TLS in memory"),
    }
}

/// Waits until the agent is connected, refused or disconnected, and stops it.
async fn outcome(agent: Agent) -> AgentStatus {
    let status = agent
        .wait_for(|s| {
            matches!(
                s,
                AgentStatus::Connected { .. } | AgentStatus::Rejected { .. } | AgentStatus::Disconnected { .. }
            )
        })
        .await;
    agent.stop().await;
    status
}

async fn agents_take_only_a_server_auth_certificate_for_the_server(kind: Kind) {
    let ca = ThrowawayCa::new("agents CA").unwrap();
    let impostors = [
        // Another agent's client certificate, as a real PKI issues it.
        ("clientAuth only", vec![KeyPurpose::ClientAuth]),
        // A certificate without any EKU (webpki takes it for anything).
        ("no EKU", vec![]),
    ];
    for (what, purposes) in impostors {
        let cert = ca.issue_for("node-b", &["localhost"], &purposes).unwrap().identity();
        let (server, addr) = server_presenting(kind, &ca, cert);
        let agent = Agent::start(
            agent_connector(kind, addr, &ca, None),
            Harness::agent_config_for("node-a", token("node-a")),
        );
        match outcome(agent).await {
            AgentStatus::Disconnected { reason } => {
                assert!(
                    reason.contains("serverAuth") || reason.contains("server authentication"),
                    "{what}: {reason}"
                )
            }
            other => panic!("{what}: the agent took it for the server's certificate: {other:?}"),
        }
        assert!(server.agents().is_empty(), "{what}");
        server.shutdown();
    }
    // The same agent settings towards a server with a serverAuth certificate.
    let (server, addr) = server_presenting(
        kind,
        &ca,
        ca.issue_server("connector server", &["localhost"]).unwrap().identity(),
    );
    let agent = Agent::start(
        agent_connector(kind, addr, &ca, None),
        Harness::agent_config_for("node-a", token("node-a")),
    );
    assert!(matches!(outcome(agent).await, AgentStatus::Connected { .. }));
    server.shutdown();
}

async fn the_server_takes_only_a_client_auth_certificate_for_an_agent(kind: Kind) {
    let ca = ThrowawayCa::new("agents CA").unwrap();
    let (server, addr) = server_presenting(
        kind,
        &ca,
        ca.issue_server("connector server", &["localhost"]).unwrap().identity(),
    );
    let impostors = [
        // The server's own kind of certificate (or a frontend's).
        ("serverAuth only", vec![KeyPurpose::ServerAuth]),
        // A certificate without any EKU.
        ("no EKU", vec![]),
    ];
    for (what, purposes) in impostors {
        let cert = ca.issue_for("node-c", &["node-c"], &purposes).unwrap().identity();
        let mut config = Harness::agent_config_for("node-c", Credential::None);
        config.identifiers = Default::default();
        let agent = Agent::start(agent_connector(kind, addr, &ca, Some(cert)), config);
        match outcome(agent).await {
            AgentStatus::Disconnected { reason } | AgentStatus::Rejected { reason, .. } => {
                let reason = reason.to_lowercase();
                assert!(
                    reason.contains("certificate") || reason.contains("alert"),
                    "{what}: {reason}"
                )
            }
            other => panic!("{what}: the server admitted it as an agent: {other:?}"),
        }
        assert!(server.agents().is_empty(), "{what}");
    }
    let mut config = Harness::agent_config_for("node-c", Credential::None);
    config.identifiers = Default::default();
    let cert = ca.issue_client("node-c", &["node-c"]).unwrap().identity();
    let agent = Agent::start(agent_connector(kind, addr, &ca, Some(cert)), config);
    assert!(matches!(outcome(agent).await, AgentStatus::Connected { .. }));
    server.shutdown();
}

on_tls_transports!(
    agents_take_only_a_server_auth_certificate_for_the_server,
    the_server_takes_only_a_client_auth_certificate_for_an_agent,
);
