//! Frontends as their clients use them: HTTP CONNECT over a Unix socket and
//! over mutual TLS exactly as kube-apiserver's egress dialer speaks it,
//! routing across agents, forwards, and hostile frontend clients.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use connector_core::frontend::{FrontendBind, FrontendLimits, FrontendListener, forward, http_connect};
use connector_core::server::{DialError, ProxyStrategy, Selector};
use connector_core::tls::{CaBundle, FrontendTls, Identity};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

on_all_transports!(
    connect_over_uds_tunnels_like_kube_apiserver,
    dials_route_to_the_agent_serving_the_host,
);

fn socket_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-fe-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("proxy.sock")
}

fn start_connect(h: &Harness, bind: FrontendBind, limits: FrontendLimits) -> String {
    let listener = FrontendListener::bind(&bind, &[b"http/1.1"], &limits).unwrap();
    let local = listener.local_addr().to_owned();
    tokio::spawn(http_connect::serve(h.server.clone(), listener, limits));
    local
}

/// Sends kube-apiserver's exact CONNECT request and returns the response head.
async fn connect<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, target: &str) -> String {
    io.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_head(io).await
}

/// Reads byte by byte up to the end of a response head, so that nothing after it is consumed.
async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        if io.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads an error response whole (the frontend closes after it).
async fn read_all<S: AsyncRead + Unpin>(io: &mut S) -> String {
    let mut all = Vec::new();
    let _ = io.read_to_end(&mut all).await;
    String::from_utf8_lossy(&all).into_owned()
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, payload: &[u8]) {
    io.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    io.read_exact(&mut back).await.unwrap();
    assert_eq!(back, payload);
}

async fn connect_over_uds_tunnels_like_kube_apiserver(kind: Kind) {
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let path = socket_path(&format!("kube-{kind:?}"));
    start_connect(&h, FrontendBind::unix(&path), FrontendLimits::default());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let target = echo_target().await;

    let mut io = UnixStream::connect(&path).await.unwrap();
    let head = connect(&mut io, &target.to_string()).await;
    // Exactly the head kube-apiserver's http.ReadResponse expects, and nothing after it.
    assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
    let payload = pattern(2 * 1024 * 1024, 3);
    let (mut r, mut w) = tokio::io::split(io);
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let ((), read) = tokio::join!(send, r.read_to_end(&mut back));
    read.unwrap();
    assert_eq!(sha256(&back), sha256(&payload));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_map_to_readable_statuses() {
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let mut config = h.agent_config("node-a", token("node-a"));
        config.identifiers = "host=node-a,ipv4=127.0.0.1,default-route=true".parse().unwrap();
        let agent = h.start_agent(config).await;
        let path = socket_path("statuses");
        start_connect(&h, FrontendBind::unix(&path), FrontendLimits::default());
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();

        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (
                format!("CONNECT {closed_port} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
                "502 Bad Gateway",
                "refused",
            ),
            // Denied by the agent's policy before any packet leaves it.
            (
                b"CONNECT 10.255.255.1:80 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                "403 Forbidden",
                "allow-list",
            ),
            (
                b"CONNECT no-port HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                "400 Bad Request",
                "invalid target",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                "405 Method Not Allowed",
                "only CONNECT",
            ),
            (
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(),
                "400 Bad Request",
                "malformed",
            ),
            (
                [b"CONNECT a:1 HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 9000], b"\r\n\r\n"].concat(),
                "431",
                "larger than",
            ),
            // Hostile heads: absurd header counts, missing or empty ports,
            // IPv6 literals without brackets, oversized and non-UTF-8 host names.
            (
                [
                    b"CONNECT a:1 HTTP/1.1\r\n".as_slice(),
                    &b"X: y\r\n".repeat(500),
                    b"\r\n",
                ]
                .concat(),
                "400 Bad Request",
                "malformed",
            ),
            (
                b"CONNECT 10.0.0.5: HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                "400 Bad Request",
                "invalid target",
            ),
            (
                b"CONNECT [fd00::1] HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                "400 Bad Request",
                "invalid target",
            ),
            (
                b"CONNECT fd00::1:443 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                "400 Bad Request",
                "IPv6 addresses need brackets",
            ),
            (
                format!("CONNECT {}:80 HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(300)).into_bytes(),
                "400 Bad Request",
                "invalid target",
            ),
            (
                b"CONNECT \xff\xfe.example:80 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                "400 Bad Request",
                "",
            ),
            // IPv6 literals in brackets reach the agent, whose policy decides:
            // its own loopback is guarded, other addresses are outside its allow-list.
            (
                format!("CONNECT [::1]:{} HTTP/1.1\r\nHost: x\r\n\r\n", closed_port.port()).into_bytes(),
                "403 Forbidden",
                "guarded range ::1/128",
            ),
            (
                b"CONNECT [fd00::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                "403 Forbidden",
                "allow-list",
            ),
        ];
        for (request, status, reason) in cases {
            let mut io = UnixStream::connect(&path).await.unwrap();
            io.write_all(&request).await.unwrap();
            let response = read_all(&mut io).await;
            assert!(response.starts_with(&format!("HTTP/1.1 {status}")), "{response}");
            assert!(response.contains(reason), "{response}");
            assert!(response.contains("Connection: close"), "{response}");
        }
        // A well-behaved client is still served after all of them.
        let target = echo_target().await;
        let mut io = UnixStream::connect(&path).await.unwrap();
        assert_eq!(
            connect(&mut io, &target.to_string()).await,
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
        echo(&mut io, b"still serving").await;
        drop(io);
        agent.stop().await;
        h.server.wait_for_agents(|a| a.is_empty()).await;
        let mut io = UnixStream::connect(&path).await.unwrap();
        let response = {
            io.write_all(b"CONNECT node-x:10250 HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            read_all(&mut io).await
        };
        assert!(response.starts_with("HTTP/1.1 503 Service Unavailable"), "{response}");
        assert!(response.contains("no connected agent"), "{response}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_over_mutual_tls_requires_a_client_certificate() {
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let _agent = h.agent("node-a").await;
        let tls = FrontendTls {
            identity: h.ca.issue("connector frontend", &["localhost"]).unwrap().identity(),
            client_cas: vec![h.ca.cert_der()].into(),
        };
        let addr = start_tls_connect(&h, tls);
        let target = echo_target().await;
        let client = |cert: Option<Identity>| tls_client(&h.ca, cert);
        let apiserver = h.ca.issue("kube-apiserver", &[]).unwrap();
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut io = client(Some(apiserver.identity()))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(
            connect(&mut io, &target.to_string()).await,
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
        echo(&mut io, b"over mutual TLS").await;

        // Without a client certificate the handshake fails and no request is served.
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let refused = async {
            let mut io = client(None)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await?;
            io.write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
                .await?;
            let mut buf = [0u8; 1];
            io.read_exact(&mut buf).await
        };
        assert!(refused.await.is_err());
    })
    .await
}

/// Starts the HTTP CONNECT frontend on a loopback TLS port; returns `IP:PORT`.
fn start_tls_connect(h: &Harness, tls: FrontendTls) -> String {
    let bind = FrontendBind::Tls {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls,
    };
    let local = start_connect(h, bind, FrontendLimits::default());
    local.trim_start_matches("tls://").to_owned()
}

/// A client of a TLS frontend that trusts `ca` and presents `identity`, if any.
fn tls_client(ca: &connector_core::pki::ThrowawayCa, identity: Option<Identity>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(connector_core::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain().to_vec(), id.private_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Opens a CONNECT tunnel over TLS to an echo target and echoes through it;
/// `Err` when the frontend refuses the client at any step.
async fn connect_and_echo(addr: &str, client: &tokio_rustls::TlsConnector, target: &str) -> std::io::Result<()> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut io = client.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
        io.write_all(format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes())
            .await?;
        let mut head = vec![0u8; "HTTP/1.1 200 Connection established\r\n\r\n".len()];
        io.read_exact(&mut head).await?;
        assert_eq!(head, b"HTTP/1.1 200 Connection established\r\n\r\n");
        io.write_all(b"ping").await?;
        let mut back = [0u8; 4];
        io.read_exact(&mut back).await?;
        assert_eq!(&back, b"ping");
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .expect("CONNECT over TLS hung for 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_over_mutual_tls_follows_the_client_ca_file() {
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let _agent = h.agent("node-a").await;
        let new_ca = connector_core::pki::ThrowawayCa::new("apiserver client CA v2").unwrap();
        let dir = socket_path("client-ca-reload");
        let ca_file = dir.with_file_name("client-ca.crt");
        std::fs::write(&ca_file, h.ca.cert_pem()).unwrap();
        let tls = FrontendTls {
            identity: h.ca.issue("connector frontend", &["localhost"]).unwrap().identity(),
            client_cas: CaBundle::from_file(&ca_file).unwrap(),
        };
        let addr = start_tls_connect(&h, tls);
        let target = echo_target().await.to_string();
        let old_client = tls_client(&h.ca, Some(h.ca.issue("kube-apiserver", &[]).unwrap().identity()));
        let new_client = tls_client(&h.ca, Some(new_ca.issue("kube-apiserver v2", &[]).unwrap().identity()));
        connect_and_echo(&addr, &old_client, &target).await.unwrap();
        assert!(
            connect_and_echo(&addr, &new_client, &target).await.is_err(),
            "a client certificate of an unknown CA was accepted"
        );

        // The client CA file moves to the new CA: the running frontend follows.
        std::fs::write(&ca_file, new_ca.cert_pem()).unwrap();
        connect_and_echo(&addr, &new_client, &target).await.unwrap();
        assert!(
            connect_and_echo(&addr, &old_client, &target).await.is_err(),
            "the retired CA was still accepted"
        );

        // A broken update keeps the bundle in force.
        std::fs::write(&ca_file, "not PEM at all").unwrap();
        connect_and_echo(&addr, &new_client, &target).await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_garbage_clients_are_dropped_while_good_clients_proceed() {
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let _agent = h.agent("node-a").await;
        let path = socket_path("slow");
        let limits = FrontendLimits {
            max_connections: 3,
            head_timeout: Duration::from_millis(300),
            max_head: 8192,
        };
        start_connect(&h, FrontendBind::unix(&path), limits);
        let target = echo_target().await;

        let mut silent = UnixStream::connect(&path).await.unwrap();
        let mut dribbler = UnixStream::connect(&path).await.unwrap();
        dribbler.write_all(b"CONNECT 127.0.0.1:").await.unwrap();
        // The two slow clients hold two of three slots; a good client still gets through.
        let mut good = UnixStream::connect(&path).await.unwrap();
        assert_eq!(
            connect(&mut good, &target.to_string()).await,
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
        echo(&mut good, b"unaffected").await;
        // A fourth connection finds every slot taken and is closed at once, without a response.
        let mut over = UnixStream::connect(&path).await.unwrap();
        assert_eq!(read_all(&mut over).await, "");
        // The slow ones are answered 408 and dropped when their time is up.
        for io in [&mut silent, &mut dribbler] {
            let response = read_all(io).await;
            assert!(response.starts_with("HTTP/1.1 408 Request Timeout"), "{response}");
        }
        echo(&mut good, b"still unaffected").await;
        drop(good);
        // Slots come back: a new client is served again.
        let mut again = UnixStream::connect(&path).await.unwrap();
        assert_eq!(
            connect(&mut again, &target.to_string()).await,
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
    })
    .await
}

async fn dials_route_to_the_agent_serving_the_host(kind: Kind) {
    let h = Harness::new(kind).await;
    let mut agents = Vec::new();
    for (node, ids) in [
        ("node-a", "ipv4=127.0.0.2"),
        ("node-b", "ipv4=127.0.0.3"),
        ("node-c", "cidr=127.0.1.0/24"),
    ] {
        let mut config = h.agent_config(node, token(node));
        config.identifiers = format!("host={node},{ids}").parse().unwrap();
        agents.push(h.start_agent(config).await);
    }
    for (ip, node) in [
        ("127.0.0.2", "node-a"),
        ("127.0.0.3", "node-b"),
        ("127.0.1.7", "node-c"),
    ] {
        let target = echo_target_on(ip).await.to_string();
        for _ in 0..3 {
            let mut stream = h.server.dial(&Selector::for_target(&target), &target).await.unwrap();
            assert_eq!(stream.agent_id(), node, "{target}");
            echo(&mut stream, node.as_bytes()).await;
        }
    }
    // A host nobody serves fails at once: no agent, no timeout.
    let nobody = echo_target_on("127.0.2.1").await.to_string();
    let err = h
        .server
        .dial(&Selector::for_target(&nobody), &nobody)
        .await
        .unwrap_err();
    assert!(matches!(err, DialError::NoAgent(_)), "{err}");
    // A default-route agent catches the rest.
    let mut config = h.agent_config("node-d", token("node-d"));
    config.identifiers = "host=node-d,default-route=true".parse().unwrap();
    let _catch_all = h.start_agent(config).await;
    let mut stream = h.server.dial(&Selector::for_target(&nobody), &nobody).await.unwrap();
    assert_eq!(stream.agent_id(), "node-d");
    echo(&mut stream, b"default route").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_strategies_are_tried_in_order() {
    guard(async {
        let h = Harness::with_config(Kind::Memory, |c| c.proxy_strategies = vec![ProxyStrategy::Default]).await;
        let _agent = h.agent("node-a").await;
        let target = echo_target().await.to_string();
        // With only `default`, any agent serves any host.
        let stream = h
            .server
            .dial(&Selector::Host("node-zzz".into()), &target)
            .await
            .unwrap();
        assert_eq!(stream.agent_id(), "node-a");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_carries_a_bulk_transfer_intact() {
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let _agent = h.agent("node-a").await;
        let target = digest_target().await.to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        tokio::spawn(forward::serve(
            h.server.clone(),
            listener,
            Selector::Agent("node-a".into()),
            target,
        ));
        let mut tcp = tokio::net::TcpStream::connect(local).await.unwrap();
        let data = pattern(16 * 1024 * 1024, 11);
        tcp.write_all(&data).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut digest = Vec::new();
        tcp.read_to_end(&mut digest).await.unwrap();
        assert_eq!(digest, sha256(&data));
    })
    .await
}

/// Reads until the peer closes (EOF or error), returning what arrived.
async fn until_closed<S: AsyncRead + Unpin>(io: &mut S) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    all
}

/// A slow-loris client (connects, then sends nothing or dribbles) on every
/// kind of frontend listener is disconnected once its head time is up, while
/// a well-behaved client of the same listener is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_dropped_on_every_frontend_listener() {
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let _agent = h.agent("node-a").await;
        let target = echo_target().await;
        let limits = FrontendLimits {
            head_timeout: Duration::from_millis(300),
            ..FrontendLimits::default()
        };
        let start = |protocol, bind: FrontendBind| {
            connector_core::frontend::start(&h.server, protocol, &bind, &limits).unwrap()
        };
        use connector_core::frontend::FrontendProtocol;

        // HTTP CONNECT over mutual TLS: a client that never starts its TLS handshake.
        let tls = FrontendTls {
            identity: h.ca.issue("connector frontend", &["localhost"]).unwrap().identity(),
            client_cas: vec![h.ca.cert_der()].into(),
        };
        let local = start(
            FrontendProtocol::HttpConnect,
            FrontendBind::Tls {
                addr: "127.0.0.1:0".parse().unwrap(),
                tls,
            },
        );
        let addr = local.trim_start_matches("tls://").to_owned();
        let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut dribbler = tokio::net::TcpStream::connect(&addr).await.unwrap();
        dribbler.write_all(b"\x16\x03\x01").await.unwrap(); // the first bytes of a ClientHello
        assert_eq!(until_closed(&mut silent).await, b"");
        assert_eq!(until_closed(&mut dribbler).await, b"");

        // HTTP CONNECT over a Unix socket: 408 for a head that never completes.
        let path = socket_path("loris-connect");
        start(FrontendProtocol::HttpConnect, FrontendBind::unix(&path));
        let mut slow = UnixStream::connect(&path).await.unwrap();
        slow.write_all(b"CONNECT 127.0.0.1:").await.unwrap();
        let response = String::from_utf8(until_closed(&mut slow).await).unwrap();
        assert!(response.starts_with("HTTP/1.1 408 Request Timeout"), "{response}");
        let mut good = UnixStream::connect(&path).await.unwrap();
        assert_eq!(
            connect(&mut good, &target.to_string()).await,
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
        echo(&mut good, b"served").await;

        // gRPC (HTTP/2) over a Unix socket: no connection preface in time.
        #[cfg(feature = "grpc")]
        {
            let path = socket_path("loris-grpc");
            start(FrontendProtocol::Grpc, FrontendBind::unix(&path));
            let mut silent = UnixStream::connect(&path).await.unwrap();
            let mut dribbler = UnixStream::connect(&path).await.unwrap();
            dribbler.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
            // The server may send its own SETTINGS first; then it closes
            // (without the preface timeout this would wait forever).
            until_closed(&mut silent).await;
            until_closed(&mut dribbler).await;
            // A client with a preface is answered with the server's SETTINGS frame.
            let mut good = UnixStream::connect(&path).await.unwrap();
            good.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .await
                .unwrap();
            let mut header = [0u8; 9];
            good.read_exact(&mut header).await.unwrap();
            assert_eq!(header[3], 0x4, "expected a SETTINGS frame, got {header:?}");
        }
    })
    .await
}

/// A Unix socket gets exactly the configured mode and group, replaces a
/// stale socket, and leaves nothing else behind in its directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_gets_the_configured_mode_and_group() {
    use std::os::unix::fs::MetadataExt;
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let _agent = h.agent("node-a").await;
        let path = socket_path("mode-group");
        let dir = path.parent().unwrap().to_owned();
        // Our own group is one we may always give a file.
        let probe = dir.join("probe");
        std::fs::write(&probe, b"").unwrap();
        let gid = std::fs::metadata(&probe).unwrap().gid();
        std::fs::remove_file(&probe).unwrap();
        // A stale socket from an earlier run.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());

        let bind = FrontendBind::Unix {
            path: path.clone(),
            mode: 0o660,
            group: Some(gid),
        };
        start_connect(&h, bind, FrontendLimits::default());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid);
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("proxy.sock")]);
        let target = echo_target().await;
        let mut io = UnixStream::connect(&path).await.unwrap();
        assert_eq!(
            connect(&mut io, &target.to_string()).await,
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
        echo(&mut io, b"through the renamed socket").await;
    })
    .await
}
