//! A target that goes away while the agent writes to it must not raise
//! `SIGPIPE`: a host process that has not ignored the signal (a Go program
//! using the C library, where it arrives on one of our threads) would end.
//! This test binary puts `SIGPIPE` back to its default action, as such a
//! host has it, so the test dies if any write raises it. (That is why it is a
//! test binary of its own.)

#[macro_use]
mod common;

use common::*;
use connector_core::fuzzing::NoSigPipe;
use connector_core::server::Selector;
use connector_core::transport::StreamReset;
use tokio::io::AsyncWriteExt;

on_all_transports!(a_target_closing_mid_transfer_raises_no_sigpipe);

/// Gathered writes into a socket whose peer has gone fail with an error
/// through [`NoSigPipe`] (the TCP transport's TLS writes its records this
/// way); a plain `writev` would end this process.
#[tokio::test]
async fn gathered_writes_to_a_vanished_peer_fail_without_sigpipe() {
    // SAFETY: sets the action of one signal; no handler runs our code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (peer, _) = listener.accept().await.unwrap();
    drop(peer);
    let mut sock = NoSigPipe(tcp);
    let chunk = [7u8; 16 * 1024];
    let err = loop {
        let bufs = [std::io::IoSlice::new(&chunk), std::io::IoSlice::new(&chunk)];
        if let Err(err) = sock.write_vectored(&bufs).await {
            break err;
        }
    };
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
}

async fn a_target_closing_mid_transfer_raises_no_sigpipe(kind: Kind) {
    // SAFETY: sets the action of one signal; no handler runs our code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let h = Harness::new(kind).await;
    let _agent = h.agent("node-a").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let mut stream = h.server.dial(&Selector::Any, &target).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    drop(accepted);
    // The agent's writes to the closed target fail (EPIPE, not SIGPIPE) and
    // it resets the stream, so the server's writes fail in turn.
    let chunk = vec![7u8; 256 * 1024];
    let err = loop {
        if let Err(err) = stream.write_all(&chunk).await {
            break err;
        }
    };
    assert!(StreamReset::from_io(&err).is_some(), "{err}");
    next_dial_is_served(&h).await;
}
