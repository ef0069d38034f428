//! One session with one server replica: the connection, `Hello` and
//! `Welcome`, serving the server's dials, and draining — a `GoAway` either
//! way stops new dials at once while open tunnelled connections finish.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::serve::{DialContext, serve_stream};
use super::{AgentConfig, Mode};
use crate::frame_io::{FrameIoError, read_frame, write_frame};
use crate::proto::{ConnectionCode, Frame, GoAway, Hello, MAX_FRAME_PAYLOAD, RejectCode, clip_text};
use crate::transport::{BiStream, Connection, Connector};

/// How an attempt to open a session ended.
pub(super) enum Attempt {
    /// Registered; serve it.
    Connected(Session),
    /// The agent is stopping.
    Stopped,
    /// The server refused the agent.
    Rejected { code: RejectCode, reason: String },
    /// No session: the connection or the handshake failed.
    Failed(String),
    /// No attempt: this agent has no credential to present (its token file
    /// went away). A fault of this side, never part of probing for a
    /// replica's replacement.
    NoCredential(String),
}

/// Why [`Session::serve`] returned.
pub(super) enum Served {
    /// The agent stops or drains; the session is still up.
    Stopping,
    /// The server sent `GoAway`: connect elsewhere, drain this one.
    GoAway(GoAway),
    /// The transport wants a new connection: connect again, drain this one.
    Superseded(String),
    /// The connection ended; open tunnelled connections ended with it.
    Lost(String),
}

/// A registered session.
pub(super) struct Session {
    conn: Arc<dyn Connection>,
    control: BiStream,
    /// The server replica's id from its `Welcome`.
    pub(super) server_id: String,
    /// How many replicas the server says there are (0 = unknown).
    pub(super) server_count: u16,
    /// The tunnelled connections this session serves.
    tasks: TaskTracker,
}

/// Connects, sends `Hello` listing the replicas the agent already holds, and
/// waits for the answer.
pub(super) async fn open(
    connector: &dyn Connector,
    config: &AgentConfig,
    connected_servers: Vec<String>,
    mode: &mut watch::Receiver<Mode>,
) -> Attempt {
    let conn = tokio::select! {
        _ = mode.wait_for(|m| *m != Mode::Run) => return Attempt::Stopped,
        conn = connector.connect() => match conn {
            Ok(conn) => conn,
            Err(err) => return Attempt::Failed(err.to_string()),
        },
    };
    let credential = match config.credentials.credential().await {
        Ok(c) => c,
        Err(err) => return Attempt::NoCredential(format!("no credential: {err}")),
    };
    let mut hello = Hello::new(config.agent_id.clone(), config.identifiers.clone(), credential);
    hello.connected_servers = connected_servers;
    let hello = Frame::Hello(hello);
    let handshake = async {
        let mut control = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut control.send, &hello)
            .await
            .map_err(|e| e.to_string())?;
        let answer = read_frame(&mut control.recv, MAX_FRAME_PAYLOAD).await;
        Ok::<_, String>((control, answer))
    };
    let handshake = tokio::select! {
        _ = mode.wait_for(|m| *m != Mode::Run) => None,
        r = tokio::time::timeout(config.hello_timeout, handshake) => Some(r),
    };
    let (control, answer) = match handshake {
        None => {
            conn.close(ConnectionCode::Normal, "agent stopping");
            conn.close_sent().await;
            return Attempt::Stopped;
        }
        Some(Err(_)) => return Attempt::Failed(format!("no answer to Hello within {:?}", config.hello_timeout)),
        Some(Ok(Err(err))) => return Attempt::Failed(err),
        Some(Ok(Ok(x))) => x,
    };
    match answer {
        Ok(Frame::Welcome(welcome)) => Attempt::Connected(Session {
            conn,
            control,
            server_id: welcome.server_id,
            server_count: welcome.server_count,
            tasks: TaskTracker::new(),
        }),
        Ok(Frame::Reject(reject)) => {
            conn.close(ConnectionCode::Rejected, "rejected");
            Attempt::Rejected {
                code: reject.code,
                reason: reject.reason,
            }
        }
        Ok(other) => protocol_error(conn.as_ref(), format!("expected Welcome, got {}", other.name())),
        Err(err) => {
            let reason = format!("handshake failed: {err}");
            match conn.closed().now_or_never() {
                Some(closed) => Attempt::Failed(format!("{reason} ({closed})")),
                None => protocol_error(conn.as_ref(), reason),
            }
        }
    }
}

/// Least time a `GoAway` write may take before a drain goes on without it.
const GO_AWAY_WRITE_LIMIT: Duration = Duration::from_secs(1);

/// A `GoAway` frame with `code`, `grace` and `reason`.
pub(super) fn going_away(code: ConnectionCode, grace: Duration, reason: &str) -> GoAway {
    GoAway {
        code,
        grace_ms: grace.as_millis().min(u32::MAX as u128) as u32,
        reason: clip_text(reason),
    }
}

fn protocol_error(conn: &dyn Connection, reason: String) -> Attempt {
    conn.close(ConnectionCode::ProtocolError, &clip_text(&reason));
    Attempt::Failed(reason)
}

impl Session {
    /// Which transport carries the session.
    pub(super) fn transport(&self) -> &'static str {
        self.conn.transport()
    }

    /// Serves the server's dials until the session ends, must be replaced,
    /// or the agent leaves [`Mode::Run`].
    pub(super) async fn serve(&mut self, ctx: &Arc<DialContext>, mode: &mut watch::Receiver<Mode>) -> Served {
        let (conn, tasks) = (&self.conn, &self.tasks);
        let superseded = conn.superseded();
        // One read for the whole session: a frame is never cut by another branch.
        let control = read_frame(&mut self.control.recv, MAX_FRAME_PAYLOAD);
        tokio::pin!(superseded, control);
        loop {
            tokio::select! {
                _ = mode.wait_for(|m| *m != Mode::Run) => return Served::Stopping,
                reason = &mut superseded => return Served::Superseded(reason),
                bi = conn.accept_bi() => match bi {
                    Ok(bi) => { tasks.spawn(serve_stream(bi, ctx.clone())); }
                    Err(err) => return Served::Lost(err.to_string()),
                },
                frame = &mut control => return match frame {
                    Ok(Frame::GoAway(go_away)) => Served::GoAway(go_away),
                    Ok(frame) => {
                        let reason = format!("unexpected {} on the control stream", frame.name());
                        conn.close(ConnectionCode::ProtocolError, &reason);
                        Served::Lost(reason)
                    }
                    Err(FrameIoError::Eof) => {
                        conn.close(ConnectionCode::Normal, "control stream closed");
                        Served::Lost("the server closed the control stream".into())
                    }
                    Err(err) => Served::Lost(format!("control stream: {err}")),
                },
            }
        }
    }

    /// Keeps serving dials until `trigger` resolves (while the agent connects
    /// the session that replaces this one), then drains it.
    pub(super) async fn drain_after(
        self,
        trigger: impl std::future::Future<Output = ()>,
        ctx: Arc<DialContext>,
        mut mode: watch::Receiver<Mode>,
        code: ConnectionCode,
        grace: Duration,
    ) {
        tokio::pin!(trigger);
        let stopping = loop {
            tokio::select! {
                _ = &mut trigger => break false,
                _ = mode.wait_for(|m| *m == Mode::Stop) => break true,
                bi = self.conn.accept_bi() => match bi {
                    Ok(bi) => { self.tasks.spawn(serve_stream(bi, ctx.clone())); }
                    Err(_) => return,
                },
            }
        };
        if stopping {
            self.close(ConnectionCode::Normal, "agent stopping").await;
        } else {
            let announce = going_away(code, grace, code.describe());
            self.drain(ctx, mode, Some(announce), code, grace).await;
        }
    }

    /// Drains the session: sends the server `announce` (a `GoAway`: route no
    /// more dials here, or the acknowledgement of the server's own), serves
    /// what is open — and dials that were already on their way — until they
    /// end or `grace` passes (or the agent stops), then closes with `code`.
    pub(super) async fn drain(
        mut self,
        ctx: Arc<DialContext>,
        mut mode: watch::Receiver<Mode>,
        announce: Option<GoAway>,
        code: ConnectionCode,
        grace: Duration,
    ) {
        if let Some(go_away) = announce {
            // Bounded: a server that reads nothing must not hold up the drain.
            let frame = Frame::GoAway(go_away);
            let write = write_frame(&mut self.control.send, &frame);
            match tokio::time::timeout(grace.max(GO_AWAY_WRITE_LIMIT), write).await {
                Ok(Ok(())) => tracing::debug!(server_id = %self.server_id, "GoAway sent"),
                Ok(Err(err)) => tracing::debug!(%err, "could not send GoAway"),
                Err(_) => tracing::debug!("could not send GoAway in time"),
            }
        }
        self.tasks.close();
        let open = self.tasks.len();
        if open > 0 {
            tracing::info!(server_id = %self.server_id, open, "draining: waiting for open tunnelled connections ({grace:?} at most)");
        }
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        // A failed accept ends accepting, not the wait: open tunnelled
        // connections end by themselves if the connection is gone.
        let mut accepting = true;
        loop {
            tokio::select! {
                _ = self.tasks.wait() => break,
                _ = mode.wait_for(|m| *m == Mode::Stop) => break,
                _ = &mut deadline => {
                    tracing::info!(server_id = %self.server_id, open = self.tasks.len(), "drain grace over; closing the session");
                    break;
                }
                bi = self.conn.accept_bi(), if accepting => match bi {
                    Ok(bi) => { self.tasks.spawn(serve_stream(bi, ctx.clone())); }
                    Err(err) => {
                        tracing::debug!(%err, "draining session stops accepting");
                        accepting = false;
                    }
                },
            }
        }
        // Ends the control stream and lets the server read it to its end
        // before the close: a QUIC close discards stream data not yet
        // delivered, the GoAway sent above among it (measured: with the close
        // right after the GoAway, the server saw neither).
        let delivered = self.control.send.delivered();
        let finished = async {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.control.send).await;
            delivered.await;
        };
        let _ = tokio::time::timeout(GO_AWAY_WRITE_LIMIT, finished).await;
        self.close(code, code.describe()).await;
    }

    /// Closes the session at once (open tunnelled connections end with it)
    /// and waits until the server has been told.
    pub(super) async fn close(self, code: ConnectionCode, reason: &str) {
        self.conn.close(code, reason);
        self.conn.close_sent().await;
    }
}
