//! Serving one `Dial` on the agent: check the destination policy, resolve and
//! connect from the agent's network, answer with a `DialResult`, then splice.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

use super::policy::DestinationPolicy;
use crate::frame_io::{FrameIoError, read_frame, write_frame};
use crate::metrics::AgentMetrics;
use crate::proto::{Dial, DialCode, DialResult, Frame, MAX_FRAME_PAYLOAD, StreamCode, clip_text, escaped};
use crate::splice::{Abort, SpliceTimeouts, splice};
use crate::transport::BiStream;

/// Longest an agent works on one dial, whatever the server asked for.
pub const MAX_DIAL_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the server to acknowledge a finished stream's last bytes.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// What every dial on one agent shares.
pub(super) struct DialContext {
    pub(super) policy: DestinationPolicy,
    pub(super) slots: Arc<Semaphore>,
    pub(super) max_connections: usize,
    /// The tunnel idle and stall timeouts.
    pub(super) timeouts: SpliceTimeouts,
    /// [`super::AgentConfig::dial_frame_timeout`].
    pub(super) dial_frame_timeout: Duration,
    pub(super) metrics: Arc<AgentMetrics>,
}

/// Serves one stream opened by the server. Failures end this stream only.
pub(super) async fn serve_stream(mut bi: BiStream, ctx: Arc<DialContext>) {
    let wait = ctx.dial_frame_timeout;
    let dial = match tokio::time::timeout(wait, read_frame(&mut bi.recv, MAX_FRAME_PAYLOAD)).await {
        Ok(Ok(Frame::Dial(dial))) => dial,
        Ok(Ok(other)) => return refuse(bi, &format!("expected Dial, got {}", other.name())),
        Ok(Err(FrameIoError::Eof)) => return,
        Ok(Err(err)) => return refuse(bi, &err.to_string()),
        Err(_) => return refuse(bi, &format!("no complete Dial within {wait:?}")),
    };
    let span =
        tracing::info_span!("dial", request_id = dial.request_id, target = %format!("{}:{}", dial.host, dial.port));
    async move {
        let Ok(_slot) = ctx.slots.clone().try_acquire_owned() else {
            let message = format!("agent is at its limit of {} tunnelled connections", ctx.max_connections);
            ctx.metrics.dials.inc(DialCode::Overloaded.label());
            let _ = answer(&mut bi, &dial, DialCode::Overloaded, &message).await;
            return;
        };
        let mut tcp = match connect(&dial, &ctx.policy).await {
            Ok(tcp) => tcp,
            Err((code, message)) => {
                tracing::info!(%code, message = %escaped(&message), "dial failed");
                ctx.metrics.dials.inc(code.label());
                let _ = answer(&mut bi, &dial, code, &message).await;
                return;
            }
        };
        if answer(&mut bi, &dial, DialCode::Ok, "").await.is_err() {
            return;
        }
        tracing::debug!("connected");
        ctx.metrics.dials.inc(DialCode::Ok.label());
        ctx.metrics.tunnels_active.inc();
        let delivered = bi.send.delivered();
        let outcome = splice(&mut tcp, bi.send, bi.recv, ctx.timeouts).await;
        if outcome.aborted.is_none() {
            // The task ends once the server has everything: a draining session
            // closes its connection when its tasks are done.
            let _ = tokio::time::timeout(DELIVERY_TIMEOUT, delivered).await;
        }
        ctx.metrics.tunnels_active.dec();
        match outcome.aborted {
            Some(Abort::Idle) => {
                tracing::info!(idle_timeout = ?ctx.timeouts.idle, "closed an idle tunnelled connection");
                ctx.metrics.tunnels_idle_closed.inc();
            }
            Some(Abort::Stalled(stalled)) => {
                tracing::warn!(%stalled, "closed a stalled tunnelled connection on both ends");
                ctx.metrics.tunnels_stalled.inc();
            }
            _ => {}
        }
        // Counted before the target sees its connection end.
        drop(tcp);
        tracing::debug!(to_server = outcome.to_tunnel, to_target = outcome.to_tcp, aborted = ?outcome.aborted, "tunnelled connection ended");
    }
    .instrument(span)
    .await
}

/// Resets a stream whose first frame was not a valid `Dial`.
fn refuse(mut bi: BiStream, reason: &str) {
    tracing::warn!(reason = %escaped(reason), "refusing a stream from the server");
    bi.send.reset(StreamCode::ProtocolError);
    bi.recv.stop(StreamCode::ProtocolError);
}

async fn answer(bi: &mut BiStream, dial: &Dial, code: DialCode, message: &str) -> Result<(), FrameIoError> {
    let result = Frame::DialResult(DialResult {
        request_id: dial.request_id,
        code,
        message: clip_text(message),
    });
    write_frame(&mut bi.send, &result).await
}

/// Resolves (on this side: cluster names only resolve here), applies the
/// policy to every address, and connects to the first allowed one that answers.
async fn connect(dial: &Dial, policy: &DestinationPolicy) -> Result<TcpStream, (DialCode, String)> {
    let budget = Duration::from_millis(dial.timeout_ms.into()).min(MAX_DIAL_TIMEOUT);
    let deadline = Instant::now() + budget;
    let timed_out = || (DialCode::TimedOut, format!("no connection within {budget:?}"));
    let (name, addrs): (Option<&str>, Vec<IpAddr>) = match dial.host.parse::<IpAddr>() {
        Ok(ip) => (None, vec![ip]),
        Err(_) => {
            let lookup = tokio::net::lookup_host((dial.host.as_str(), dial.port));
            let found = tokio::time::timeout_at(deadline, lookup)
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| (DialCode::DnsFailure, format!("{}: {e}", dial.host)))?;
            let addrs: Vec<IpAddr> = found.map(|a| a.ip()).collect();
            if addrs.is_empty() {
                return Err((DialCode::DnsFailure, format!("{} has no addresses", dial.host)));
            }
            (Some(dial.host.as_str()), addrs)
        }
    };
    let mut denied = None;
    let mut last_error = None;
    for ip in addrs {
        if let Err(reason) = policy.check(name, ip, dial.port) {
            denied.get_or_insert(reason);
            continue;
        }
        let addr = SocketAddr::new(ip, dial.port);
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Ok(Err(err)) => last_error = Some((addr, err)),
        }
    }
    match (last_error, denied) {
        (Some((addr, err)), _) => Err((connect_code(&err), format!("{addr}: {err}"))),
        (None, Some(reason)) => Err((DialCode::DeniedByPolicy, reason.to_string())),
        (None, None) => Err((DialCode::Internal, "no address to try".into())),
    }
}

fn connect_code(err: &io::Error) -> DialCode {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => DialCode::Refused,
        io::ErrorKind::TimedOut => DialCode::TimedOut,
        _ => DialCode::Unreachable,
    }
}
