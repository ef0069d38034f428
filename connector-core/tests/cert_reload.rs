//! Certificate rotation without a restart: identities read from files are
//! re-read when the files change, on the server (QUIC listener, TCP
//! frontends) and on the agent (its client certificate). A broken update
//! keeps the previous certificate.

#[allow(unused_macros)]
#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use common::*;
use connector_core::pki::{IssuedPem, ThrowawayCa};
use connector_core::tls::{AgentTls, Identity, ServerTls};
use connector_core::transport::quic::{QuicConnector, QuicListener, QuicSettings};
use connector_core::transport::{Connector, Listener};
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
    let (agent_side, server_side) = tokio::join!(connector.connect(), async {
        listener.accept().await.expect("listener open").await
    });
    let (agent_side, server_side) = (agent_side.unwrap(), server_side.unwrap());
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
            client_cas: Some(vec![ca.cert_der()]),
        };
        let listener = QuicListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &QuicSettings::default()).unwrap();
        let agent_tls = AgentTls {
            server_cas: vec![ca.cert_der()],
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
