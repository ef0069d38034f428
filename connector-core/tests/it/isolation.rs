//! Isolation: tunnels whose reader stopped (a client that paused for good, a
//! target that froze) stop no other tunnel of their agent, whatever their
//! number, and the agent's stall timeout ends them on both sides.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use connector_core::proto::StreamCode;
use connector_core::server::{Selector, TunnelStream};
use connector_core::transport::{STREAM_WINDOW, StreamReset, memory};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

on_all_transports!(
    eight_clients_that_stop_reading_stop_no_other_tunnel,
    eight_targets_that_stop_reading_stop_no_other_tunnel,
    stalled_tunnels_are_reset_on_both_ends_after_the_stall_timeout,
);

/// Stalled tunnels per direction: twice what a connection window of four
/// stream windows (the old, shared 16 MiB) could hold.
const STALLED: usize = 8;

/// A target that writes to every connection as fast as it is taken and
/// never reads. Says once each connection has taken `notify_after` bytes,
/// and how each ended.
struct Firehose {
    addr: SocketAddr,
    passed: mpsc::UnboundedReceiver<()>,
    ends: mpsc::UnboundedReceiver<std::io::Error>,
}

async fn firehose(notify_after: u64) -> Firehose {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (passed_tx, passed) = mpsc::unbounded_channel();
    let (ends_tx, ends) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (passed_tx, ends_tx) = (passed_tx.clone(), ends_tx.clone());
            tokio::spawn(async move {
                let err = write_until_refused(tcp, notify_after, passed_tx).await;
                let _ = ends_tx.send(err);
            });
        }
    });
    Firehose { addr, passed, ends }
}

/// Writes to `w` until a write fails; says on `passed` once `notify_after`
/// bytes were taken. Returns the failure.
async fn write_until_refused<W: tokio::io::AsyncWrite + Unpin>(
    mut w: W,
    notify_after: u64,
    passed: mpsc::UnboundedSender<()>,
) -> std::io::Error {
    let chunk = pattern(64 * 1024, 7);
    let mut written = 0u64;
    loop {
        match w.write(&chunk).await {
            Ok(n) => {
                let before = written;
                written += n as u64;
                if before < notify_after && written >= notify_after {
                    let _ = passed.send(());
                }
            }
            Err(err) => return err,
        }
    }
}

/// Waits for `n` messages on `rx`.
async fn count(rx: &mut mpsc::UnboundedReceiver<()>, n: usize) {
    for _ in 0..n {
        rx.recv().await.expect("sender alive");
    }
}

/// A target that accepts and never reads; reports how each connection ended
/// (it waits for an error on the socket, which reads nothing).
async fn sink_that_never_reads() -> (SocketAddr, mpsc::UnboundedReceiver<std::io::Error>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, ends) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let err = loop {
                    match tcp.ready(Interest::ERROR).await {
                        Ok(_) => {
                            if let Ok(Some(err)) = tcp.take_error() {
                                break err;
                            }
                        }
                        Err(err) => break err,
                    }
                };
                let _ = tx.send(err);
            });
        }
    });
    (addr, ends)
}

/// What one stalled tunnel holds at the receiving end of `kind`: its stream
/// window (the in-memory transport's pipes are smaller).
fn stream_window(kind: Kind) -> u64 {
    match kind {
        Kind::Memory => memory::PIPE_CAPACITY as u64,
        Kind::Quic | Kind::Tcp => u64::from(STREAM_WINDOW),
    }
}

async fn dial(h: &Harness, target: SocketAddr) -> TunnelStream {
    h.server
        .dial(&Selector::Agent("node-a".into()), &target.to_string())
        .await
        .unwrap()
}

/// Starts `n` uploads through new tunnels to `target` that write until a
/// write fails; `passed` hears once each has written `notify_after` bytes.
async fn uploads(
    h: &Harness,
    target: SocketAddr,
    n: usize,
    notify_after: u64,
) -> (
    Vec<tokio::task::JoinHandle<std::io::Error>>,
    mpsc::UnboundedReceiver<()>,
) {
    let (tx, passed) = mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for _ in 0..n {
        let stream = dial(h, target).await;
        writers.push(tokio::spawn(write_until_refused(stream, notify_after, tx.clone())));
    }
    (writers, passed)
}

/// What the agent can still do beside stalled tunnels: a bulk transfer each
/// way through a new tunnel, with its bytes intact, and new dials.
async fn everything_else_is_served(h: &Harness) {
    let echo = echo_target().await;
    let data = pattern(32 * 1024 * 1024, 99);
    let back = echo_all(dial(h, echo).await, &data).await;
    assert_eq!(
        sha256(&back),
        sha256(&data),
        "a healthy transfer beside stalled tunnels"
    );
    for i in 0..STALLED {
        let message = format!("dial {i}");
        assert_eq!(
            echo_all(dial(h, echo).await, message.as_bytes()).await,
            message.as_bytes()
        );
    }
}

async fn eight_clients_that_stop_reading_stop_no_other_tunnel(kind: Kind) {
    let h = Harness::new(kind).await;
    let mut config = h.agent_config("node-a", token("node-a"));
    config.tunnel_stall_timeout = None; // isolation must hold without resets
    let agent = h.start_agent(config).await;
    // Downloads nobody reads: each fills its stream window at the server.
    let mut target = firehose(stream_window(kind)).await;
    let stalled = dial_n(&h, target.addr, STALLED).await;
    count(&mut target.passed, STALLED).await;

    everything_else_is_served(&h).await;

    assert_eq!(agent.observer().metrics().tunnels_stalled.get(), 0, "none was reset");
    drop(stalled);
}

async fn eight_targets_that_stop_reading_stop_no_other_tunnel(kind: Kind) {
    let h = Harness::new(kind).await;
    let mut config = h.agent_config("node-a", token("node-a"));
    config.tunnel_stall_timeout = None;
    let agent = h.start_agent(config).await;
    // Uploads into targets that never read: each fills its stream window at the agent.
    let (sink, _ends) = sink_that_never_reads().await;
    let (writers, mut passed) = uploads(&h, sink, STALLED, stream_window(kind)).await;
    count(&mut passed, STALLED).await;

    everything_else_is_served(&h).await;

    assert_eq!(agent.observer().metrics().tunnels_stalled.get(), 0, "none was reset");
    writers.iter().for_each(tokio::task::JoinHandle::abort);
}

async fn stalled_tunnels_are_reset_on_both_ends_after_the_stall_timeout(kind: Kind) {
    let h = Harness::new(kind).await;
    let mut config = h.agent_config("node-a", token("node-a"));
    config.tunnel_stall_timeout = Some(Duration::from_secs(1));
    let agent = h.start_agent(config).await;

    // Clients that stop reading, and uploads into targets that never read.
    let mut firehose = firehose(u64::MAX).await;
    let downloads = dial_n(&h, firehose.addr, STALLED).await;
    let (sink, mut sink_ends) = sink_that_never_reads().await;
    let (uploads, _) = uploads(&h, sink, STALLED, u64::MAX).await;

    // Each target sees its connection reset, not ended in order.
    for _ in 0..STALLED {
        let err = firehose.ends.recv().await.unwrap();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{err}"
        );
        let err = sink_ends.recv().await.unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
    // Each dialer learns why.
    for upload in uploads {
        let err = upload.await.unwrap();
        assert_eq!(StreamReset::from_io(&err), Some(StreamCode::Stalled), "{err}");
    }
    for mut download in downloads {
        let mut buf = vec![0u8; 256 * 1024];
        let err = loop {
            match download.read(&mut buf).await {
                Ok(0) => panic!("a stalled download ended in order instead of being reset"),
                Ok(_) => continue, // what was buffered before the reset
                Err(err) => break err,
            }
        };
        assert_eq!(StreamReset::from_io(&err), Some(StreamCode::Stalled), "{err}");
    }
    assert_eq!(agent.observer().metrics().tunnels_stalled.get(), 2 * STALLED as u64);
    assert_eq!(h.server.metrics().tunnels_stalled.get(), 2 * STALLED as u64);
    let page = agent.observer().metrics().render("node-a", 1, 1, &[]);
    assert!(
        page.contains(&format!("connector_agent_tunnels_stalled_total {}", 2 * STALLED)),
        "{page}"
    );
    next_dial_is_served(&h).await;
}

/// `n` tunnels to `target`, dialled one after another.
async fn dial_n(h: &Harness, target: SocketAddr, n: usize) -> Vec<TunnelStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(dial(h, target).await);
    }
    streams
}
