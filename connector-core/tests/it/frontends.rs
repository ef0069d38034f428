//! Frontends as their clients use them: HTTP CONNECT over a Unix socket and
//! over mutual TLS exactly as kube-apiserver's egress dialer speaks it,
//! routing across agents, forwards, and hostile frontend clients.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
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
            // kube-apiserver shows only the status line: the reason is there too.
            let status_line = response.lines().next().unwrap();
            assert!(status_line.contains(reason), "{response}");
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
        assert!(
            response.starts_with("HTTP/1.1 503 Service Unavailable: no connected agent"),
            "{response}"
        );
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
            allowed_clients: Vec::new(),
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

/// The mutual-TLS frontend admits a client only with a clientAuth
/// certificate and, when it has an allow-list, only the clients on it: with
/// the agents' CA trusted for frontend clients too, an agent's own client
/// certificate used to get `200` and a tunnel. A frontend without a list
/// whose client CA is the agents' is refused by `check_trust_domains`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mutual_tls_frontend_admits_only_its_clients() {
    use connector_core::tls::KeyPurpose;
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let _agent = h.agent("node-a").await;
        let target = echo_target().await.to_string();
        let frontend_identity = || {
            h.ca.issue_server("connector frontend", &["localhost"])
                .unwrap()
                .identity()
        };
        let client = |ca: &connector_core::pki::ThrowawayCa, cn: &str, names: &[&str], purposes: &[KeyPurpose]| {
            tls_client(&h.ca, Some(ca.issue_for(cn, names, purposes).unwrap().identity()))
        };
        let client_auth = &[KeyPurpose::ClientAuth][..];

        // The agents' CA, shared with frontend clients, but with an allow-list.
        let shared = FrontendTls {
            identity: frontend_identity(),
            client_cas: vec![h.ca.cert_der()].into(),
            allowed_clients: vec!["kube-apiserver".into()],
        };
        shared.check_trust_domains(&vec![h.ca.cert_der()].into()).unwrap();
        let addr = start_tls_connect(&h, shared);
        connect_and_echo(&addr, &client(&h.ca, "kube-apiserver", &[], client_auth), &target)
            .await
            .unwrap();
        // Admitted by a DNS name on the list, whatever its common name.
        connect_and_echo(
            &addr,
            &client(&h.ca, "apiserver-1", &["Kube-Apiserver"], client_auth),
            &target,
        )
        .await
        .unwrap();
        for (what, cn, purposes) in [
            ("an agent's client certificate", "node-a", client_auth),
            ("a certificate without EKU", "kube-apiserver", &[][..]),
            ("a server certificate", "kube-apiserver", &[KeyPurpose::ServerAuth][..]),
        ] {
            let names: &[&str] = if cn == "node-a" { &["node-a"] } else { &[] };
            assert!(
                connect_and_echo(&addr, &client(&h.ca, cn, names, purposes), &target)
                    .await
                    .is_err(),
                "{what} was admitted"
            );
        }

        // Without a list, the agents' CA is refused for frontend clients.
        let unlisted = FrontendTls {
            identity: frontend_identity(),
            client_cas: vec![h.ca.cert_der()].into(),
            allowed_clients: Vec::new(),
        };
        let err = unlisted
            .check_trust_domains(&vec![h.ca.cert_der()].into())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--frontend-allow-client") && err.contains("own CA"),
            "{err}"
        );

        // A CA of their own: any clientAuth certificate it issued, none without EKU.
        let apiserver_ca = connector_core::pki::ThrowawayCa::new("frontend clients CA").unwrap();
        let own = FrontendTls {
            identity: frontend_identity(),
            client_cas: vec![apiserver_ca.cert_der()].into(),
            allowed_clients: Vec::new(),
        };
        own.check_trust_domains(&vec![h.ca.cert_der()].into()).unwrap();
        let addr = start_tls_connect(&h, own);
        connect_and_echo(
            &addr,
            &client(&apiserver_ca, "kube-apiserver", &[], client_auth),
            &target,
        )
        .await
        .unwrap();
        assert!(
            connect_and_echo(&addr, &client(&apiserver_ca, "kube-apiserver", &[], &[]), &target)
                .await
                .is_err(),
            "a certificate without EKU was admitted"
        );
        assert!(
            connect_and_echo(&addr, &client(&h.ca, "node-a", &["node-a"], client_auth), &target)
                .await
                .is_err(),
            "an agent's certificate (another CA) was admitted"
        );
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
    tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(ca, identity)))
}

/// The configuration of [`tls_client`].
fn tls_client_config(ca: &connector_core::pki::ThrowawayCa, identity: Option<Identity>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(connector_core::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain().to_vec(), id.private_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
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
            allowed_clients: Vec::new(),
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

/// The connection bound: with every slot taken, a new client is closed at
/// once without a response; the slot of a client that leaves is free again
/// by the time it sees its connection close. The head timeout is an hour,
/// so no slot frees itself meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_the_connection_limit_are_closed_and_slots_come_back() {
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let _agent = h.agent("node-a").await;
        let path = socket_path("bound");
        let limits = FrontendLimits {
            max_connections: 3,
            head_timeout: Duration::from_secs(3600),
            max_head: 8192,
        };
        start_connect(&h, FrontendBind::unix(&path), limits);
        let target = echo_target().await.to_string();

        let mut silent = UnixStream::connect(&path).await.unwrap();
        let mut dribbler = UnixStream::connect(&path).await.unwrap();
        dribbler.write_all(b"CONNECT 127.0.0.1:").await.unwrap();
        // The two slow clients hold two of three slots; a good client still gets through.
        let mut good = UnixStream::connect(&path).await.unwrap();
        assert_eq!(
            connect(&mut good, &target).await,
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
        echo(&mut good, b"unaffected").await;
        // A fourth connection finds every slot taken and is closed at once, without a response.
        let mut over = UnixStream::connect(&path).await.unwrap();
        assert_eq!(read_all(&mut over).await, "");
        echo(&mut good, b"still unaffected").await;
        // The silent client leaves (the frontend reads its EOF and closes): its slot comes back.
        silent.shutdown().await.unwrap();
        assert_eq!(read_all(&mut silent).await, "");
        let mut again = UnixStream::connect(&path).await.unwrap();
        assert_eq!(
            connect(&mut again, &target).await,
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
        echo(&mut again, b"served again").await;
    })
    .await
}

/// The head bound, in time and content: silent and dribbling clients get
/// 408, garbage gets 400/405/431, all while a good client's tunnel works,
/// and a new good client is served after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_garbage_clients_are_dropped_while_good_clients_proceed() {
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let _agent = h.agent("node-a").await;
        let path = socket_path("slow");
        let limits = FrontendLimits {
            head_timeout: LORIS_HEAD_TIMEOUT,
            max_head: 8192,
            ..FrontendLimits::default()
        };
        start_connect(&h, FrontendBind::unix(&path), limits);
        let target = echo_target().await.to_string();

        let mut good = UnixStream::connect(&path).await.unwrap();
        assert_eq!(
            connect(&mut good, &target).await,
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
        let slow = async {
            let mut silent = UnixStream::connect(&path).await.unwrap();
            let dribbler = UnixStream::connect(&path).await.unwrap();
            let start = format!("CONNECT {target} HTTP/1.1\r\nX-Slow: ");
            for response in [
                within("silent client", until_closed(&mut silent)).await,
                within("dribbler", dribble_until_closed(dribbler, start.as_bytes(), b'a')).await,
            ] {
                let response = String::from_utf8(response).unwrap();
                assert!(response.starts_with("HTTP/1.1 408 Request Timeout"), "{response}");
            }
        };
        let garbage = async {
            let cases: [(&[u8], &str); 4] = [
                (
                    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
                    "400 Bad Request",
                ),
                (b"\0\0\0\0\0\0\0\0\r\n\r\n", "400 Bad Request"),
                (b"DELETE / HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
                (&[b'A'; 9000], "431"),
            ];
            let mut clients = Vec::new();
            for (bytes, _) in &cases {
                let mut io = UnixStream::connect(&path).await.unwrap();
                io.write_all(bytes).await.unwrap();
                clients.push(io);
            }
            for (io, (_, status)) in clients.iter_mut().zip(cases) {
                let response = read_all(io).await;
                assert!(response.starts_with(&format!("HTTP/1.1 {status}")), "{response}");
            }
        };
        let traffic = async {
            for i in 0..20u8 {
                echo(&mut good, &[i; 1000]).await;
            }
        };
        tokio::join!(slow, garbage, traffic);
        echo(&mut good, b"still unaffected").await;
        let mut again = UnixStream::connect(&path).await.unwrap();
        assert_eq!(
            connect(&mut again, &target).await,
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
    })
    .await
}

async fn dials_route_to_the_agent_serving_the_host(kind: Kind) {
    // A dial timeout of an hour: were a dial for a host nobody serves to
    // wait for an agent, this test would hang into its guard.
    let h = Harness::with_config(kind, |c| c.limits.dial_timeout = Duration::from_secs(3600)).await;
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
    // ... and only the rest: a served host still lands on its own agent.
    for (ip, node) in [
        ("127.0.0.2", "node-a"),
        ("127.0.0.3", "node-b"),
        ("127.0.1.7", "node-c"),
    ] {
        let target = echo_target_on(ip).await.to_string();
        let mut stream = h.server.dial(&Selector::for_target(&target), &target).await.unwrap();
        assert_eq!(stream.agent_id(), node, "{target} with a default-route agent connected");
        echo(&mut stream, node.as_bytes()).await;
    }
}

/// With `defaultRoute` tried before `destHost`, the default-route agent
/// takes every dial, even for a host another agent serves; without a
/// default-route agent, `destHost` still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_route_first_wins_over_the_host_agent() {
    guard(async {
        let h = Harness::with_config(Kind::Memory, |c| {
            c.proxy_strategies = vec![ProxyStrategy::DefaultRoute, ProxyStrategy::DestHost]
        })
        .await;
        let mut config = h.agent_config("node-a", token("node-a"));
        config.identifiers = "host=node-a,ipv4=127.0.0.2".parse().unwrap();
        let _served = h.start_agent(config).await;
        let target = echo_target_on("127.0.0.2").await.to_string();
        let stream = h.server.dial(&Selector::for_target(&target), &target).await.unwrap();
        assert_eq!(
            stream.agent_id(),
            "node-a",
            "destHost applies while no default-route agent is connected"
        );

        let mut config = h.agent_config("node-d", token("node-d"));
        config.identifiers = "host=node-d,default-route=true".parse().unwrap();
        let _catch_all = h.start_agent(config).await;
        for _ in 0..3 {
            let mut stream = h.server.dial(&Selector::for_target(&target), &target).await.unwrap();
            assert_eq!(stream.agent_id(), "node-d", "defaultRoute is tried first");
            echo(&mut stream, b"default route first").await;
        }
    })
    .await
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
            1,
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
        // The group a new file gets anyway...
        let probe = dir.join("probe");
        std::fs::write(&probe, b"").unwrap();
        let own = std::fs::metadata(&probe).unwrap().gid();
        std::fs::remove_file(&probe).unwrap();
        // ...and, where there is one, another group we may give it, so that a
        // listener ignoring `group` fails here.
        let gid = other_group(own).unwrap_or(own);
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

/// A group other than `own` that this process may give its files: any, for
/// root; otherwise one of its supplementary groups, if it has one.
fn other_group(own: u32) -> Option<u32> {
    // SAFETY: plain libc queries into a local buffer of the size passed.
    unsafe {
        if libc::geteuid() == 0 {
            return Some(if own == 0 { 1 } else { 0 });
        }
        let mut groups = vec![0 as libc::gid_t; 256];
        let n = libc::getgroups(groups.len() as i32, groups.as_mut_ptr());
        groups.truncate(n.max(0) as usize);
        groups.into_iter().find(|&g| g != own)
    }
}

/// A slow-loris client: writes `start`, then `filler` one byte at a time
/// (each write awaited, paced so that the head never completes or outgrows
/// its size limit first) for as long as the connection stays open. Returns
/// what the server sent before closing; a server without a time bound would
/// keep it forever (the test's hang guard).
async fn dribble_until_closed<S: AsyncRead + AsyncWrite + Unpin>(io: S, start: &[u8], filler: u8) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(io);
    let writer = async {
        let _ = w.write_all(start).await;
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        loop {
            pace.tick().await;
            if w.write_all(&[filler]).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        got = until_closed(&mut r) => got,
        () = writer => unreachable!(),
    }
}

/// A hang guard for one slow-loris client (its bound is about a second).
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} was still connected after 20 s"))
}

/// The head time of the listeners in the slow-loris tests: short, yet
/// enough for a good client's TLS handshake on a busy machine.
const LORIS_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// The first bytes of a TLS record announcing 16 KiB, which never all arrive.
const TLS_RECORD_START: &[u8] = b"\x16\x03\x01\x40\x00";

/// A slow-loris client (connects, then sends nothing or dribbles) on every
/// kind of frontend listener is disconnected once its head time is up, and a
/// well-behaved client of the same listener is served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_dropped_on_every_frontend_listener() {
    use connector_core::frontend::FrontendProtocol;
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let _agent = h.agent("node-a").await;
        let target = echo_target().await.to_string();
        let limits = FrontendLimits {
            head_timeout: LORIS_HEAD_TIMEOUT,
            ..FrontendLimits::default()
        };
        let start = |protocol, bind: FrontendBind| {
            connector_core::frontend::start(&h.server, protocol, &bind, &limits).unwrap()
        };
        let frontend_tls = || FrontendTls {
            identity: h.ca.issue("connector frontend", &["localhost"]).unwrap().identity(),
            client_cas: vec![h.ca.cert_der()].into(),
            allowed_clients: Vec::new(),
        };
        let loopback = || "127.0.0.1:0".parse().unwrap();
        let apiserver = || Some(h.ca.issue("kube-apiserver", &[]).unwrap().identity());
        // A CONNECT head that never ends: one more header byte at a time.
        let connect_start = format!("CONNECT {target} HTTP/1.1\r\nX-Slow: ");

        // HTTP CONNECT over mutual TLS: silent, or dribbling a ClientHello.
        let addr = start(
            FrontendProtocol::HttpConnect,
            FrontendBind::Tls {
                addr: loopback(),
                tls: frontend_tls(),
            },
        );
        let addr = addr.trim_start_matches("tls://").to_owned();
        let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let dribbler = tokio::net::TcpStream::connect(&addr).await.unwrap();
        assert_eq!(within("silent TLS client", until_closed(&mut silent)).await, b"");
        assert_eq!(
            within(
                "dribbling TLS client",
                dribble_until_closed(dribbler, TLS_RECORD_START, 0)
            )
            .await,
            b""
        );
        connect_and_echo(&addr, &tls_client(&h.ca, apiserver()), &target)
            .await
            .unwrap();

        // HTTP CONNECT over a Unix socket and over plain loopback TCP: 408 for
        // a head that never completes, silent or dribbled.
        let path = socket_path("loris-connect");
        start(FrontendProtocol::HttpConnect, FrontendBind::unix(&path));
        let plain = start(
            FrontendProtocol::HttpConnect,
            FrontendBind::PlainLoopback { addr: loopback() },
        );
        let plain = plain.trim_start_matches("tcp://").to_owned();
        for name in ["unix", "plain"] {
            let open = async || -> Box<dyn Stream> {
                if name == "unix" {
                    Box::new(UnixStream::connect(&path).await.unwrap()) as Box<dyn Stream>
                } else {
                    Box::new(tokio::net::TcpStream::connect(&plain).await.unwrap())
                }
            };
            let (mut silent, dribbler) = (open().await, open().await);
            for response in [
                within(name, until_closed(&mut silent)).await,
                within(name, dribble_until_closed(dribbler, connect_start.as_bytes(), b'a')).await,
            ] {
                let response = String::from_utf8(response).unwrap();
                assert!(
                    response.starts_with("HTTP/1.1 408 Request Timeout"),
                    "{name}: {response}"
                );
            }
            let mut good = open().await;
            assert_eq!(
                connect(&mut good, &target).await,
                "HTTP/1.1 200 Connection established\r\n\r\n"
            );
            echo(&mut good, name.as_bytes()).await;
        }

        #[cfg(feature = "grpc")]
        grpc_slow_loris(&h, &start, frontend_tls(), apiserver(), &target).await;
    })
    .await
}

/// Any client connection in these tests.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The HTTP/2 client connection preface and an empty SETTINGS frame.
#[cfg(feature = "grpc")]
const H2_PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// The gRPC listeners: silent before the preface, silent after the preface
/// and SETTINGS, or dribbling a HEADERS frame, each is disconnected; the
/// server announces its per-connection stream limit; a Konnectivity client
/// is served afterwards.
#[cfg(feature = "grpc")]
async fn grpc_slow_loris(
    h: &Harness,
    start: &impl Fn(connector_core::frontend::FrontendProtocol, FrontendBind) -> String,
    tls: FrontendTls,
    apiserver: Option<Identity>,
    target: &str,
) {
    use connector_core::frontend::FrontendProtocol;
    use connector_core::frontend::grpc::MAX_STREAMS_PER_CONNECTION;
    // A HEADERS frame (stream 1, no END_HEADERS) announcing 16,000 bytes
    // of header block, which then arrive one at a time.
    let mut dribbled_headers = H2_PREFACE_AND_SETTINGS.to_vec();
    dribbled_headers.extend_from_slice(&[0x00, 0x3e, 0x80, 0x01, 0x00, 0, 0, 0, 1]);

    let path = socket_path("loris-grpc");
    start(FrontendProtocol::Grpc, FrontendBind::unix(&path));
    let mut silent = UnixStream::connect(&path).await.unwrap();
    let mut after_preface = UnixStream::connect(&path).await.unwrap();
    after_preface.write_all(H2_PREFACE_AND_SETTINGS).await.unwrap();
    let dribbler = UnixStream::connect(&path).await.unwrap();
    within("silent gRPC client", until_closed(&mut silent)).await;
    let answer = within("gRPC client silent after its preface", until_closed(&mut after_preface)).await;
    assert_eq!(
        max_concurrent_streams(&answer),
        Some(MAX_STREAMS_PER_CONNECTION),
        "{answer:?}"
    );
    within(
        "gRPC client dribbling HEADERS",
        dribble_until_closed(dribbler, &dribbled_headers, 0),
    )
    .await;
    grpc_dial_and_echo(UnixStream::connect(&path).await.unwrap(), target).await;

    // gRPC over mutual TLS: the same, behind a TLS handshake.
    let addr = start(
        FrontendProtocol::Grpc,
        FrontendBind::Tls {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls,
        },
    );
    let addr = addr.trim_start_matches("tls://").to_owned();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let dribbler = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert_eq!(within("silent gRPC TLS client", until_closed(&mut silent)).await, b"");
    assert_eq!(
        within(
            "gRPC TLS client dribbling its ClientHello",
            dribble_until_closed(dribbler, TLS_RECORD_START, 0)
        )
        .await,
        b""
    );
    let client = h2_tls_client(&h.ca, apiserver);
    let tls_conn = |client: tokio_rustls::TlsConnector| {
        let addr = addr.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            client
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap()
        }
    };
    let mut after_preface = tls_conn(client.clone()).await;
    after_preface.write_all(H2_PREFACE_AND_SETTINGS).await.unwrap();
    let answer = within(
        "gRPC TLS client silent after its preface",
        until_closed(&mut after_preface),
    )
    .await;
    assert_eq!(max_concurrent_streams(&answer), Some(MAX_STREAMS_PER_CONNECTION));
    let dribbler = tls_conn(client.clone()).await;
    within(
        "gRPC TLS client dribbling HEADERS",
        dribble_until_closed(dribbler, &dribbled_headers, 0),
    )
    .await;
    grpc_dial_and_echo(tls_conn(client).await, target).await;
}

/// A client that ignores the stream limit its server announced has every
/// stream beyond it refused (`RST_STREAM(REFUSED_STREAM)`), while the
/// streams within it are answered.
#[cfg(feature = "grpc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_beyond_the_per_connection_limit_are_refused() {
    use connector_core::frontend::grpc::MAX_STREAMS_PER_CONNECTION;
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let path = grpc_frontend_on_unix(&h.server, "grpc-streams");
        // One `Proxy` request header block, HPACK without the dynamic table
        // (so the same bytes serve every stream): indexed :method POST and
        // :scheme http, literal :path, :authority, content-type and te.
        let mut block = vec![0x83, 0x86];
        for (prefix, value) in [
            (&[0x04][..], &b"/ProxyService/Proxy"[..]),
            (&[0x01], b"localhost"),
            (&[0x0f, 0x10], b"application/grpc"),
        ] {
            block.extend_from_slice(prefix);
            block.push(value.len() as u8);
            block.extend_from_slice(value);
        }
        block.extend_from_slice(b"\x00\x02te\x08trailers");
        let mut out = H2_PREFACE_AND_SETTINGS.to_vec();
        for i in 0..=MAX_STREAMS_PER_CONNECTION {
            out.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(&[0x1, 0x4]); // HEADERS, END_HEADERS (the stream stays open)
            out.extend_from_slice(&(1 + 2 * i).to_be_bytes());
            out.extend_from_slice(&block);
        }
        let mut io = UnixStream::connect(&path).await.unwrap();
        io.write_all(&out).await.unwrap();
        let beyond = 1 + 2 * MAX_STREAMS_PER_CONNECTION;
        loop {
            let mut header = [0u8; 9];
            io.read_exact(&mut header).await.unwrap();
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await.unwrap();
            match header[3] {
                0x1 => assert_ne!(stream, beyond, "the stream beyond the limit was answered"),
                0x3 => {
                    assert_eq!(stream, beyond, "a stream within the limit was reset: {payload:?}");
                    assert_eq!(payload, 7u32.to_be_bytes(), "expected REFUSED_STREAM");
                    break;
                }
                0x7 => panic!("GOAWAY: {payload:?}"),
                _ => {}
            }
        }
    })
    .await
}

/// SETTINGS_MAX_CONCURRENT_STREAMS from the first frame the server sent,
/// if that is a SETTINGS frame that carries it.
#[cfg(feature = "grpc")]
fn max_concurrent_streams(answer: &[u8]) -> Option<u32> {
    let header = answer.get(..9)?;
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    if header[3] != 0x4 {
        return None;
    }
    answer.get(9..9 + len)?.chunks_exact(6).find_map(|setting| {
        (setting[..2] == [0, 3]).then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
    })
}

/// A TLS client offering ALPN `h2`.
#[cfg(feature = "grpc")]
fn h2_tls_client(ca: &connector_core::pki::ThrowawayCa, identity: Option<Identity>) -> tokio_rustls::TlsConnector {
    let mut config = tls_client_config(ca, identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[cfg(feature = "grpc")]
use connector_core::frontend::grpc::pb as grpc_pb;

/// One `Proxy` stream, `DIAL_REQ` to `target`, `DATA` echoed back by it.
#[cfg(feature = "grpc")]
async fn grpc_dial_and_echo<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S, target: &str) {
    let mut proxy = ProxyStream::open(io).await;
    proxy.dial(target, 42);
    let dialled = proxy.dial_response(42).await;
    assert_eq!(dialled.error, "");
    proxy.echo(dialled.connect_id, b"konnectivity").await;
}

/// Issue 19: konnectivity-client (kube-apiserver's GRPC egress) ends a
/// single-use tunnel with `CLOSE_REQ`, waits for `CLOSE_RSP`, then closes its
/// whole gRPC connection without ending the stream. That normal close is not
/// logged as a failed stream (it was, as `client stream failed ... h2
/// protocol error`); a client that goes away with a tunnel still open is.
#[cfg(feature = "grpc")]
#[tokio::test(flavor = "current_thread")]
async fn grpc_a_client_closing_its_connection_after_close_rsp_is_no_failure() {
    let (log, _scope) = CapturedLog::scoped("connector_core::frontend=debug");
    guard(async {
        let h = Harness::new(Kind::Memory).await;
        let _agent = h.agent("node-a").await;
        let path = grpc_frontend_on_unix(&h.server, "grpc-close");
        let target = echo_target().await.to_string();

        // As kube-apiserver closes a tunnel.
        let mut proxy = ProxyStream::open(UnixStream::connect(&path).await.unwrap()).await;
        proxy.dial(&target, 1);
        let dialled = proxy.dial_response(1).await;
        assert_eq!(dialled.error, "");
        proxy.echo(dialled.connect_id, b"kubectl logs").await;
        proxy.close(dialled.connect_id).await;
        proxy.drop_connection();
        log.wait_for("client stream ended").await;
        assert!(!log.text().contains("client stream failed"), "{}", log.text());

        // Gone with a tunnel open: that one was cut short.
        let mut proxy = ProxyStream::open(UnixStream::connect(&path).await.unwrap()).await;
        proxy.dial(&target, 2);
        let dialled = proxy.dial_response(2).await;
        proxy.echo(dialled.connect_id, b"kubectl exec").await;
        proxy.drop_connection();
        let failed = log.wait_for("client stream failed with tunnels open").await;
        assert!(failed[0].contains("connections=1"), "{failed:?}");
    })
    .await
}

/// `DIAL_CLS` abandons a pending dial on a stream that stays open: the
/// agent's stream for it is reset, no `DIAL_RSP` follows for it, and its
/// pending-dial slot is free before the next packet is handled (with
/// `max_pending_dials` 1, a dial sent right after it is served; one sent
/// while it was pending was refused).
#[cfg(feature = "grpc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_dial_cls_releases_a_pending_dial_at_once() {
    use connector_core::fuzzing::{read_frame, write_frame};
    use connector_core::proto::{Frame, Hello, MAX_FRAME_PAYLOAD};
    use grpc_pb::packet::Payload;
    guard(async {
        let h = Harness::with_config(Kind::Quic, |c| {
            c.limits.max_pending_dials = 1;
            c.limits.dial_timeout = Duration::from_secs(3600);
        })
        .await;
        let _agent = h.agent("node-a").await;
        // node-b: an agent that takes dials and never answers them.
        let conn = h.connector(None).connect().await.unwrap();
        let mut control = conn.open_bi().await.unwrap();
        let hello = Frame::Hello(Hello::new("node-b", "host=node-b".parse().unwrap(), token("node-b")));
        write_frame(&mut control.send, &hello).await.unwrap();
        let welcome = read_frame(&mut control.recv, MAX_FRAME_PAYLOAD).await.unwrap();
        assert!(matches!(welcome, Frame::Welcome(_)), "{welcome:?}");
        let path = grpc_frontend_on_unix(&h.server, "dial-cls");
        let target = echo_target().await.to_string();

        let mut proxy = ProxyStream::open(UnixStream::connect(&path).await.unwrap()).await;
        proxy.dial("node-b:10250", 1);
        // The dial reached node-b: it is pending and holds the one slot.
        let mut unanswered = conn.accept_bi().await.unwrap();
        proxy.dial(&target, 2);
        let refused = proxy.dial_response(2).await;
        assert!(refused.error.contains("dials waiting"), "{}", refused.error);

        proxy.send(Payload::CloseDial(grpc_pb::CloseDial { random: 1 }));
        proxy.dial(&target, 3);
        let served = proxy.dial_response(3).await;
        assert_eq!(served.error, "", "the abandoned dial still held its slot");
        proxy.echo(served.connect_id, b"after DIAL_CLS").await;
        // The agent's stream for the abandoned dial is gone too.
        let mut rest = Vec::new();
        let _ = unanswered.recv.read_to_end(&mut rest).await;
        assert_eq!(h.server.pending_dials(), 0);
    })
    .await
}

/// The admin listener (`/metrics`, `/healthz`, `/readyz`): a client that
/// sends nothing, or dribbles its request head, is answered 408 and
/// dropped; a probe is answered afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_dropped_on_the_admin_listener() {
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target: Arc<dyn connector_core::admin::AdminTarget> = Arc::new(h.server.clone());
        tokio::spawn(connector_core::admin::serve_with_head_timeout(
            listener,
            target,
            LORIS_HEAD_TIMEOUT,
        ));
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let dribbler = tokio::net::TcpStream::connect(addr).await.unwrap();
        for response in [
            within("silent admin client", until_closed(&mut silent)).await,
            within(
                "dribbling admin client",
                dribble_until_closed(dribbler, b"GET /healthz HTTP/1.1\r\nX-Slow: ", b'a'),
            )
            .await,
        ] {
            let response = String::from_utf8(response).unwrap();
            assert!(response.starts_with("HTTP/1.1 408 Request Timeout"), "{response}");
        }
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let response = String::from_utf8(until_closed(&mut probe).await).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    })
    .await
}

/// The agents' TCP (QMux) listener: a connection that never starts its TLS
/// handshake, or dribbles its ClientHello, is closed once the handshake
/// time is up; a well-behaved agent connects through it and is dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_dropped_on_the_agent_tcp_listener() {
    use connector_core::agent::{Agent, AgentStatus};
    use connector_core::tls::{AgentTls, ServerTls};
    use connector_core::transport::qmux::proxy::ProxyChoice;
    use connector_core::transport::qmux::{QmuxConnector, QmuxListener, QmuxSettings};
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let tls = ServerTls {
            identity: h.ca.issue("connector server", &["localhost"]).unwrap().identity(),
            client_cas: Some(vec![h.ca.cert_der()].into()),
        };
        let settings = QmuxSettings {
            handshake_timeout: LORIS_HEAD_TIMEOUT,
            ..QmuxSettings::default()
        };
        let listener = QmuxListener::bind("127.0.0.1:0".parse().unwrap(), &tls, &settings).unwrap();
        let addr = listener.local_socket_addr().unwrap();
        h.server.serve(Arc::new(listener));

        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let dribbler = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(within("silent agent connection", until_closed(&mut silent)).await, b"");
        assert_eq!(
            within(
                "agent connection dribbling its ClientHello",
                dribble_until_closed(dribbler, TLS_RECORD_START, 0)
            )
            .await,
            b""
        );

        let agent_tls = AgentTls {
            server_cas: vec![h.ca.cert_der()].into(),
            server_name: "localhost".into(),
            client_identity: None,
        };
        let connector = QmuxConnector::new(addr.to_string(), &agent_tls, &QmuxSettings::default()).unwrap();
        let agent = Agent::start(
            Arc::new(connector.with_proxy(ProxyChoice::Direct)),
            h.agent_config("node-b", token("node-b")),
        );
        let status = agent
            .wait_for(|s| matches!(s, AgentStatus::Connected { .. } | AgentStatus::Rejected { .. }))
            .await;
        assert!(matches!(status, AgentStatus::Connected { .. }), "{status:?}");
        let target = echo_target().await.to_string();
        let mut stream = h.server.dial(&Selector::Agent("node-b".into()), &target).await.unwrap();
        echo(&mut stream, b"over the TCP listener").await;
        agent.stop().await;
    })
    .await
}

/// A forward authenticates nobody: it refuses to listen anywhere but on
/// loopback, and serves at most `max_connections` at once (more are closed
/// on arrival, without reaching an agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_listens_on_loopback_only_and_bounds_its_connections() {
    use connector_core::frontend::{FrontendError, start_forward, start_forward_with_limits};
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let _agent = h.agent("node-a").await;
        let target = echo_target().await.to_string();
        for open in ["0.0.0.0:0", "[::]:0"] {
            let err = start_forward(
                &h.server,
                open.parse().unwrap(),
                Selector::Agent("node-a".into()),
                target.clone(),
            )
            .await
            .unwrap_err();
            assert!(matches!(err, FrontendError::NotLoopback(_)), "{err}");
            assert!(err.to_string().contains("not a loopback address"), "{err}");
        }
        let limits = FrontendLimits {
            max_connections: 1,
            ..FrontendLimits::default()
        };
        let local = start_forward_with_limits(
            &h.server,
            "127.0.0.1:0".parse().unwrap(),
            Selector::Agent("node-a".into()),
            target,
            &limits,
        )
        .await
        .unwrap();
        let mut first = tokio::net::TcpStream::connect(local).await.unwrap();
        echo(&mut first, b"the one slot").await;
        let mut second = tokio::net::TcpStream::connect(local).await.unwrap();
        assert_eq!(until_closed(&mut second).await, b"");
        echo(&mut first, b"still served").await;
    })
    .await
}
