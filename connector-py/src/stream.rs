//! Tunnelled connections as Python objects: [`Stream`] (blocking calls that
//! release the GIL) and [`AsyncStream`] (asyncio). Both wrap a [`Duplex`]:
//! the read and write halves can be used from two threads or tasks at once,
//! and `close` interrupts whatever is waiting on either.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector_core::TunnelStream;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;

use crate::errors::Failure;
use crate::runtime::{Busy, seconds, wait};

/// Default size of one `read`.
const DEFAULT_READ: usize = 64 * 1024;
/// Largest buffer one `read` allocates (it returns at most this much).
const MAX_READ: usize = 4 * 1024 * 1024;

struct WriteSide {
    half: Option<WriteHalf<TunnelStream>>,
    shut: bool,
}

/// The shared core of both stream classes.
pub struct Duplex {
    read: tokio::sync::Mutex<Option<ReadHalf<TunnelStream>>>,
    write: tokio::sync::Mutex<WriteSide>,
    closed: watch::Sender<bool>,
    agent_id: String,
    request_id: u64,
}

fn closed_error() -> Failure {
    Failure::Closed("the stream is closed".into())
}

impl Duplex {
    /// Wraps a dialled connection.
    pub fn new(stream: TunnelStream) -> Arc<Self> {
        let agent_id = stream.agent_id().to_owned();
        let request_id = stream.request_id();
        let (read, write) = tokio::io::split(stream);
        Arc::new(Self {
            read: tokio::sync::Mutex::new(Some(read)),
            write: tokio::sync::Mutex::new(WriteSide {
                half: Some(write),
                shut: false,
            }),
            closed: watch::channel(false).0,
            agent_id,
            request_id,
        })
    }

    /// Runs `op` unless or until the stream is closed.
    async fn unless_closed<T>(&self, op: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
        let mut closed = self.closed.subscribe();
        if *closed.borrow_and_update() {
            return Err(closed_error());
        }
        tokio::select! {
            out = op => out,
            _ = closed.wait_for(|c| *c) => Err(closed_error()),
        }
    }

    /// Up to `max` bytes; empty at end of stream.
    pub async fn read(&self, max: usize) -> Result<Vec<u8>, Failure> {
        self.unless_closed(async {
            let mut guard = self.read.lock().await;
            let half = guard.as_mut().ok_or_else(closed_error)?;
            let mut buf = vec![0u8; max.min(MAX_READ)];
            let n = half.read(&mut buf).await.map_err(|e| Failure::io("read", e))?;
            buf.truncate(n);
            Ok(buf)
        })
        .await
    }

    /// Exactly `n` bytes, or a `StreamError` if the stream ends first.
    pub async fn read_exactly(&self, n: usize) -> Result<Vec<u8>, Failure> {
        self.unless_closed(async {
            let mut guard = self.read.lock().await;
            let half = guard.as_mut().ok_or_else(closed_error)?;
            // Grows with what arrives, so a huge `n` allocates only what is sent.
            let mut buf = Vec::with_capacity(n.min(MAX_READ));
            half.take(n as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| Failure::io("read", e))?;
            if buf.len() < n {
                return Err(Failure::Stream(format!(
                    "the stream ended after {} of {n} bytes",
                    buf.len()
                )));
            }
            Ok(buf)
        })
        .await
    }

    /// Everything until the end of the stream.
    pub async fn read_all(&self) -> Result<Vec<u8>, Failure> {
        self.unless_closed(async {
            let mut guard = self.read.lock().await;
            let half = guard.as_mut().ok_or_else(closed_error)?;
            let mut out = Vec::new();
            half.read_to_end(&mut out).await.map_err(|e| Failure::io("read", e))?;
            Ok(out)
        })
        .await
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, data: &[u8]) -> Result<(), Failure> {
        self.unless_closed(async {
            let mut side = self.write.lock().await;
            if side.shut {
                return Err(Failure::Closed("the write side is shut down".into()));
            }
            let half = side.half.as_mut().ok_or_else(closed_error)?;
            half.write_all(data).await.map_err(|e| Failure::io("write", e))
        })
        .await
    }

    /// Ends the write direction (the target sees end of file); reading goes on.
    pub async fn shutdown_write(&self) -> Result<(), Failure> {
        self.unless_closed(async {
            let mut side = self.write.lock().await;
            if side.shut {
                return Ok(());
            }
            let half = side.half.as_mut().ok_or_else(closed_error)?;
            half.shutdown().await.map_err(|e| Failure::io("shutdown_write", e))?;
            side.shut = true;
            Ok(())
        })
        .await
    }

    /// Ends the write direction if still open, then releases the connection;
    /// pending and later operations fail with `ClosedError`. Idempotent.
    pub async fn close(&self) {
        if self.closed.send_replace(true) {
            return;
        }
        let read = self.read.lock().await.take();
        let mut side = self.write.lock().await;
        if let Some(mut half) = side.half.take() {
            if !side.shut {
                let _ = half.shutdown().await;
            }
            drop(half);
        }
        drop(read);
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// The `repr` of the stream class `class` wrapping this connection.
    fn repr(&self, class: &str) -> String {
        let closed = if self.is_closed() { " closed" } else { "" };
        format!(
            "<connector.{class} agent_id={:?} request_id={}{closed}>",
            self.agent_id, self.request_id
        )
    }
}

/// Bytes to send, copied out of a `bytes`, `bytearray` or any buffer object.
pub fn bytes_arg(data: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(b) = data.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    // memoryview and other buffers: `bytes(data)` copies them.
    let copied = data.py().get_type::<PyBytes>().call1((data,))?;
    Ok(copied.cast::<PyBytes>()?.as_bytes().to_vec())
}

fn read_size(max_bytes: Option<usize>) -> usize {
    max_bytes.unwrap_or(DEFAULT_READ)
}

/// A tunnelled TCP connection with blocking methods, like a socket.
///
/// Blocking calls release the GIL, honour `timeout` (seconds, `None` = wait
/// forever) and are interrupted by Ctrl-C.
#[pyclass(module = "connector._connector", name = "Stream", frozen)]
pub struct Stream {
    duplex: Arc<Duplex>,
    timeout: Mutex<Option<Duration>>,
}

impl Stream {
    /// Wraps a dialled connection.
    pub fn new(stream: TunnelStream) -> Self {
        Self {
            duplex: Duplex::new(stream),
            timeout: Mutex::new(None),
        }
    }

    fn deadline(&self) -> Option<Duration> {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Stream {
    /// The id of the agent carrying the connection.
    #[getter]
    fn agent_id(&self) -> &str {
        &self.duplex.agent_id
    }

    /// The dial's request id (it appears in the server's and agent's logs).
    #[getter]
    fn request_id(&self) -> u64 {
        self.duplex.request_id
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.duplex.is_closed()
    }

    /// Seconds each blocking call may take (`None`: no limit).
    #[getter]
    fn get_timeout(&self) -> Option<f64> {
        self.deadline().map(|d| d.as_secs_f64())
    }

    #[setter]
    fn set_timeout(&self, value: Option<f64>) -> PyResult<()> {
        let value = seconds("timeout", value)?;
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) = value;
        Ok(())
    }

    /// Reads up to `max_bytes` (default 64 KiB, at most 4 MiB per call);
    /// `b""` means the target closed its side.
    #[pyo3(signature = (max_bytes=None))]
    fn read<'py>(&self, py: Python<'py>, max_bytes: Option<usize>) -> PyResult<Bound<'py, PyBytes>> {
        let duplex = self.duplex.clone();
        let max = read_size(max_bytes);
        let data = wait(py, self.deadline(), "read", async move { duplex.read(max).await })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Reads exactly `n` bytes; `StreamError` if the stream ends first.
    fn readexactly<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let duplex = self.duplex.clone();
        let data = wait(py, self.deadline(), "readexactly", async move {
            duplex.read_exactly(n).await
        })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Reads until the target closes its side.
    fn readall<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let duplex = self.duplex.clone();
        let data = wait(py, self.deadline(), "readall", async move { duplex.read_all().await })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Writes all of `data` (bytes-like); returns its length.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let data = bytes_arg(data)?;
        let len = data.len();
        let duplex = self.duplex.clone();
        wait(
            py,
            self.deadline(),
            "write",
            async move { duplex.write_all(&data).await },
        )?;
        Ok(len)
    }

    /// Writes all of `data` (bytes-like), like `socket.sendall`.
    fn sendall(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.write(py, data).map(|_| ())
    }

    /// Half-closes: the target reads end of file, and may still answer.
    fn shutdown_write(&self, py: Python<'_>) -> PyResult<()> {
        let duplex = self.duplex.clone();
        wait(py, self.deadline(), "shutdown_write", async move {
            duplex.shutdown_write().await
        })?;
        Ok(())
    }

    /// Closes the connection (sending end of file first if the write side is
    /// still open). Calls blocked on this stream in other threads raise
    /// `ClosedError`. Safe to call twice.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let duplex = self.duplex.clone();
        wait(py, None, "close", async move {
            duplex.close().await;
            Ok(())
        })?;
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        self.duplex.repr("Stream")
    }
}

/// Bytes returned to asyncio (a `Vec<u8>` would become a list).
pub struct OutBytes(pub Vec<u8>);

impl<'py> IntoPyObject<'py> for OutBytes {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(PyBytes::new(py, &self.0))
    }
}

/// Runs `op` as an asyncio awaitable; cancelling the awaiting task drops it.
pub fn awaitable<'py, T, F>(py: Python<'py>, op: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, Failure>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let counted = Counted {
        op: Box::pin(op),
        busy: None,
    };
    pyo3_async_runtimes::tokio::future_into_py(py, async move { counted.await.map_err(PyErr::from) })
}

/// A future counted as an asyncio operation from its first poll until it is
/// dropped; the operation (and whatever it holds, such as a dial's slot) is
/// dropped first.
struct Counted<F> {
    op: std::pin::Pin<Box<F>>,
    busy: Option<Busy>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        if self.busy.is_none() {
            self.busy = Some(Busy::asyncio());
        }
        self.op.as_mut().poll(cx)
    }
}

/// A tunnelled TCP connection for asyncio: every method is a coroutine.
/// Cancelling the awaiting task cancels the operation.
#[pyclass(module = "connector._connector", name = "AsyncStream", frozen)]
pub struct AsyncStream {
    duplex: Arc<Duplex>,
}

impl AsyncStream {
    /// Wraps a dialled connection.
    pub fn new(stream: TunnelStream) -> Self {
        Self {
            duplex: Duplex::new(stream),
        }
    }
}

#[pymethods]
impl AsyncStream {
    /// The id of the agent carrying the connection.
    #[getter]
    fn agent_id(&self) -> &str {
        &self.duplex.agent_id
    }

    /// The dial's request id.
    #[getter]
    fn request_id(&self) -> u64 {
        self.duplex.request_id
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.duplex.is_closed()
    }

    /// Reads up to `max_bytes` (default 64 KiB, at most 4 MiB per call); `b""` at end of stream.
    #[pyo3(signature = (max_bytes=None))]
    fn read<'py>(&self, py: Python<'py>, max_bytes: Option<usize>) -> PyResult<Bound<'py, PyAny>> {
        let duplex = self.duplex.clone();
        let max = read_size(max_bytes);
        awaitable(py, async move { duplex.read(max).await.map(OutBytes) })
    }

    /// Reads exactly `n` bytes; `StreamError` if the stream ends first.
    fn readexactly<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyAny>> {
        let duplex = self.duplex.clone();
        awaitable(py, async move { duplex.read_exactly(n).await.map(OutBytes) })
    }

    /// Reads until the target closes its side.
    fn readall<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let duplex = self.duplex.clone();
        awaitable(py, async move { duplex.read_all().await.map(OutBytes) })
    }

    /// Writes all of `data` (bytes-like) and waits until the tunnel took it.
    fn write<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let data = bytes_arg(data)?;
        let duplex = self.duplex.clone();
        awaitable(py, async move { duplex.write_all(&data).await })
    }

    /// Nothing is buffered on this side (`write` already waited): returns at
    /// once; kept for `asyncio.StreamWriter`-style code.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, async { Ok(()) })
    }

    /// Half-closes: the target reads end of file, and may still answer.
    fn shutdown_write<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let duplex = self.duplex.clone();
        awaitable(py, async move { duplex.shutdown_write().await })
    }

    /// Closes the connection (see `Stream.close`).
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let duplex = self.duplex.clone();
        awaitable(py, async move {
            duplex.close().await;
            Ok(())
        })
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.unbind();
        awaitable(py, async move { Ok(this) })
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__<'py>(&self, py: Python<'py>, _exc: &Bound<'py, pyo3::types::PyTuple>) -> PyResult<Bound<'py, PyAny>> {
        let duplex = self.duplex.clone();
        awaitable(py, async move {
            duplex.close().await;
            Ok(false)
        })
    }

    fn __repr__(&self) -> String {
        self.duplex.repr("AsyncStream")
    }
}
