//! An impaired IP path for every kind of peer, TCP and QUIC alike: two TUN
//! devices, each in its own network namespace, and a forwarder that copies IP
//! packets between them with a fixed one-way delay and random loss. (The
//! kernel here has no `netem`; the UDP proxy of `connector_testkit::netsim` only
//! serves QUIC.) `benches/wan-ip.sh` builds the namespaces and runs every
//! peer across this path.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// `TUNSETIFF` from `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;
/// Largest IP packet read from a TUN device.
const MAX_PACKET: usize = 65_535;
/// Packets waiting out their delay in one direction; more are dropped (a full router queue).
const QUEUE: usize = 16_384;

/// Attaches to the existing TUN device `dev` of the network namespace at
/// `netns` (e.g. `/var/run/netns/NAME`): the calling thread enters the
/// namespace for the open and comes back.
pub fn open_tun_in(netns: &Path, dev: &str) -> io::Result<OwnedFd> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(netns)?;
    enter(&target)?;
    let tun = open_tun(dev);
    enter(&home)?;
    tun
}

fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a namespace file descriptor we own.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_tun(dev: &str) -> io::Result<OwnedFd> {
    if dev.len() >= 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TUN device name longer than 15 bytes",
        ));
    }
    // SAFETY: a C string literal and flags; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct ifreq: 16 bytes of name, then the flags (short) of the union.
    let mut ifreq = [0u8; 40];
    ifreq[..dev.len()].copy_from_slice(dev.as_bytes());
    ifreq[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifreq` is large enough for.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Copies packets both ways between `a` and `b` until an error: each packet
/// is dropped with probability `loss`, otherwise delivered `delay` later, in
/// order. `seed` makes the losses repeatable.
pub async fn forward(a: OwnedFd, b: OwnedFd, delay: Duration, loss: f64, seed: u64) -> io::Result<()> {
    let a = Arc::new(register(a)?);
    let b = Arc::new(register(b)?);
    tokio::try_join!(
        direction(a.clone(), b.clone(), delay, loss, seed),
        direction(b, a, delay, loss, seed.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15),
    )?;
    Ok(())
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` holds a valid descriptor and nothing replaces or closes
    // it while the `AsyncFd` owns it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))
}

async fn direction(
    from: Arc<AsyncFd<OwnedFd>>,
    to: Arc<AsyncFd<OwnedFd>>,
    delay: Duration,
    loss: f64,
    seed: u64,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let read = async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let n = read_packet(&from, &mut buf).await?;
            if rng.random::<f64>() < loss {
                continue;
            }
            // A full queue drops the packet, as a router's would.
            let _ = tx.try_send((Instant::now() + delay, buf[..n].to_vec()));
        }
        #[allow(unreachable_code)]
        Ok::<_, io::Error>(())
    };
    let write = async move {
        while let Some((due, packet)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            write_packet(&to, &packet).await?;
        }
        Ok::<_, io::Error>(())
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

async fn read_packet(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut ready = fd.readable().await?;
        // SAFETY: reads into `buf`, at most its length.
        let read = ready.try_io(|fd| {
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        if let Ok(result) = read {
            return result;
        }
    }
}

async fn write_packet(fd: &AsyncFd<OwnedFd>, packet: &[u8]) -> io::Result<()> {
    loop {
        let mut ready = fd.writable().await?;
        // SAFETY: writes `packet`, one whole IP packet, as a TUN device expects.
        let written = ready.try_io(|fd| {
            let n = unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
            if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        });
        match written {
            Ok(Ok(())) => return Ok(()),
            // The namespace refused this packet (e.g. no route yet): drop it like a lossy link would.
            Ok(Err(e)) if e.raw_os_error() != Some(libc::EAGAIN) => return Ok(()),
            _ => {}
        }
    }
}
