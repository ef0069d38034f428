//! One agent's connection on the server: handshake, `Hello`, authentication,
//! registration, then watching the connection until it ends.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use futures_util::FutureExt;
use tracing::Instrument;

use super::Server;
use super::admission::{SourceGuard, read_hello};
use super::registry::{AgentEntry, Disconnect};
use crate::auth::{AuthRejection, AuthRequest, check_agent_id, served_identifiers};
use crate::frame_io::{FrameIoError, read_frame, write_frame};
use crate::proto::{
    ConnectionCode, DecodeError, Frame, GoAway, Hello, MAX_FRAME_PAYLOAD, PROTOCOL_MAJOR, PROTOCOL_MINOR, Reject,
    RejectCode, StreamCode, Welcome, clip_text, escaped,
};
use crate::transport::{BiStream, Connection, Incoming, TransportError};

/// Drives one agent connection from handshake to close. Never panics on
/// peer input; every failure is logged and ends this connection only. Until
/// the agent is admitted or refused it holds `source` (counted against its
/// address), then a handshake slot and then a pre-`Hello` slot, either of
/// which a newcomer may take if it waits too long (`server::admission`).
pub(super) async fn run(server: Server, incoming: Incoming, source: SourceGuard) {
    let inner = server.inner.clone();
    let mut slot = inner.handshakes.take();
    let conn = tokio::select! {
        conn = incoming.handshake => match conn {
            Ok(conn) => conn,
            Err(err) => {
                tracing::debug!(%err, "agent handshake failed");
                return;
            }
        },
        () = slot.evicted() => {
            inner.metrics.agent_rejections.inc("handshake_evicted");
            tracing::debug!(
                limit = inner.config.limits.max_handshakes,
                "dropping the handshake in progress longest to make room for a new one"
            );
            return;
        }
    };
    drop(slot);
    let remote = conn
        .peer()
        .remote_addr
        .map(|a| a.to_string())
        .unwrap_or_else(|| "memory".into());
    let span = tracing::info_span!("agent", %remote, agent = tracing::field::Empty);
    async move {
        let inner = &server.inner;
        let mut slot = inner.pre_hello.take();
        let authorized = tokio::select! {
            authorized = hello_and_authorize(&server, &conn) => authorized,
            () = slot.evicted() => {
                let limit = inner.config.limits.max_pre_hello;
                inner.metrics.agent_rejections.inc("pre_hello_evicted");
                let evicted = inner.metrics.agent_rejections.get("pre_hello_evicted");
                // A line per eviction would flood the log under attack; the counter has them all.
                if evicted.is_power_of_two() {
                    tracing::warn!(
                        limit,
                        evicted,
                        "closing the agent connection that waited longest for its Hello: {limit} connections are waiting"
                    );
                }
                let reason = format!("server has {limit} connections waiting for their Hello and this one waited longest; retry");
                conn.close(ConnectionCode::Rejected, &reason);
                return;
            }
        };
        drop(slot);
        let admitted = match authorized {
            Some((control, entry, minor)) => welcome(&server, &conn, control, entry, minor).await,
            None => None,
        };
        drop(source);
        let Some((control, entry, minor)) = admitted else {
            return;
        };
        tracing::Span::current().record("agent", entry.agent_id.as_str());
        let ended = watch(&server, &conn, control, &entry, minor).await;
        // The server's own reason first: the transport then only knows it closed locally.
        let reason = match entry.ended_by_server.get() {
            Some(reason) => (*reason).to_owned(),
            None => ended,
        };
        tracing::info!(%reason, "agent disconnected");
        // Already out of routing if it sent a GoAway or a newer connection replaced it.
        server.inner.registry.ended(
            entry.conn_id,
            Disconnect {
                agent_id: entry.agent_id.clone(),
                reason,
                at: SystemTime::now(),
            },
        );
        // A drain waits for every session: this one ends once its close went out.
        conn.close_sent().await;
    }
    .instrument(span)
    .await
}

/// Drops a connection attempt from an address that already has
/// [`super::Limits::max_unadmitted_per_source`] connections waiting to be
/// admitted, before its handshake: the cheapest refusal there is (QUIC: the
/// attempt is refused; TCP: the socket is closed).
pub(super) fn refuse_over_source_limit(server: &Server, incoming: Incoming) {
    let metrics = &server.inner.metrics;
    metrics.agent_rejections.inc("per_source_limit");
    let refused = metrics.agent_rejections.get("per_source_limit");
    // Every refusal would be a line under a flood; the counter carries the rest.
    if refused.is_power_of_two() {
        tracing::warn!(
            remote = ?incoming.remote,
            limit = server.inner.sources.limit(),
            refused,
            "dropping an agent connection attempt: its address already has its limit of connections waiting to be admitted"
        );
    }
    drop(incoming);
}

/// Reads the `Hello` from the control stream and authenticates the agent.
/// Returns the control stream and the agent's entry (not yet registered),
/// or `None` when the agent was refused (already logged). Cancel-safe: it
/// registers nothing.
async fn hello_and_authorize(server: &Server, conn: &Arc<dyn Connection>) -> Option<(BiStream, Arc<AgentEntry>, u16)> {
    let limits = &server.inner.config.limits;
    let first = tokio::time::timeout(limits.hello_timeout, async {
        let mut control = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let hello = read_hello(&mut control.recv, &server.inner.hello_budget).await;
        Ok::<_, String>((control, hello))
    })
    .await;
    let (mut control, hello) = match first {
        Err(_) => {
            tracing::warn!("agent sent no Hello within {:?}; closing", limits.hello_timeout);
            conn.close(ConnectionCode::ProtocolError, "no Hello in time");
            server.inner.metrics.agent_rejections.inc("hello_timeout");
            return None;
        }
        Ok(Err(err)) => {
            tracing::debug!(%err, "agent left before its Hello");
            return None;
        }
        Ok(Ok(x)) => x,
    };
    let hello = match hello {
        Ok(Frame::Hello(hello)) => hello,
        Ok(other) => {
            let reason = format!("expected Hello, got {}", other.name());
            reject(server, conn, &mut control, RejectCode::Malformed, reason).await;
            return None;
        }
        Err(FrameIoError::Decode(DecodeError::UnsupportedVersion { major, minor })) => {
            let reason = format!(
                "agent speaks protocol {major}.{minor}, this server speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}: upgrade the older side"
            );
            reject(server, conn, &mut control, RejectCode::UnsupportedVersion, reason).await;
            return None;
        }
        Err(err) => {
            reject(
                server,
                conn,
                &mut control,
                RejectCode::Malformed,
                format!("bad Hello: {err}"),
            )
            .await;
            return None;
        }
    };
    let entry = match authorize(server, conn, &hello).await {
        Ok(entry) => entry,
        Err(rejection) => {
            reject(server, conn, &mut control, rejection.code, rejection.reason).await;
            return None;
        }
    };
    Some((control, entry, hello.version_minor))
}

/// Registers an authorized agent, grants its connection full credit and
/// sends its `Welcome`. Returns what [`hello_and_authorize`] gave, or `None`
/// if the agent left before its `Welcome`.
async fn welcome(
    server: &Server,
    conn: &Arc<dyn Connection>,
    mut control: BiStream,
    entry: Arc<AgentEntry>,
    minor: u16,
) -> Option<(BiStream, Arc<AgentEntry>, u16)> {
    let config = &server.inner.config;
    let welcome = Frame::Welcome(Welcome {
        server_id: config.server_id.clone(),
        server_count: server.server_count(),
        keepalive_ms: config.keepalive.as_millis().min(u32::MAX as u128) as u32,
        idle_timeout_ms: config.idle_timeout.as_millis().min(u32::MAX as u128) as u32,
        max_streams: config.limits.max_streams_per_agent,
        max_frame: MAX_FRAME_PAYLOAD as u32,
    });
    // Registered and given full credit before the Welcome leaves, so that an
    // agent that sees its Welcome can be dialled at once.
    server.inner.registry.insert(entry.clone());
    conn.admitted();
    if let Err(err) = write_frame(&mut control.send, &welcome).await {
        tracing::debug!(%err, "agent left before its Welcome");
        server.inner.registry.remove(entry.conn_id);
        return None;
    }
    tracing::info!(
        agent = %entry.agent_id,
        identity = %escaped(&entry.identity),
        identifiers = %entry.identifiers,
        "agent connected"
    );
    server.inner.metrics.agent_connections.inc();
    Some((control, entry, minor))
}

/// Authenticates the agent and checks its agent id, its claims and the agent limit.
async fn authorize(
    server: &Server,
    conn: &Arc<dyn Connection>,
    hello: &Hello,
) -> Result<Arc<AgentEntry>, AuthRejection> {
    let peer = conn.peer();
    let config = &server.inner.config;
    let deadline = config.limits.auth_timeout;
    let identity = tokio::time::timeout(
        deadline,
        config.authenticator.authenticate(AuthRequest { hello, peer: &peer }),
    )
    .await
    .map_err(|_| {
        server.inner.metrics.agent_rejections.inc("auth_timeout");
        tracing::warn!(agent = %hello.agent_id, ?deadline, "the authenticator did not decide in time; refusing the agent");
        AuthRejection {
            code: RejectCode::Internal,
            reason: format!("authentication did not finish within {deadline:?}; retry later"),
        }
    })??;
    // Before anything is registered: a newer connection with the same agent
    // id replaces the older one, so the id must belong to this identity.
    check_agent_id(&identity, &hello.agent_id).inspect_err(|rejection| {
        tracing::warn!(
            agent = %hello.agent_id,
            identity = %escaped(&identity.name),
            reason = %escaped(&rejection.reason),
            "agent claims an agent id its identity does not own"
        );
    })?;
    let identifiers = served_identifiers(&identity, &hello.identifiers).inspect_err(|rejection| {
        tracing::warn!(
            agent = %hello.agent_id,
            identity = %escaped(&identity.name),
            claimed = %hello.identifiers,
            reason = %escaped(&rejection.reason),
            "agent claims identifiers its identity does not allow"
        );
    })?;
    let registry = &server.inner.registry;
    let limit = server.inner.config.limits.max_agents;
    let reconnecting = registry.contains_agent(&hello.agent_id);
    if !reconnecting && registry.len() >= limit {
        return Err(AuthRejection {
            code: RejectCode::Overloaded,
            reason: format!("server is at its limit of {limit} agents"),
        });
    }
    if !server.accepting() {
        return Err(AuthRejection {
            code: RejectCode::ShuttingDown,
            reason: "server is shutting down".into(),
        });
    }
    let server_id = &server.inner.config.server_id;
    if hello.connected_servers.contains(server_id) {
        return Err(AuthRejection {
            code: RejectCode::AlreadyConnected,
            reason: format!("agent already holds a session with server {server_id}; try another replica"),
        });
    }
    Ok(Arc::new(AgentEntry {
        conn_id: server.inner.next_conn.fetch_add(1, Ordering::Relaxed),
        agent_id: hello.agent_id.clone(),
        identity: identity.name,
        identifiers,
        conn: conn.clone(),
        active: AtomicU32::new(0),
        connected_at: Instant::now(),
        connected_since: SystemTime::now(),
        bytes_to_agent: AtomicU64::new(0),
        bytes_from_agent: AtomicU64::new(0),
        ended_by_server: OnceLock::new(),
        tunnel_closed: server.inner.tunnel_closed.clone(),
    }))
}

/// Sends `Reject`, then closes the connection once the agent has read it (or
/// closed its side).
async fn reject(server: &Server, conn: &Arc<dyn Connection>, control: &mut BiStream, code: RejectCode, reason: String) {
    tracing::warn!(%code, reason = %escaped(&reason), "rejecting agent");
    server.inner.metrics.agent_rejections.inc(code.label());
    let frame = Frame::Reject(Reject {
        code,
        reason: clip_text(&reason),
    });
    if write_frame(&mut control.send, &frame).await.is_ok() {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut control.send).await;
        // The agent closes the connection once it has read the Reject; bound the wait.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed()).await;
    }
    conn.close(ConnectionCode::Rejected, &clip_text(&reason));
}

/// A registered session's debt to a draining server: one in
/// `Inner::unacknowledged` until the agent acknowledges this server's
/// `GoAway` (or its connection ends).
struct AckDebt<'a> {
    counter: &'a tokio::sync::watch::Sender<usize>,
    owed: AtomicBool,
}

impl<'a> AckDebt<'a> {
    fn new(counter: &'a tokio::sync::watch::Sender<usize>) -> Self {
        counter.send_modify(|n| *n += 1);
        Self {
            counter,
            owed: AtomicBool::new(true),
        }
    }

    /// Settles the debt; true the first time.
    fn settle(&self) -> bool {
        let settled = self.owed.swap(false, Ordering::AcqRel);
        if settled {
            self.counter.send_modify(|n| *n -= 1);
        }
        settled
    }
}

impl Drop for AckDebt<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}

/// Watches a registered agent until its connection or control stream ends.
/// A `GoAway` from the agent takes it out of routing at once (its open
/// tunnelled connections continue); a drain of this server sends the agent a
/// `GoAway`, which the agent acknowledges with a `GoAway` of its own or by
/// closing the connection; either is logged as "go-away acknowledged" and
/// lets [`Server::drain`] go on (agents older than protocol 1.1 get no
/// `GoAway` and just see the close at shutdown). Streams the agent opens are
/// refused: tunnelled connections only go from the server to the agent.
/// Returns why the connection ended, for [`Server::recent_disconnects`]
/// (peer-supplied text escaped).
async fn watch(
    server: &Server,
    conn: &Arc<dyn Connection>,
    control: BiStream,
    entry: &AgentEntry,
    minor: u16,
) -> String {
    let mut shutdown = server.inner.shutdown.subscribe();
    let mut draining = server.inner.draining.subscribe();
    let debt = AckDebt::new(&server.inner.unacknowledged);
    if minor < 1 {
        // It would not understand a GoAway: there is nothing to wait for.
        debt.settle();
    }
    let go_away_sent = AtomicBool::new(false);
    // The agent's own GoAway (not an acknowledgement of ours), for the disconnect reason.
    let agent_went_away: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let BiStream { mut send, mut recv } = control;
    let control_ended = async {
        // After the Hello an agent may only send GoAway: another frame or garbage is a protocol error.
        loop {
            match read_frame(&mut recv, MAX_FRAME_PAYLOAD).await {
                Ok(Frame::GoAway(go_away)) => {
                    // Either way the agent is leaving this connection: nothing more to wait for.
                    let first = debt.settle();
                    let acknowledgement = first && go_away_sent.load(Ordering::Acquire);
                    // Counted before the agent leaves routing, which is what observers wait on.
                    if acknowledgement {
                        server.inner.metrics.go_aways.inc("acknowledged");
                    } else {
                        server.inner.metrics.go_aways.inc("received");
                        *agent_went_away.lock().expect("go-away reason") = Some(format!(
                            "the agent went away ({}: {})",
                            go_away.code,
                            escaped(&go_away.reason)
                        ));
                    }
                    let removed = server.inner.registry.remove(entry.conn_id);
                    if acknowledgement {
                        tracing::info!(
                            agent = %entry.agent_id,
                            open = entry.active.load(Ordering::Relaxed),
                            "go-away acknowledged"
                        );
                    } else if removed {
                        tracing::info!(
                            code = %go_away.code,
                            reason = %escaped(&go_away.reason),
                            open = entry.active.load(Ordering::Relaxed),
                            "agent is going away: no new dials to it; open tunnelled connections continue"
                        );
                    }
                }
                Ok(frame) => return Err(format!("unexpected {} on the control stream", frame.name())),
                Err(FrameIoError::Eof) => return Ok(()),
                Err(FrameIoError::Io(err)) => return Err(format!("control stream failed: {err}")),
                Err(err) => return Err(err.to_string()),
            }
        }
    };
    let refuse_streams = async {
        while let Ok(mut bi) = conn.accept_bi().await {
            // Counted before the reset, so a peer that sees the reset sees the count.
            server.inner.metrics.refused_agent_streams.inc();
            let refused = server.inner.metrics.refused_agent_streams.get();
            tracing::warn!(
                refused,
                "agent opened a stream; refusing it (streams only go from server to agent)"
            );
            bi.recv.stop(StreamCode::ProtocolError);
            bi.send.reset(StreamCode::ProtocolError);
        }
    };
    let go_away = async {
        let Ok(grace) = draining.wait_for(Option::is_some).await.map(|g| g.unwrap_or_default()) else {
            return std::future::pending().await;
        };
        if minor >= 1 {
            let frame = Frame::GoAway(GoAway {
                code: ConnectionCode::Shutdown,
                grace_ms: grace.as_millis().min(u32::MAX as u128) as u32,
                reason: "server draining".into(),
            });
            // Set before the write: the answer may come before the write returns.
            go_away_sent.store(true, Ordering::Release);
            match write_frame(&mut send, &frame).await {
                Ok(()) => server.inner.metrics.go_aways.inc("sent"),
                Err(err) => {
                    tracing::debug!(%err, "could not send GoAway");
                    debt.settle();
                }
            }
        }
        std::future::pending::<()>().await
    };
    let mut ended = tokio::select! {
        reason = conn.closed() => {
            tracing::debug!(%reason, "agent connection closed");
            reason.to_string()
        }
        result = control_ended => match result {
            Ok(()) => {
                conn.close(ConnectionCode::Normal, "control stream closed");
                "the agent closed its control stream".to_owned()
            }
            Err(reason) => match conn.closed().now_or_never() {
                // The connection ended first (the agent stopped or vanished): nothing to report.
                Some(closed) => {
                    tracing::debug!(%closed, "agent connection closed");
                    closed.to_string()
                }
                None => {
                    tracing::warn!(%reason, "closing agent connection");
                    conn.close(ConnectionCode::ProtocolError, &clip_text(&reason));
                    format!("closed by this server: {}", escaped(&reason))
                }
            },
        },
        _ = refuse_streams => match conn.closed().now_or_never() {
            Some(closed) => closed.to_string(),
            None => "the connection stopped accepting streams".to_owned(),
        },
        // Never ready: it sends the GoAway, then waits for ever.
        _ = go_away => "go-away sent".to_owned(),
        _ = shutdown.wait_for(|s| *s) => {
            conn.close(ConnectionCode::Shutdown, "server shutting down");
            "server shutting down".to_owned()
        }
    };
    if let Some(went_away) = agent_went_away.lock().expect("go-away reason").take() {
        ended = format!("{went_away}; then {ended}");
    }
    // An agent with nothing open answers a GoAway by closing at once (and on
    // QUIC the close may overtake its GoAway): that is its acknowledgement.
    if go_away_sent.load(Ordering::Acquire)
        && let Some(reason @ TransportError::ClosedByPeer { .. }) = conn.closed().now_or_never()
        && debt.settle()
    {
        server.inner.metrics.go_aways.inc("acknowledged");
        tracing::info!(agent = %entry.agent_id, %reason, "go-away acknowledged: the agent closed the connection");
    }
    ended
}
