//! The test kit of connector: infrastructure its tests and benchmarks share
//! that the library itself does not ship.
//!
//! - [`netsim`]: a userspace UDP impairment proxy (loss, delay, reordering,
//!   blackholes, NAT rebinding) between an agent and a server on loopback.
//!
//! The throw-away PKI (`connector_core::pki`) stays in the library: `connector
//! dev-pki`, the Python and C bindings and the demo hand it to users.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod netsim;
