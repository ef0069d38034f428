//! The server's frontends and `connector forward`, driven by the tools
//! people use: curl through the CONNECT frontends, bulk data through a forward.

mod common;

use std::process::Command;

use common::*;

#[test]
fn curl_reaches_a_target_behind_the_agent_through_both_connect_frontends() {
    let dir = temp_dir("curl");
    dev_pki(&dir);
    // The frontend clients' CA, not the agents' (`ca.pem`, the server's --client-ca).
    let (cert, key, ca) = (
        dir.join("server.pem"),
        dir.join("server-key.pem"),
        dir.join("frontend-client-ca.pem"),
    );
    let frontend_tls = [
        "--connect-tls",
        "127.0.0.1:0",
        "--connect-plain",
        "127.0.0.1:0",
        "--frontend-cert",
        cert.to_str().unwrap(),
        "--frontend-key",
        key.to_str().unwrap(),
        "--frontend-client-ca",
        ca.to_str().unwrap(),
    ];
    let mut server = server(&dir, &frontend_tls);
    let quic = listen_addr(&server.wait_for(&["accepting agents"]));
    let tls = listen_addr(&server.wait_for(&["HTTP CONNECT frontend listening", "tls://"]));
    let plain = listen_addr(&server.wait_for(&["HTTP CONNECT frontend listening", "tcp://"]));
    let mut agent = agent(&dir, &quic);
    agent.wait_for(&["connected"]);
    let target = http_target("hello from behind the agent");
    let url = format!("http://{target}/");

    // curl -p -x: HTTP CONNECT over plain loopback TCP.
    let out = Command::new("curl")
        .args(["-sS", "-p", "-x", &format!("http://{plain}"), &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from behind the agent");

    // The same through the mutual-TLS frontend, with the apiserver's client certificate;
    // without one the TLS frontend refuses.
    let curl_tls = |client_cert: bool| {
        let mut curl = Command::new("curl");
        curl.args([
            "-sS",
            "-p",
            "-x",
            &format!("https://localhost:{}", tls.rsplit(':').next().unwrap()),
        ])
        .arg("--proxy-cacert")
        .arg(dir.join("ca.pem"));
        if client_cert {
            curl.arg("--proxy-cert").arg(dir.join("apiserver.pem"));
            curl.arg("--proxy-key").arg(dir.join("apiserver-key.pem"));
        }
        curl.arg(&url).output().unwrap()
    };
    let out = curl_tls(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from behind the agent");
    assert!(!curl_tls(false).status.success());
    // An agent's client certificate is no frontend client's.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-p",
            "-x",
            &format!("https://localhost:{}", tls.rsplit(':').next().unwrap()),
        ])
        .arg("--proxy-cacert")
        .arg(dir.join("ca.pem"))
        .arg("--proxy-cert")
        .arg(dir.join("node-a.pem"))
        .arg("--proxy-key")
        .arg(dir.join("node-a-key.pem"))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an agent's certificate opened the frontend: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A host no agent serves: curl sees the 503 at once.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-p",
            "-x",
            &format!("http://{plain}"),
            "http://node-nobody:10250/",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("503"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server logs the same status with its one-line reason.
    let line = server.wait_for(&["dial failed", "node-nobody:10250"]);
    assert!(line.contains("status=503"), "{line}");
    assert!(
        line.contains("no connected agent matches host \"node-nobody\""),
        "{line}"
    );
}

#[test]
fn forward_command_carries_a_bulk_transfer_intact() {
    let dir = temp_dir("forward");
    dev_pki(&dir);
    let sock = dir.join("connect.sock");
    let mut server = server(&dir, &["--connect-uds", sock.to_str().unwrap()]);
    let quic = listen_addr(&server.wait_for(&["accepting agents"]));
    server.wait_for(&["HTTP CONNECT frontend listening"]);
    let mut agent = agent(&dir, &quic);
    agent.wait_for(&["connected"]);
    let target = digest_target();
    let mut forward = Running::spawn(connector(&[
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--target",
        &target.to_string(),
        "--proxy",
        &format!("unix://{}", sock.display()),
    ]));
    let local = listen_addr(&forward.wait_for(&["forwarding"]));

    let data: Vec<u8> = (0..48u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_digest_answered(std::net::TcpStream::connect(&local).unwrap(), &data);
}

#[test]
fn server_forward_flag_carries_a_bulk_transfer_intact() {
    let dir = temp_dir("server-forward");
    dev_pki(&dir);
    let target = digest_target();
    let spec = format!("127.0.0.1:0={target},agent=node-a");
    let mut server = server(&dir, &["--forward", &spec]);
    let quic = listen_addr(&server.wait_for(&["accepting agents"]));
    let local = listen_addr(&server.wait_for(&["forwarding", "agent id \"node-a\""]));
    let mut agent = agent(&dir, &quic);
    agent.wait_for(&["connected"]);

    let data: Vec<u8> = (0..48u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    assert_digest_answered(std::net::TcpStream::connect(&local).unwrap(), &data);
}

/// Whoever reaches a forward's port reaches its target without
/// authenticating: it listens on loopback only (before, it served every
/// interface; the process then ran on, which `wait_exit` turns into a failure).
#[test]
fn forward_command_refuses_a_non_loopback_listen_address() {
    let mut forward = Running::spawn(connector(&[
        "forward",
        "--listen",
        "0.0.0.0:0",
        "--target",
        "10.0.0.5:80",
        "--proxy",
        "tcp://127.0.0.1:8131",
    ]));
    let status = forward.wait_exit();
    assert!(!status.success());
    let said = forward.seen().join("\n");
    assert!(said.contains("0.0.0.0 is not a loopback address"), "{said}");
}

#[test]
fn server_forward_flag_refuses_a_non_loopback_listen_address() {
    let out = connector(&["server", "--forward", "0.0.0.0:8080=10.0.0.5:80,agent=node-a"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0.0.0.0 is not a loopback address"), "{stderr}");
}
