//! connector-core's integration tests, one binary (linking one test binary
//! per file cost CI a link each). Each module is one area; `common` is the
//! harness they share. Three stay binaries of their own: `secrets.rs` and
//! `log_injection.rs` each install the process's only tracing subscriber,
//! and `sigpipe.rs` puts `SIGPIPE` back to its default action for the whole
//! process.

#[allow(unused_macros)]
#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod agents_view;
mod cert_reload;
mod congestion;
mod drain;
mod fallback;
mod faults;
mod frontends;
mod hostile_peers;
mod isolation;
mod limits;
mod path_mtu;
mod replicas;
mod tls_hardening;
mod trust_domains;
mod tunnel;
