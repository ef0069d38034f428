//! The tokio runtime a server or agent owns, and how blocking C calls wait
//! on it with a timeout and a cancel handle.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::cancel::connector_cancel;
use crate::connector_result;
use crate::error::Error;

/// Blocks `SIGPIPE` on the calling thread (each of the runtime's threads).
/// A write to a socket whose peer has gone raises `SIGPIPE` on the writing
/// thread, and a host process may leave it at its default action, which
/// ends the process: a Go program does so for signals on threads it did not
/// create. Blocked, the signal stays pending on that thread and the write
/// just fails with `EPIPE`, which the library handles like any broken
/// connection. connector-core's own socket writes already pass
/// `MSG_NOSIGNAL` (connector-core's `no_sigpipe`); this covers any write it
/// does not control, since here one is enough to end the host.
fn block_sigpipe() {
    // SAFETY: plain libc calls on a local, initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// A runtime shut down (worker threads joined) when the last owner lets go.
pub(crate) struct OwnedRuntime(Option<tokio::runtime::Runtime>);

/// How long dropping a runtime waits for its threads (a C callback that
/// never returns would otherwise hang the free call).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl OwnedRuntime {
    pub(crate) fn new(worker_threads: usize) -> Result<Arc<Self>, Error> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .enable_all()
            .thread_name("connector")
            .on_thread_start(block_sigpipe);
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::task::Poll;

    use super::*;

    /// Whether `SIGPIPE` is blocked on the calling thread.
    fn sigpipe_blocked() -> bool {
        // SAFETY: reads the calling thread's mask into a local set.
        unsafe {
            let mut current: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut current);
            libc::sigismember(&current, libc::SIGPIPE) == 1
        }
    }

    #[test]
    fn the_runtimes_threads_block_sigpipe() {
        let rt = OwnedRuntime::new(2).unwrap();
        assert!(!sigpipe_blocked(), "the test thread itself is untouched");
        let on_workers = rt.handle().block_on(async {
            let mut checks = Vec::new();
            for _ in 0..8 {
                checks.push(tokio::spawn(async { sigpipe_blocked() }));
            }
            let blocking = tokio::task::spawn_blocking(sigpipe_blocked).await.unwrap();
            let mut all = blocking;
            for check in checks {
                all &= check.await.unwrap();
            }
            all
        });
        assert!(on_workers, "a worker or blocking-pool thread has SIGPIPE unblocked");
    }

    /// A work future that reports on `polled` when first polled (the call is
    /// then inside `block`, waiting) and never completes.
    fn stuck(polled: mpsc::Sender<()>) -> impl Future<Output = Result<(), Error>> {
        let mut polled = Some(polled);
        std::future::poll_fn(move |_| {
            if let Some(tx) = polled.take() {
                let _ = tx.send(());
            }
            Poll::Pending
        })
    }

    /// Generous bound that only catches a hang (a call that never ends).
    const HANG_GUARD: Duration = Duration::from_secs(120);

    /// Runs `block` on another thread with `stuck` work; once the work is
    /// being polled (the call is in progress), runs `interrupt` on this
    /// thread; returns the call's outcome.
    fn interrupted(
        timeout_us: u64,
        cancel: &Arc<connector_cancel>,
        closed: &Arc<connector_cancel>,
        interrupt: impl FnOnce(),
    ) -> Result<(), Error> {
        let rt = OwnedRuntime::new(1).unwrap();
        let (polled_tx, polled) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let (c, k) = (cancel.clone(), closed.clone());
        std::thread::spawn(move || {
            let _ = done_tx.send(rt.block(timeout_us, Some(&c), Some(&k), stuck(polled_tx)));
        });
        polled.recv_timeout(HANG_GUARD).expect("the work is polled");
        interrupt();
        done.recv_timeout(HANG_GUARD).expect("the blocked call returns")
    }

    #[test]
    fn a_cancel_fired_from_another_thread_ends_a_call_in_progress() {
        let (cancel, closed) = (Arc::new(connector_cancel::new()), Arc::new(connector_cancel::new()));
        let err = interrupted(0, &cancel, &closed, || cancel.fire()).unwrap_err();
        assert_eq!(err.code, connector_result::CONNECTOR_ERR_CANCELLED, "{}", err.message);
    }

    #[test]
    fn closing_the_handle_from_another_thread_ends_a_call_in_progress() {
        // What `connector_*_free` does to calls pending on the handle.
        let (cancel, closed) = (Arc::new(connector_cancel::new()), Arc::new(connector_cancel::new()));
        let err = interrupted(0, &cancel, &closed, || closed.fire()).unwrap_err();
        assert_eq!(err.code, connector_result::CONNECTOR_ERR_CLOSED, "{}", err.message);
    }

    #[test]
    fn a_call_in_progress_times_out() {
        let (cancel, closed) = (Arc::new(connector_cancel::new()), Arc::new(connector_cancel::new()));
        let err = interrupted(1_000, &cancel, &closed, || {}).unwrap_err();
        assert_eq!(err.code, connector_result::CONNECTOR_ERR_TIMED_OUT, "{}", err.message);
        assert!(!cancel.is_fired() && !closed.is_fired());
    }

    #[test]
    fn a_cancel_fired_before_the_call_ends_it_without_running_the_work() {
        let rt = OwnedRuntime::new(1).unwrap();
        let cancel = connector_cancel::new();
        cancel.fire();
        let (tx, rx) = mpsc::channel();
        let err = rt.block(0, Some(&cancel), None, stuck(tx)).unwrap_err();
        assert_eq!(err.code, connector_result::CONNECTOR_ERR_CANCELLED);
        assert!(rx.try_recv().is_err(), "the work was never polled");
    }

    #[test]
    fn a_blocking_call_on_a_library_thread_is_refused() {
        let rt = OwnedRuntime::new(1).unwrap();
        let _entered = rt.handle().enter();
        let err = rt.block(0, None, None, async { Ok(()) }).unwrap_err();
        assert_eq!(err.code, connector_result::CONNECTOR_ERR_WRONG_THREAD);
    }
}
