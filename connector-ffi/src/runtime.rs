//! The tokio runtime a server or agent owns, and how blocking C calls wait
//! on it with a timeout and a cancel handle.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::cancel::connector_cancel;
use crate::connector_result;
use crate::error::Error;

/// A runtime shut down (worker threads joined) when the last owner lets go.
pub(crate) struct OwnedRuntime(Option<tokio::runtime::Runtime>);

/// How long dropping a runtime waits for its threads (a C callback that
/// never returns would otherwise hang the free call).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl OwnedRuntime {
    pub(crate) fn new(worker_threads: usize) -> Result<Arc<Self>, Error> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("connector");
        if worker_threads > 0 {
            builder.worker_threads(worker_threads);
        }
        let rt = builder
            .build()
            .map_err(|e| Error::setup(format!("cannot start the runtime: {e}")))?;
        Ok(Arc::new(Self(Some(rt))))
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("runtime present until drop").handle()
    }

    /// Runs `work` to completion on the calling thread, giving up after
    /// `timeout_us` microseconds (0: no limit), when `cancel` fires, or when
    /// `closed` fires.
    pub(crate) fn block<T>(
        &self,
        timeout_us: u64,
        cancel: Option<&connector_cancel>,
        closed: Option<&connector_cancel>,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::new(
                connector_result::CONNECTOR_ERR_WRONG_THREAD,
                "blocking connector call made on a connector runtime thread (e.g. inside an auth callback)",
            ));
        }
        if cancel.is_some_and(|c| c.is_fired()) {
            return Err(cancelled());
        }
        self.handle().block_on(async {
            let deadline = async {
                if timeout_us == 0 {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(Duration::from_micros(timeout_us)).await
                }
            };
            let cancelled_fut = async {
                match cancel {
                    Some(c) => c.fired().await,
                    None => std::future::pending().await,
                }
            };
            let closed_fut = async {
                match closed {
                    Some(c) => c.fired().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = closed_fut => Err(Error::new(connector_result::CONNECTOR_ERR_CLOSED, "the handle was freed or shut down")),
                _ = cancelled_fut => Err(cancelled()),
                out = work => out,
                _ = deadline => Err(Error::new(
                    connector_result::CONNECTOR_ERR_TIMED_OUT,
                    format!("timed out after {:?}", Duration::from_micros(timeout_us)),
                )),
            }
        })
    }
}

fn cancelled() -> Error {
    Error::new(connector_result::CONNECTOR_ERR_CANCELLED, "cancelled")
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Dropped from inside a runtime (should not happen): cannot block here.
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(SHUTDOWN_GRACE);
            }
        }
    }
}
