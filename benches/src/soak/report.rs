//! The soak test's per-interval lines, its CSV and its final verdict.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;

use super::chaos::Chaos;
use super::processes::Proc;
use super::sampling::{self, Sample};
use super::verdict::{self, Growth, Tolerance};
use super::workload::Tally;

/// Tolerances of the growth check (see [`verdict`]): RSS (KiB), fds, tasks.
const RSS_TOLERANCE: Tolerance = Tolerance {
    relative: 0.10,
    absolute: 16.0 * 1024.0,
};
const FD_TOLERANCE: Tolerance = Tolerance {
    relative: 0.15,
    absolute: 64.0,
};
const TASK_TOLERANCE: Tolerance = Tolerance {
    relative: 0.15,
    absolute: 128.0,
};

/// The workers' and the killer's counts at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    completed: u64,
    bytes_verified: u64,
    interrupted: u64,
    refused: u64,
    failed: u64,
    corrupted: u64,
    kills: u64,
    sigkills: u64,
}

impl Totals {
    /// Reads the counts now.
    pub fn read(tally: &Tally, chaos: &Chaos) -> Self {
        Self {
            completed: tally.completed.load(Ordering::Relaxed),
            bytes_verified: tally.bytes_verified.load(Ordering::Relaxed),
            interrupted: tally.interrupted.load(Ordering::Relaxed),
            refused: tally.refused.load(Ordering::Relaxed),
            failed: tally.failed.load(Ordering::Relaxed),
            corrupted: tally.corrupted.load(Ordering::Relaxed),
            kills: chaos.kills(),
            sigkills: chaos.sigkills.load(Ordering::Relaxed),
        }
    }
}

/// Collects the samples, prints them, and judges at the end.
#[derive(Debug)]
pub struct Recorder {
    csv: File,
    warmup: Duration,
    /// Samples of the server and of agent 0's first (only) incarnation.
    series: Vec<(String, Vec<(Duration, Sample)>)>,
    last: Totals,
    samples: usize,
    problems: Vec<String>,
}

impl Recorder {
    /// Writes samples to `csv`; samples before `warmup` are shown but not judged.
    pub fn new(csv: &Path, warmup: Duration) -> anyhow::Result<Self> {
        let mut file = File::create(csv).with_context(|| format!("creating {}", csv.display()))?;
        writeln!(
            file,
            "elapsed_s,process,incarnation,pid,rss_kib,fds,threads,tasks,tunnels,\
             completed,bytes_verified,interrupted,refused,failed,corrupted,agent_kills"
        )?;
        Ok(Self {
            csv: file,
            warmup,
            series: vec![("server".into(), Vec::new()), ("agent-0".into(), Vec::new())],
            last: Totals::default(),
            samples: 0,
            problems: Vec::new(),
        })
    }

    /// Something that makes the run fail.
    pub fn problem(&mut self, what: String) {
        eprintln!("soak: {what}");
        self.problems.push(what);
    }

    /// Measures the server and the agents, prints a line for each and the totals.
    pub async fn sample(&mut self, elapsed: Duration, server: &mut Proc, agents: &mut [Proc], totals: Totals) {
        let at = clock(elapsed);
        for proc in std::iter::once(server).chain(agents.iter_mut()) {
            if let Some(status) = proc.exited() {
                self.problem(format!(
                    "{at} {} #{} exited by itself: {status}",
                    proc.name, proc.incarnation
                ));
                continue;
            }
            let sample = match sampling::measure(proc.pid, proc.admin).await {
                Ok(sample) => sample,
                Err(err) => {
                    self.problem(format!("{at} measuring {}: {err:#}", proc.name));
                    continue;
                }
            };
            let show = |v: Option<i64>| v.map_or("?".to_owned(), |v| v.to_string());
            println!(
                "[{at}] {:<8} #{:<3} pid {:<7} rss {:>7.1} MiB  fds {:>5}  threads {:>3}  tasks {:>6}  tunnels {:>5}",
                proc.name,
                proc.incarnation,
                proc.pid,
                sample.rss_kib as f64 / 1024.0,
                sample.fds,
                sample.threads,
                show(sample.tasks),
                show(sample.tunnels),
            );
            let _ = writeln!(
                self.csv,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                elapsed.as_secs(),
                proc.name,
                proc.incarnation,
                proc.pid,
                sample.rss_kib,
                sample.fds,
                sample.threads,
                sample.tasks.map_or(String::new(), |v| v.to_string()),
                sample.tunnels.map_or(String::new(), |v| v.to_string()),
                totals.completed,
                totals.bytes_verified,
                totals.interrupted,
                totals.refused,
                totals.failed,
                totals.corrupted,
                totals.kills,
            );
            if let Some((_, series)) = self
                .series
                .iter_mut()
                .find(|(name, _)| *name == proc.name && proc.incarnation == 1)
            {
                series.push((elapsed, sample));
            }
        }
        let _ = self.csv.flush();
        println!(
            "[{at}] totals   completed {} (+{})  verified {:.2} GiB  interrupted {}  refused {}  failed {}  \
             corrupted {}  agent kills {} (SIGKILL {})",
            totals.completed,
            totals.completed - self.last.completed,
            totals.bytes_verified as f64 / (1u64 << 30) as f64,
            totals.interrupted,
            totals.refused,
            totals.failed,
            totals.corrupted,
            totals.kills,
            totals.sigkills,
        );
        self.samples += 1;
        if self.samples > 1 && totals.completed == self.last.completed {
            self.problem(format!("{at} no connection completed since the previous sample"));
        }
        self.last = totals;
    }

    /// Prints the summary and the verdict; whether the run passed.
    pub fn finish(mut self, tally: &Tally, chaos: &Chaos, connections: usize) -> bool {
        println!(
            "\nsoak summary ({connections} connections; warm-up {})",
            clock(self.warmup)
        );
        println!("| process | figure | start | after warm-up | end | growth check |");
        println!("|---|---|---|---|---|---|");
        let mut growing = Vec::new();
        for (name, series) in &self.series {
            type Figure = fn(&Sample) -> Option<f64>;
            let figures: [(&str, Figure, Tolerance); 3] = [
                ("RSS (MiB)", |s| Some(s.rss_kib as f64 / 1024.0), mib(RSS_TOLERANCE)),
                ("open fds", |s| Some(s.fds as f64), FD_TOLERANCE),
                ("tokio tasks", |s| s.tasks.map(|t| t as f64), TASK_TOLERANCE),
            ];
            for (figure, value, tolerance) in figures {
                let all: Vec<(Duration, f64)> = series.iter().filter_map(|(t, s)| Some((*t, value(s)?))).collect();
                let judged: Vec<f64> = all.iter().filter(|(t, _)| *t >= self.warmup).map(|(_, v)| *v).collect();
                let at = |pick: Option<&(Duration, f64)>| {
                    pick.map_or("-".into(), |(t, v)| format!("{v:.1} ({})", clock(*t)))
                };
                let growth = verdict::judge(&judged, tolerance);
                let check = match &growth {
                    Growth::TooFewSamples => "not judged (fewer than 3 samples after warm-up)".to_owned(),
                    Growth::Steady { first, last } => format!("steady (first third {first:.1}, last third {last:.1})"),
                    Growth::KeepsGrowing { first, last } => {
                        growing.push(format!("{name} {figure}: {first:.1} -> {last:.1}"));
                        format!("KEEPS GROWING (first third {first:.1}, last third {last:.1})")
                    }
                };
                println!(
                    "| {name} | {figure} | {} | {} | {} | {check} |",
                    at(all.first()),
                    at(all.iter().find(|(t, _)| *t >= self.warmup)),
                    at(all.last()),
                );
            }
        }
        let totals = Totals::read(tally, chaos);
        println!(
            "\ntotals: {} connections completed, {:.2} GiB verified, {} interrupted by agent kills, \
             {} refused with no agent down, {} failed (cut, no agent down), {} corrupted; {} agent kills ({} SIGKILL)",
            totals.completed,
            totals.bytes_verified as f64 / (1u64 << 30) as f64,
            totals.interrupted,
            totals.refused,
            totals.failed,
            totals.corrupted,
            totals.kills,
            totals.sigkills
        );
        for failure in tally.failures() {
            println!("  {failure}");
        }
        self.problems
            .extend(chaos.problems.lock().expect("problems").iter().cloned());
        if totals.refused > 0 {
            println!(
                "note: {} tunnels were refused with no agent down (no data was sent on them; not a failure)",
                totals.refused
            );
        }
        let mut reasons = Vec::new();
        if totals.corrupted > 0 {
            reasons.push(format!("{} exchanges lost or corrupted data", totals.corrupted));
        }
        if totals.failed > 0 {
            reasons.push(format!(
                "{} established tunnels were cut with no agent down",
                totals.failed
            ));
        }
        if !growing.is_empty() {
            reasons.push(format!("keeps growing after warm-up: {}", growing.join("; ")));
        }
        reasons.append(&mut self.problems);
        if reasons.is_empty() {
            println!("verdict: PASS");
            true
        } else {
            println!("verdict: FAIL");
            for reason in reasons {
                println!("  - {reason}");
            }
            false
        }
    }
}

fn mib(tolerance: Tolerance) -> Tolerance {
    Tolerance {
        absolute: tolerance.absolute / 1024.0,
        ..tolerance
    }
}

/// `12m05s`.
fn clock(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    format!("{:>3}m{:02}s", secs / 60, secs % 60)
}
