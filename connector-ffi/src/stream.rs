//! [`connector_stream`]: a tunnelled connection, read and written with
//! blocking calls that take a timeout and a cancel handle.

use std::ffi::c_char;
use std::sync::Arc;

use connector_core::TunnelStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::cancel::{self, connector_cancel};
use crate::connector_result;
use crate::error::{Error, check_out, fill_string_out, guard, to_c_string, write_out};
use crate::handle::Registry;
use crate::runtime::OwnedRuntime;
use crate::splice::SpliceEnd;

/// A tunnelled TCP connection. One read and one write may be pending at
/// once, from different threads; [`connector_stream_free`] aborts them
/// (they return `CONNECTOR_ERR_CLOSED`).
pub struct connector_stream {
    rt: Arc<OwnedRuntime>,
    agent_id: String,
    /// Fired when the handle is freed.
    closed: Arc<connector_cancel>,
    io: Option<Io>,
    /// How the copy task of a stream handed over as a descriptor ended.
    end: Option<Arc<SpliceEnd>>,
}

struct Io {
    reader: tokio::sync::Mutex<ReadHalf<TunnelStream>>,
    writer: tokio::sync::Mutex<WriteHalf<TunnelStream>>,
}

pub(crate) static STREAMS: Registry<connector_stream> = Registry::new("stream");

impl connector_stream {
    /// A stream read and written through this module's calls.
    pub(crate) fn blocking(rt: Arc<OwnedRuntime>, tunnel: TunnelStream) -> Self {
        let agent_id = tunnel.agent_id().to_owned();
        let (reader, writer) = tokio::io::split(tunnel);
        Self {
            rt,
            agent_id,
            closed: Arc::new(connector_cancel::new()),
            io: Some(Io {
                reader: tokio::sync::Mutex::new(reader),
                writer: tokio::sync::Mutex::new(writer),
            }),
            end: None,
        }
    }

    /// A stream whose bytes flow through a socketpair; the handle only
    /// aborts it (`closed` is handed to the splice task).
    pub(crate) fn spliced(
        rt: Arc<OwnedRuntime>,
        agent_id: String,
        closed: Arc<connector_cancel>,
        end: Arc<SpliceEnd>,
    ) -> Self {
        Self {
            rt,
            agent_id,
            closed,
            io: None,
            end: Some(end),
        }
    }

    fn io(&self) -> Result<&Io, Error> {
        self.io.as_ref().ok_or_else(|| {
            Error::invalid("this stream was handed over as a file descriptor: read and write the descriptor instead")
        })
    }

    /// Reads into `buf`; `Ok(0)` is end of stream.
    pub(crate) fn read(
        &self,
        buf: &mut [u8],
        timeout_us: u64,
        cancel: Option<&connector_cancel>,
    ) -> Result<usize, Error> {
        let io = self.io()?;
        self.rt.block(timeout_us, cancel, Some(&self.closed), async {
            let mut reader = io.reader.lock().await;
            reader.read(buf).await.map_err(|e| Error::io(&e))
        })
    }

    /// Writes all of `buf`; returns how much was written and the error that stopped it, if any.
    pub(crate) fn write(
        &self,
        buf: &[u8],
        timeout_us: u64,
        cancel: Option<&connector_cancel>,
    ) -> (usize, Result<(), Error>) {
        let io = match self.io() {
            Ok(io) => io,
            Err(e) => return (0, Err(e)),
        };
        let mut written = 0;
        let outcome = self.rt.block(timeout_us, cancel, Some(&self.closed), async {
            let mut writer = io.writer.lock().await;
            while written < buf.len() {
                let n = writer.write(&buf[written..]).await.map_err(|e| Error::io(&e))?;
                if n == 0 {
                    return Err(Error::new(
                        connector_result::CONNECTOR_ERR_IO,
                        "the stream accepts no more data",
                    ));
                }
                written += n;
            }
            Ok(())
        });
        (written, outcome)
    }

    /// Half-closes: the target sees end of stream and may still answer.
    pub(crate) fn close_write(&self, timeout_us: u64, cancel: Option<&connector_cancel>) -> Result<(), Error> {
        let io = self.io()?;
        self.rt.block(timeout_us, cancel, Some(&self.closed), async {
            let mut writer = io.writer.lock().await;
            writer.shutdown().await.map_err(|e| Error::io(&e))
        })
    }
}

/// Reads up to `len` bytes into `buf`, waiting at most `timeout_us`
/// microseconds (0: no limit). On `CONNECTOR_OK`, `*read` is the count, and
/// 0 means the target closed its side (end of stream).
///
/// # Safety
/// `buf` writable for `len` bytes; `read` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_stream_read(
    stream: *const connector_stream,
    buf: *mut u8,
    len: usize,
    timeout_us: u64,
    cancel: *const connector_cancel,
    read: *mut usize,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        write_out(read, 0, "read")?;
        let (stream, cancel) = cancel::with_handle(&STREAMS, stream, cancel)?;
        if buf.is_null() || len == 0 {
            return Err(Error::invalid("buf must be non-null with len > 0"));
        }
        // SAFETY: `buf` is writable for `len` bytes per the contract.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf, len) };
        let n = stream.read(buf, timeout_us, cancel.as_deref())?;
        write_out(read, n, "read")
    })
}

/// Writes all `len` bytes of `buf`, waiting at most `timeout_us`
/// microseconds (0: no limit). `*written` is set to what was written, also
/// when the call fails part-way (timeout, cancel).
///
/// # Safety
/// `buf` readable for `len` bytes; `written` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_stream_write(
    stream: *const connector_stream,
    buf: *const u8,
    len: usize,
    timeout_us: u64,
    cancel: *const connector_cancel,
    written: *mut usize,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        write_out(written, 0, "written")?;
        let (stream, cancel) = cancel::with_handle(&STREAMS, stream, cancel)?;
        let buf = crate::error::arg_bytes(buf, len, "buf")?;
        let (n, outcome) = stream.write(buf, timeout_us, cancel.as_deref());
        write_out(written, n, "written")?;
        outcome
    })
}

/// Half-closes the stream: the target reads end of stream, and may still
/// answer (keep reading until `*read == 0`).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_stream_close_write(
    stream: *const connector_stream,
    timeout_us: u64,
    cancel: *const connector_cancel,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        let (stream, cancel) = cancel::with_handle(&STREAMS, stream, cancel)?;
        stream.close_write(timeout_us, cancel.as_deref())
    })
}

/// The id of the agent carrying the stream, in `*out` (free with `connector_string_free`).
///
/// # Safety
/// `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_stream_agent_id(
    stream: *const connector_stream,
    out: *mut *mut c_char,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        fill_string_out(out, || Ok(STREAMS.get(stream)?.agent_id.clone()))
    })
}

/// Whether a stream handed over as a descriptor
/// ([`crate::server::connector_server_dial_fd`]) ended abnormally. The
/// descriptor reads end of stream both when the target closed cleanly and
/// when the tunnel broke; this tells them apart. `*ended` is
/// `CONNECTOR_OK` while the connection runs or after a clean end, else the
/// code of what broke it, with a message in `*reason` (null otherwise; free
/// with `connector_string_free`): `CONNECTOR_ERR_IO` for a target reset or
/// a lost agent or server connection, `CONNECTOR_ERR_TIMED_OUT` when the
/// agent closed an idle connection (its tunnel idle timeout). The outcome is
/// recorded before the library closes its end, so once the descriptor reads
/// end of stream (or fails), this call gives the final answer. For other
/// streams, read and write report failures themselves: `*ended` is
/// `CONNECTOR_OK`.
///
/// # Safety
/// `ended` and `reason` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_stream_status(
    stream: *const connector_stream,
    ended: *mut connector_result,
    reason: *mut *mut c_char,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        check_out(ended, "ended")?;
        write_out(reason, std::ptr::null_mut(), "reason")?;
        let stream = STREAMS.get(stream)?;
        match stream.end.as_deref().and_then(SpliceEnd::get) {
            Some(Err(err)) => {
                write_out(ended, err.code, "ended")?;
                write_out(reason, to_c_string(&err.message), "reason")
            }
            _ => write_out(ended, connector_result::CONNECTOR_OK, "ended"),
        }
    })
}

/// Frees the stream. Pending calls on it return `CONNECTOR_ERR_CLOSED`. A
/// connection not finished in both directions is aborted (the target sees a
/// reset): half-close first for an orderly end. For a stream from
/// `connector_server_dial_fd`, close the descriptor first, then free the
/// handle: data written before the close still reaches the target (within
/// 10 s), then the splice ends and anything unfinished is aborted.
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_stream_free(
    stream: *mut connector_stream,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        let stream = STREAMS.remove(stream)?;
        stream.closed.fire();
        Ok(())
    })
}
