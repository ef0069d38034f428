//! Frontends: how code outside the process reaches [`crate::Server::dial`].
//! Each is a thin adapter over the dialer API.
//!
//! * [`http_connect`] — HTTP CONNECT over a Unix socket or mTLS TCP, as
//!   kube-apiserver's egress selector uses it (`proxyProtocol: HTTPConnect`).
//! * `grpc` (cargo feature `grpc`) — Konnectivity's `ProxyService`, so
//!   kube-apiserver in `proxyProtocol: GRPC` mode works unchanged.
//! * [`forward`] — a local TCP port tunnelled to one fixed target.

pub mod forward;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "grpc")]
pub(crate) mod h2_authority;
pub mod http_connect;
mod listener;

pub use listener::{FrontendBind, FrontendConn, FrontendError, FrontendLimits, FrontendListener, require_loopback};

use std::net::SocketAddr;

use crate::server::{Selector, Server};

/// The protocol a frontend listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendProtocol {
    /// HTTP CONNECT ([`http_connect`]).
    HttpConnect,
    /// Konnectivity's gRPC `ProxyService` (cargo feature `grpc`).
    #[cfg(feature = "grpc")]
    Grpc,
}

impl FrontendProtocol {
    /// The ALPN protocol a TLS listener of this kind offers.
    fn alpn(self) -> &'static [u8] {
        match self {
            FrontendProtocol::HttpConnect => b"http/1.1",
            #[cfg(feature = "grpc")]
            FrontendProtocol::Grpc => b"h2",
        }
    }
}

/// Binds `bind` and serves `protocol` on it in a background task until the
/// server shuts down. Returns where it listens (`unix://PATH`, `tls://ADDR`
/// or `tcp://ADDR`). Must be called within a tokio runtime.
pub fn start(
    server: &Server,
    protocol: FrontendProtocol,
    bind: &FrontendBind,
    limits: &FrontendLimits,
) -> Result<String, FrontendError> {
    let listener = FrontendListener::bind(bind, &[protocol.alpn()], limits)?;
    let local = listener.local_addr().to_owned();
    match protocol {
        FrontendProtocol::HttpConnect => {
            tokio::spawn(http_connect::serve(server.clone(), listener, limits.clone()));
        }
        #[cfg(feature = "grpc")]
        FrontendProtocol::Grpc => {
            let (server, limits) = (server.clone(), limits.clone());
            tokio::spawn(async move {
                if let Err(err) = grpc::serve(server, listener, limits).await {
                    tracing::error!(%err, "gRPC frontend failed");
                }
            });
        }
    }
    Ok(local)
}

/// Binds a local TCP port whose connections are tunnelled to `target`
/// through the agent `selector` picks ([`forward`]), served in a background
/// task until the server shuts down, with at most the default
/// [`FrontendLimits::max_connections`] connections at once. Returns the
/// bound address.
///
/// A forward authenticates nobody, so like
/// [`FrontendBind::PlainLoopback`] it only binds loopback addresses
/// ([`FrontendError::NotLoopback`] otherwise).
pub async fn start_forward(
    server: &Server,
    listen: SocketAddr,
    selector: Selector,
    target: String,
) -> Result<SocketAddr, FrontendError> {
    start_forward_with_limits(server, listen, selector, target, &FrontendLimits::default()).await
}

/// [`start_forward`] serving at most `limits.max_connections` connections at
/// once; more are closed on arrival.
pub async fn start_forward_with_limits(
    server: &Server,
    listen: SocketAddr,
    selector: Selector,
    target: String,
    limits: &FrontendLimits,
) -> Result<SocketAddr, FrontendError> {
    require_loopback(listen)?;
    let bind_err = |source| FrontendError::Bind {
        what: listen.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    tokio::spawn(forward::serve(
        server.clone(),
        listener,
        selector,
        target,
        limits.max_connections,
    ));
    Ok(local)
}
