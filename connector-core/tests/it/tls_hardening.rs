//! TLS on the TCP (QMux) transport holds to the same rules as QUIC: TLS 1.3
//! only, and an agent talks only to a server that negotiates connector's
//! ALPN. Each refusal is followed by a well-behaved agent being served.

use std::sync::Arc;

use crate::common::*;
use connector_core::tls::{AgentTls, ServerTls};
use connector_core::transport::Connector;
use connector_core::transport::qmux::proxy::ProxyChoice;
use connector_core::transport::qmux::{QMUX_ALPN, QmuxConnector, QmuxSettings};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_listener_refuses_tls_1_2_clients() {
    guard(async {
        let h = Harness::new(Kind::Tcp).await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(h.ca.cert_der()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![QMUX_ALPN.to_vec()];
        let tcp = TcpStream::connect(h.socket_addr()).await.unwrap();
        let err = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect_err("a TLS 1.2-only client must not complete a handshake");
        let text = err.to_string().to_lowercase();
        assert!(text.contains("protocol version") || text.contains("alert"), "{err}");
        // A well-behaved agent is still served.
        let _agent = h.agent("node-a").await;
        next_dial_is_served(&h).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_agent_refuses_a_server_without_the_connector_alpn() {
    guard(async {
        let h = Harness::new(Kind::Tcp).await;
        // A server offering another protocol refuses the agent's ALPN itself (a TLS
        // alert); one configured with none completes the handshake without ALPN,
        // and then only the agent's own check stands between it and the impostor.
        for (alpn, expected) in [
            (vec![b"h2".to_vec()], "NoApplicationProtocol"),
            (vec![], "did not negotiate ALPN"),
        ] {
            // A TLS server with a certificate the agent trusts, but not connector.
            let tls = ServerTls {
                identity: h.ca.issue("impostor", &["localhost"]).unwrap().identity(),
                client_cas: None,
            };
            let mut config = tls.rustls_config().unwrap();
            config.alpn_protocols = alpn.clone();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        // Hold the session open: the agent must leave by itself.
                        if let Ok(mut tls) = acceptor.accept(tcp).await {
                            let _ = tokio::io::copy(&mut tls, &mut tokio::io::sink()).await;
                        }
                    });
                }
            });
            let agent_tls = AgentTls {
                server_cas: vec![h.ca.cert_der()].into(),
                server_name: "localhost".into(),
                client_identity: None,
            };
            let connector = QmuxConnector::new(addr.to_string(), &agent_tls, &QmuxSettings::default())
                .unwrap()
                .with_proxy(ProxyChoice::Direct);
            let err = match connector.connect().await {
                Ok(_) => panic!("connected to a server without ALPN {alpn:?}"),
                Err(err) => err.to_string(),
            };
            assert!(err.contains(expected), "server ALPN {alpn:?}: {err}");
        }
        // The real server, same CA, is served.
        let _agent = h.agent("node-a").await;
        next_dial_is_served(&h).await;
    })
    .await;
}
