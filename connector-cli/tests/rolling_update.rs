//! A rolling update of the server replicas with real processes on a loaded
//! machine: three `connector server` replicas; one agent on QUIC (`--transport
//! auto`) and one on TCP, each holding a session with every replica; 100
//! streaming tunnelled connections (like `kubectl logs -f`) and 20
//! bidirectional ones (like `kubectl exec`) open through the replicas'
//! CONNECT frontends. The replicas are replaced one by one, as a rolling
//! update of kube-apiserver does: stopped with SIGTERM (a drain) or SIGKILL (a
//! crash), then started again on the same addresses under a new server id.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

/// Streaming connections open at any time.
const LOGS: usize = 100;
/// Bidirectional connections open at any time.
const EXECS: usize = 20;
const REPLICAS: usize = 3;
/// One log record: its sequence number and a value derived from it and the stream's key.
const RECORD: usize = 16;
/// One exec message.
const CHUNK: usize = 1024;

/// The tests load every core; they run one after the other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The value the record `seq` of stream `key` carries.
fn mix(key: u64, seq: u64) -> u64 {
    let mut x = key ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// The exec message `n` of stream `key`.
fn chunk(key: u64, n: u64) -> Vec<u8> {
    (0..CHUNK as u64 / 8)
        .flat_map(|i| mix(key, n * 1024 + i).to_be_bytes())
        .collect()
}

/// How a tunnelled connection ended, as its client saw it.
#[derive(Debug)]
#[allow(dead_code)] // the fields are read in failure messages only
enum Ended {
    /// Finished when asked, every byte intact; the records or messages it carried.
    Complete(u64),
    /// Cut before it finished: every byte before the cut was intact.
    Cut { intact: u64, error: String },
    /// A byte arrived that was not the one sent.
    Corrupt(String),
}

/// A target on `ip` serving both workloads. The first line a client sends
/// chooses: `logs KEY` streams records until the client sends `end`, then a
/// trailer (`u64::MAX`, the count); `exec` echoes until EOF.
fn workload_target(ip: &str) -> String {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve_workload(tcp));
        }
    });
    addr
}

fn serve_workload(tcp: TcpStream) {
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut writer = tcp;
    match first.split_whitespace().collect::<Vec<_>>()[..] {
        ["logs", key] => {
            let key: u64 = key.parse().unwrap();
            let ended = Arc::new(AtomicBool::new(false));
            let told = ended.clone();
            std::thread::spawn(move || {
                // Any line (`end`), EOF or an error ends the stream.
                let _ = reader.read_line(&mut String::new());
                told.store(true, Ordering::Release);
            });
            let mut seq = 0u64;
            while !ended.load(Ordering::Acquire) {
                let mut batch = Vec::with_capacity(8 * RECORD);
                for _ in 0..8 {
                    batch.extend_from_slice(&seq.to_be_bytes());
                    batch.extend_from_slice(&mix(key, seq).to_be_bytes());
                    seq += 1;
                }
                if writer.write_all(&batch).is_err() {
                    return;
                }
                // The pace of a log: lines now and then, not a bulk transfer.
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut trailer = u64::MAX.to_be_bytes().to_vec();
            trailer.extend_from_slice(&seq.to_be_bytes());
            let _ = writer.write_all(&trailer);
            let _ = writer.shutdown(Shutdown::Write);
        }
        ["exec"] => {
            let _ = std::io::copy(&mut reader, &mut writer);
            let _ = writer.shutdown(Shutdown::Write);
        }
        _ => {}
    }
}

/// The client side of a `logs` stream: checks every record and the trailer.
fn read_logs(mut tcp: TcpStream, key: u64) -> Ended {
    let mut record = [0u8; RECORD];
    let mut seq = 0u64;
    loop {
        if let Err(err) = tcp.read_exact(&mut record) {
            return Ended::Cut {
                intact: seq,
                error: err.to_string(),
            };
        }
        let a = u64::from_be_bytes(record[..8].try_into().unwrap());
        let b = u64::from_be_bytes(record[8..].try_into().unwrap());
        if a == u64::MAX {
            return if b == seq {
                Ended::Complete(seq)
            } else {
                Ended::Corrupt(format!("the trailer counts {b} records; {seq} arrived"))
            };
        }
        if a != seq || b != mix(key, seq) {
            return Ended::Corrupt(format!("record {seq} of stream {key} arrived as ({a}, {b})"));
        }
        seq += 1;
    }
}

/// The client side of an `exec` stream: sends a message, checks its echo,
/// until `stop`; then half-closes and expects nothing more.
fn exec_loop(mut tcp: TcpStream, key: u64, stop: Arc<AtomicBool>) -> Ended {
    let mut n = 0u64;
    let mut back = vec![0u8; CHUNK];
    while !stop.load(Ordering::Acquire) {
        let sent = chunk(key, n);
        if let Err(err) = tcp.write_all(&sent).and_then(|()| tcp.read_exact(&mut back)) {
            return Ended::Cut {
                intact: n,
                error: err.to_string(),
            };
        }
        if back != sent {
            return Ended::Corrupt(format!("message {n} of stream {key} came back changed"));
        }
        n += 1;
        // A person typing, not a bulk transfer.
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut rest = Vec::new();
    match tcp.shutdown(Shutdown::Write).and_then(|()| tcp.read_to_end(&mut rest)) {
        Ok(_) if rest.is_empty() => Ended::Complete(n),
        Ok(_) => Ended::Corrupt(format!("{} bytes after the last echo", rest.len())),
        Err(err) => Ended::Cut {
            intact: n,
            error: err.to_string(),
        },
    }
}

/// Sends `CONNECT target` to the frontend at `proxy`: the tunnel on 200,
/// otherwise the status and the body that explains it.
fn connect(proxy: &str, target: &str) -> Result<TcpStream, (u16, String)> {
    let mut tcp = TcpStream::connect(proxy).map_err(|e| (0, e.to_string()))?;
    write!(tcp, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).map_err(|e| (0, e.to_string()))?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| (code, e.to_string()))?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    if code == 200 {
        // The frontend sends nothing before the tunnel's bytes, so the reader holds none.
        assert!(reader.buffer().is_empty());
        return Ok(tcp);
    }
    let mut body = String::new();
    let _ = reader.read_to_string(&mut body);
    Err((code, body))
}

/// One open tunnelled connection of the workload.
struct Stream {
    /// The replica whose frontend it goes through.
    replica: usize,
    /// `logs`: the socket to send `end` on; `exec`: the flag its client loop checks.
    finish: Finish,
    client: JoinHandle<Ended>,
}

enum Finish {
    Logs(TcpStream),
    Exec(Arc<AtomicBool>),
}

impl Stream {
    fn open(proxy: &str, replica: usize, target: &str, logs: bool, key: u64) -> Result<Stream, (u16, String)> {
        let mut tcp = connect(proxy, target)?;
        if logs {
            writeln!(tcp, "logs {key}").unwrap();
            let control = tcp.try_clone().unwrap();
            let client = std::thread::spawn(move || read_logs(tcp, key));
            Ok(Stream {
                replica,
                finish: Finish::Logs(control),
                client,
            })
        } else {
            writeln!(tcp, "exec").unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let client = std::thread::spawn(move || exec_loop(tcp, key, flag));
            Ok(Stream {
                replica,
                finish: Finish::Exec(stop),
                client,
            })
        }
    }

    /// Asks the stream to finish and returns how it ended.
    fn finish(self) -> Ended {
        match &self.finish {
            Finish::Logs(tcp) => {
                let _ = (&*tcp).write_all(b"end\n");
            }
            Finish::Exec(stop) => stop.store(true, Ordering::Release),
        }
        self.client.join().unwrap()
    }

    /// Returns how the stream ended by itself (its connection was cut).
    fn outcome(self) -> Ended {
        self.client.join().unwrap()
    }
}

/// A server replica: its fixed addresses and its current process.
struct Replica {
    id: String,
    listen: String,
    frontend: String,
    process: Running,
}

/// Three replicas, two agents (QUIC `auto` and TCP), a target behind each.
struct Cluster {
    dir: std::path::PathBuf,
    replicas: Vec<Replica>,
    /// (process, admin address) of the agent on QUIC and of the agent on TCP.
    agents: Vec<(Running, String)>,
    /// The target only the QUIC agent reaches, and the one only the TCP agent reaches.
    targets: Vec<String>,
    /// Replacements started so far (for new server ids).
    generation: usize,
    next_key: u64,
}

fn start_replica(dir: &Path, id: &str, listen: &str, frontend: &str) -> Replica {
    let mut process = server_at(
        dir,
        listen,
        id,
        &[
            "--connect-plain",
            frontend,
            "--drain-grace",
            "60s",
            "--server-count",
            "3",
        ],
    );
    let listen = listen_addr(&process.wait_for(&["accepting agents"]));
    let frontend = listen_addr(&process.wait_for(&["HTTP CONNECT frontend listening"]));
    Replica {
        id: id.to_owned(),
        listen,
        frontend,
        process,
    }
}

impl Cluster {
    fn start(name: &str) -> Cluster {
        let dir = temp_dir(name);
        dev_pki(&dir);
        // A second identity, node-b, which may claim 127.0.0.2 only.
        let token = "5f0c1d2e3b4a69788796a5b4c3d2e1f0";
        let mut tokens = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("tokens"))
            .unwrap();
        writeln!(tokens, "{token} node-b host=node-b,ipv4=127.0.0.2").unwrap();
        std::fs::write(dir.join("node-b.token"), token).unwrap();
        let owner_only = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(dir.join("node-b.token"), owner_only).unwrap();

        let replicas: Vec<_> = (0..REPLICAS)
            .map(|i| start_replica(&dir, &format!("r{i}"), "127.0.0.1:0", "127.0.0.1:0"))
            .collect();
        let servers = replicas.iter().map(|r| r.listen.as_str()).collect::<Vec<_>>().join(",");
        let targets = vec![workload_target("127.0.0.1"), workload_target("127.0.0.2")];
        let agents = [("node-a", "127.0.0.1", "auto"), ("node-b", "127.0.0.2", "tcp")]
            .into_iter()
            .map(|(id, ip, transport)| {
                let mut cmd = connector(&["agent", "--server", &servers, "--server-name", "localhost"]);
                cmd.args(["--agent-id", id, "--transport", transport, "--admin", "127.0.0.1:0"])
                    .arg("--ca")
                    .arg(dir.join("ca.pem"))
                    .arg("--token-file")
                    .arg(dir.join(format!("{id}.token")))
                    .args(["--identifiers", &format!("host={id},ipv4={ip}")])
                    .args(["--allow", &format!("{ip}/32")]);
                let mut agent = Running::spawn(cmd);
                let admin = listen_addr(&agent.wait_for(&["admin endpoints listening"]));
                (agent, admin)
            })
            .collect();
        let mut cluster = Cluster {
            dir,
            replicas,
            agents,
            targets,
            generation: 0,
            next_key: 1,
        };
        for r in 0..REPLICAS {
            cluster.wait_registered(r);
        }
        cluster
    }

    /// Waits until both agents hold a session with replica `r`.
    fn wait_registered(&mut self, r: usize) {
        let replica = &mut self.replicas[r];
        for agent in ["agent=node-a", "agent=node-b"] {
            replica.process.wait_for(&["agent connected", agent]);
        }
        let server_id = format!("server_id={}", replica.id);
        let (quic, tcp) = self.agents.split_at_mut(1);
        quic[0].0.wait_for(&["connected", &server_id, "transport=\"quic\""]);
        tcp[0].0.wait_for(&["connected", &server_id, "transport=\"tcp\""]);
    }

    /// Opens `logs` and `exec` streams through replica `r` (alternating targets, so both agents carry some).
    fn open(&mut self, r: usize, logs: usize, execs: usize) -> Vec<Stream> {
        let proxy = self.replicas[r].frontend.clone();
        (0..logs + execs)
            .map(|i| {
                let key = self.next_key;
                self.next_key += 1;
                let target = &self.targets[key as usize % 2];
                Stream::open(&proxy, r, target, i < logs, key)
                    .unwrap_or_else(|(code, body)| panic!("dial through replica {r} refused: {code} {body}"))
            })
            .collect()
    }

    /// Opens the whole workload, spread evenly over the replicas.
    fn open_workload(&mut self) -> Vec<Stream> {
        (0..REPLICAS)
            .flat_map(|r| {
                let share = |n: usize| n / REPLICAS + usize::from(r < n % REPLICAS);
                self.open(r, share(LOGS), share(EXECS))
            })
            .collect()
    }

    /// A new dial through replica `r` to each target carries an echo.
    fn assert_dials_served(&self, r: usize) {
        for target in &self.targets {
            let mut tcp = connect(&self.replicas[r].frontend, target)
                .unwrap_or_else(|(code, body)| panic!("dial through replica {r} refused: {code} {body}"));
            writeln!(tcp, "exec").unwrap();
            let sent = chunk(0, 0);
            tcp.write_all(&sent).unwrap();
            let mut back = vec![0u8; CHUNK];
            tcp.read_exact(&mut back).unwrap();
            assert_eq!(back, sent);
        }
    }

    /// Starts the replacement of replica `r` on its addresses, under a new server id.
    fn replace(&mut self, r: usize) {
        self.generation += 1;
        let id = format!("r{r}-{}", self.generation);
        let (listen, frontend) = (self.replicas[r].listen.clone(), self.replicas[r].frontend.clone());
        self.replicas[r] = start_replica(&self.dir, &id, &listen, &frontend);
        self.wait_registered(r);
    }

    /// An agent's counter `name` from its `/metrics`.
    fn agent_metric(&self, agent: usize, name: &str) -> f64 {
        let (status, page) = http_get(&self.agents[agent].1, "/metrics");
        assert_eq!(status, 200);
        metric(&page, name).unwrap_or_else(|| panic!("no {name} in:\n{page}"))
    }
}

fn assert_complete(ended: Ended) {
    assert!(matches!(ended, Ended::Complete(_)), "{ended:?}");
}

/// No agent changed transport: the `auto` agent stayed on QUIC, the other on TCP.
fn assert_no_transport_switch(cluster: &mut Cluster) {
    for (agent, _) in &cluster.agents {
        for line in agent.seen() {
            assert!(
                !line.contains("transport switched") && !line.contains("falling back to TCP"),
                "{line}"
            );
        }
    }
    let sessions = |agent: usize, transport: &str| {
        let (status, page) = http_get(&cluster.agents[agent].1, "/metrics");
        assert_eq!(status, 200);
        metric(&page, &format!("connector_agent_sessions{{transport=\"{transport}\"}}")).unwrap()
    };
    assert_eq!((sessions(0, "quic"), sessions(0, "tcp")), (REPLICAS as f64, 0.0));
    assert_eq!((sessions(1, "quic"), sessions(1, "tcp")), (0.0, REPLICAS as f64));
}

#[test]
fn a_rolling_update_with_sigterm_completes_every_stream_and_serves_every_dial() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let _load = CpuLoad::start();
    let mut cluster = Cluster::start("rolling-term");
    let mut streams = cluster.open_workload();

    for r in 0..REPLICAS {
        let old_id = cluster.replicas[r].id.clone();
        cluster.replicas[r].process.signal("TERM");
        cluster.replicas[r].process.wait_for(&["draining"]);
        for (agent, _) in &mut cluster.agents {
            agent.wait_for(&["the server is going away", &format!("server_id={old_id}")]);
        }

        // A new dial through the draining replica is refused, saying why; another replica serves it.
        match connect(&cluster.replicas[r].frontend, &cluster.targets[0]) {
            Ok(_) => panic!("the draining replica {old_id} accepted a new dial"),
            Err((code, body)) => {
                assert_eq!(code, 503, "{body}");
                assert!(body.contains("draining") && body.contains("another replica"), "{body}");
            }
        }
        cluster.assert_dials_served((r + 1) % REPLICAS);

        // What was open through it finishes within the grace, every byte intact.
        let (through, others): (Vec<_>, Vec<_>) = streams.into_iter().partition(|s| s.replica == r);
        let (logs, execs) = (
            through.iter().filter(|s| matches!(s.finish, Finish::Logs(_))).count(),
            through.iter().filter(|s| matches!(s.finish, Finish::Exec(_))).count(),
        );
        for stream in through {
            assert_complete(stream.finish());
        }
        let status = cluster.replicas[r].process.wait_exit();
        assert!(status.success(), "{status:?}");
        cluster.replicas[r]
            .process
            .wait_for(&["every agent acknowledged the go-away"]);

        cluster.replace(r);
        streams = others;
        streams.extend(cluster.open(r, logs, execs));
    }

    for stream in streams {
        assert_complete(stream.finish());
    }
    for agent in 0..2 {
        assert_eq!(
            cluster.agent_metric(agent, "connector_agent_go_aways_total"),
            REPLICAS as f64,
            "every agent counts one GoAway per replica"
        );
    }
    assert_no_transport_switch(&mut cluster);
}

#[test]
fn a_rolling_update_with_sigkill_corrupts_nothing_and_agents_reach_each_replacement() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let _load = CpuLoad::start();
    let mut cluster = Cluster::start("rolling-kill");
    let mut streams = cluster.open_workload();

    for r in 0..REPLICAS {
        let old_id = cluster.replicas[r].id.clone();
        cluster.replicas[r].process.signal("KILL");
        let status = cluster.replicas[r].process.wait_exit();
        assert!(!status.success());

        // What went through the killed replica is cut, and its clients see the cut:
        // nothing arrives changed, nothing ends as if complete.
        let (through, others): (Vec<_>, Vec<_>) = streams.into_iter().partition(|s| s.replica == r);
        let (logs, execs) = (
            through.iter().filter(|s| matches!(s.finish, Finish::Logs(_))).count(),
            through.iter().filter(|s| matches!(s.finish, Finish::Exec(_))).count(),
        );
        for stream in through {
            let ended = stream.outcome();
            assert!(matches!(ended, Ended::Cut { .. }), "{ended:?}");
        }
        // Dials go to the replicas still up.
        assert!(connect(&cluster.replicas[r].frontend, &cluster.targets[0]).is_err());
        cluster.assert_dials_served((r + 1) % REPLICAS);

        cluster.replace(r);
        // The QUIC agent learnt that the replica was gone from the replacement's
        // stateless reset, not by waiting out its idle timeout.
        cluster.agents[0].0.wait_for(&[
            "connection to the server ended",
            &format!("server_id={old_id}"),
            "stateless reset",
        ]);
        streams = others;
        streams.extend(cluster.open(r, logs, execs));
    }

    for stream in streams {
        assert_complete(stream.finish());
    }
    assert_no_transport_switch(&mut cluster);
}
