//! connector: a reverse tunnel over QUIC.
//!
//! An **agent** inside a private network dials out to a **server** next to
//! the Kubernetes control plane and keeps that connection open; code on the
//! server side then calls [`Server::dial`] to get a byte stream to any
//! `host:port` the agent can reach.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod identifiers;
pub mod metrics;
pub mod no_sigpipe;
pub mod proto;
pub mod secret_file;

pub use identifiers::Identifiers;
pub mod auth;
pub mod frame_io;
pub mod frontend;
pub mod pki;
pub mod server;
pub mod settings;
pub mod setup;
pub mod tls;
pub mod transport;

pub use server::{DialError, Selector, Server, ServerConfig, TunnelStream};
pub mod admin;
pub mod agent;
pub mod splice;

pub use agent::{Agent, AgentConfig, AgentObserver, AgentStatus};
