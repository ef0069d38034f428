//! Agents killed and restarted at random during the soak test: SIGTERM
//! mostly, sometimes SIGKILL, one agent at a time, never agent 0 (the stable
//! agent whose growth is judged across the whole run).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Mutex, watch};

use super::processes::{Launcher, Proc, Stopped};
use super::workload::Kills;

/// Share of kills that are SIGKILL rather than SIGTERM.
const SIGKILL_SHARE: f64 = 0.2;
/// Longest time a killed agent stays down before its restart.
const MAX_DOWNTIME: Duration = Duration::from_secs(3);

/// The agent killer and its counts.
#[derive(Debug)]
pub struct Chaos {
    launcher: Launcher,
    server: SocketAddr,
    agents: Arc<Mutex<Vec<Proc>>>,
    kills: Arc<Kills>,
    every: Duration,
    /// Agents stopped with SIGTERM.
    pub terms: AtomicU64,
    /// Agents stopped with SIGKILL.
    pub sigkills: AtomicU64,
    /// Agents that ignored SIGTERM for [`super::processes::STOP_TIMEOUT`] and were killed.
    pub term_ignored: AtomicU64,
    /// What went wrong (restarts that failed).
    pub problems: std::sync::Mutex<Vec<String>>,
}

impl Chaos {
    /// Kills among `agents` (restarting them towards `server`), on average every `every`.
    pub fn new(
        launcher: Launcher,
        server: SocketAddr,
        agents: Arc<Mutex<Vec<Proc>>>,
        kills: Arc<Kills>,
        every: Duration,
    ) -> Self {
        Self {
            launcher,
            server,
            agents,
            kills,
            every,
            terms: AtomicU64::default(),
            sigkills: AtomicU64::default(),
            term_ignored: AtomicU64::default(),
            problems: Default::default(),
        }
    }

    /// Kills and restarts agents until `stop` turns true (nothing with fewer than two agents).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut rng = StdRng::from_os_rng();
        loop {
            let pause = self.every.mul_f64(rng.random_range(0.5..1.5));
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            let mut agents = self.agents.lock().await;
            if *stop.borrow() || agents.len() < 2 {
                continue;
            }
            let position = rng.random_range(1..agents.len());
            let victim = agents.remove(position);
            let (name, incarnation) = (victim.name.clone(), victim.incarnation);
            let index: usize = name.trim_start_matches("agent-").parse().unwrap_or(position);
            let kill = rng.random_bool(SIGKILL_SHARE);
            self.kills.killed();
            match victim.stop(kill).await {
                Ok(Stopped::OnTerm) => self.terms.fetch_add(1, Ordering::Relaxed),
                Ok(Stopped::Killed) => self.sigkills.fetch_add(1, Ordering::Relaxed),
                Ok(Stopped::TermIgnored) => {
                    self.problem(format!("{name} #{incarnation} ignored SIGTERM for 30 s"));
                    self.term_ignored.fetch_add(1, Ordering::Relaxed)
                }
                Err(err) => {
                    self.problem(format!("stopping {name}: {err:#}"));
                    0
                }
            };
            tokio::time::sleep(MAX_DOWNTIME.mul_f64(rng.random_range(0.0..1.0))).await;
            match self.launcher.agent(index, incarnation + 1, self.server).await {
                Ok(agent) => agents.insert(position, agent),
                Err(err) => self.problem(format!("restarting {name}: {err:#}")),
            }
            self.kills.back();
        }
    }

    /// Agents killed so far (any signal).
    pub fn kills(&self) -> u64 {
        self.terms.load(Ordering::Relaxed)
            + self.sigkills.load(Ordering::Relaxed)
            + self.term_ignored.load(Ordering::Relaxed)
    }

    fn problem(&self, what: String) {
        eprintln!("soak: {what}");
        self.problems.lock().expect("problems").push(what);
    }
}
