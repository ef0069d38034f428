//! Helpers for tests that run the `connector` binary as separate processes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_connector");

pub fn connector(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("CONNECTOR_LOG");
    cmd
}

/// A child process whose stderr lines arrive on a channel; killed on drop.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// Indices into `seen` already returned by `wait_for`.
    returned: Vec<usize>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn connector");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            returned: Vec::new(),
        }
    }

    /// Waits for a log line containing every one of `needles` not returned before (hang
    /// guard: 60 s in all). Lines read while waiting for something else count too: tasks that
    /// start together log in either order.
    pub fn wait_for(&mut self, needles: &[&str]) -> String {
        let matches = |line: &str| needles.iter().all(|n| line.contains(n));
        if let Some(index) = (0..self.seen.len()).find(|i| !self.returned.contains(i) && matches(&self.seen[*i])) {
            self.returned.push(index);
            return self.seen[index].clone();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        self.returned.push(self.seen.len() - 1);
                        return line;
                    }
                }
                Err(_) => panic!("no log line with {needles:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Running {
    /// Sends `signal` (a `kill` name such as `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit by itself (hang guard: 60 s) and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // The log ends when the process does.
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.child.wait().expect("wait"),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("process did not exit within 60 s; saw:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// The lines read so far (by [`Running::wait_for`] and [`Running::wait_exit`]).
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Stops the process and returns every line it wrote to stderr.
    pub fn all_output(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader thread ends at EOF, closing the channel.
        let mut all = std::mem::take(&mut self.seen);
        all.extend(self.lines.iter());
        all.join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dev_pki(dir: &Path) {
    let out = connector(&["dev-pki", "--out", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The address in a log line's `listen=` field, without its scheme.
pub fn listen_addr(line: &str) -> String {
    let value = line
        .rsplit("listen=")
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    value.split("://").last().unwrap().to_owned()
}

/// Starts `connector server` with the dev PKI in `dir` plus `extra` flags.
pub fn server(dir: &Path, extra: &[&str]) -> Running {
    server_at(dir, "127.0.0.1:0", "srv-test", extra)
}

/// [`server`] with its agent port on `listen` and its server id `id`.
pub fn server_at(dir: &Path, listen: &str, id: &str, extra: &[&str]) -> Running {
    let mut cmd = connector(&["server", "--listen", listen, "--server-id", id]);
    cmd.arg("--cert")
        .arg(dir.join("server.pem"))
        .arg("--key")
        .arg(dir.join("server-key.pem"));
    cmd.arg("--tokens")
        .arg(dir.join("tokens"))
        .arg("--client-ca")
        .arg(dir.join("ca.pem"));
    cmd.args(extra);
    Running::spawn(cmd)
}

/// Starts `connector agent` node-a (token auth) towards the server at `addr`, allowing loopback targets.
pub fn agent(dir: &Path, addr: &str) -> Running {
    Running::spawn(agent_command(dir, addr))
}

/// The command [`agent`] runs, to add flags or environment first.
pub fn agent_command(dir: &Path, addr: &str) -> Command {
    let mut cmd = connector(&[
        "agent",
        "--server",
        addr,
        "--server-name",
        "localhost",
        "--agent-id",
        "node-a",
    ]);
    cmd.arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--token-file")
        .arg(dir.join("node-a.token"));
    cmd.args(["--identifiers", "host=node-a,ipv4=127.0.0.1", "--allow", "127.0.0.1/32"]);
    cmd
}

/// A tiny HTTP server on 127.0.0.1 answering every request with `body`.
pub fn http_target(body: &'static str) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8];
                while !head.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
                    head.push(byte[0]);
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes());
            });
        }
    });
    addr
}

/// A TCP server on 127.0.0.1 that reads until EOF, then answers with the
/// SHA-256 (hex) of what it read.
pub fn digest_target() -> std::net::SocketAddr {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = tcp.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                let _ = tcp.write_all(hex(&hasher.finalize()).as_bytes());
            });
        }
    });
    addr
}

/// Sends `data` to a [`digest_target`] over `tcp` (already connected, through
/// whatever the test exercises), half-closes, and checks the digest it answers.
#[allow(dead_code)]
pub fn assert_digest_answered(mut tcp: std::net::TcpStream, data: &[u8]) {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    tcp.write_all(data).unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let mut digest = String::new();
    tcp.read_to_string(&mut digest).unwrap();
    assert_eq!(digest, hex(&Sha256::digest(data)));
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Threads that keep every core busy until dropped: a machine under load, as
/// during a real rolling update of busy control-plane nodes.
pub struct CpuLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    /// One spinning thread per core.
    pub fn start() -> CpuLoad {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                        }
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `GET path` from the admin listener at `addr` (`connector_core::admin::get`,
/// what `connector agents` uses); returns the status and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let response = runtime
        .block_on(connector_core::admin::get(addr, path))
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    (response.status, response.body)
}

/// The value of the unlabelled sample `name` on a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
