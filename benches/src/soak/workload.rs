//! The traffic of the soak test: each worker keeps one tunnelled connection
//! open at a time through the server's HTTP CONNECT frontend, and in a loop
//! opens one, runs one exchange on it, checks every byte and closes it.
//!
//! Exchanges, picked at random: mostly small request/response round trips to
//! the echo target, some bulk echoes (MiBs both ways), some bulk uploads to the
//! digest target, which answers with the length and SHA-256 of what it got.
//!
//! Outcomes: *completed* (every byte checked); *corrupted* (bytes came back
//! wrong, or the digest target acknowledged a complete upload that differs:
//! data loss, always a failure); *interrupted* (the tunnel was refused, cut or
//! stalled while an agent was down: expected); *refused* (the CONNECT was not
//! answered `200` although no agent was down: no byte was sent, none lost);
//! *failed* (an established tunnel was cut or stalled with no agent down: the
//! bytes in flight were lost).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::pattern::Pattern;
use crate::target;

/// Most failure descriptions kept for the report.
const KEPT_FAILURES: usize = 20;
/// Buffer size of bulk transfers.
const BULK_CHUNK: usize = 64 * 1024;

/// What the workers have done so far.
#[derive(Debug, Default)]
pub struct Tally {
    /// Exchanges whose every byte came back right.
    pub completed: AtomicU64,
    /// Bytes checked in completed exchanges (both directions of an echo count once).
    pub bytes_verified: AtomicU64,
    /// Exchanges refused, cut or stalled while an agent was down.
    pub interrupted: AtomicU64,
    /// Tunnels refused (no `200`) with no agent down.
    pub refused: AtomicU64,
    /// Established tunnels cut or stalled with no agent down.
    pub failed: AtomicU64,
    /// Exchanges whose data came back wrong (data loss).
    pub corrupted: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    /// The first troubles seen (data losses are kept longer than the others).
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("tally").clone()
    }

    /// Keeps `what` for the report: other troubles up to [`KEPT_FAILURES`], data losses up to 50 times that.
    fn note(&self, what: String, loss: bool) {
        let mut kept = self.failures.lock().expect("tally");
        if kept.len() < KEPT_FAILURES || (loss && kept.len() < 50 * KEPT_FAILURES) {
            kept.push(what);
        }
    }
}

/// When agents were down (from the kill until their restart was connected),
/// so that a cut can be told from a loss.
#[derive(Debug, Default)]
pub struct Kills(Mutex<VecDeque<(Instant, Option<Instant>)>>);

/// Windows older than this are forgotten (longer than any exchange lasts).
const KILL_MEMORY: Duration = Duration::from_secs(600);

impl Kills {
    /// Records that an agent is being killed now.
    pub fn killed(&self) {
        let mut windows = self.0.lock().expect("kills");
        while windows.front().is_some_and(|(at, _)| at.elapsed() > KILL_MEMORY) {
            windows.pop_front();
        }
        windows.push_back((Instant::now(), None));
    }

    /// Records that the agent killed last is connected again (or will not be restarted).
    pub fn back(&self) {
        if let Some((_, end)) = self.0.lock().expect("kills").back_mut() {
            *end = Some(Instant::now());
        }
    }

    /// Whether an agent was down at some moment between `start` and `end`, or up
    /// to `slack` before `start` (a dial routed to it just before it was back).
    pub fn overlaps(&self, start: Instant, end: Instant, slack: Duration) -> bool {
        self.0
            .lock()
            .expect("kills")
            .iter()
            .any(|(killed, back)| *killed <= end && back.is_none_or(|back| back + slack >= start))
    }
}

/// Where the workers connect and how they judge what they see.
#[derive(Debug)]
pub struct Workload {
    /// The server's HTTP CONNECT frontend (plain TCP).
    pub proxy: SocketAddr,
    /// The echo target ([`crate::target`] in echo mode).
    pub echo: SocketAddr,
    /// The digest target ([`serve_digest`]).
    pub digest: SocketAddr,
    /// Shared outcome counters.
    pub tally: Arc<Tally>,
    /// Agent kills.
    pub kills: Arc<Kills>,
    /// A cut counts as interrupted if an agent was down during the exchange or
    /// up to this long before it started.
    pub grace: Duration,
    /// An exchange taking longer than this has stalled.
    pub exchange_timeout: Duration,
}

enum Trouble {
    /// Wrong data: loss.
    Corrupt(String),
    /// The tunnel was not established (no byte sent).
    Refused(String),
    /// Cut or ended early.
    Cut(String),
}

fn refused(context: &str) -> impl Fn(std::io::Error) -> Trouble + '_ {
    move |err| Trouble::Refused(format!("{context}: {err}"))
}

fn cut(context: &str) -> impl Fn(std::io::Error) -> Trouble + '_ {
    move |err| Trouble::Cut(format!("{context}: {err}"))
}

/// Runs worker `id` until `stop` turns true, starting after `delay` (the
/// workers' starts are spread so that their first connections do not all
/// arrive in the same instant and overflow listen queues).
pub async fn worker(id: u64, delay: Duration, work: Arc<Workload>, mut stop: watch::Receiver<bool>) {
    tokio::time::sleep(delay).await;
    let mut rng = StdRng::seed_from_u64(id);
    for round in 0u64.. {
        if *stop.borrow() {
            return;
        }
        let seed = (id << 40) ^ round;
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = stop.changed() => return,
            outcome = tokio::time::timeout(work.exchange_timeout, exchange(&work, &mut rng, seed)) => outcome,
        };
        let tally = &work.tally;
        let trouble = match outcome {
            Ok(Ok(bytes)) => {
                tally.completed.fetch_add(1, Ordering::Relaxed);
                tally.bytes_verified.fetch_add(bytes, Ordering::Relaxed);
                continue;
            }
            Ok(Err(trouble)) => trouble,
            Err(_) => Trouble::Cut(format!("stalled for {:?}", work.exchange_timeout)),
        };
        match trouble {
            Trouble::Corrupt(what) => {
                tally.corrupted.fetch_add(1, Ordering::Relaxed);
                tally.note(format!("worker {id} round {round}: DATA LOSS: {what}"), true);
            }
            Trouble::Cut(_) | Trouble::Refused(_) if work.kills.overlaps(started, Instant::now(), work.grace) => {
                tally.interrupted.fetch_add(1, Ordering::Relaxed);
            }
            Trouble::Refused(what) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                tally.note(
                    format!("worker {id} round {round}: refused with no agent down: {what}"),
                    false,
                );
            }
            Trouble::Cut(what) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tally.note(
                    format!("worker {id} round {round}: cut with no agent down: {what}"),
                    false,
                );
            }
        }
    }
}

/// One tunnelled connection, one exchange on it; the bytes checked.
async fn exchange(work: &Workload, rng: &mut StdRng, seed: u64) -> Result<u64, Trouble> {
    let pick = rng.random_range(0..100);
    if pick < 85 {
        let rounds = rng.random_range(1..=8);
        let size = rng.random_range(1..=16 * 1024);
        let mut tcp = open(work.proxy, work.echo).await?;
        small_echo(&mut tcp, seed, rounds, size).await
    } else if pick < 95 {
        let size = rng.random_range(1024 * 1024..=4 * 1024 * 1024);
        let mut tcp = open(work.proxy, work.echo).await?;
        bulk_echo(&mut tcp, seed, size).await
    } else {
        let size = rng.random_range(1024 * 1024..=8 * 1024 * 1024);
        let tcp = open(work.proxy, work.digest).await?;
        upload(tcp, seed, size).await
    }
}

/// `CONNECT target` through `proxy`; the tunnel once the answer is `200`.
async fn open(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream, Trouble> {
    let mut tcp = TcpStream::connect(proxy)
        .await
        .map_err(cut("connecting to the frontend"))?;
    let _ = tcp.set_nodelay(true);
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(cut("sending CONNECT"))?;
    // Nothing follows the answer until the client speaks, so reading it bytewise ends exactly at its end.
    let mut head = Vec::with_capacity(64);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 4096 {
            return Err(Trouble::Refused("over-long CONNECT answer".into()));
        }
        let byte = tcp.read_u8().await.map_err(refused("reading the CONNECT answer"))?;
        head.push(byte);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        let status = String::from_utf8_lossy(&head);
        return Err(Trouble::Refused(format!(
            "CONNECT answered {:?}",
            status.lines().next().unwrap_or("")
        )));
    }
    Ok(tcp)
}

/// `rounds` request/response round trips of `size` bytes through the echo target.
async fn small_echo(tcp: &mut TcpStream, seed: u64, rounds: usize, size: usize) -> Result<u64, Trouble> {
    tcp.write_u8(target::ECHO).await.map_err(cut("sending the mode"))?;
    let (mut sent, mut expected) = (Pattern::new(seed), Pattern::new(seed));
    let mut out = vec![0u8; size];
    let mut back = vec![0u8; size];
    for _ in 0..rounds {
        sent.fill(&mut out);
        tcp.write_all(&out).await.map_err(cut("sending a request"))?;
        tcp.read_exact(&mut back).await.map_err(cut("reading an answer"))?;
        expected
            .check(&back)
            .map_err(|at| Trouble::Corrupt(format!("echo byte {at} of a small exchange differs")))?;
    }
    tcp.shutdown().await.map_err(cut("closing"))?;
    expect_eof(tcp).await?;
    Ok((rounds * size) as u64)
}

/// `size` bytes to the echo target and back, written and read concurrently.
async fn bulk_echo(tcp: &mut TcpStream, seed: u64, size: usize) -> Result<u64, Trouble> {
    tcp.write_u8(target::ECHO).await.map_err(cut("sending the mode"))?;
    let (mut reader, mut writer) = tcp.split();
    let write = async {
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; BULK_CHUNK];
        let mut left = size;
        while left > 0 {
            let n = left.min(BULK_CHUNK);
            pattern.fill(&mut buf[..n]);
            writer.write_all(&buf[..n]).await.map_err(cut("sending bulk"))?;
            left -= n;
        }
        writer.shutdown().await.map_err(cut("closing after bulk"))
    };
    let read = async {
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; BULK_CHUNK];
        loop {
            let n = reader.read(&mut buf).await.map_err(cut("reading bulk"))?;
            if n == 0 {
                break;
            }
            pattern
                .check(&buf[..n])
                .map_err(|at| Trouble::Corrupt(format!("echo byte {at} of a {size}-byte bulk exchange differs")))?;
            if pattern.offset() > size as u64 {
                return Err(Trouble::Corrupt(format!("more than the {size} bytes sent came back")));
            }
        }
        match pattern.offset() {
            got if got == size as u64 => Ok(got),
            got => Err(Trouble::Cut(format!("bulk echo ended after {got} of {size} bytes"))),
        }
    };
    let ((), got) = tokio::try_join!(write, read)?;
    Ok(got)
}

/// `size` bytes to the digest target; its acknowledgement must match them.
async fn upload(tcp: TcpStream, seed: u64, size: usize) -> Result<u64, Trouble> {
    let (mut reader, mut writer) = tcp.into_split();
    let mut pattern = Pattern::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BULK_CHUNK];
    let mut left = size;
    while left > 0 {
        let n = left.min(BULK_CHUNK);
        pattern.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n]).await.map_err(cut("uploading"))?;
        left -= n;
    }
    writer.shutdown().await.map_err(cut("closing the upload"))?;
    let mut answer = String::new();
    reader
        .read_to_string(&mut answer)
        .await
        .map_err(cut("reading the digest"))?;
    if answer.is_empty() {
        return Err(Trouble::Cut("closed without a digest".into()));
    }
    let expected = format!("{size} {}\n", hex(&hasher.finalize()));
    if answer != expected {
        return Err(Trouble::Corrupt(format!(
            "the target acknowledged {:?}, sent {:?}",
            answer.trim_end(),
            expected.trim_end()
        )));
    }
    Ok(size as u64)
}

/// Reads until EOF; any byte is one too many.
async fn expect_eof(tcp: &mut TcpStream) -> Result<(), Trouble> {
    let mut byte = [0u8; 1];
    match tcp.read(&mut byte).await.map_err(cut("waiting for the close"))? {
        0 => Ok(()),
        _ => Err(Trouble::Corrupt("a byte more than was sent came back".into())),
    }
}

/// The digest target: reads each connection to EOF, then answers
/// `LENGTH SHA256HEX\n` and closes. A connection reset gets no answer.
pub async fn serve_digest(listener: TcpListener) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; BULK_CHUNK];
            let mut total = 0u64;
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        total += n as u64;
                    }
                    Err(_) => return,
                }
            }
            let answer = format!("{total} {}\n", hex(&hasher.finalize()));
            let _ = tcp.write_all(answer.as_bytes()).await;
            let _ = tcp.shutdown().await;
        });
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
