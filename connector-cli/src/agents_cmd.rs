//! `connector agents`: the agents connected to one or more servers, from
//! `GET /agents` on their admin listeners (`connector server --admin ADDR`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use connector_core::admin::{self, AgentRecord, AgentsReport};
use connector_core::proto::escaped;

use crate::units::parse_duration;

/// Time one admin listener has to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Recently disconnected agents listed under the table (`--json` has them all).
const DISCONNECTED_SHOWN: usize = 10;

#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    /// A server's admin address (what it was started with as `--admin`,
    /// e.g. 127.0.0.1:9090). Repeat it to list the agents of several replicas
    /// in one table.
    #[arg(
        long,
        required = true,
        env = "CONNECTOR_ADMIN",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    admin: Vec<String>,
    /// Redraw every INTERVAL (default 2s) until Ctrl-C.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = parse_duration)]
    watch: Option<Duration>,
    /// Print the JSON the servers answer (one object per line and server) instead of a table.
    #[arg(long)]
    json: bool,
}

/// One server's answer: its raw JSON and what it says.
struct Answer {
    body: String,
    report: AgentsReport,
}

/// `GET /agents` from the admin listener at `addr`.
async fn fetch(addr: &str) -> anyhow::Result<Answer> {
    let hint = "pass the server's --admin address (`connector server --admin HOST:PORT`)";
    let response = tokio::time::timeout(FETCH_TIMEOUT, admin::get(addr, "/agents"))
        .await
        .map_err(|_| anyhow::anyhow!("the admin listener at {addr} did not answer within {FETCH_TIMEOUT:?}; {hint}"))?
        .map_err(|err| anyhow::anyhow!("{err}; {hint}"))?;
    if response.status != 200 {
        bail!(
            "the admin listener at {addr} answered {} to GET /agents: {}; {hint}",
            response.status,
            escaped(response.body.trim())
        );
    }
    let report = serde_json::from_str(&response.body).with_context(|| {
        format!("the admin listener at {addr} answered GET /agents with something other than its JSON")
    })?;
    Ok(Answer {
        body: response.body,
        report,
    })
}

/// Asks every server at once; answers in the order of `addrs`.
async fn fetch_all(addrs: &[String]) -> Vec<anyhow::Result<Answer>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, addr) in addrs.iter().enumerate() {
        let addr = addr.clone();
        tasks.spawn(async move { (i, fetch(&addr).await) });
    }
    let mut answers: Vec<_> = tasks.join_all().await;
    answers.sort_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, answer)| answer).collect()
}

/// One round: what to print, and whether every server answered.
async fn round(args: &AgentsArgs) -> (String, Vec<anyhow::Error>) {
    let mut reports = Vec::new();
    let mut out = String::new();
    let mut errors = Vec::new();
    for answer in fetch_all(&args.admin).await {
        match answer {
            Ok(answer) if args.json => out.push_str(&answer.body),
            Ok(answer) => reports.push(answer.report),
            Err(err) => errors.push(err),
        }
    }
    if !args.json && (!reports.is_empty() || errors.is_empty()) {
        out = render(&reports);
    }
    (out, errors)
}

pub async fn run(args: AgentsArgs) -> anyhow::Result<()> {
    let Some(interval) = args.watch else {
        let (out, mut errors) = round(&args).await;
        print!("{out}");
        std::io::stdout().flush()?;
        let Some(last) = errors.pop() else {
            return Ok(());
        };
        for err in errors {
            eprintln!("error: {err:#}");
        }
        return Err(last);
    };
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let (out, errors) = round(&args).await;
        let mut screen = String::new();
        if terminal {
            // Home and clear: redraw in place.
            screen.push_str("\x1b[H\x1b[2J");
        }
        let _ = writeln!(
            screen,
            "connector agents, every {interval:?} (Ctrl-C to stop): {}\n",
            admin::rfc3339(SystemTime::now())
        );
        screen.push_str(&out);
        for err in errors {
            let _ = writeln!(screen, "error: {err:#}");
        }
        if !terminal {
            screen.push('\n');
        }
        print!("{screen}");
        std::io::stdout().flush()?;
        tokio::select! {
            _ = crate::shutdown_signal() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// The table of every server's agents, then their recent disconnects.
fn render(reports: &[AgentsReport]) -> String {
    let mut agents: Vec<&AgentRecord> = reports.iter().flat_map(|r| &r.agents).collect();
    agents.sort_by(|a, b| (&a.agent_id, &a.server_id).cmp(&(&b.agent_id, &b.server_id)));
    let replicas: Vec<String> = reports.iter().map(|r| escaped(&r.server_id).to_string()).collect();
    let mut out = String::new();
    if agents.is_empty() {
        let _ = writeln!(out, "no agents connected to {}", replicas.join(", "));
    } else {
        let header = [
            "AGENT",
            "IDENTITY",
            "TRANSPORT",
            "REPLICA",
            "CONNECTED SINCE",
            "AGE",
            "OPEN",
            "TO AGENT",
            "FROM AGENT",
            "RTT",
            "IDENTIFIERS",
            "LAST DISCONNECT",
        ];
        let rows: Vec<[String; 12]> = agents
            .iter()
            .map(|a| {
                [
                    escaped(&a.agent_id).to_string(),
                    escaped(&a.identity).to_string(),
                    escaped(&a.transport).to_string(),
                    escaped(&a.server_id).to_string(),
                    escaped(to_seconds(&a.connected_since)).to_string(),
                    age(a.connected_for_secs),
                    a.open_connections.to_string(),
                    bytes(a.bytes_to_agent),
                    bytes(a.bytes_from_agent),
                    a.rtt_ms.map_or_else(|| "-".to_owned(), rtt),
                    escaped(&a.identifiers).to_string(),
                    a.last_disconnect.as_ref().map_or_else(
                        || "-".to_owned(),
                        |d| format!("{} {}", escaped(to_seconds(&d.at)), escaped(&d.reason)),
                    ),
                ]
            })
            .collect();
        table(&mut out, &header, &rows);
    }
    let mut gone: Vec<_> = reports.iter().flat_map(|r| &r.disconnected).collect();
    gone.sort_by(|a, b| b.at.cmp(&a.at));
    if !gone.is_empty() {
        let _ = writeln!(out, "\nrecently disconnected, not connected now (newest first):");
        let rows: Vec<[String; 3]> = gone
            .iter()
            .take(DISCONNECTED_SHOWN)
            .map(|d| {
                [
                    escaped(&d.agent_id).to_string(),
                    escaped(to_seconds(&d.at)).to_string(),
                    escaped(&d.reason).to_string(),
                ]
            })
            .collect();
        table(&mut out, &["AGENT", "DISCONNECTED AT", "REASON"], &rows);
        if gone.len() > DISCONNECTED_SHOWN {
            let _ = writeln!(out, "... and {} more (see --json)", gone.len() - DISCONNECTED_SHOWN);
        }
    }
    out
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table<const N: usize>(out: &mut String, header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// An RFC 3339 time without its fraction of a second.
fn to_seconds(rfc3339: &str) -> &str {
    match (rfc3339.find('.'), rfc3339.ends_with('Z')) {
        (Some(dot), true) => &rfc3339[..dot],
        _ => rfc3339.trim_end_matches('Z'),
    }
}

/// `45s`, `5m12s`, `3h04m`, `2d03h`.
fn age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// `0.31ms`, `12ms`.
fn rtt(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

/// `512 B`, `1.5 KiB`, `12.3 MiB`, ...
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_core::admin::DisconnectRecord;

    #[test]
    fn sizes_ages_and_times_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(100_000), "97.7 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(age(45), "45s");
        assert_eq!(age(312), "5m12s");
        assert_eq!(age(3 * 3600 + 4 * 60 + 5), "3h04m");
        assert_eq!(age(2 * 86_400 + 3 * 3600), "2d03h");
        assert_eq!(to_seconds("2026-05-01T12:28:44.123Z"), "2026-05-01T12:28:44");
        assert_eq!(to_seconds("2026-05-01T12:28:44Z"), "2026-05-01T12:28:44");
        assert_eq!(rtt(0.314), "0.31ms");
        assert_eq!(rtt(42.4), "42ms");
    }

    #[test]
    fn the_table_escapes_what_peers_chose() {
        let report = AgentsReport {
            server_id: "srv-1".into(),
            agents: vec![AgentRecord {
                agent_id: "node-a".into(),
                identity: "evil\x1b[2Jname".into(),
                identifiers: "host=node-a".into(),
                transport: "quic".into(),
                server_id: "srv-1".into(),
                remote_addr: None,
                connected_since: "2026-05-01T12:28:44.123Z".into(),
                connected_for_secs: 75,
                open_connections: 2,
                bytes_to_agent: 2048,
                bytes_from_agent: 10,
                rtt_ms: Some(0.314),
                last_disconnect: None,
            }],
            disconnected: vec![DisconnectRecord {
                agent_id: "node-b".into(),
                reason: "closed by peer: shutdown (bye\nnow)".into(),
                at: "2026-05-01T12:20:00.000Z".into(),
            }],
        };
        let text = render(&[report]);
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("evil\\u{1b}[2Jname"), "{text}");
        assert!(
            text.contains("2.0 KiB") && text.contains("10 B") && text.contains("0.31ms"),
            "{text}"
        );
        assert!(text.contains("1m15s"), "{text}");
        assert!(text.contains("node-b  2026-05-01T12:20:00"), "{text}");
        assert!(text.contains("bye\\nnow"), "{text}");
    }
}
