//! The soak test (`scripts/soak`, `benches/src/bin/soak.rs`): one `connector
//! server`, several agents claiming the same host, and many tunnelled
//! connections opening, transferring and closing through the server's HTTP
//! CONNECT frontend for a long time, every byte checked ([`workload`]), while
//! agents are killed and restarted at random ([`chaos`]). Every interval it
//! prints each process's RSS, file descriptors, threads and tokio tasks
//! ([`sampling`]); at the end it judges whether any of them keeps growing
//! ([`verdict`]) and whether any byte was lost.

pub mod chaos;
pub mod pattern;
pub mod processes;
pub mod report;
pub mod sampling;
pub mod verdict;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};

use chaos::Chaos;
use processes::Launcher;
use report::{Recorder, Totals};
use workload::{Kills, Tally, Workload};

/// Time over which the workers start.
const RAMP_UP: Duration = Duration::from_secs(10);

/// A TCP listener on 127.0.0.1 with a listen queue deep enough for every worker's connection at once.
fn listen_loopback() -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(([127, 0, 0, 1], 0).into())?;
    socket.listen(4096)
}

/// What one soak run does.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The `connector` binary.
    pub connector: PathBuf,
    /// A `connector dev-pki` directory.
    pub pki: PathBuf,
    /// Where the process logs and `samples.csv` go.
    pub out: PathBuf,
    /// How long the traffic runs.
    pub duration: Duration,
    /// Tunnelled connections open at once.
    pub connections: usize,
    /// Agents (at least 1); agent 0 is never restarted.
    pub agents: usize,
    /// Time between samples.
    pub interval: Duration,
    /// Samples before this are not judged for growth.
    pub warmup: Duration,
    /// Mean time between agent kills.
    pub kill_every: Duration,
}

/// Runs the soak test; `Ok(true)` if it passed.
pub async fn run(config: SoakConfig) -> anyhow::Result<bool> {
    processes::check_pki(&config.pki)?;
    std::fs::create_dir_all(&config.out).with_context(|| format!("creating {}", config.out.display()))?;
    let launcher = Launcher {
        connector: config.connector.clone(),
        pki: config.pki.clone(),
        logs: config.out.clone(),
        agent_max_connections: config.connections.max(connector_core::agent::DEFAULT_MAX_CONNECTIONS),
    };
    let echo_listener = listen_loopback()?;
    let echo = echo_listener.local_addr()?;
    tokio::spawn(crate::target::serve(echo_listener));
    let digest_listener = listen_loopback()?;
    let digest = digest_listener.local_addr()?;
    tokio::spawn(workload::serve_digest(digest_listener));

    let (server, addrs) = launcher.server().await.context("starting the server")?;
    let mut agents = Vec::new();
    for index in 0..config.agents {
        agents.push(
            launcher
                .agent(index, 1, addrs.quic)
                .await
                .context("starting an agent")?,
        );
    }
    println!(
        "soak: server pid {} (QUIC {}, CONNECT {}), {} agents, {} connections, {:?}, logs in {}",
        server.pid,
        addrs.quic,
        addrs.connect,
        config.agents,
        config.connections,
        config.duration,
        config.out.display()
    );
    let agents = Arc::new(Mutex::new(agents));
    let kills = Arc::new(Kills::default());
    let tally = Arc::new(Tally::default());
    let work = Arc::new(Workload {
        proxy: addrs.connect,
        echo,
        digest,
        tally: tally.clone(),
        kills: kills.clone(),
        grace: Duration::from_secs(5),
        exchange_timeout: Duration::from_secs(120),
    });
    let (stop, stopped) = watch::channel(false);
    let ramp = RAMP_UP.div_f64(config.connections.max(1) as f64);
    let workers: Vec<_> = (0..config.connections as u64)
        .map(|id| {
            let delay = ramp * id as u32;
            tokio::spawn(workload::worker(id, delay, work.clone(), stopped.clone()))
        })
        .collect();
    let chaos = Arc::new(Chaos::new(
        launcher.clone(),
        addrs.quic,
        agents.clone(),
        kills,
        config.kill_every,
    ));
    let chaos_task = tokio::spawn(chaos.clone().run(stopped.clone()));

    let mut recorder = Recorder::new(&config.out.join("samples.csv"), config.warmup)?;
    let mut server = server;
    let started = Instant::now();
    let mut next = tokio::time::Instant::now();
    loop {
        let elapsed = started.elapsed();
        let totals = Totals::read(&tally, &chaos);
        {
            // Holding the agents' lock: no kill or restart during the sample.
            let mut agents = agents.lock().await;
            recorder.sample(elapsed, &mut server, &mut agents, totals).await;
        }
        if elapsed >= config.duration {
            break;
        }
        next += config.interval;
        let remaining = config.duration.saturating_sub(elapsed);
        tokio::time::sleep_until(next.min(tokio::time::Instant::now() + remaining)).await;
    }

    let _ = stop.send(true);
    let _ = tokio::time::timeout(processes::STOP_TIMEOUT * 2, chaos_task).await;
    for worker in workers {
        worker.abort();
    }
    let agents = std::mem::take(&mut *agents.lock().await);
    for agent in agents {
        let name = agent.name.clone();
        if let Ok(processes::Stopped::TermIgnored) = agent.stop(false).await {
            recorder.problem(format!("{name} did not exit within 30 s of SIGTERM at the end"));
        }
    }
    if let Ok(processes::Stopped::TermIgnored) = server.stop(false).await {
        recorder.problem("the server did not exit within 30 s of SIGTERM at the end".into());
    }
    let passed = recorder.finish(&tally, &chaos, config.connections);
    Ok(passed)
}
