//! A QUIC endpoint's UDP socket with a receive buffer sized to what the
//! kernel can deliver in one read, rather than quinn's worst case.
//!
//! quinn gives every endpoint one receive buffer of
//! `max_udp_payload × receive segments × 32` bytes: 32 slots for one
//! `recvmmsg`, each large enough for the 64 datagrams Linux may coalesce
//! (UDP GRO) at the endpoint's largest packet. With connector's 6,550-byte
//! packets that is 13.4 MB per endpoint, and an agent has at least one
//! (`IdleEndpoints` in `quic` reuses them): 100 agents in one process committed 1.2 GiB of
//! address space for them (mimalloc's statistics; `docs/benchmarks.md`).
//!
//! But a coalesced datagram does not exceed 64 KiB: the kernel stops
//! merging at the device's `gro_max_size` (65,536 by default; `ip -d link`
//! shows it), and the UDP length field of the merged datagram cannot state
//! more. So this wrapper reports as many receive segments as fill 64 KiB at
//! the endpoint's packet size ([`segments_for`]), and quinn's slots shrink
//! to 64 KiB each: 2 MiB per endpoint. Everything else is quinn's own tokio
//! socket, unchanged.
//!
//! The assumption is untested on a host whose `gro_max_size` was raised
//! (for BIG TCP). Were a larger coalesced read ever delivered, it would be
//! cut at the slot's end, and quinn would drop the cut packet (its AEAD
//! check fails) as if it were lost: slower, never corrupt.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

/// The most bytes one received datagram carries after the kernel coalesced
/// several (UDP GRO): 64 KiB.
const MAX_COALESCED: usize = 64 * 1024;

/// Receive segments that fill [`MAX_COALESCED`] with packets of
/// `max_udp_payload` bytes, at most what the socket itself reports (1
/// without GRO) and at least 1.
pub fn segments_for(max_udp_payload: u16, socket_segments: usize) -> usize {
    MAX_COALESCED
        .div_ceil(usize::from(max_udp_payload.max(1)))
        .min(socket_segments)
        .max(1)
}

/// quinn's tokio socket for `socket`, reporting [`segments_for`] receive segments.
pub fn wrap(socket: std::net::UdpSocket, max_udp_payload: u16) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
    let receive_segments = segments_for(max_udp_payload, inner.max_receive_segments());
    Ok(Arc::new(GroBoundedSocket {
        inner,
        receive_segments,
    }))
}

/// See the module documentation.
struct GroBoundedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    receive_segments: usize,
}

impl fmt::Debug for GroBoundedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroBoundedSocket")
            .field("inner", &self.inner)
            .field("receive_segments", &self.receive_segments)
            .finish()
    }
}

impl AsyncUdpSocket for GroBoundedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.receive_segments
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_holds_64_kib_of_coalesced_packets_whatever_their_size() {
        for payload in [1200u16, 1452, 6550, 9000, 65_527] {
            let segments = segments_for(payload, 64);
            assert!(segments * usize::from(payload) >= MAX_COALESCED, "{payload}");
            assert!(
                (segments - 1) * usize::from(payload) < MAX_COALESCED,
                "{payload}: no more than needed"
            );
        }
        assert_eq!(
            segments_for(1200, 1),
            1,
            "a socket without GRO gets one datagram per slot"
        );
        assert_eq!(segments_for(6550, 64), 11);
    }
}
