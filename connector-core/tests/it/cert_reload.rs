//! Certificate rotation without a restart: identities and CA bundles read
//! from files are re-read when the files change, on the server (QUIC
//! listener, TCP frontends) and on the agent (its client certificate, the CAs
//! it trusts). A broken update keeps the previous certificate or bundle.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use connector_core::pki::{IssuedPem, ThrowawayCa};
use connector_core::tls::{AgentTls, CaBundle, Identity, ServerTls};
use connector_core::transport::quic::{QuicConnector, QuicListener, QuicSettings};
use connector_core::transport::{Connection, Connector, Listener, TransportError};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

fn write(dir: &Path, issued: &IssuedPem) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    (cert, key)
}

fn der(issued: &IssuedPem) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One handshake: what the agent saw of the server, and what the server saw of the agent.
async fn handshake(
    listener: &QuicListener,
    connector: &QuicConnector,
) -> (Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>) {
    let (agent_side, server_side) = attempt(listener, connector).await;
    let (agent_side, server_side) = (agent_side.expect("agent side"), server_side.expect("server side"));
    (agent_side.peer().certificates, server_side.peer().certificates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_files_are_used_at_the_next_handshake() {
    guard(async {
        init_tracing();
        let ca = ThrowawayCa::new("rotation CA").unwrap();
        let (server_dir, agent_dir) = (temp_dir("reload-server"), temp_dir("reload-agent"));
        let server_v1 = ca.issue("server v1", &["localhost"]).unwrap();
        let agent_v1 = ca.issue("node-a v1", &["node-a"]).unwrap();
        let (server_cert, server_key) = write(&server_dir, &server_v1);
        let (agent_cert, agent_key) = write(&agent_dir, &agent_v1);
        let tls = ServerTls {
            identity: Identity::from_files(&server_cert, &server_key).unwrap(),
            client_cas: Some(vec![ca.cert_der()].into()),
        };
        let listener = QuicListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &QuicSettings::default()).unwrap();
        let agent_tls = AgentTls {
            server_cas: vec![ca.cert_der()].into(),
            server_name: "localhost".into(),
            client_identity: Some(Identity::from_files(&agent_cert, &agent_key).unwrap()),
        };
        let addr = listener.local_socket_addr().unwrap().to_string();
        let connector = QuicConnector::new(addr, &agent_tls, &QuicSettings::default()).unwrap();

        let (server_seen, agent_seen) = handshake(&listener, &connector).await;
        assert_eq!(server_seen[0], der(&server_v1));
        assert_eq!(agent_seen[0], der(&agent_v1));

        // Both sides rotate their files; the running listener and connector follow.
        let server_v2 = ca.issue("server v2", &["localhost"]).unwrap();
        let agent_v2 = ca.issue("node-a v2", &["node-a"]).unwrap();
        write(&server_dir, &server_v2);
        write(&agent_dir, &agent_v2);
        let (server_seen, agent_seen) = handshake(&listener, &connector).await;
        assert_eq!(server_seen[0], der(&server_v2));
        assert_eq!(agent_seen[0], der(&agent_v2));

        // A half-written update (a key of another certificate) keeps the last good pair.
        let other = ca.issue("other", &["localhost"]).unwrap();
        std::fs::write(&server_key, &other.key_pem).unwrap();
        std::fs::write(&agent_cert, "not PEM at all").unwrap();
        let (server_seen, agent_seen) = handshake(&listener, &connector).await;
        assert_eq!(server_seen[0], der(&server_v2));
        assert_eq!(agent_seen[0], der(&agent_v2));

        // Completing the update is picked up.
        let server_v3 = ca.issue("server v3", &["localhost"]).unwrap();
        write(&server_dir, &server_v3);
        write(&agent_dir, &agent_v2);
        let (server_seen, _) = handshake(&listener, &connector).await;
        assert_eq!(server_seen[0], der(&server_v3));
    })
    .await
}

type Outcome = Result<std::sync::Arc<dyn Connection>, TransportError>;

/// One handshake attempt, either side free to fail: (agent side, server side).
async fn attempt(listener: &QuicListener, connector: &QuicConnector) -> (Outcome, Outcome) {
    let both = async {
        tokio::join!(connector.connect(), async {
            listener.accept().await.expect("listener open").await
        })
    };
    tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("handshake attempt hung for 30 s")
}

/// Bundles that cannot be used: each must leave the previous bundle in force.
const BROKEN_BUNDLES: &[&str] = &[
    "not PEM at all",
    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_its_ca_file() {
    guard(async {
        init_tracing();
        let (old_ca, new_ca) = (ThrowawayCa::new("old CA").unwrap(), ThrowawayCa::new("new CA").unwrap());
        let (server_dir, agent_dir) = (temp_dir("ca-reload-server"), temp_dir("ca-reload-agent"));
        let (server_cert, server_key) = write(&server_dir, &old_ca.issue("server v1", &["localhost"]).unwrap());
        let ca_file = agent_dir.join("ca.crt");
        std::fs::write(&ca_file, old_ca.cert_pem()).unwrap();
        let tls = ServerTls {
            identity: Identity::from_files(&server_cert, &server_key).unwrap(),
            client_cas: None,
        };
        let listener = QuicListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &QuicSettings::default()).unwrap();
        let agent_tls = AgentTls {
            server_cas: CaBundle::from_file(&ca_file).unwrap(),
            server_name: "localhost".into(),
            client_identity: None,
        };
        let addr = listener.local_socket_addr().unwrap().to_string();
        let connector = QuicConnector::new(addr, &agent_tls, &QuicSettings::default()).unwrap();
        handshake(&listener, &connector).await;

        // The server moves to a certificate of the new CA: the agent refuses it.
        let server_v2 = new_ca.issue("server v2", &["localhost"]).unwrap();
        write(&server_dir, &server_v2);
        let (agent_side, _) = attempt(&listener, &connector).await;
        let err = agent_side
            .err()
            .expect("agent trusted a server certificate from a CA it was not given");
        assert!(err.to_string().contains("certificate"), "unexpected error: {err}");

        // The agent's CA file gains the new CA: the running connector trusts it.
        std::fs::write(&ca_file, old_ca.cert_pem() + &new_ca.cert_pem()).unwrap();
        let (server_seen, _) = handshake(&listener, &connector).await;
        assert_eq!(server_seen[0], der(&server_v2));

        // Broken updates (and a vanished file) keep the last good bundle.
        for broken in BROKEN_BUNDLES {
            std::fs::write(&ca_file, broken).unwrap();
            let (server_seen, _) = handshake(&listener, &connector).await;
            assert_eq!(server_seen[0], der(&server_v2), "after writing {broken:?}");
        }
        std::fs::remove_file(&ca_file).unwrap();
        let (server_seen, _) = handshake(&listener, &connector).await;
        assert_eq!(server_seen[0], der(&server_v2));

        // A good file again is used again: the old CA alone no longer covers the server.
        std::fs::write(&ca_file, old_ca.cert_pem()).unwrap();
        let (agent_side, _) = attempt(&listener, &connector).await;
        assert!(
            agent_side.is_err(),
            "agent still trusted the new CA after it left the file"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_follows_its_client_ca_file() {
    guard(async {
        init_tracing();
        let (server_ca, agents_old_ca, agents_new_ca) = (
            ThrowawayCa::new("server CA").unwrap(),
            ThrowawayCa::new("agents' old CA").unwrap(),
            ThrowawayCa::new("agents' new CA").unwrap(),
        );
        let server_dir = temp_dir("client-ca-reload-server");
        let client_ca_file = server_dir.join("client-ca.crt");
        std::fs::write(&client_ca_file, agents_old_ca.cert_pem()).unwrap();
        let tls = ServerTls {
            identity: server_ca.issue("server", &["localhost"]).unwrap().identity(),
            client_cas: Some(CaBundle::from_file(&client_ca_file).unwrap()),
        };
        let listener = QuicListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &QuicSettings::default()).unwrap();
        let addr = listener.local_socket_addr().unwrap().to_string();
        let agent = |ca: &ThrowawayCa, name: &str| {
            let agent_tls = AgentTls {
                server_cas: vec![server_ca.cert_der()].into(),
                server_name: "localhost".into(),
                client_identity: Some(ca.issue(name, &[name]).unwrap().identity()),
            };
            QuicConnector::new(addr.clone(), &agent_tls, &QuicSettings::default()).unwrap()
        };
        let old_agent = agent(&agents_old_ca, "node-old");
        let new_agent = agent(&agents_new_ca, "node-new");
        let (_, agent_seen) = handshake(&listener, &old_agent).await;
        assert_eq!(agent_seen.len(), 1);

        // An agent with a certificate of a CA the server does not know is refused.
        let (_, server_side) = attempt(&listener, &new_agent).await;
        assert!(
            server_side.is_err(),
            "server accepted a client certificate from an unknown CA"
        );

        // The client CA file gains the new CA: the running listener accepts both agents.
        std::fs::write(&client_ca_file, agents_old_ca.cert_pem() + &agents_new_ca.cert_pem()).unwrap();
        let (_, agent_seen) = handshake(&listener, &new_agent).await;
        assert_eq!(agent_seen.len(), 1);
        handshake(&listener, &old_agent).await;

        // Broken updates (and a vanished file) keep the last good bundle.
        for broken in BROKEN_BUNDLES {
            std::fs::write(&client_ca_file, broken).unwrap();
            handshake(&listener, &new_agent).await;
        }
        std::fs::remove_file(&client_ca_file).unwrap();
        handshake(&listener, &new_agent).await;

        // The old CA is retired: its agents are refused, the new ones still accepted.
        std::fs::write(&client_ca_file, agents_new_ca.cert_pem()).unwrap();
        let (_, server_side) = attempt(&listener, &old_agent).await;
        assert!(server_side.is_err(), "server still accepted the retired CA");
        handshake(&listener, &new_agent).await;
    })
    .await
}
