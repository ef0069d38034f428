//! The `connector` binary as a user runs it: real processes, real QUIC on loopback.

mod common;

use common::*;

#[test]
fn demo_tunnels_traffic_and_reports_it() {
    let out = connector(&["demo", "--bytes", "4MiB", "--connections", "20", "--round-trips", "50"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "SHA-256 identical",
        "Gbit/s",
        "p99",
        "dials/s",
        "connection refused",
        "no connected agent",
        "data intact",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}

#[test]
fn every_subcommand_has_help() {
    for (sub, flag) in [
        ("server", "--tokens"),
        ("agent", "--allow"),
        ("demo", "--bytes"),
        ("dev-pki", "--out"),
        ("forward", "--proxy"),
    ] {
        let out = connector(&[sub, "--help"]).output().unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(flag),
            "{sub} --help lacks {flag}"
        );
    }
    // The top level lists every subcommand with a line on what it does.
    let out = connector(&["--help"]).output().unwrap();
    assert!(out.status.success());
    let top = String::from_utf8_lossy(&out.stdout);
    for sub in ["server", "agent", "forward", "demo", "dev-pki"] {
        assert!(
            top.lines()
                .any(|l| l.trim_start().starts_with(sub) && l.len() > sub.len() + 8),
            "connector --help lacks a described {sub}:\n{top}"
        );
    }
}

#[test]
fn server_without_any_authentication_refuses_to_start() {
    let dir = temp_dir("noauth");
    dev_pki(&dir);
    let out = connector(&["server", "--listen", "127.0.0.1:0", "--cert"])
        .arg(dir.join("server.pem"))
        .arg("--key")
        .arg(dir.join("server-key.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tokens"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn agents_connect_to_a_server_with_token_or_certificate_and_bad_tokens_are_rejected() {
    let dir = temp_dir("e2e");
    dev_pki(&dir);
    let mut server = connector(&["server", "--listen", "127.0.0.1:0", "--server-id", "srv-test"]);
    server
        .arg("--cert")
        .arg(dir.join("server.pem"))
        .arg("--key")
        .arg(dir.join("server-key.pem"))
        .arg("--tokens")
        .arg(dir.join("tokens"))
        .arg("--client-ca")
        .arg(dir.join("ca.pem"));
    let mut server = Running::spawn(server);
    let line = server.wait_for(&["accepting agents"]);
    let addr = line.rsplit("listen=").next().unwrap().trim().to_owned();

    let agent_cmd = |extra: &[&str]| {
        let mut cmd = connector(&["agent", "--server", &addr, "--server-name", "localhost", "--ca"]);
        cmd.arg(dir.join("ca.pem")).args(extra);
        cmd
    };
    // Token agent.
    let token = dir.join("node-a.token");
    let mut agent = Running::spawn({
        let mut c = agent_cmd(&["--agent-id", "node-a", "--token-file"]);
        c.arg(&token);
        c
    });
    agent.wait_for(&["connected", "srv-test"]);
    server.wait_for(&["agent connected", "agent=node-a", "identity=node-a"]);
    drop(agent);

    // Certificate agent.
    let mut agent = Running::spawn({
        let mut c = agent_cmd(&["--agent-id", "node-a", "--cert"]);
        c.arg(dir.join("node-a.pem"))
            .arg("--key")
            .arg(dir.join("node-a-key.pem"));
        c
    });
    agent.wait_for(&["connected", "srv-test"]);
    server.wait_for(&["agent connected", "agent=node-a"]);
    drop(agent);

    // Wrong token: rejected with a clear reason, which never contains the token.
    let bad = dir.join("bad.token");
    std::fs::write(&bad, "not-the-token\n").unwrap();
    let mut agent = Running::spawn({
        let mut c = agent_cmd(&["--agent-id", "node-a", "--token-file"]);
        c.arg(&bad);
        c
    });
    let line = agent.wait_for(&["the server rejected this agent"]);
    assert!(
        line.contains("authentication failed") && line.contains("not recognised"),
        "{line}"
    );
    assert!(!line.contains("not-the-token"), "{line}");
    let line = server.wait_for(&["rejecting agent"]);
    assert!(!line.contains("not-the-token"), "{line}");
}

#[test]
fn config_file_runs_server_and_agent_and_check_config_names_bad_settings() {
    let dir = temp_dir("config");
    dev_pki(&dir);
    let d = dir.display();
    let config = dir.join("connector.toml");
    std::fs::write(
        &config,
        format!(
            "log = \"info\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\nserver-id = \"srv-file\"\ncert = \"{d}/server.pem\"\n\
             key = \"{d}/server-key.pem\"\ntokens = \"{d}/tokens\"\nmax_agents = 5\n\
             [agent]\nserver-name = \"localhost\"\nagent-id = \"node-a\"\nca = \"{d}/ca.pem\"\n\
             token-file = \"{d}/node-a.token\"\nidentifiers = \"host=node-a\"\nallow = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let out = connector(&["server", "--check-config", config]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("the server configuration is valid"));

    // The file's server-id is overridden by the flag; the agent adds --server on the command line.
    let mut server = Running::spawn(connector(&["server", "--config", config, "--server-id", "srv-flag"]));
    let quic = listen_addr(&server.wait_for(&["accepting agents", "server_id=srv-flag"]));
    let mut agent = Running::spawn(connector(&["agent", "--config", config, "--server", &quic]));
    agent.wait_for(&["connected", "srv-flag"]);
    server.wait_for(&["agent connected", "agent=node-a"]);

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nmax-agent = 5\n").unwrap();
    let out = connector(&["server", "--check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown setting \"max-agent\" in [server]"), "{err}");

    std::fs::write(
        &bad,
        format!("[server]\ncert = \"{d}/missing.pem\"\nkey = \"{d}/server-key.pem\"\ntokens = \"{d}/tokens\"\n"),
    )
    .unwrap();
    let out = connector(&["server", "--check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.pem"), "{err}");
}

/// Every limit is a setting: flag, `CONNECTOR_*` variable and config-file key,
/// each checked by `--check-config`, which names a bad value and its source.
#[test]
fn limit_settings_are_read_from_the_file_and_the_environment_and_bad_values_are_named() {
    let dir = temp_dir("limits");
    dev_pki(&dir);
    let d = dir.display();
    let config = dir.join("limits.toml");
    let write = |server_extra: &str, agent_extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server-key.pem\"\ntokens = \"{d}/tokens\"\n\
                 max-agents = 100\nmax-streams-per-agent = 50\nmax-pending-dials = 20\nmax-pre-hello = 200\nhello-timeout = \"5s\"\n\
                 dial-timeout = \"10s\"\nfrontend-max-connections = 10\nfrontend-head-timeout = \"2s\"\n{server_extra}\
                 [agent]\nserver = \"localhost:8443\"\nca = \"{d}/ca.pem\"\ntoken-file = \"{d}/node-a.token\"\n\
                 max-connections = 30\n{agent_extra}"
            ),
        )
        .unwrap();
    };
    let check = |command: &str, env: &[(&str, &str)]| {
        let mut cmd = connector(&[command, "--check-config", config.to_str().unwrap()]);
        cmd.envs(env.iter().copied());
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    write(
        "frontend-max-head = \"4KiB\"\nmax-handshakes = 500\nmax-unadmitted-per-source = 64\nauth-timeout = \"5s\"\n",
        "tunnel-idle-timeout = \"4h\"\ntunnel-stall-timeout = \"5m\"\n",
    );
    for command in ["server", "agent"] {
        let (ok, err) = check(command, &[]);
        assert!(ok, "{command}: {err}");
    }
    let (ok, _) = check("agent", &[("CONNECTOR_TUNNEL_IDLE_TIMEOUT", "off")]);
    assert!(ok);

    // A bad value in the environment is named with its variable.
    let (ok, err) = check("server", &[("CONNECTOR_MAX_PENDING_DIALS", "lots")]);
    assert!(!ok);
    assert!(err.contains("--max-pending-dials") && err.contains("lots"), "{err}");
    let (ok, err) = check("agent", &[("CONNECTOR_MAX_CONNECTIONS", "-1")]);
    assert!(!ok);
    assert!(err.contains("--max-connections"), "{err}");

    // Bad values in the file are named too.
    write("", "tunnel-idle-timeout = \"never\"\n");
    let (ok, err) = check("agent", &[]);
    assert!(!ok);
    assert!(err.contains("--tunnel-idle-timeout") && err.contains("never"), "{err}");
    write("", "tunnel-stall-timeout = \"soon\"\n");
    let (ok, err) = check("agent", &[]);
    assert!(!ok);
    assert!(err.contains("--tunnel-stall-timeout") && err.contains("soon"), "{err}");
    write("frontend-max-head = \"64\"\n", "");
    let (ok, err) = check("server", &[]);
    assert!(!ok);
    assert!(err.contains("between 1KiB and 1MiB"), "{err}");
}

#[test]
fn agent_with_transport_tcp_connects_over_the_servers_tcp_listener() {
    let dir = temp_dir("tcp-transport");
    dev_pki(&dir);
    let mut server = server(&dir, &[]);
    let line = server.wait_for(&["listening for agents"]);
    let tcp = line
        .split("tcp=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no tcp= in {line:?}"))
        .to_owned();
    let mut cmd = connector(&[
        "agent",
        "--server",
        &tcp,
        "--server-name",
        "localhost",
        "--agent-id",
        "node-a",
        "--transport",
        "tcp",
        "--proxy",
        "off",
    ]);
    cmd.arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--token-file")
        .arg(dir.join("node-a.token"));
    let mut agent = Running::spawn(cmd);
    agent.wait_for(&["agent transport chosen", "transport=\"tcp\""]);
    agent.wait_for(&["connected", "srv-test"]);
    server.wait_for(&["agent connected", "agent=node-a"]);
}

#[test]
fn check_config_validates_transport_proxy_and_tcp_listen() {
    let dir = temp_dir("transport-config");
    dev_pki(&dir);
    let d = dir.display();
    let file = dir.join("connector.toml");
    let check = |command: &str, section: &str| {
        std::fs::write(&file, section.replace("{d}", &d.to_string())).unwrap();
        connector(&[command, "--check-config", file.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let agent = "[agent]\nserver = \"localhost:8443\"\nca = \"{d}/ca.pem\"\ntoken-file = \"{d}/node-a.token\"\n";
    let out = check(
        "agent",
        &format!(
            "{agent}transport = \"tcp\"\ntcp-server = \"localhost:443\"\nproxy = \"http://u:hunter2@proxy:3128\"\n"
        ),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = check("agent", &format!("{agent}transport = \"udp\"\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("expected auto, quic or tcp"),
        "{err}"
    );
    let out = check("agent", &format!("{agent}proxy = \"socks5://u:hunter2@proxy:1080\"\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not supported"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let server = "[server]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server-key.pem\"\ntokens = \"{d}/tokens\"\n";
    let out = check("server", &format!("{server}tcp-listen = \"off\"\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = check("server", &format!("{server}tcp-listen = \"everywhere\"\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("expected IP:PORT or off"),
        "{err}"
    );
}

/// An agent given the wrong CA file (another `dev-pki` run) is told which
/// file does not sign the server's certificate, over QUIC and over TCP, and
/// the auto transport does not take the certificate error for a blocked
/// UDP path.
#[test]
fn an_agent_with_the_wrong_ca_is_told_which_ca_file_does_not_sign_the_server() {
    let dir = temp_dir("wrong-ca");
    let other = dir.join("other");
    dev_pki(&dir);
    dev_pki(&other);
    let mut server = server(&dir, &[]);
    let addr = listen_addr(&server.wait_for(&["accepting agents"]));
    let wrong_ca = other.join("ca.pem");
    for transport in ["auto", "tcp"] {
        let mut cmd = connector(&["agent", "--server", &addr, "--server-name", "localhost"]);
        cmd.arg("--ca")
            .arg(&wrong_ca)
            .arg("--token-file")
            .arg(dir.join("node-a.token"))
            .args(["--identifiers", "host=node-a", "--transport", transport]);
        let mut agent = Running::spawn(cmd);
        let expected = format!(
            "the server's certificate is not signed by the CA in {}",
            wrong_ca.display()
        );
        let failure = agent.wait_for(&["could not connect", &expected]);
        assert!(failure.contains("set the agent's CA"), "{failure}");
        // The fallback decides (and logs) before the attempt's failure is reported.
        assert!(
            !agent.seen().iter().any(|l| l.contains("falling back to TCP")),
            "{transport}: {:#?}",
            agent.seen()
        );
    }
}

/// A token file missing when the agent starts is a configuration error, like
/// a missing `--ca`: the agent exits at once naming the file. One that goes
/// away later (a rotation) is retried until it is back.
#[test]
fn a_missing_token_file_stops_the_agent_at_start_but_is_waited_for_once_running() {
    let dir = temp_dir("missing-token");
    dev_pki(&dir);
    let mut server = server(&dir, &[]);
    let addr = listen_addr(&server.wait_for(&["accepting agents"]));
    let token = dir.join("node-a.token");
    let moved = dir.join("node-a.token.moved");
    std::fs::rename(&token, &moved).unwrap();
    let mut refused = Running::spawn(agent_command(&dir, &addr));
    let status = refused.wait_exit();
    let stderr = refused.seen().join("\n");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("--token-file") && stderr.contains(&format!("cannot read token file {}", token.display())),
        "{stderr}"
    );

    std::fs::rename(&moved, &token).unwrap();
    let mut agent = agent(&dir, &addr);
    agent.wait_for(&["connected", "srv-test"]);
    std::fs::rename(&token, &moved).unwrap();
    server.signal("TERM"); // the agent reconnects to the replacement, and reads the token again
    server.wait_exit();
    let mut replacement = server_at(&dir, &addr, "srv-next", &[]);
    replacement.wait_for(&["accepting agents"]);
    agent.wait_for(&["cannot read token file", &token.display().to_string()]);
    std::fs::rename(&moved, &token).unwrap();
    agent.wait_for(&["connected", "srv-next"]);
}
