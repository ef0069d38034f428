//! The `connector` binaries never log a token, even at TRACE level: a server
//! and agents run a full session (token agent, a tunnelled CONNECT, a wrong
//! token, a token claiming another node) and all their stderr is searched.

mod common;

use std::io::{Read, Write};

use common::*;

#[test]
fn no_token_in_any_log_line_at_trace_level() {
    let dir = temp_dir("secrets");
    dev_pki(&dir);
    let socket = dir.join("connect.sock");
    let token = std::fs::read_to_string(dir.join("node-a.token"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.len() >= 16, "dev-pki tokens are long enough to search for");
    let mut server = server(&dir, &["--log", "trace", "--connect-uds", socket.to_str().unwrap()]);
    let addr = listen_addr(&server.wait_for(&["accepting agents"]));
    server.wait_for(&["HTTP CONNECT frontend listening"]);

    let agent = |token_file: &std::path::Path, id: &str, identifiers: &str| {
        let mut cmd = connector(&[
            "agent",
            "--log",
            "trace",
            "--server",
            &addr,
            "--server-name",
            "localhost",
        ]);
        cmd.args([
            "--agent-id",
            id,
            "--identifiers",
            identifiers,
            "--allow",
            "127.0.0.1/32",
            "--ca",
        ])
        .arg(dir.join("ca.pem"))
        .arg("--token-file")
        .arg(token_file);
        Running::spawn(cmd)
    };
    let mut good = agent(&dir.join("node-a.token"), "node-a", "host=node-a,ipv4=127.0.0.1");
    good.wait_for(&["connected", "srv-test"]);
    // A tunnelled connection through it, over the CONNECT frontend.
    let target = http_target("through the tunnel");
    let mut io = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    write!(
        io,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    io.read_to_string(&mut response).unwrap();
    assert!(response.contains("through the tunnel"), "{response}");

    // A wrong token, and the real token claiming another node.
    let wrong = format!("{token}-but-wrong");
    let wrong_file = dir.join("wrong.token");
    std::fs::write(&wrong_file, &wrong).unwrap();
    let mut wrong_agent = agent(&wrong_file, "rogue", "host=node-a");
    wrong_agent.wait_for(&["the server rejected this agent"]);
    // Its own agent id (another id is refused before the claims are looked at).
    let mut claiming = agent(&dir.join("node-a.token"), "node-a", "host=node-b");
    claiming.wait_for(&["the server rejected this agent"]);
    let line = server.wait_for(&["agent claims identifiers its identity does not allow"]);
    assert!(line.contains("identity=node-a") && line.contains("node-b"), "{line}");

    let logs = [server, good, wrong_agent, claiming].map(Running::all_output);
    assert!(
        logs[0].contains("TRACE") && logs[1].contains("TRACE"),
        "trace logging is on"
    );
    for (who, text) in ["server", "agent", "wrong-token agent", "claiming agent"]
        .iter()
        .zip(&logs)
    {
        assert!(!text.contains(&token), "the token appears in the {who}'s log");
        assert!(
            !text.contains(&token[..12]),
            "part of the token appears in the {who}'s log"
        );
    }
}
