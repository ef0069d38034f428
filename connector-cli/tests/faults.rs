//! Process faults with the real binary: SIGKILL of the agent in the middle of a
//! transfer through the server's HTTP CONNECT frontend, and SIGKILL plus restart
//! of the server on the same port; each over QUIC and over the TCP (QMux)
//! transport.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// The agent with a short keepalive and idle timeout, set through the environment,
/// on `transport` (`quic` or `tcp`).
fn quick_agent(dir: &std::path::Path, quic: &str, transport: &str) -> Running {
    let mut cmd = agent_command(dir, quic);
    cmd.env("CONNECTOR_KEEPALIVE", "250ms")
        .env("CONNECTOR_IDLE_TIMEOUT", "2s")
        .env("CONNECTOR_TRANSPORT", transport);
    Running::spawn(cmd)
}

/// A server (plain-TCP CONNECT frontend, `extra` flags) and a [`quick_agent`] on `transport`, connected.
struct Started {
    server: Running,
    agent: Running,
    /// The server's agent address (QUIC, and TCP on the same port).
    quic: String,
    /// The plain-TCP CONNECT frontend.
    plain: String,
}

fn start(dir: &std::path::Path, extra: &[&str], transport: &str) -> Started {
    let mut flags = vec!["--connect-plain", "127.0.0.1:0"];
    flags.extend_from_slice(extra);
    let mut server = server(dir, &flags);
    let quic = listen_addr(&server.wait_for(&["accepting agents"]));
    let plain = listen_addr(&server.wait_for(&["HTTP CONNECT frontend listening", "tcp://"]));
    let mut agent = quick_agent(dir, &quic, transport);
    let connected = agent.wait_for(&["connected", "server_id="]);
    assert!(
        connected.contains(&format!("transport=\"{transport}\"")),
        "the agent uses {transport}: {connected}"
    );
    Started {
        server,
        agent,
        quic,
        plain,
    }
}

/// A TCP server on 127.0.0.1 that sends bytes to each connection until the peer goes away.
fn endless_source() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let chunk = vec![0x5a_u8; 64 * 1024];
                while tcp.write_all(&chunk).is_ok() {}
            });
        }
    });
    addr
}

/// Opens a tunnelled connection with `CONNECT target` at the plain frontend `proxy`.
fn connect_through(proxy: &str, target: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(proxy).unwrap();
    // The hang guard of every read below.
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(tcp, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).expect("CONNECT response");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT refused: {head}");
    tcp
}

/// A digest exchange through a fresh CONNECT: the whole path works.
fn digest_through(proxy: &str, target: SocketAddr) {
    assert_digest_answered(connect_through(proxy, target), &[7u8; 1024 * 1024]);
}

#[test]
fn killing_the_agent_mid_transfer_ends_the_clients_connection_quic() {
    killing_the_agent_mid_transfer_ends_the_clients_connection("quic");
}

#[test]
fn killing_the_agent_mid_transfer_ends_the_clients_connection_tcp() {
    killing_the_agent_mid_transfer_ends_the_clients_connection("tcp");
}

fn killing_the_agent_mid_transfer_ends_the_clients_connection(transport: &str) {
    let dir = temp_dir(&format!("kill-agent-{transport}"));
    dev_pki(&dir);
    // The server's own idle timeout is ten minutes, past the 60 s wait below: only the
    // agent's 2 s one (from its environment) can remove the agent in time.
    let Started {
        mut server,
        agent,
        plain,
        ..
    } = start(&dir, &["--keepalive", "250ms", "--idle-timeout", "10m"], transport);

    let mut tcp = connect_through(&plain, endless_source());
    let mut buf = vec![0u8; 64 * 1024];
    let mut before = 0;
    while before < 4 * 1024 * 1024 {
        before += tcp.read(&mut buf).expect("data before the kill");
    }
    agent.all_output(); // SIGKILL
    let killed_at = Instant::now();

    // The client drains what was in flight, then its read ends: EOF or an error, not the hang guard.
    let mut after = 0u64;
    let end = loop {
        match tcp.read(&mut buf) {
            Ok(0) => break "EOF".to_owned(),
            Ok(n) => after += n as u64,
            Err(e) => {
                assert!(
                    !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    "the client's read hung for 30 s after the agent was killed"
                );
                break format!("error: {e}");
            }
        }
    };
    let ended_after = killed_at.elapsed();
    server.wait_for(&["agent disconnected", "node-a"]);
    let removed_after = killed_at.elapsed();
    eprintln!(
        "client read {before} bytes, agent killed, {after} more, then {end} after {ended_after:?}; \
         server removed the agent after {removed_after:?}"
    );
}

#[test]
fn the_agent_reconnects_to_a_restarted_server_process_quic() {
    the_agent_reconnects_to_a_restarted_server_process("quic");
}

#[test]
fn the_agent_reconnects_to_a_restarted_server_process_tcp() {
    the_agent_reconnects_to_a_restarted_server_process("tcp");
}

fn the_agent_reconnects_to_a_restarted_server_process(transport: &str) {
    let dir = temp_dir(&format!("restart-server-{transport}"));
    dev_pki(&dir);
    let Started {
        server: first,
        mut agent,
        quic,
        plain,
    } = start(&dir, &[], transport);
    let target = digest_target();
    digest_through(&plain, target);

    // SIGKILL: over QUIC no close reaches the agent, which notices by its idle
    // timeout; over TCP the kernel ends the connection.
    first.all_output();
    agent.wait_for(&["connection to the server ended"]);
    let mut second = server(&dir, &["--listen", &quic, "--connect-plain", "127.0.0.1:0"]);
    assert_eq!(listen_addr(&second.wait_for(&["accepting agents"])), quic);
    let plain = listen_addr(&second.wait_for(&["HTTP CONNECT frontend listening", "tcp://"]));
    agent.wait_for(&["connected", "server_id="]);
    second.wait_for(&["agent connected", "node-a"]);
    digest_through(&plain, target);
}
