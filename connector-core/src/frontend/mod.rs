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
pub mod http_connect;
mod listener;

pub use listener::{FrontendBind, FrontendConn, FrontendError, FrontendLimits, FrontendListener};
