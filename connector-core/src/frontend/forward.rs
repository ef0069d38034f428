//! Port forwarding: a local TCP listener whose every connection is tunnelled
//! to one fixed target through the agent a selector picks — `kubectl
//! port-forward` for anything behind an agent, and the way standard tools
//! (iperf3, wrk, curl) are pointed at the tunnel.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::server::{Selector, Server};

/// Accepts on `listener` until the server shuts down, tunnelling each
/// connection to `target` through the agent `selector` picks. A failed dial
/// closes the local connection (the reason is logged). At most
/// `max_connections` are served at once; more are closed on arrival.
pub async fn serve(server: Server, listener: TcpListener, selector: Selector, target: String, max_connections: usize) {
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(listen = %local, %target, via = %selector, "forwarding");
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (mut tcp, peer) = tokio::select! {
            _ = server.stopped() => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(listen = %local, %peer, limit = max_connections, "too many forwarded connections; closing a new one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (server, selector, target) = (server.clone(), selector.clone(), target.clone());
        let span = tracing::info_span!("forward", %peer, %target);
        tokio::spawn(
            async move {
                // What the client sends while the dial is answered rides right
                // behind the `Dial` (never waited for: in protocols where the
                // server speaks first there is nothing).
                let mut stream = match server.dial_relaying(&selector, &target, &mut tcp).await {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::warn!(%err, "dial failed; closing the local connection");
                        drop(slot); // free before the client sees the close
                        return;
                    }
                };
                match crate::server::copy_tunnel_tcp(&mut tcp, &mut stream).await {
                    Ok((up, down)) => tracing::debug!(to_target = up, to_client = down, "closed"),
                    Err(err) => tracing::debug!(%err, "aborted"),
                }
                drop(slot); // free before the client sees the close
            }
            .instrument(span),
        );
    }
}
