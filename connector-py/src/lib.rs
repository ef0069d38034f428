//! Python bindings for connector: the extension module `connector._connector`.
//!
//! A thin layer over `connector-core`: [`server::Server`] and
//! [`agent::Agent`] start the core's QUIC server and agent (through
//! `connector_core::setup`), [`stream`] exposes tunnelled connections to
//! blocking and asyncio code, [`auth`] lets a Python callable authenticate
//! agents, [`logging`] forwards `tracing` events to Python's `logging`, and
//! [`errors`] maps failures to the exceptions of `connector.errors`. The
//! typed public API is the Python package `connector` around this module.

#![warn(missing_docs)]

mod agent;
mod auth;
mod errors;
mod logging;
mod pki;
mod runtime;
mod server;
mod settings;
mod socket;
mod stream;
mod testing;

use pyo3::prelude::*;

/// Sets which Rust log events reach Python's `logging` (a `logging` level
/// number: events at or above it are forwarded).
#[pyfunction]
fn set_log_level(level: i64) {
    logging::set_level(level);
}

/// Waits until every Rust log event emitted so far has reached `logging`.
#[pyfunction]
fn flush_logs(py: Python<'_>) {
    logging::flush(py);
}

/// The extension module.
#[pymodule]
fn _connector(m: &Bound<'_, PyModule>) -> PyResult<()> {
    runtime::init()?;
    logging::init()?;
    m.add_class::<server::Server>()?;
    m.add_class::<server::AgentInfo>()?;
    m.add_class::<agent::Agent>()?;
    m.add_class::<stream::Stream>()?;
    m.add_class::<stream::AsyncStream>()?;
    m.add_class::<auth::AuthRequest>()?;
    m.add_class::<auth::Accept>()?;
    m.add_class::<auth::Reject>()?;
    m.add_class::<pki::ThrowawayCa>()?;
    m.add_class::<testing::EchoTarget>()?;
    m.add_function(wrap_pyfunction!(settings::server_settings, m)?)?;
    m.add_function(wrap_pyfunction!(settings::agent_settings, m)?)?;
    m.add_function(wrap_pyfunction!(set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(flush_logs, m)?)?;
    m.add_function(wrap_pyfunction!(testing::diagnostics, m)?)?;
    m.add_function(wrap_pyfunction!(testing::wait_idle, m)?)?;
    m.add_function(wrap_pyfunction!(testing::wait_busy, m)?)?;
    m.add_function(wrap_pyfunction!(testing::rust_echo_transfer, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
