//! `connector agents` against a live `connector server --admin` with a live
//! `connector agent`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};

use common::*;

fn run(args: &[&str]) -> Output {
    connector(args).output().expect("run connector agents")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn agents_lists_the_connected_agent_as_a_table_and_as_json() {
    let dir = temp_dir("agents-list");
    dev_pki(&dir);
    let mut server = server(&dir, &["--admin", "127.0.0.1:0"]);
    let admin = listen_addr(&server.wait_for(&["admin endpoints listening", "/agents"]));
    let quic = listen_addr(&server.wait_for(&["accepting agents"]));
    let mut agent = agent(&dir, &quic);
    agent.wait_for(&["connected", "srv-test"]);
    server.wait_for(&["agent connected", "agent=node-a"]);

    let out = run(&["agents", "--admin", &admin]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("AGENT") && header.contains("TRANSPORT"), "{table}");
    let row = lines.next().unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells.get(..4),
        Some(&["node-a", "node-a", "quic", "srv-test"][..]),
        "{table}"
    );
    assert!(row.contains("host=node-a,ipv4=127.0.0.1"), "{table}");

    let out = run(&["agents", "--admin", &admin, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(json["server_id"], "srv-test");
    let agents = json["agents"].as_array().expect("an agents array");
    assert_eq!(agents.len(), 1, "{json}");
    let a = &agents[0];
    assert_eq!(a["agent_id"], "node-a");
    assert_eq!(a["identity"], "node-a");
    assert_eq!(a["transport"], "quic");
    assert_eq!(a["server_id"], "srv-test");
    assert_eq!(a["open_connections"], 0);
    assert!(a["rtt_ms"].is_number(), "{a}");
    assert!(a["last_disconnect"].is_null(), "{a}");

    // The agent stops: it is listed as recently disconnected, with why.
    agent.signal("TERM");
    assert!(agent.wait_exit().success());
    server.wait_for(&["agent disconnected", "node-a"]);
    let out = run(&["agents", "--admin", &admin]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("no agents connected to srv-test"), "{table}");
    let gone = table
        .lines()
        .skip_while(|l| !l.starts_with("recently disconnected"))
        .nth(2)
        .unwrap_or_else(|| panic!("no recently disconnected agent in:\n{table}"));
    assert!(gone.starts_with("node-a "), "{table}");
}

#[test]
fn agents_watch_redraws_until_stopped() {
    let dir = temp_dir("agents-watch");
    dev_pki(&dir);
    let mut server = server(&dir, &["--admin", "127.0.0.1:0"]);
    let admin = listen_addr(&server.wait_for(&["admin endpoints listening"]));
    let quic = listen_addr(&server.wait_for(&["accepting agents"]));
    let _agent = agent(&dir, &quic);
    server.wait_for(&["agent connected", "agent=node-a"]);

    let mut watch = connector(&["agents", "--admin", &admin, "--watch", "50ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut redraws = 0;
    let mut rows = 0;
    // Reads until the third redraw has begun (each read blocks until output comes).
    while redraws < 3 {
        let line = lines.next().expect("watch ended early").unwrap();
        if line.starts_with("connector agents, every 50ms") {
            redraws += 1;
        } else if line.starts_with("node-a ") {
            rows += 1;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(rows, 2, "node-a in each of the two complete redraws");
}

#[test]
fn agents_says_which_address_to_pass_when_nothing_answers() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = run(&["agents", "--admin", &addr]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&addr) && err.contains("--admin"), "{err}");

    // An agent's admin listener has no /agents: the error says whose to ask.
    let dir = temp_dir("agents-wrong-admin");
    dev_pki(&dir);
    let mut server = server(&dir, &[]);
    let quic = listen_addr(&server.wait_for(&["accepting agents"]));
    let mut agent = Running::spawn({
        let mut cmd = agent_command(&dir, &quic);
        cmd.args(["--admin", "127.0.0.1:0"]);
        cmd
    });
    let agent_admin = listen_addr(&agent.wait_for(&["admin endpoints listening"]));
    let out = run(&["agents", "--admin", &agent_admin]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("404") && err.contains("server's --admin"), "{err}");
}
