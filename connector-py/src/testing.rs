//! Helpers behind `connector.testing`: a fast TCP echo target on loopback,
//! diagnostics, and the Rust side of the throughput benchmark.

use std::net::SocketAddr;
use std::time::Instant;

use connector_core::server::Selector;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::errors::Failure;
use crate::runtime::{block_on, busy_counts, runtime, seconds, until_busy, until_idle, wait};
use crate::server::Server;

/// A TCP server on 127.0.0.1 that echoes each connection until end of file,
/// then half-closes. Runs on the shared runtime; `close()` stops it.
#[pyclass(module = "connector._connector", name = "EchoTarget", frozen)]
pub struct EchoTarget {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

#[pymethods]
impl EchoTarget {
    #[new]
    #[pyo3(signature = (host="127.0.0.1"))]
    fn new(py: Python<'_>, host: &str) -> PyResult<Self> {
        let host = host.to_owned();
        let listener = py.detach(|| block_on(async move { tokio::net::TcpListener::bind((host.as_str(), 0)).await }));
        let listener = listener.map_err(|e| Failure::Config(format!("cannot bind the echo target: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Failure::Config(format!("cannot read the echo target's address: {e}")))?;
        let task = runtime().spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tcp.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// `ip:port`, to dial.
    #[getter]
    fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The port.
    #[getter]
    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops accepting (open connections finish on their own).
    fn close(&self) {
        self.task.abort();
    }

    fn __repr__(&self) -> String {
        format!("<connector.testing.EchoTarget {}>", self.addr)
    }
}

impl Drop for EchoTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counters for tests: `blocking_calls` (Python threads blocked in this
/// module now) and `async_operations` (asyncio operations in flight).
#[pyfunction]
pub fn diagnostics(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let (blocking, asyncio) = busy_counts();
    let dict = PyDict::new(py);
    dict.set_item("blocking_calls", blocking)?;
    dict.set_item("async_operations", asyncio)?;
    Ok(dict)
}

/// Waits until no asyncio operation is in flight and at most `blocking_calls`
/// other threads are blocked in this module (this call not counted).
#[pyfunction]
#[pyo3(signature = (blocking_calls=0, timeout=None))]
pub fn wait_idle(py: Python<'_>, blocking_calls: usize, timeout: Option<f64>) -> PyResult<()> {
    let timeout = seconds("timeout", timeout)?;
    // `wait` counts this call itself as blocked.
    wait(py, timeout, "waiting for idle", async move {
        until_idle(blocking_calls + 1).await;
        Ok(())
    })?;
    Ok(())
}

/// Waits until at least `blocking_calls` other threads are blocked in this
/// module and at least `async_operations` asyncio operations are in flight.
#[pyfunction]
#[pyo3(signature = (blocking_calls=0, async_operations=0, timeout=None))]
pub fn wait_busy(py: Python<'_>, blocking_calls: usize, async_operations: usize, timeout: Option<f64>) -> PyResult<()> {
    let timeout = seconds("timeout", timeout)?;
    // `wait` counts this call itself as blocked.
    wait(py, timeout, "waiting for busy", async move {
        until_busy(blocking_calls + 1, async_operations).await;
        Ok(())
    })?;
    Ok(())
}

/// Rust-API baseline for the benchmark: dials `target` (an echo server)
/// through `server` with the Rust API, sends `total` bytes while reading the
/// echo back, and returns the seconds it took.
#[pyfunction]
#[pyo3(signature = (server, target, total, chunk=256 * 1024, agent=None))]
pub fn rust_echo_transfer(
    py: Python<'_>,
    server: PyRef<'_, Server>,
    target: String,
    total: usize,
    chunk: usize,
    agent: Option<String>,
) -> PyResult<f64> {
    let core = server.core().clone();
    let selector = match agent {
        Some(id) => Selector::Agent(id),
        None => Selector::for_target(&target),
    };
    let chunk = chunk.max(1);
    let secs = wait(py, None, "benchmark", async move {
        let started = Instant::now();
        let stream = core.dial(&selector, &target).await?;
        let (mut r, mut w) = tokio::io::split(stream);
        let writer = tokio::spawn(async move {
            let block = vec![0x5au8; chunk];
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk);
                w.write_all(&block[..n]).await?;
                left -= n;
            }
            w.shutdown().await?;
            Ok::<_, std::io::Error>(w)
        });
        let mut buf = vec![0u8; chunk];
        let mut got = 0;
        loop {
            let n = r.read(&mut buf).await.map_err(|e| Failure::io("read", e))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let w = writer
            .await
            .map_err(|e| Failure::Stream(e.to_string()))?
            .map_err(|e| Failure::io("write", e))?;
        drop(r.unsplit(w));
        if got != total {
            return Err(Failure::Stream(format!("echoed {got} of {total} bytes")));
        }
        Ok(started.elapsed().as_secs_f64())
    })?;
    Ok(secs)
}
