//! Path MTU discovery over real QUIC on loopback (MTU 65,536): packets
//! grow from 1,200 bytes to the configured bound, and full-size batches of
//! them reach the peer (no black hole, no fall back to 1,200).

use crate::common::*;
use connector_core::pki::ThrowawayCa;
use connector_core::tls::{AgentTls, ServerTls};
use connector_core::transport::quic::{
    MAX_UDP_PAYLOAD, MIN_UDP_PAYLOAD, QuicConnection, QuicConnector, QuicListener, QuicSettings,
};
use connector_core::transport::{Connection, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

/// A QUIC listener whose connections echo every stream, and a client connection to it.
async fn echo_pair(settings: &QuicSettings) -> QuicConnection {
    let ca = ThrowawayCa::new("path MTU CA").unwrap();
    let tls = ServerTls {
        identity: ca.issue("connector server", &["localhost"]).unwrap().identity(),
        client_cas: None,
    };
    let listener = QuicListener::bind("127.0.0.1:0".parse().unwrap(), &tls, settings).unwrap();
    let addr = listener.local_socket_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Some(handshake) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = handshake.await else { return };
                while let Ok(mut stream) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut stream.recv, &mut stream.send).await;
                        let _ = stream.send.shutdown().await;
                    });
                }
            });
        }
    });
    let agent_tls = AgentTls {
        server_cas: vec![ca.cert_der()].into(),
        server_name: "localhost".into(),
        client_identity: None,
    };
    QuicConnector::new(addr, &agent_tls, settings)
        .unwrap()
        .connect_quic()
        .await
        .unwrap()
}

/// Sends `len` bytes on a new stream and reads them back.
async fn echo(conn: &QuicConnection, len: usize) {
    let mut stream = conn.open_bi().await.unwrap();
    let data = pattern(len, len as u64);
    let write = async {
        stream.send.write_all(&data).await.unwrap();
        stream.send.shutdown().await.unwrap();
    };
    let mut back = Vec::with_capacity(len);
    let read = stream.recv.read_to_end(&mut back);
    let (_, read) = tokio::join!(write, read);
    read.unwrap();
    assert_eq!(sha256(&back), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_grow_to_the_bound_and_full_batches_arrive() {
    guard(async {
        init_tracing();
        let conn = echo_pair(&QuicSettings::default()).await;
        // Discovery probes go out when the connection has nothing else to
        // send: small round trips give it those moments.
        loop {
            let path = conn.stats().path;
            if path.current_mtu == MAX_UDP_PAYLOAD || path.black_holes_detected > 0 {
                break;
            }
            echo(&conn, 100).await;
        }
        // Bulk in both directions: full segmentation-offload batches of the largest packets.
        echo(&conn, 16 * MIB).await;
        let path = conn.stats().path;
        assert_eq!(path.black_holes_detected, 0, "{path:?}");
        assert_eq!(path.current_mtu, MAX_UDP_PAYLOAD, "{path:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimum_bound_turns_discovery_off() {
    guard(async {
        init_tracing();
        let settings = QuicSettings {
            max_udp_payload: MIN_UDP_PAYLOAD,
            ..QuicSettings::default()
        };
        let conn = echo_pair(&settings).await;
        for _ in 0..20 {
            echo(&conn, 100).await;
        }
        echo(&conn, 4 * MIB).await;
        let path = conn.stats().path;
        assert_eq!(path.sent_plpmtud_probes, 0, "{path:?}");
        assert_eq!(path.current_mtu, MIN_UDP_PAYLOAD, "{path:?}");
    })
    .await
}
