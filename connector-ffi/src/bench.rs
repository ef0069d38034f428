//! A baseline for measuring the boundary's cost: small-message round trips
//! through the Rust API alone, timed inside the library, so a caller can
//! compare them with the same round trips made through its own bindings in
//! the same process and run.

use std::ffi::c_char;
use std::time::Instant;

use connector_core::Selector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connector_result;
use crate::error::{Error, arg_str, fill_out, guard};
use crate::server::{SERVERS, connector_server};

/// Dials `target` (an echo service) through the agent serving its host and
/// makes `iterations` round trips of `size` bytes (write, then read the
/// echo) with the Rust API on the server's runtime. `*ns_per_round_trip`
/// receives the mean time of one round trip in nanoseconds.
///
/// # Safety
/// `target` NUL-terminated; `ns_per_round_trip` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_bench_round_trip(
    server: *const connector_server,
    target: *const c_char,
    iterations: u32,
    size: u32,
    ns_per_round_trip: *mut u64,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        fill_out(ns_per_round_trip, "ns_per_round_trip", || {
            let server = SERVERS.get(server)?;
            let target = arg_str(target, "target")?.to_owned();
            if iterations == 0 || size == 0 || size > 1 << 20 {
                return Err(Error::invalid("iterations must be > 0 and size in 1..=1MiB"));
            }
            let handle = server.rt.handle().clone();
            let core = server.server.clone();
            // Run as a task on the runtime: the way Rust code embedding the library would.
            server.rt.block(0, None, None, async move {
                let task = handle.spawn(async move {
                    let mut stream = core.dial(&Selector::for_target(&target), &target).await?;
                    let message = vec![0x5au8; size as usize];
                    let mut echo = vec![0u8; size as usize];
                    let start = Instant::now();
                    for _ in 0..iterations {
                        stream.write_all(&message).await.map_err(|e| Error::io(&e))?;
                        stream.read_exact(&mut echo).await.map_err(|e| Error::io(&e))?;
                    }
                    let elapsed = start.elapsed();
                    if echo != message {
                        return Err(Error::new(
                            connector_result::CONNECTOR_ERR_IO,
                            "the echo differs from the message",
                        ));
                    }
                    stream.abort();
                    Ok(elapsed.as_nanos() as u64 / u64::from(iterations))
                });
                task.await
                    .map_err(|e| Error::new(connector_result::CONNECTOR_ERR_PANIC, e.to_string()))?
            })
        })
    })
}
