//! connector: a reverse tunnel over QUIC.
//!
//! An **agent** inside a private network dials out to a **server** next to
//! the Kubernetes control plane and keeps that connection open; code on the
//! server side then calls [`Server::dial`] to get a byte stream to any
//! `host:port` the agent can reach.
//!
//! Start from the [`settings`] ([`ServerSettings`], [`AgentSettings`]) and
//! [`setup`] ([`ServerSetup`], [`AgentSetup`]); the [`transport`] and
//! [`auth`] traits are the seams for other transports and authenticators.
//! `docs/architecture.md` draws the layers.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod auth;
pub mod frontend;
pub mod kubernetes;
pub mod metrics;
pub mod pki;
pub mod proto;
pub mod server;
pub mod settings;
pub mod setup;
pub mod tls;
pub mod transport;

mod frame_io;
mod identifiers;
mod no_sigpipe;
mod secret_file;
mod splice;

pub use agent::{Agent, AgentConfig, AgentObserver, AgentStatus};
pub use identifiers::{IdentifierParseError, Identifiers};
pub use secret_file::warn_if_exposed;
pub use server::{DialError, Selector, Server, ServerConfig, TunnelStream};
pub use settings::{AgentSettings, ServerSettings};
pub use setup::{AgentSetup, ServerSetup};
pub use splice::copy_both;

/// Internals the fuzz targets and the integration tests drive directly (the
/// QMux state machine and its frames, the HTTP parsers, the frame I/O a raw
/// peer uses). Not part of the API: it changes without notice.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::frame_io::{FrameIoError, read_frame, write_frame};
    #[cfg(feature = "grpc")]
    pub use crate::frontend::h2_authority::Rewriter;
    pub use crate::frontend::http_connect::{HeadError, parse_head};
    pub use crate::identifiers::normalize_host;
    pub use crate::no_sigpipe::NoSigPipe;
    pub use crate::transport::credit::window_for;
    pub use crate::transport::qmux::conn::{Config, Conn, Side};
    pub use crate::transport::qmux::frame::{DEFAULT_MAX_RECORD_SIZE, Frame, TransportParams, put_record, take_record};
}
