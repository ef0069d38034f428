//! Shared pieces of connector's benchmarks: a small TCP target service with
//! an echo, a sink and a source mode ([`target`]), the client side of each
//! measurement ([`client`]), and a server + agent pair over QUIC on loopback
//! or over the in-memory transport ([`harness`]); the soak test's driver
//! ([`soak`]); an IP-level impaired path between two network namespaces
//! ([`tun_impair`]); and the drivers of `netbench attack` ([`attack`]) and
//! `netbench failover` ([`failover`]).
//!
//! The criterion benches (`benches/tunnel.rs`, `benches/codec.rs`) and the
//! `netbench` program behind `benches/compare.sh` both use them, so every row
//! of the side-by-side table and every criterion figure measures the same
//! thing the same way.

#![warn(missing_docs)]

pub mod attack;
pub mod client;
pub mod failover;
pub mod harness;
pub mod soak;
pub mod target;
pub mod tun_impair;

/// Size of the buffers used for bulk reads and writes (256 KiB).
pub const CHUNK: usize = 256 * 1024;

/// A `/proc/PID/status` field in KiB (`"VmRSS:"`, `"VmHWM:"`); 0 if unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
