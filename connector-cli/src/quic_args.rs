//! QUIC settings that the server and the agent both take.

use clap::Args;
use connector_core::transport::congestion::CongestionControl;
use connector_core::transport::quic::{MAX_UDP_PAYLOAD, MIN_UDP_PAYLOAD};

/// How this side's QUIC connections send.
#[derive(Args, Debug, Clone)]
pub struct QuicArgs {
    /// QUIC congestion controller for what this side sends: `auto` (default: Cubic on paths
    /// under 5 ms, BBR on longer ones), `cubic`, or `bbr` (keeps its throughput on lossy long
    /// paths: 1 % random loss does not shrink its window).
    #[arg(long, env = "CONNECTOR_CONGESTION_CONTROL", default_value = "auto")]
    pub congestion_control: CongestionControl,
    /// Largest QUIC packet (UDP payload, bytes) this side sends and accepts: the upper bound
    /// of path MTU discovery, which starts at 1200 and settles at what the path carries
    /// (about 1472 on Ethernet). 1200 turns discovery off.
    #[arg(long, env = "CONNECTOR_MAX_UDP_PAYLOAD", default_value_t = MAX_UDP_PAYLOAD,
          value_parser = clap::value_parser!(u16).range(i64::from(MIN_UDP_PAYLOAD)..=i64::from(MAX_UDP_PAYLOAD)))]
    pub max_udp_payload: u16,
}
