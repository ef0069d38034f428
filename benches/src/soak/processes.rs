//! The `connector` processes of the soak test: one server and the agents,
//! started from the binary with a `connector dev-pki` directory, their stderr
//! appended to a log file each, their listening addresses read from their logs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Time a process has to log that it is up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a process has to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One running `connector` process.
#[derive(Debug)]
pub struct Proc {
    /// `server` or `agent-N`.
    pub name: String,
    /// 1 for the first start, then one more per restart.
    pub incarnation: u32,
    /// Its process id.
    pub pid: u32,
    /// Its admin listener (`/metrics`).
    pub admin: SocketAddr,
    /// When it was started.
    pub started: Instant,
    child: Child,
    /// Its stderr lines while starting; dropped once it is up, so they go to the log file only.
    lines: Option<mpsc::UnboundedReceiver<String>>,
}

/// How a process ended when asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited within [`STOP_TIMEOUT`] of SIGTERM.
    OnTerm,
    /// It was killed (SIGKILL asked for, or SIGTERM ignored too long).
    Killed,
    /// SIGTERM was sent but it had to be killed after [`STOP_TIMEOUT`].
    TermIgnored,
}

impl Proc {
    /// Whether it exited on its own (it should not have); its exit status then.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM (or SIGKILL when `kill`) and waits for the exit.
    pub async fn stop(mut self, kill: bool) -> anyhow::Result<Stopped> {
        if kill {
            self.child.start_kill()?;
            self.child.wait().await?;
            return Ok(Stopped::Killed);
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(exit) => {
                exit?;
                Ok(Stopped::OnTerm)
            }
            Err(_) => {
                self.child.start_kill()?;
                self.child.wait().await?;
                Ok(Stopped::TermIgnored)
            }
        }
    }

    /// Waits for log lines containing each set of `needles` (in any order); the lines found.
    async fn wait_for(&mut self, needles: &[&[&str]]) -> anyhow::Result<Vec<String>> {
        let mut found: Vec<Option<String>> = vec![None; needles.len()];
        let lines = self.lines.as_mut().context("startup lines already consumed")?;
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        while found.iter().any(Option::is_none) {
            let line = match tokio::time::timeout_at(deadline, lines.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => bail!("{} exited while starting (see its log)", self.name),
                Err(_) => bail!("{} did not log {needles:?} within {STARTUP_TIMEOUT:?}", self.name),
            };
            for (slot, wanted) in found.iter_mut().zip(needles) {
                if slot.is_none() && wanted.iter().all(|n| line.contains(n)) {
                    *slot = Some(line.clone());
                }
            }
        }
        self.lines = None;
        Ok(found.into_iter().flatten().collect())
    }
}

/// Starts `connector` processes.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `connector` binary.
    pub connector: PathBuf,
    /// A `connector dev-pki --out` directory.
    pub pki: PathBuf,
    /// Where each process's log file goes.
    pub logs: PathBuf,
    /// Each agent's `--max-connections`: the default unless one agent may
    /// have to carry every connection at once. (It also sets how many stream
    /// slots the agent grants the server, and each slot keeps some reusable
    /// receive state: a larger value than needed is a larger plateau of RSS.)
    pub agent_max_connections: usize,
}

/// The server's listening addresses.
#[derive(Debug, Clone, Copy)]
pub struct ServerAddrs {
    /// QUIC, for agents.
    pub quic: SocketAddr,
    /// HTTP CONNECT on plain loopback TCP.
    pub connect: SocketAddr,
}

impl Launcher {
    /// Starts the server: QUIC, admin and HTTP CONNECT on loopback.
    pub async fn server(&self) -> anyhow::Result<(Proc, ServerAddrs)> {
        let pki = |name: &str| self.pki.join(name);
        let mut cmd = Command::new(&self.connector);
        cmd.args(["server", "--listen", "127.0.0.1:0", "--server-id", "soak"])
            .arg("--cert")
            .arg(pki("server.pem"))
            .arg("--key")
            .arg(pki("server-key.pem"))
            .arg("--tokens")
            .arg(pki("tokens"))
            .args(["--admin", "127.0.0.1:0", "--connect-plain", "127.0.0.1:0"]);
        let mut proc = self.spawn("server", 1, cmd).await?;
        let lines = proc
            .wait_for(&[
                &["accepting agents"],
                &["HTTP CONNECT frontend listening"],
                &["admin endpoints listening"],
            ])
            .await?;
        let addrs = ServerAddrs {
            quic: listen_addr(&lines[0])?,
            connect: listen_addr(&lines[1])?,
        };
        proc.admin = listen_addr(&lines[2])?;
        Ok((proc, addrs))
    }

    /// Starts agent `index` (its `incarnation`-th start), waiting until it is connected. All agents
    /// use the dev token of `node-a` and claim the same host and 127.0.0.1, so dials spread over them.
    pub async fn agent(&self, index: usize, incarnation: u32, server: SocketAddr) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(&self.connector);
        cmd.args(["agent", "--server", &server.to_string(), "--server-name", "localhost"])
            .args(["--agent-id", &format!("soak-agent-{index}")])
            .arg("--ca")
            .arg(self.pki.join("ca.pem"))
            .arg("--token-file")
            .arg(self.pki.join("node-a.token"))
            .args(["--identifiers", "host=node-a,ipv4=127.0.0.1", "--allow", "127.0.0.0/8"])
            .args(["--max-connections", &self.agent_max_connections.to_string()])
            .args(["--admin", "127.0.0.1:0"]);
        let mut proc = self.spawn(&format!("agent-{index}"), incarnation, cmd).await?;
        let lines = proc
            .wait_for(&[&["admin endpoints listening"], &["connected", "server_id"]])
            .await?;
        proc.admin = listen_addr(&lines[0])?;
        Ok(proc)
    }

    async fn spawn(&self, name: &str, incarnation: u32, mut cmd: Command) -> anyhow::Result<Proc> {
        cmd.arg("--log")
            .arg("info")
            .env_remove("CONNECTOR_LOG")
            .env_remove("CONNECTOR_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.connector.display()))?;
        let pid = child.id().context("no pid")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, lines) = mpsc::unbounded_channel();
        let log_path = self.logs.join(format!("{name}.log"));
        let mut log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .await
            .with_context(|| format!("opening {}", log_path.display()))?;
        let banner = format!("--- soak: {name} incarnation {incarnation}, pid {pid} ---\n");
        log.write_all(banner.as_bytes()).await?;
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            let mut forward = true;
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = log.write_all(line.as_bytes()).await;
                let _ = log.write_all(b"\n").await;
                // Only startup needs the lines; afterwards they go to the file only.
                forward = forward && tx.send(line).is_ok();
            }
            let _ = log.flush().await;
        });
        Ok(Proc {
            name: name.to_owned(),
            incarnation,
            pid,
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            started: Instant::now(),
            child,
            lines: Some(lines),
        })
    }
}

/// The address in a log line's `listen=` field, without a scheme.
fn listen_addr(line: &str) -> anyhow::Result<SocketAddr> {
    let value = line
        .rsplit("listen=")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("no listen= in {line:?}"))?;
    let addr = value.rsplit("://").next().unwrap_or(value);
    addr.parse().with_context(|| format!("bad listen= in {line:?}"))
}

/// Whether `path` looks like a dev-pki directory.
pub fn check_pki(path: &Path) -> anyhow::Result<()> {
    for name in ["ca.pem", "server.pem", "server-key.pem", "tokens", "node-a.token"] {
        if !path.join(name).is_file() {
            bail!(
                "{} has no {name}: run `connector dev-pki --out {}`",
                path.display(),
                path.display()
            );
        }
    }
    Ok(())
}
