//! C ABI for connector.
//!
//! Everything a C (or Go, through cgo) program needs to run a connector
//! server or agent and to open tunnelled connections, behind opaque handles:
//!
//! - [`server::connector_server`], [`agent::connector_agent`],
//!   [`stream::connector_stream`] and [`cancel::connector_cancel`] are handles. Each has an explicit free function. A
//!   handle is an identifier looked up in a registry, never a pointer the
//!   library dereferences: a null, freed or wrong-kind handle is reported as
//!   [`connector_result::CONNECTOR_ERR_INVALID_HANDLE`], not a crash.
//! - Every function returns a [`connector_result`]. Functions that can fail
//!   take a `char **error` out-parameter (may be null) that receives a
//!   readable message on failure, to be released with
//!   [`error::connector_string_free`]. There is no thread-local "last error".
//! - No panic crosses the boundary: each entry point runs under
//!   `catch_unwind` and reports a panic as
//!   [`connector_result::CONNECTOR_ERR_PANIC`].
//! - Servers and agents own their tokio runtime. Blocking calls (dial, read,
//!   write, waiting for an agent) may be made from any thread that is not one
//!   of the library's own; each takes a timeout in microseconds (0: no limit)
//!   and an optional [`cancel::connector_cancel`] another thread can fire.
//! - A dialled stream can instead be handed over as one end of a socketpair
//!   ([`server::connector_server_dial_fd`]); the Go package uses that (see
//!   `docs/ffi.md` for the measurements behind that choice).

#![allow(non_camel_case_types)]
#![warn(missing_docs)]

#[cfg(test)]
mod abi_tests;
pub mod agent;
pub mod auth;
pub mod bench;
pub mod cancel;
pub mod config;
pub mod error;
pub mod frontend;
mod handle;
pub mod pki;
mod runtime;
pub mod server;
mod splice;
pub mod stream;

pub use error::connector_result;
