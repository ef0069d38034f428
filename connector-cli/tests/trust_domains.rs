//! Trust domains with the binaries and `connector dev-pki`'s files: agents
//! and frontend clients (kube-apiserver) get certificates from different
//! CAs, a frontend that trusts the agents' CA must list the clients it
//! admits, and dev-pki's private files are never readable by others.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// curl through the mutual-TLS CONNECT frontend at `tls` presenting `cert`
/// (a dev-pki base name: `apiserver`, `node-a`).
fn curl_through(dir: &Path, tls: &str, cert: &str, url: &str) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20", "-p", "-x"])
        .arg(format!("https://localhost:{}", tls.rsplit(':').next().unwrap()))
        .arg("--proxy-cacert")
        .arg(dir.join("ca.pem"))
        .arg("--proxy-cert")
        .arg(dir.join(format!("{cert}.pem")))
        .arg("--proxy-key")
        .arg(dir.join(format!("{cert}-key.pem")))
        .arg(url)
        .output()
        .unwrap()
}

/// The TLS frontend flags with `client_ca` (a dev-pki file name).
fn tls_frontend(dir: &Path, client_ca: &str) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        "--connect-tls".into(),
        "127.0.0.1:0".into(),
        "--frontend-cert".into(),
        file("server.pem"),
        "--frontend-key".into(),
        file("server-key.pem"),
        "--frontend-client-ca".into(),
        file(client_ca),
    ]
}

/// A frontend whose client CA is the agents' CA would open to every agent:
/// the server refuses to start (and `--check-config` refuses the settings)
/// unless `--frontend-allow-client` lists the clients it admits, and then an
/// agent's certificate is refused while the server keeps running.
#[test]
fn a_frontend_trusting_the_agents_ca_needs_an_allow_list() {
    let dir = temp_dir("shared-ca");
    dev_pki(&dir);
    let shared = tls_frontend(&dir, "ca.pem");
    let shared: Vec<&str> = shared.iter().map(String::as_str).collect();
    for check in [false, true] {
        let mut extra = shared.clone();
        if check {
            extra.extend(["--check-config", "/dev/null"]);
        }
        let mut server = server(&dir, &extra);
        let status = server.wait_exit();
        let log = server.seen().join("\n");
        assert!(
            !status.success(),
            "started with the agents' CA for frontend clients:\n{log}"
        );
        assert!(
            log.contains("--frontend-allow-client") && log.contains("own CA"),
            "{log}"
        );
    }

    // The list from a config file (`--check-config FILE` reads it and checks).
    let config = dir.join("server.toml");
    std::fs::write(&config, "[server]\nfrontend-allow-client = [\"kube-apiserver\"]\n").unwrap();
    let mut checked = shared.clone();
    checked.extend(["--check-config", config.to_str().unwrap()]);
    let mut check = server(&dir, &checked);
    assert!(check.wait_exit().success(), "{}", check.seen().join("\n"));

    let mut listed = shared.clone();
    listed.extend(["--frontend-allow-client", "kube-apiserver"]);
    let mut server = server(&dir, &listed);
    let quic = listen_addr(&server.wait_for(&["accepting agents"]));
    let tls = listen_addr(&server.wait_for(&["HTTP CONNECT frontend listening", "tls://"]));
    let mut agent = agent(&dir, &quic);
    agent.wait_for(&["connected"]);
    let target = http_target("behind the agent");
    let out = curl_through(&dir, &tls, "node-a", &format!("http://{target}/"));
    assert!(!out.status.success(), "an agent's certificate opened the frontend");
    let line = server.wait_for(&["refusing a client certificate"]);
    assert!(line.contains("node-a") && line.contains("allow-list"), "{line}");
}

/// With dev-pki's files as its printed commands use them, kube-apiserver's
/// certificate opens the TLS frontend and is no agent certificate; an
/// agent's certificate opens no frontend.
#[test]
fn dev_pki_keeps_agents_and_frontend_clients_apart() {
    let dir = temp_dir("apart");
    dev_pki(&dir);
    let frontend = tls_frontend(&dir, "frontend-client-ca.pem");
    let frontend: Vec<&str> = frontend.iter().map(String::as_str).collect();
    let mut server = server(&dir, &frontend);
    let quic = listen_addr(&server.wait_for(&["accepting agents"]));
    let tls = listen_addr(&server.wait_for(&["HTTP CONNECT frontend listening", "tls://"]));
    let mut agent = agent(&dir, &quic);
    agent.wait_for(&["connected"]);
    let target = http_target("behind the agent");
    let url = format!("http://{target}/");

    let out = curl_through(&dir, &tls, "apiserver", &url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "behind the agent");
    assert!(!curl_through(&dir, &tls, "node-a", &url).status.success());

    // The apiserver's certificate presented as an agent's.
    let mut impostor = connector(&[
        "agent",
        "--server",
        &quic,
        "--server-name",
        "localhost",
        "--agent-id",
        "kube-apiserver",
        "--transport",
        "quic",
    ]);
    impostor
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("apiserver.pem"))
        .arg("--key")
        .arg(dir.join("apiserver-key.pem"));
    let mut impostor = Running::spawn(impostor);
    impostor.wait_for(&["could not connect to the server"]);
    let log = impostor.all_output();
    assert!(!log.contains("connected server"), "{log}");
    drop(agent);
    let log = server.all_output();
    assert!(!log.contains("identity=kube-apiserver"), "{log}");
}

/// dev-pki creates its keys and tokens owner-only from the start: a file it
/// replaces is a new file, so whoever opened the old one (world-readable, as
/// an earlier run or a careless copy left it) does not read the new secret.
#[test]
fn dev_pki_creates_private_files_owner_only() {
    let dir = temp_dir("modes");
    let secret_files = [
        "server-key.pem",
        "node-a-key.pem",
        "apiserver-key.pem",
        "node-a.token",
        "tokens",
    ];
    let mut readers = Vec::new();
    for name in secret_files {
        let path = dir.join(name);
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        readers.push((name, std::fs::File::open(&path).unwrap()));
    }
    dev_pki(&dir);
    for (name, mut reader) in readers {
        let mode = std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}: {mode:o}");
        let mut seen = String::new();
        reader.read_to_string(&mut seen).unwrap();
        assert_eq!(
            seen, "old\n",
            "{name}: the new secret was written into the old, readable file"
        );
    }
    for name in [
        "ca.pem",
        "frontend-client-ca.pem",
        "server.pem",
        "node-a.pem",
        "apiserver.pem",
    ] {
        assert!(dir.join(name).is_file(), "{name}");
    }
}
