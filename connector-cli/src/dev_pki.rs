//! `connector dev-pki`: writes throw-away certificates and a token for
//! trying `connector server`, `connector agent` and the TLS frontends by
//! hand. Production deployments use their own PKI, with the same split.
//!
//! Two trust domains, two CAs (their keys are not kept):
//!
//! * `ca.pem`, the agents' CA: the server's certificate (`server.pem`, EKU
//!   serverAuth), which agents pin with `--ca`, and the agents' client
//!   certificates (`NODE.pem`, EKU clientAuth), which the server trusts with
//!   `--client-ca`. The EKUs keep one from passing for the other.
//! * `frontend-client-ca.pem`, the frontend clients' CA: kube-apiserver's
//!   client certificate (`apiserver.pem`, EKU clientAuth), which the TLS
//!   frontends trust with `--frontend-client-ca`. A frontend client may dial
//!   anything any agent serves, so no agent certificate may open a frontend
//!   and the apiserver's certificate is no agent's.
//!
//! Keys and tokens are created owner-only (0600) as new files; an existing
//! file of the same name is replaced, never written into.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use connector_core::pki::ThrowawayCa;

#[derive(Debug, Args)]
pub struct DevPkiArgs {
    /// Directory to write into (created if missing; existing files are replaced).
    #[arg(long, default_value = "connector-dev-pki")]
    out: PathBuf,
    /// Names and addresses on the server certificate (repeatable).
    #[arg(long = "server-name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
    server_names: Vec<String>,
    /// Node the agent credentials are issued for.
    #[arg(long, default_value = "node-a")]
    node: String,
}

pub fn run(args: DevPkiArgs) -> anyhow::Result<()> {
    let out = &args.out;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let agents_ca = ThrowawayCa::new("connector dev agents CA")?;
    let frontend_ca = ThrowawayCa::new("connector dev frontend clients CA")?;
    let names: Vec<&str> = args.server_names.iter().map(String::as_str).collect();
    let server = agents_ca.issue_server("connector server", &names)?;
    let client = agents_ca.issue_client(&args.node, &[&args.node])?;
    let apiserver = frontend_ca.issue_client("kube-apiserver", &[])?;
    let token = format!("{:032x}", rand::random::<u128>());
    // The token may serve the node's name and this machine's loopback address,
    // where a developer runs the targets.
    let may_claim = format!("host={},ipv4=127.0.0.1", args.node);
    write(out, "ca.pem", &agents_ca.cert_pem())?;
    write(out, "frontend-client-ca.pem", &frontend_ca.cert_pem())?;
    write(out, "server.pem", &server.cert_pem)?;
    write_secret(out, "server-key.pem", &server.key_pem)?;
    write(out, &format!("{}.pem", args.node), &client.cert_pem)?;
    write_secret(out, &format!("{}-key.pem", args.node), &client.key_pem)?;
    write_secret(out, &format!("{}.token", args.node), &token)?;
    write(out, "apiserver.pem", &apiserver.cert_pem)?;
    write_secret(out, "apiserver-key.pem", &apiserver.key_pem)?;
    write_secret(
        out,
        "tokens",
        &format!("# TOKEN IDENTITY [MAY CLAIM]\n{token} {} {may_claim}\n", args.node),
    )?;
    let d = out.display();
    let node = &args.node;
    println!("wrote throw-away certificates and a token to {d}/ (not for production):");
    println!("  ca.pem                  agents' CA: server.pem (serverAuth), {node}.pem (clientAuth)");
    println!("  frontend-client-ca.pem  frontend clients' CA: apiserver.pem (clientAuth)\n");
    println!("server:  connector server --listen 127.0.0.1:8443 --cert {d}/server.pem --key {d}/server-key.pem \\");
    println!("           --tokens {d}/tokens --client-ca {d}/ca.pem \\");
    println!(
        "           --connect-tls 127.0.0.1:8131 --frontend-cert {d}/server.pem --frontend-key {d}/server-key.pem \\"
    );
    println!("           --frontend-client-ca {d}/frontend-client-ca.pem");
    println!("agent:   connector agent --server 127.0.0.1:8443 --ca {d}/ca.pem --agent-id {node} \\");
    println!("           --token-file {d}/{node}.token --identifiers {may_claim} --allow 127.0.0.1/32");
    println!(
        "   or:   connector agent --server 127.0.0.1:8443 --ca {d}/ca.pem --agent-id {node} --cert {d}/{node}.pem --key {d}/{node}-key.pem --allow 127.0.0.1/32"
    );
    println!("client:  curl -p -x https://localhost:8131 --proxy-cacert {d}/ca.pem \\");
    println!("           --proxy-cert {d}/apiserver.pem --proxy-key {d}/apiserver-key.pem http://127.0.0.1:PORT/");
    Ok(())
}

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Writes a file readable by its owner only: created afresh with mode 0600
/// (after removing one of the same name), so the secret is never in a file
/// anyone else can read or already has open.
fn write_secret(dir: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("replacing {}", path.display())),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
