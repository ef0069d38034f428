//! Opening a tunnelled connection through an agent.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use super::Server;
use super::routing::Selector;
use super::tunnel::TunnelStream;
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::Instrument;

use super::registry::AgentEntry;

use tokio::io::{AsyncRead, AsyncWriteExt};

use super::target::split_target;
use crate::frame_io::{FrameIoError, read_frame};
use crate::proto::{Dial, DialCode, Frame, MAX_FRAME_PAYLOAD, StreamCode, escaped};
use crate::splice::Relay;
use crate::transport::{BiStream, TransportError};

/// Why a dial failed. [`DialError::code`] maps each case to the protocol's
/// dial codes (frontends turn those into HTTP statuses).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DialError {
    /// The target is not `host:port`.
    #[error("invalid target {target:?}: {reason} (expected host:port or [ipv6]:port)")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No connected agent matches the selector.
    #[error("no connected agent matches {0}: check that the agent for it is running and claims it")]
    NoAgent(String),
    /// The chosen agent already carries its maximum of tunnelled connections.
    #[error("agent {agent:?} is at its limit of {limit} tunnelled connections")]
    AgentBusy {
        /// The agent.
        agent: String,
        /// The limit.
        limit: u32,
    },
    /// The dial did not complete before its deadline.
    #[error("dial to {target} through agent {agent:?} timed out after {after:?}")]
    TimedOut {
        /// The target.
        target: String,
        /// The agent.
        agent: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The agent could not or would not connect to the target. The agent's
    /// message displays escaped ([`crate::proto::escaped`]).
    #[error("agent {agent:?} could not connect to {target}: {code}{}", if message.is_empty() { String::new() } else { format!(" ({})", escaped(message)) })]
    Failed {
        /// The agent.
        agent: String,
        /// The target.
        target: String,
        /// What the agent reported.
        code: DialCode,
        /// The agent's details.
        message: String,
    },
    /// The agent's connection failed during the dial.
    #[error("connection to agent {agent:?} failed during the dial: {source}")]
    Transport {
        /// The agent.
        agent: String,
        /// Cause.
        source: TransportError,
    },
    /// The agent answered with something other than a `DialResult`.
    #[error("agent {agent:?} broke the protocol: {reason}")]
    Protocol {
        /// The agent.
        agent: String,
        /// What went wrong.
        reason: String,
    },
    /// The server already has its maximum of dials waiting for an agent's answer.
    #[error(
        "the server already has {limit} dials waiting for agents' answers: retry later, look for targets \
         that do not answer, or raise the limit (--max-pending-dials)"
    )]
    TooManyPendingDials {
        /// The limit ([`super::Limits::max_pending_dials`]).
        limit: usize,
    },
    /// The server is draining or shut down.
    #[error("this server replica is draining (shutting down): send the dial to another replica")]
    ShuttingDown,
    /// The local client whose bytes were being relayed during the dial
    /// ([`Server::dial_relaying`]) failed; the tunnel was reset.
    #[error("the client's connection failed during the dial: {reason}")]
    ClientFailed {
        /// The client's error.
        reason: String,
    },
}

impl DialError {
    /// The dial code that best describes this failure.
    pub fn code(&self) -> DialCode {
        match self {
            DialError::InvalidTarget { .. } => DialCode::InvalidTarget,
            DialError::NoAgent(_) | DialError::Transport { .. } | DialError::ShuttingDown => DialCode::Unreachable,
            DialError::AgentBusy { .. } | DialError::TooManyPendingDials { .. } => DialCode::Overloaded,
            DialError::TimedOut { .. } => DialCode::TimedOut,
            DialError::Failed { code, .. } => *code,
            DialError::Protocol { .. } | DialError::ClientFailed { .. } => DialCode::Internal,
        }
    }
}

impl DialError {
    /// A short `snake_case` name for metric labels: the agent's dial code
    /// for failures it reported, otherwise the kind of failure.
    pub fn label(&self) -> &'static str {
        match self {
            DialError::InvalidTarget { .. } => "invalid_target",
            DialError::NoAgent(_) => "no_agent",
            DialError::AgentBusy { .. } => "agent_busy",
            DialError::TooManyPendingDials { .. } => "too_many_pending_dials",
            DialError::TimedOut { .. } => "timed_out",
            DialError::Failed { code, .. } => code.label(),
            DialError::Transport { .. } => "transport",
            DialError::Protocol { .. } => "protocol",
            DialError::ShuttingDown => "shutting_down",
            DialError::ClientFailed { .. } => "client_failed",
        }
    }
}

/// What goes to the target right behind a `Dial`.
enum Early<'a> {
    /// These bytes, in the `Dial`'s packet.
    Bytes(&'a [u8]),
    /// Whatever this client sends until the agent answers.
    Relay(&'a mut (dyn AsyncRead + Unpin + Send)),
}

impl Server {
    /// Opens a TCP connection to `target` (`host:port`) from the network of
    /// an agent chosen by `selector`, with the server's default dial timeout.
    pub async fn dial(&self, selector: &Selector, target: &str) -> Result<TunnelStream, DialError> {
        self.dial_timeout(selector, target, self.inner.config.limits.dial_timeout)
            .await
    }

    /// Like [`Server::dial`], sending `first_bytes` right behind the `Dial`,
    /// in the same packet: the agent hands them to the target as soon as it
    /// is connected, which saves a tunnel round trip for protocols where the
    /// client speaks first (HTTP, a TLS ClientHello). If the dial fails they
    /// are dropped with the stream.
    pub async fn dial_sending(
        &self,
        selector: &Selector,
        target: &str,
        first_bytes: &[u8],
    ) -> Result<TunnelStream, DialError> {
        let timeout = self.inner.config.limits.dial_timeout;
        let dial = self.dial_uncounted(selector, target, timeout, Early::Bytes(first_bytes));
        self.count_dial(Box::pin(dial)).await
    }

    /// Like [`Server::dial`], relaying what `client` sends from the moment the
    /// `Dial` is out until the agent's answer arrives, right behind the `Dial`:
    /// bytes the client writes just after connecting (a TLS ClientHello, an
    /// HTTP request) reach the target as soon as the agent is connected,
    /// without waiting a tunnel round trip for the `DialResult`. `client` is
    /// read at least once before an answer is taken, so what it has sent by
    /// the time the `Dial` is out always goes with it. Nothing is
    /// waited for: in protocols where the server speaks first the client
    /// sends nothing. `client` is then the caller's to go on copying from;
    /// no byte it yielded is lost. If the dial fails, relayed bytes are
    /// dropped with the stream; if `client` fails, the tunnel is reset and
    /// the dial fails with [`DialError::ClientFailed`].
    pub async fn dial_relaying<R>(
        &self,
        selector: &Selector,
        target: &str,
        client: &mut R,
    ) -> Result<TunnelStream, DialError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let timeout = self.inner.config.limits.dial_timeout;
        let dial = self.dial_uncounted(selector, target, timeout, Early::Relay(client));
        self.count_dial(Box::pin(dial)).await
    }

    /// Like [`Server::dial`] with an explicit deadline, which covers choosing
    /// the agent, opening the stream and the agent's TCP connect.
    pub async fn dial_timeout(
        &self,
        selector: &Selector,
        target: &str,
        timeout: Duration,
    ) -> Result<TunnelStream, DialError> {
        let dial = self.dial_uncounted(selector, target, timeout, Early::Bytes(&[]));
        self.count_dial(Box::pin(dial)).await
    }

    /// Runs `dial` (every public dial goes through here), recording its
    /// duration and outcome in the dial metrics. The dial comes boxed: its
    /// state (1.4 KB) then lives only while it runs, not for the tunnel's
    /// whole life in the future of a caller that goes on to copy (a
    /// frontend's task per connection).
    async fn count_dial(
        &self,
        dial: Pin<Box<impl Future<Output = Result<TunnelStream, DialError>>>>,
    ) -> Result<TunnelStream, DialError> {
        let started = std::time::Instant::now();
        let result = dial.await;
        let metrics = &self.inner.metrics;
        metrics.dial_duration.observe(started.elapsed().as_secs_f64());
        metrics.dials.inc(match &result {
            Ok(_) => "ok",
            Err(err) => err.label(),
        });
        result
    }

    async fn dial_uncounted(
        &self,
        selector: &Selector,
        target: &str,
        timeout: Duration,
        early: Early<'_>,
    ) -> Result<TunnelStream, DialError> {
        if !self.accepting() {
            return Err(DialError::ShuttingDown);
        }
        let (host, port) = split_target(target).map_err(|reason| DialError::InvalidTarget {
            target: target.to_owned(),
            reason,
        })?;
        let agent = self
            .inner
            .registry
            .select(selector, &self.inner.config.proxy_strategies)
            .ok_or_else(|| DialError::NoAgent(selector.to_string()))?;
        let pending = PendingGuard::acquire(self)?;
        let limit = self.inner.config.limits.max_streams_per_agent;
        if agent.active.fetch_add(1, Ordering::Relaxed) >= limit {
            agent.active.fetch_sub(1, Ordering::Relaxed);
            return Err(DialError::AgentBusy {
                agent: agent.agent_id.clone(),
                limit,
            });
        }
        let request_id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let agent_id = agent.agent_id.clone();
        let span = tracing::debug_span!("dial", request_id, agent = %agent_id, %target);
        let result = self
            .dial_through(agent, request_id, (host, port, target), timeout, early)
            .instrument(span)
            .await;
        drop(pending);
        result
    }

    async fn dial_through(
        &self,
        agent: Arc<AgentEntry>,
        request_id: u64,
        (host, port, target): (String, u16, &str),
        timeout: Duration,
        early: Early<'_>,
    ) -> Result<TunnelStream, DialError> {
        // From here on, the TunnelStream (or this guard) owns the slot.
        let slot = SlotGuard(Some(agent.clone()));
        let timed_out = || DialError::TimedOut {
            target: target.to_owned(),
            agent: agent.agent_id.clone(),
            after: timeout,
        };
        // One deadline for the whole dial: opening the stream (which can wait for the
        // agent's stream credit) and the exchange share it, and the agent gets what is left.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut bi = match tokio::time::timeout_at(deadline, agent.conn.open_bi()).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(source)) => {
                return Err(DialError::Transport {
                    agent: agent.agent_id.clone(),
                    source,
                });
            }
            Ok(Ok(bi)) => bi,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let dial = Frame::Dial(Dial {
            request_id,
            host,
            port,
            timeout_ms: left.as_millis().clamp(1, u32::MAX as u128) as u32,
        });
        let mut relay = Relay::default();
        let (first_bytes, client) = match early {
            Early::Bytes(bytes) => (bytes, None),
            Early::Relay(client) => (&[][..], Some(client)),
        };
        let exchanged = exchange(&mut bi, &dial, first_bytes, client, &mut relay);
        let Ok(answer) = tokio::time::timeout_at(deadline, exchanged).await else {
            bi.send.reset(StreamCode::Cancelled);
            bi.recv.stop(StreamCode::Cancelled);
            return Err(timed_out());
        };
        judge_answer(answer, &mut bi, &agent, request_id, target, &relay)?;
        tracing::debug!(relayed = relay.relayed(), "dial succeeded");
        let stream = TunnelStream::new(
            bi.send,
            bi.recv,
            request_id,
            slot.into_inner(),
            self.inner.metrics.clone(),
        );
        // What went out with the Dial and while it waited counts as sent.
        stream.sent(first_bytes.len() + relay.relayed() as usize);
        Ok(stream)
    }
}

/// Sends `dial` with `first_bytes` right behind it and reads the agent's
/// answer; with a `client`, relays what it sends meanwhile (through `relay`).
async fn exchange(
    bi: &mut BiStream,
    dial: &Frame,
    first_bytes: &[u8],
    client: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    relay: &mut Relay,
) -> Result<Frame, FrameIoError> {
    let mut request = dial.encode()?;
    request.extend_from_slice(first_bytes);
    bi.send.write_all(&request).await?;
    let answer = read_frame(&mut bi.recv, MAX_FRAME_PAYLOAD);
    let Some(client) = client else {
        return answer.await;
    };
    // What the client has sent already goes out right behind the `Dial`,
    // before any answer is taken (it may be in by now, if the task waited to
    // write). Then relay the client's bytes until the answer is in, and
    // finish the chunk under way: the caller copies on from the next byte.
    poll_fn(|cx| {
        let _ = relay.poll_relay(cx, Pin::new(&mut *client), Pin::new(&mut bi.send));
        Poll::Ready(())
    })
    .await;
    tokio::pin!(answer);
    let answer = loop {
        tokio::select! {
            biased;
            answer = &mut answer => break answer,
            () = poll_fn(|cx| relay.poll_relay(cx, Pin::new(&mut *client), Pin::new(&mut bi.send))),
                if !relay.is_done() => {}
        }
    };
    poll_fn(|cx| relay.poll_settle(cx, Pin::new(&mut bi.send))).await;
    answer
}

/// The dial's outcome from the agent's answer: `Ok` when the target is
/// connected; otherwise the error, with the stream reset where the answer
/// ends it.
fn judge_answer(
    answer: Result<Frame, FrameIoError>,
    bi: &mut BiStream,
    agent: &AgentEntry,
    request_id: u64,
    target: &str,
    relay: &Relay,
) -> Result<(), DialError> {
    let agent_id = agent.agent_id.clone();
    match answer {
        Ok(Frame::DialResult(result)) if result.request_id != request_id => Err(DialError::Protocol {
            agent: agent_id,
            reason: format!(
                "DialResult for request {} on the stream of request {request_id}",
                result.request_id
            ),
        }),
        Ok(Frame::DialResult(_)) if let Some(err) = relay.client_failed() => {
            bi.send.reset(StreamCode::Cancelled);
            bi.recv.stop(StreamCode::Cancelled);
            Err(DialError::ClientFailed {
                reason: err.to_string(),
            })
        }
        Ok(Frame::DialResult(result)) if result.code == DialCode::Ok => Ok(()),
        Ok(Frame::DialResult(result)) => {
            tracing::debug!(code = %result.code, message = %escaped(&result.message), "dial failed");
            Err(DialError::Failed {
                agent: agent_id,
                target: target.to_owned(),
                code: result.code,
                message: result.message,
            })
        }
        Ok(other) => {
            bi.send.reset(StreamCode::ProtocolError);
            Err(DialError::Protocol {
                agent: agent_id,
                reason: format!("expected DialResult, got {}", other.name()),
            })
        }
        Err(err) => {
            bi.send.reset(StreamCode::ProtocolError);
            match agent.conn.closed().now_or_never() {
                Some(source) => Err(DialError::Transport {
                    agent: agent_id,
                    source,
                }),
                None => Err(DialError::Protocol {
                    agent: agent_id,
                    reason: err.to_string(),
                }),
            }
        }
    }
}

/// Counts one dial against [`super::Limits::max_pending_dials`] until dropped.
struct PendingGuard<'a>(&'a Server);

impl<'a> PendingGuard<'a> {
    fn acquire(server: &'a Server) -> Result<Self, DialError> {
        let limit = server.inner.config.limits.max_pending_dials;
        let pending = &server.inner.pending_dials;
        if pending.fetch_add(1, Ordering::Relaxed) >= limit {
            pending.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(limit, "refusing a dial: too many dials waiting for agents' answers");
            return Err(DialError::TooManyPendingDials { limit });
        }
        Ok(PendingGuard(server))
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.inner.pending_dials.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds one of an agent's stream slots until handed to a [`TunnelStream`].
struct SlotGuard(Option<Arc<AgentEntry>>);

impl SlotGuard {
    fn into_inner(mut self) -> Arc<AgentEntry> {
        self.0.take().expect("slot taken once")
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(agent) = &self.0 {
            agent.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
