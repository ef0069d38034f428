//! `connector dev-pki`: writes a throw-away CA, a server certificate, a
//! client certificate and a tokens file, for trying `connector server` and
//! `connector agent` by hand. Production deployments use their own PKI.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use connector_core::pki::ThrowawayCa;

#[derive(Debug, Args)]
pub struct DevPkiArgs {
    /// Directory to write into (created if missing; existing files are overwritten).
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
    let ca = ThrowawayCa::new("connector dev CA")?;
    let names: Vec<&str> = args.server_names.iter().map(String::as_str).collect();
    let server = ca.issue_server("connector server", &names)?;
    let client = ca.issue_client(&args.node, &[&args.node])?;
    let apiserver = ca.issue_client("kube-apiserver", &[])?;
    let token = format!("{:032x}", rand::random::<u128>());
    // The token may serve the node's name and this machine's loopback address,
    // where a developer runs the targets.
    let may_claim = format!("host={},ipv4=127.0.0.1", args.node);
    write(out, "ca.pem", &ca.cert_pem())?;
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
    println!("wrote a throw-away CA, server and client certificates and a token to {d}/ (not for production)\n");
    println!("server:  connector server --listen 127.0.0.1:8443 --cert {d}/server.pem --key {d}/server-key.pem \\");
    println!("           --tokens {d}/tokens --client-ca {d}/ca.pem");
    println!(
        "agent:   connector agent --server 127.0.0.1:8443 --ca {d}/ca.pem --agent-id {} \\",
        args.node
    );
    println!(
        "           --token-file {d}/{}.token --identifiers {may_claim} --allow 127.0.0.1/32",
        args.node
    );
    println!(
        "   or:   connector agent --server 127.0.0.1:8443 --ca {d}/ca.pem --agent-id {0} --cert {d}/{0}.pem --key {d}/{0}-key.pem",
        args.node
    );
    Ok(())
}

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Writes a file readable by its owner only.
fn write_secret(dir: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    write(dir, name, contents)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
