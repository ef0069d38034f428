//! SIGTERM drains instead of cutting: a server tells its agents to go away
//! and an agent tells its servers, new dials are refused at once, and an open
//! tunnelled connection keeps working until it ends; then the process exits.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use common::*;

/// A TCP echo server on 127.0.0.1 (echoes until EOF, then closes).
fn echo_target() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = tcp.try_clone().unwrap();
                let mut writer = tcp;
                let _ = std::io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// Sends `CONNECT target` to the frontend at `proxy`; returns the status code and,
/// on 200, the tunnel.
fn connect(proxy: &str, target: &str) -> (u16, Option<TcpStream>) {
    let mut tcp = TcpStream::connect(proxy).unwrap();
    write!(tcp, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code: u16 = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    (code, (code == 200).then_some(tcp))
}

fn echo_through(tunnel: &mut TcpStream, text: &[u8]) {
    tunnel.write_all(text).unwrap();
    let mut back = vec![0u8; text.len()];
    tunnel.read_exact(&mut back).unwrap();
    assert_eq!(back, text);
}

/// Half-closes the tunnel and reads it to its end.
fn finish(mut tunnel: TcpStream) {
    tunnel.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    tunnel.read_to_end(&mut rest).unwrap();
}

/// A server with a plain CONNECT frontend, an agent, and a tunnel open through them to an echo target.
struct Setup {
    server: Running,
    agent: Running,
    proxy: String,
    target: String,
    tunnel: TcpStream,
}

fn setup(name: &str, server_flags: &[&str]) -> Setup {
    let dir = temp_dir(name);
    dev_pki(&dir);
    let mut flags = vec!["--connect-plain", "127.0.0.1:0"];
    flags.extend_from_slice(server_flags);
    let mut server = server(&dir, &flags);
    let quic = listen_addr(&server.wait_for(&["accepting agents"]));
    let proxy = listen_addr(&server.wait_for(&["HTTP CONNECT frontend listening"]));
    let mut agent = agent(&dir, &quic);
    agent.wait_for(&["connected"]);
    let target = echo_target().to_string();
    let (code, tunnel) = connect(&proxy, &target);
    assert_eq!(code, 200);
    Setup {
        server,
        agent,
        proxy,
        target,
        tunnel: tunnel.unwrap(),
    }
}

#[test]
fn sigterm_drains_the_server_without_cutting_an_open_connection() {
    let Setup {
        mut server,
        mut agent,
        proxy,
        target,
        mut tunnel,
    } = setup("drain-server", &["--drain-grace", "60s"]);
    echo_through(&mut tunnel, b"before the drain");

    server.signal("TERM");
    server.wait_for(&["draining"]);
    agent.wait_for(&["the server is going away"]);
    let (code, _) = connect(&proxy, &target);
    assert_ne!(code, 200, "a draining server must refuse new dials");
    echo_through(&mut tunnel, b"during the drain");
    finish(tunnel);
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
    server.wait_for(&["drained: no tunnelled connection open"]);
}

#[test]
fn sigterm_drains_the_agent_without_cutting_an_open_connection() {
    let Setup {
        mut server,
        mut agent,
        proxy,
        mut tunnel,
        ..
    } = setup("drain-agent", &[]);

    agent.signal("TERM");
    server.wait_for(&["agent is going away"]);
    let (code, _) = connect(&proxy, "node-a:80");
    assert_eq!(code, 503, "no agent may be chosen for node-a any more");
    echo_through(&mut tunnel, b"still served while the agent drains");
    finish(tunnel);
    let status = agent.wait_exit();
    assert!(status.success(), "{status:?}");
    // A drained agent leaving is routine: the server notes it without a warning.
    server.wait_for(&["agent disconnected"]);
    let warnings: Vec<_> = server.seen().iter().filter(|l| l.contains("WARN")).collect();
    assert!(
        warnings.is_empty(),
        "the server warned about a drained agent: {warnings:?}"
    );
}

#[test]
fn sigterm_with_nothing_open_reaches_every_agent_before_the_server_exits() {
    let dir = temp_dir("drain-idle");
    dev_pki(&dir);
    let mut server = server(&dir, &["--drain-grace", "60s"]);
    let quic = listen_addr(&server.wait_for(&["accepting agents"]));
    let mut agent = agent(&dir, &quic);
    agent.wait_for(&["connected"]);

    // Nothing is open: the server used to exit before its GoAway went out.
    server.signal("TERM");
    server.wait_for(&["go-away acknowledged", "node-a"]);
    agent.wait_for(&["the server is going away"]);
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
    server.wait_for(&["every agent acknowledged the go-away"]);
    // Then the closes went out: "closed: every agent connection's close has
    // gone out", or, on a loaded machine where QUIC's draining period (three
    // probe timeouts) outlasts the bound, "not all closed".
    assert!(
        server
            .seen()
            .iter()
            .any(|l| l.contains("closed: every agent connection's close has gone out") || l.contains("not all closed")),
        "{:?}",
        server.seen()
    );
    // The grace (60 s) was not waited out: the acknowledgement ended the drain.
    assert!(
        !server.seen().iter().any(|l| l.contains("grace over")),
        "{:?}",
        server.seen()
    );
}
