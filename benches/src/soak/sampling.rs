//! What the soak test measures of a process: RSS, threads and open file
//! descriptors from `/proc`, tokio alive tasks and open tunnels from its
//! `/metrics` page.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time a `/metrics` scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(15);

/// One measurement of one process.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Resident set size (KiB), `VmRSS`.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// OS threads.
    pub threads: u64,
    /// `connector_runtime_alive_tasks` (None if the scrape failed).
    pub tasks: Option<i64>,
    /// Tunnelled connections open now (`connector_{server,agent}_tunnels_active`).
    pub tunnels: Option<i64>,
}

/// Measures process `pid` whose admin listener is `admin`.
pub async fn measure(pid: u32, admin: SocketAddr) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("pid {pid} gone"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    let page = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(admin)).await;
    let page = match page {
        Ok(Ok(page)) => Some(page),
        Ok(Err(err)) => {
            eprintln!("soak: scraping {admin}: {err:#}");
            None
        }
        Err(_) => {
            eprintln!("soak: scraping {admin} took over {SCRAPE_TIMEOUT:?}");
            None
        }
    };
    let gauge = |name: &str| page.as_deref().and_then(|p| gauge(p, name));
    Ok(Sample {
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
        tasks: gauge("connector_runtime_alive_tasks"),
        tunnels: gauge("connector_server_tunnels_active").or_else(|| gauge("connector_agent_tunnels_active")),
    })
}

/// `GET /metrics`: the page.
async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(admin).await?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\n\r\n").await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => bail!("unexpected answer: {:?}", response.lines().next().unwrap_or("")),
    }
}

/// The value of the unlabelled sample `name` on a Prometheus text page.
pub fn gauge(page: &str, name: &str) -> Option<i64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_read_by_exact_name() {
        let page = "# TYPE a_total counter\na_total 5\na 7\nconnector_runtime_alive_tasks 12\n";
        assert_eq!(gauge(page, "a"), Some(7));
        assert_eq!(gauge(page, "connector_runtime_alive_tasks"), Some(12));
        assert_eq!(gauge(page, "missing"), None);
    }
}
