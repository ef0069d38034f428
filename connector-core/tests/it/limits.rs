//! Limits: exceeding each one gives its own clear error, and the server keeps
//! serving everyone else. Limits already covered elsewhere: streams per agent
//! and an oversized `Hello` (`hostile_peers.rs`), frontend head size, head
//! time and connection count (`frontends.rs`), the hello timeout
//! (`hostile_peers.rs`). Also here: the spread of agents' first reconnect
//! attempts after a server restart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use connector_core::agent::{Agent, AgentConfig, AgentStatus, BackoffConfig};
use connector_core::auth::{AgentIdentity, AuthRejection, AuthRequest, Authenticator, StaticCredential};
use connector_core::frontend::{self, FrontendBind, FrontendLimits, FrontendProtocol};
use connector_core::fuzzing::{read_frame, write_frame};
use connector_core::proto::{
    ConnectionCode, DialCode, DialResult, Frame, Hello, MAX_FRAME_PAYLOAD, RejectCode, StreamCode,
};
use connector_core::server::{DialError, Selector, Server, ServerConfig};
use connector_core::transport::memory::{self, MemoryConnector};
use connector_core::transport::{BiStream, BoxFuture, Connection, Connector, StreamReset, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::time::{Instant, timeout};

on_all_transports!(
    an_oversized_frame_on_a_registered_agents_control_stream_closes_that_agent_only,
    a_burst_of_tunnels_far_beyond_the_first_stream_limit_is_served_and_held_at_once,
);

/// An agent first lets the server open a few dozen streams (quinn allocates the
/// state of every stream allowed) and raises the limit as they open: a burst of
/// 500 dials at once, eight times the first limit, all get through and stay
/// open together, each echoing its own bytes.
async fn a_burst_of_tunnels_far_beyond_the_first_stream_limit_is_served_and_held_at_once(kind: Kind) {
    let h = Harness::new(kind).await;
    let target = echo_target().await;
    let agent = h.agent("node-a").await;
    let node_a = Selector::Agent("node-a".into());
    let target_text = target.to_string();
    let dials = (0..500).map(|_| h.server.dial(&node_a, &target_text));
    let mut tunnels = within("500 dials at once", futures_util::future::try_join_all(dials))
        .await
        .expect("every dial of the burst");
    for (i, tunnel) in tunnels.iter_mut().enumerate() {
        let sent = format!("{i:04}");
        tunnel.write_all(sent.as_bytes()).await.unwrap();
        let mut back = [0u8; 4];
        tunnel.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, sent.as_bytes(), "tunnel {i}");
    }
    assert_eq!(agent.observer().metrics().tunnels_active.get(), 500);
    drop(tunnels);
    agent.stop().await;
}

/// Waits for `what`, failing the test with `what` if it takes over a minute.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("hung waiting for {what}"))
}

/// A dial through `agent` to an echo `target` carries bytes both ways.
async fn assert_served(server: &Server, agent: &str, target: SocketAddr) {
    let mut stream = within(
        "a dial through a healthy agent",
        server.dial(&Selector::Agent(agent.into()), &target.to_string()),
    )
    .await
    .unwrap_or_else(|err| panic!("dial through {agent} failed: {err}"));
    stream.write_all(b"served").await.unwrap();
    let mut back = [0u8; 6];
    within("the echo", stream.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"served");
}

/// A hand-driven agent `agent_id` (token of `node-a`, so `node-a/<instance>`), registered with `h`'s server.
async fn raw_agent(h: &Harness, agent_id: &str) -> (Arc<dyn Connection>, BiStream) {
    let conn = h.connector(None).connect().await.unwrap();
    let mut control = conn.open_bi().await.unwrap();
    let hello = Frame::Hello(Hello::new(agent_id, Default::default(), token("node-a")));
    write_frame(&mut control.send, &hello).await.unwrap();
    match read_frame(&mut control.recv, MAX_FRAME_PAYLOAD).await.unwrap() {
        Frame::Welcome(_) => (conn, control),
        other => panic!("expected Welcome, got {other:?}"),
    }
}

fn socket_path(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("connector-limits-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Sends `CONNECT target` on the Unix socket `path` and returns the whole answer.
async fn http_connect(path: &std::path::Path, target: &str) -> String {
    let mut io = UnixStream::connect(path).await.unwrap();
    io.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("the CONNECT answer", io.read_to_end(&mut answer)).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_beyond_the_server_limit_are_rejected_overloaded_and_admitted_once_there_is_room() {
    guard(async {
        let h = Harness::with_config(Kind::Quic, |c| c.limits.max_agents = 1).await;
        let target = echo_target().await;
        let first = h.agent("node-a").await;
        let second = Agent::start(h.connector(None), h.agent_config("node-b", token("node-b")));
        let status = within(
            "the second agent's rejection",
            second.wait_for(|s| matches!(s, AgentStatus::Rejected { .. })),
        )
        .await;
        let AgentStatus::Rejected { code, reason } = status else {
            unreachable!()
        };
        assert_eq!(code, RejectCode::Overloaded);
        assert!(reason.contains("limit of 1 agents"), "{reason}");
        assert!(h.server.metrics().agent_rejections.get("overloaded") >= 1);
        // The admitted agent is served meanwhile.
        assert_served(&h.server, "node-a", target).await;
        // Room again: the rejected agent's retries get it in.
        first.stop().await;
        within("the second agent's admission", second.connected()).await;
        assert_served(&h.server, "node-b", target).await;
        second.stop().await;
    })
    .await
}

/// Connections that have not sent their `Hello` hold at most
/// `max_pre_hello` slots: with both slots taken by silent connections, the
/// next is closed after its handshake with a reason and counted; once a slot
/// frees (a silent one leaves), a well-behaved agent registers and is
/// served. QUIC: its handshake completes only once the server's session
/// task (holding a slot) drives it, so a connected silent peer holds a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_while_silent_peers_hold_every_admission_slot_quic() {
    guard(silent_peers_cannot_keep_an_agent_out(Kind::Quic)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_while_silent_peers_hold_every_admission_slot_tcp() {
    guard(silent_peers_cannot_keep_an_agent_out(Kind::Tcp)).await
}

/// Anonymous peers hold every slot of admission: handshakes started and
/// never finished, and connections past their handshake that never send a
/// `Hello`. A legitimate agent still registers (before, a full pre-`Hello`
/// set refused every newcomer for as long as the silent peers stayed), and
/// the silent peer that waited longest is closed with the reason.
async fn silent_peers_cannot_keep_an_agent_out(kind: Kind) {
    const SLOTS: usize = 4;
    let h = Harness::with_config(kind, |c| {
        c.limits.max_pre_hello = SLOTS;
        c.limits.max_handshakes = SLOTS;
        // Longer than the test's hang guard: the silent ones keep their slots.
        c.limits.hello_timeout = Duration::from_secs(600);
    })
    .await;
    let target = echo_target().await;
    let _stuck = h.half_open_handshakes(SLOTS).await;
    within(
        "the half-open handshakes in every handshake slot",
        h.server.wait_for_unadmitted(|u| u.handshakes == SLOTS),
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..SLOTS {
        silent.push(h.connector(None).connect().await.unwrap());
    }
    within(
        "the silent connections in every pre-Hello slot",
        h.server.wait_for_unadmitted(|u| u.awaiting_hello == SLOTS),
    )
    .await;

    let agent = within("the agent's registration", h.agent("node-b")).await;
    assert_served(&h.server, "node-b", target).await;
    let reason = within("the eviction of the oldest silent peer", silent[0].closed())
        .await
        .to_string();
    assert!(reason.contains("waited longest"), "{reason}");
    let rejections = &h.server.metrics().agent_rejections;
    assert!(rejections.get("pre_hello_evicted") >= 1);
    assert!(rejections.get("handshake_evicted") >= 1);
    assert!(
        h.server.render_metrics().contains(&format!(
            "connector_server_agents_unadmitted{{stage=\"hello\"}} {}",
            SLOTS - 1
        )),
        "{}",
        h.server.render_metrics()
    );
    agent.stop().await;
}

/// Never decides on `node-slow`'s token; asks the harness's authenticator otherwise.
struct StuckOnOne(Arc<dyn Authenticator>);

impl Authenticator for StuckOnOne {
    fn authenticate<'a>(&'a self, request: AuthRequest<'a>) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>> {
        if request.hello.agent_id == "node-slow" {
            return Box::pin(std::future::pending());
        }
        self.0.authenticate(request)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticator_that_never_decides_refuses_that_agent_and_frees_its_slot() {
    guard(async {
        let h = Harness::with_config(Kind::Quic, |c| {
            c.authenticator = Arc::new(StuckOnOne(c.authenticator.clone()));
            c.limits.auth_timeout = Duration::from_millis(200);
            c.limits.max_pre_hello = 1;
        })
        .await;
        let target = echo_target().await;
        let slow = Agent::start(h.connector(None), h.agent_config("node-slow", token("node-a")));
        let status = within(
            "the refusal",
            slow.wait_for(|s| matches!(s, AgentStatus::Rejected { .. } | AgentStatus::Connected { .. })),
        )
        .await;
        match status {
            AgentStatus::Rejected { code, reason } => {
                assert_eq!(code, RejectCode::Internal);
                assert!(
                    reason.contains("authentication did not finish within 200ms"),
                    "{reason}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(h.server.metrics().agent_rejections.get("auth_timeout") >= 1);
        slow.stop().await;
        // Its one pre-Hello slot is back: the next agent is admitted and served.
        let agent = within("the next agent", h.agent("node-b")).await;
        assert_served(&h.server, "node-b", target).await;
        agent.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unadmitted_quic_connection_has_credit_for_its_hello_only() {
    guard(async {
        let h = Harness::with_config(Kind::Quic, |c| c.limits.hello_timeout = Duration::from_secs(600)).await;
        // Before the Hello: one stream, and a Hello's worth of connection credit.
        let conn = h.connector(None).connect().await.unwrap();
        let mut control = conn.open_bi().await.unwrap();
        let taken = control.send.write(&vec![0u8; 1 << 20]).await.unwrap();
        assert!(
            taken as u64 <= connector_core::transport::PRE_ADMISSION_WINDOW,
            "{taken} bytes taken before admission"
        );
        let second = conn.open_bi();
        tokio::pin!(second);
        assert!(
            futures_util::poll!(second.as_mut()).is_pending(),
            "no stream credit beyond the control stream"
        );
        // Once admitted, the agent's connection gets stream credit (the
        // server then refuses such a stream, as the protocol says).
        let conn = h.connector(None).connect().await.unwrap();
        let mut control = conn.open_bi().await.unwrap();
        let hello = Frame::Hello(Hello::new("node-a", Default::default(), token("node-a")));
        write_frame(&mut control.send, &hello).await.unwrap();
        match read_frame(&mut control.recv, MAX_FRAME_PAYLOAD).await.unwrap() {
            Frame::Welcome(_) => {}
            other => panic!("expected Welcome, got {}", other.name()),
        }
        within("stream credit after the Welcome", conn.open_bi()).await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_at_its_connection_limit_answers_overloaded_and_other_agents_are_served() {
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let target = echo_target().await;
        let mut config = h.agent_config("node-a", token("node-a"));
        config.max_connections = 1;
        let busy = h.start_agent(config).await;
        let other = h.agent("node-b").await;
        let mut held = h
            .server
            .dial(&Selector::Agent("node-a".into()), &target.to_string())
            .await
            .unwrap();
        let err = h
            .server
            .dial(&Selector::Agent("node-a".into()), &target.to_string())
            .await
            .expect_err("a second connection through an agent limited to one");
        match &err {
            DialError::Failed { code, message, .. } => {
                assert_eq!(*code, DialCode::Overloaded);
                assert!(message.contains("limit of 1 tunnelled connections"), "{message}");
            }
            other => panic!("expected the agent's Overloaded answer, got {other}"),
        }
        assert_eq!(err.label(), "overloaded");
        assert_eq!(busy.observer().metrics().dials.get("overloaded"), 1);
        // The held connection and the other agent are unaffected.
        held.write_all(b"held").await.unwrap();
        let mut back = [0u8; 4];
        held.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"held");
        assert_served(&h.server, "node-b", target).await;
        busy.stop().await;
        other.stop().await;
    })
    .await
}

/// A listener whose accept queue is full: its kernel drops further SYNs, so
/// a connection attempt to it never completes (Linux queues `backlog + 1`
/// connections that nobody accepts).
async fn black_hole() -> (SocketAddr, Vec<TcpStream>, tokio::net::TcpListener) {
    const BACKLOG: u32 = 1;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(BACKLOG).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..=BACKLOG {
        fillers.push(
            within("a connection into the accept queue", TcpStream::connect(addr))
                .await
                .unwrap(),
        );
    }
    (addr, fillers, listener)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_to_a_target_that_never_answers_times_out_and_others_are_served() {
    const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
    guard(async {
        let h = Harness::with_config(Kind::Quic, |c| c.limits.dial_timeout = DIAL_TIMEOUT).await;
        let target = echo_target().await;
        let _agent = h.agent("node-a").await;
        let (silent, _fillers, _listener) = black_hole().await;
        let path = socket_path("dial-timeout");
        frontend::start(
            &h.server,
            FrontendProtocol::HttpConnect,
            &FrontendBind::unix(&path),
            &FrontendLimits::default(),
        )
        .unwrap();

        let started = Instant::now();
        let err = h
            .server
            .dial(&Selector::Agent("node-a".into()), &silent.to_string())
            .await
            .expect_err("a dial to a target that never answers");
        // The server's deadline or the agent's (it gets the same budget), whichever reports first.
        assert_eq!(err.code(), DialCode::TimedOut, "{err}");
        assert!(
            err.to_string().contains("timed out") || err.to_string().contains("no connection within"),
            "{err}"
        );
        assert!(
            started.elapsed() >= DIAL_TIMEOUT - Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        // Through HTTP CONNECT: 504 with the reason.
        let answer = http_connect(&path, &silent.to_string()).await;
        assert!(answer.starts_with("HTTP/1.1 504 Gateway Timeout"), "{answer}");
        assert!(answer.contains("timed out"), "{answer}");
        assert_served(&h.server, "node-a", target).await;
        assert_eq!(h.server.pending_dials(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_beyond_the_pending_limit_fail_at_once_and_slots_come_back() {
    const LIMIT: usize = 4;
    guard(async {
        let h = Harness::with_config(Kind::Quic, |c| c.limits.max_pending_dials = LIMIT).await;
        let target = echo_target().await;
        let good = h.agent("node-b").await;
        let path = socket_path("pending");
        frontend::start(
            &h.server,
            FrontendProtocol::HttpConnect,
            &FrontendBind::unix(&path),
            &FrontendLimits::default(),
        )
        .unwrap();
        // An agent that takes dials and never answers them.
        let (silent, _control) = raw_agent(&h, "node-a/silent").await;
        let mut pending = tokio::task::JoinSet::new();
        for _ in 0..LIMIT {
            let server = h.server.clone();
            pending.spawn(async move {
                server
                    .dial(&Selector::Agent("node-a/silent".into()), "10.0.0.5:10250")
                    .await
            });
        }
        let mut unanswered = Vec::new();
        for _ in 0..LIMIT {
            let mut stream = within("a dial at the silent agent", silent.accept_bi()).await.unwrap();
            let Frame::Dial(dial) = read_frame(&mut stream.recv, MAX_FRAME_PAYLOAD).await.unwrap() else {
                panic!("expected Dial")
            };
            unanswered.push((stream, dial));
        }
        assert_eq!(h.server.pending_dials(), LIMIT);

        // Full: a dial through the healthy agent fails at once, clearly.
        let err = h
            .server
            .dial(&Selector::Agent("node-b".into()), &target.to_string())
            .await
            .expect_err("a dial beyond the pending limit");
        assert!(matches!(err, DialError::TooManyPendingDials { limit: LIMIT }), "{err}");
        assert_eq!(err.code(), DialCode::Overloaded);
        assert_eq!(err.label(), "too_many_pending_dials");
        assert!(err.to_string().contains("--max-pending-dials"), "{err}");
        let answer = http_connect(&path, &target.to_string()).await;
        assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable"), "{answer}");
        assert!(answer.contains("dials waiting for agents' answers"), "{answer}");
        assert_eq!(h.server.metrics().dials.get("too_many_pending_dials"), 2);

        // One answer frees one slot: the healthy agent is served again.
        let (mut stream, dial) = unanswered.pop().unwrap();
        let refused = Frame::DialResult(DialResult {
            request_id: dial.request_id,
            code: DialCode::Refused,
            message: "nothing listens".into(),
        });
        write_frame(&mut stream.send, &refused).await.unwrap();
        let answered = within("the answered dial", pending.join_next()).await.unwrap().unwrap();
        assert!(
            matches!(
                answered,
                Err(DialError::Failed {
                    code: DialCode::Refused,
                    ..
                })
            ),
            "{answered:?}"
        );
        assert_served(&h.server, "node-b", target).await;

        // The silent agent goes: its dials end and every slot is free.
        silent.close(ConnectionCode::Normal, "bye");
        while let Some(result) = within("the silent agent's dials", pending.join_next()).await {
            assert!(result.unwrap().is_err());
        }
        assert_eq!(h.server.pending_dials(), 0);
        good.stop().await;
    })
    .await
}

async fn an_oversized_frame_on_a_registered_agents_control_stream_closes_that_agent_only(kind: Kind) {
    let h = Harness::new(kind).await;
    let target = echo_target().await;
    let good = h.agent("node-b").await;
    let (conn, mut control) = raw_agent(&h, "node-a/oversized").await;
    // A frame header announcing a payload of 2 GiB, far over the frame cap.
    control.send.write_all(&[0x01, 0x7f, 0xff, 0xff, 0xff]).await.unwrap();
    match within("the server closing the connection", conn.closed()).await {
        TransportError::ClosedByPeer { code, reason } => {
            assert_eq!(code, ConnectionCode::ProtocolError);
            assert!(reason.contains("exceeds"), "{reason}");
        }
        other => panic!("expected a protocol-error close, got {other}"),
    }
    within(
        "the registry dropping the agent",
        h.server.wait_for_agents(|a| a.len() == 1),
    )
    .await;
    assert_eq!(h.server.agents()[0].agent_id, "node-b");
    assert_served(&h.server, "node-b", target).await;
    good.stop().await;
}

/// A TCP echo target that reports how each connection's reads ended.
async fn reporting_echo_target() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let end = loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            if let Err(err) = tcp.write_all(&buf[..n]).await {
                                break Err(err);
                            }
                        }
                        Err(err) => break Err(err),
                    }
                };
                let _ = tx.send(end);
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnelled_connection_is_reset_on_both_ends_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_secs(4);
    guard(async {
        let h = Harness::new(Kind::Quic).await;
        let (target, mut ends) = reporting_echo_target().await;
        let mut config = h.agent_config("node-a", token("node-a"));
        config.tunnel_idle_timeout = Some(IDLE);
        let agent = h.start_agent(config).await;
        let mut stream = h
            .server
            .dial(&Selector::Agent("node-a".into()), &target.to_string())
            .await
            .unwrap();
        let mut back = [0u8; 4];
        stream.write_all(b"ping").await.unwrap();
        stream.read_exact(&mut back).await.unwrap();
        // Traffic two seconds later (pacing, not synchronisation) restarts the idle clock.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stream.write_all(b"pong").await.unwrap();
        stream.read_exact(&mut back).await.unwrap();
        let last_traffic = Instant::now();

        let err = timeout(IDLE + Duration::from_secs(20), stream.read(&mut back))
            .await
            .expect("the idle connection was not closed within the idle timeout + 20 s")
            .expect_err("an idle-timeout reset, not data or EOF");
        assert_eq!(StreamReset::from_io(&err), Some(StreamCode::IdleTimeout), "{err}");
        // Counted from the last byte, not from the dial (1 s slack for the echo's transit under load).
        assert!(
            last_traffic.elapsed() >= IDLE - Duration::from_secs(1),
            "closed {:?} after the last byte",
            last_traffic.elapsed()
        );
        // The target's end is reset too.
        let end = within("the target seeing the close", ends.recv()).await.unwrap();
        let err = end.expect_err("the target's connection was reset, not ended in order");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        assert_eq!(agent.observer().metrics().tunnels_idle_closed.get(), 1);
        // New connections through the agent are served.
        let mut again = h
            .server
            .dial(&Selector::Agent("node-a".into()), &target.to_string())
            .await
            .unwrap();
        again.write_all(b"anew").await.unwrap();
        again.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"anew");
        agent.stop().await;
    })
    .await
}

/// Connectors that all reach whichever in-memory server is current (none:
/// connecting fails) and record when each agent tries to connect.
struct Switchboard {
    current: Mutex<Option<MemoryConnector>>,
    attempts: Mutex<Vec<(usize, Instant)>>,
    /// Connection attempts per agent so far.
    counts: tokio::sync::watch::Sender<Vec<u32>>,
}

impl Switchboard {
    fn new(agents: usize, current: Option<MemoryConnector>) -> Arc<Switchboard> {
        Arc::new(Switchboard {
            current: Mutex::new(current),
            attempts: Mutex::new(Vec::new()),
            counts: tokio::sync::watch::channel(vec![0; agents]).0,
        })
    }

    /// Each agent's first recorded connection attempt, as an offset from `since`.
    fn first_attempts(&self, since: Instant) -> HashMap<usize, Duration> {
        let mut first = HashMap::new();
        for (agent, at) in self.attempts.lock().unwrap().iter() {
            first.entry(*agent).or_insert(*at - since);
        }
        first
    }
}

struct RecordingConnector {
    agent: usize,
    board: Arc<Switchboard>,
}

impl Connector for RecordingConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Connection>, TransportError>> {
        self.board.attempts.lock().unwrap().push((self.agent, Instant::now()));
        self.board.counts.send_modify(|counts| counts[self.agent] += 1);
        let connector = self.board.current.lock().unwrap().clone();
        Box::pin(async move {
            match connector {
                Some(connector) => connector.connect().await,
                None => Err(TransportError::Connect("no server yet".into())),
            }
        })
    }

    fn describe(&self) -> String {
        "switchboard".into()
    }
}

fn start_memory_server(id: &str) -> (Server, MemoryConnector) {
    let (listener, connector) = memory::pair();
    let server = Server::new(ServerConfig::new(id, authenticator()));
    server.serve(Arc::new(listener));
    (server, connector)
}

/// `count` agents (`node-a/agent-0000`, …, sharing node-a's token) with `backoff`, connecting through `board`.
fn start_agents(board: &Arc<Switchboard>, count: usize, backoff: BackoffConfig) -> Vec<Agent> {
    (0..count)
        .map(|i| {
            let mut config = AgentConfig::new(
                format!("node-a/agent-{i:04}"),
                Arc::new(StaticCredential(token("node-a"))),
            );
            config.backoff = backoff.clone();
            let connector = RecordingConnector {
                agent: i,
                board: board.clone(),
            };
            Agent::start(Arc::new(connector), config)
        })
        .collect()
}

/// Thousands of agents that lose their server at the same instant do not
/// come back in lock-step: their first reconnect attempts spread over the
/// whole first backoff window (full jitter). Virtual time, so the window
/// costs nothing.
#[tokio::test(start_paused = true)]
async fn agents_reconnecting_after_a_server_restart_spread_over_the_backoff_window() {
    const AGENTS: usize = 1_000;
    const WINDOW: Duration = Duration::from_secs(1);
    const SLICES: usize = 20;
    init_tracing();
    let (old, connector) = start_memory_server("old");
    let board = Switchboard::new(AGENTS, Some(connector));
    let backoff = BackoffConfig {
        initial: WINDOW,
        max: Duration::from_secs(30),
        stable_after: Duration::from_secs(60),
    };
    let agents = start_agents(&board, AGENTS, backoff);
    within(
        "every agent on the old server",
        old.wait_for_agents(|a| a.len() == AGENTS),
    )
    .await;

    // The restart: a new server where the connectors lead, then the old one goes.
    let (new, connector) = start_memory_server("new");
    *board.current.lock().unwrap() = Some(connector);
    board.attempts.lock().unwrap().clear();
    let restart = Instant::now();
    old.shutdown();
    within(
        "every agent on the new server",
        new.wait_for_agents(|a| a.len() == AGENTS),
    )
    .await;

    let first = board.first_attempts(restart);
    assert_eq!(first.len(), AGENTS, "every agent tried to reconnect");
    let offsets: Vec<f64> = first.values().map(|d| d.as_secs_f64() / WINDOW.as_secs_f64()).collect();
    let (earliest, latest) = offsets
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    // Timers have millisecond resolution: allow 2 ms past the window.
    assert!(
        latest <= 1.002,
        "an attempt came after the first window: {latest:.3} windows"
    );
    assert!(
        earliest < 0.1 && latest > 0.9,
        "attempts span only {earliest:.3}..{latest:.3} of the window"
    );
    let mut slices = [0usize; SLICES];
    for x in &offsets {
        slices[((x * SLICES as f64) as usize).min(SLICES - 1)] += 1;
    }
    println!("first reconnect attempts: {earliest:.3}..{latest:.3} of the window; per twentieth: {slices:?}");
    let fair = AGENTS / SLICES;
    assert!(
        slices.iter().all(|n| *n <= 3 * fair),
        "some slice of the window holds over 3x its fair share of {fair}: {slices:?}"
    );
    for agent in agents {
        assert!(
            matches!(agent.status(), AgentStatus::Connected { session: 2, .. }),
            "{:?}",
            agent.status()
        );
    }
    new.shutdown();
}

/// Agents whose backoff grew while their server was unreachable start again
/// from the first window once a connection has stayed up `stable_after`.
#[tokio::test(start_paused = true)]
async fn a_connection_that_stayed_up_resets_the_agents_backoff() {
    const AGENTS: usize = 20;
    const FAILURES: u32 = 10;
    const INITIAL: Duration = Duration::from_secs(1);
    init_tracing();
    let board = Switchboard::new(AGENTS, None);
    let backoff = BackoffConfig {
        initial: INITIAL,
        max: Duration::from_secs(1024),
        stable_after: Duration::from_secs(60),
    };
    let agents = start_agents(&board, AGENTS, backoff.clone());
    // No server: every agent fails until its cap has grown to 2^10 windows.
    let mut counts = board.counts.subscribe();
    // Virtual time: the hang guard covers the sum of ten growing windows.
    timeout(
        Duration::from_secs(24 * 3600),
        counts.wait_for(|c| c.iter().all(|n| *n > FAILURES)),
    )
    .await
    .expect("agents did not fail repeatedly")
    .unwrap();
    let (old, connector) = start_memory_server("old");
    *board.current.lock().unwrap() = Some(connector);
    timeout(Duration::from_secs(3600), old.wait_for_agents(|a| a.len() == AGENTS))
        .await
        .expect("agents did not reach the server within their grown backoff");
    // Stable: up for longer than stable_after (virtual time).
    tokio::time::advance(backoff.stable_after + Duration::from_secs(1)).await;

    let (new, connector) = start_memory_server("new");
    *board.current.lock().unwrap() = Some(connector);
    board.attempts.lock().unwrap().clear();
    let restart = Instant::now();
    old.shutdown();
    // Long enough for un-reset backoffs too, so that the assertion below says what failed.
    timeout(2 * backoff.max, new.wait_for_agents(|a| a.len() == AGENTS))
        .await
        .expect("agents did not reach the new server");
    // Without the reset, each delay would be drawn from up to 1024 windows.
    let first = board.first_attempts(restart);
    assert_eq!(first.len(), AGENTS);
    let late: Vec<_> = first.values().filter(|d| **d > INITIAL).collect();
    assert!(late.is_empty(), "reconnects after the first window: {late:?}");
    drop(agents);
    new.shutdown();
}
