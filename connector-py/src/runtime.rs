//! The process-wide tokio runtime, and how Python threads wait on it: with
//! the GIL released, a deadline, and Ctrl-C (pending signals are checked
//! every [`SIGNAL_CHECK`]).

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::errors::Failure;

/// How often a blocked call checks for Ctrl-C (Python runs signal handlers
/// only when the main thread runs Python code, so a blocked call must look).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Calls blocked in [`wait`] right now, and asyncio operations in flight.
static BUSY: OnceLock<(watch::Sender<usize>, watch::Sender<usize>)> = OnceLock::new();

/// Starts the runtime (once, at import).
pub fn init() -> PyResult<()> {
    if RUNTIME.get().is_some() {
        return Ok(());
    }
    let built = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("connector-rt")
        .build()
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start the tokio runtime: {e}")))?;
    let _ = RUNTIME.set(built);
    // Lets pyo3-async-runtimes run asyncio bridges on the same runtime.
    let _ = pyo3_async_runtimes::tokio::init_with_runtime(runtime());
    Ok(())
}

/// The runtime started by [`init`].
pub fn runtime() -> &'static Runtime {
    RUNTIME
        .get()
        .expect("the runtime is started when the module is imported")
}

fn busy() -> &'static (watch::Sender<usize>, watch::Sender<usize>) {
    BUSY.get_or_init(|| (watch::channel(0).0, watch::channel(0).0))
}

/// Counts one operation while alive: a blocked call (`blocking`) or an
/// asyncio operation. Dropping it (also when a future is cancelled) uncounts.
pub struct Busy(&'static watch::Sender<usize>);

impl Busy {
    /// A Python thread is blocked in a call.
    pub fn blocking() -> Self {
        Self::count(&busy().0)
    }

    /// An asyncio operation is in flight.
    pub fn asyncio() -> Self {
        Self::count(&busy().1)
    }

    fn count(counter: &'static watch::Sender<usize>) -> Self {
        counter.send_modify(|n| *n += 1);
        Busy(counter)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// `(blocked calls, asyncio operations)` right now.
pub fn busy_counts() -> (usize, usize) {
    let (blocking, asyncio) = busy();
    (*blocking.borrow(), *asyncio.borrow())
}

/// Waits until no asyncio operation is in flight and at most `blocked`
/// calls are blocked.
pub async fn until_idle(blocked: usize) {
    let (blocking, asyncio) = busy();
    let mut b = blocking.subscribe();
    let mut a = asyncio.subscribe();
    let _ = a.wait_for(|n| *n == 0).await;
    let _ = b.wait_for(|n| *n <= blocked).await;
}

/// Waits until at least `blocked` calls are blocked and `asyncio` asyncio
/// operations are in flight.
pub async fn until_busy(blocked: usize, asyncio: usize) {
    let (b, a) = busy();
    let mut b = b.subscribe();
    let mut a = a.subscribe();
    let _ = a.wait_for(|n| *n >= asyncio).await;
    let _ = b.wait_for(|n| *n >= blocked).await;
}

/// Runs `fut` to completion on the runtime from a Python thread: the GIL is
/// released meanwhile, `timeout` (if any) bounds it (`what` names the
/// operation in the error), and Ctrl-C interrupts it (the future is dropped
/// and `KeyboardInterrupt` raised).
pub fn wait<F, T>(py: Python<'_>, timeout: Option<Duration>, what: &str, fut: F) -> Result<T, Failure>
where
    F: Future<Output = Result<T, Failure>> + Send,
    T: Send,
{
    py.detach(|| {
        let _busy = Busy::blocking();
        block_on(async move {
            let deadline = async {
                match timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(fut, deadline);
            let mut tick = tokio::time::interval(SIGNAL_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    out = &mut fut => return out,
                    _ = &mut deadline => {
                        let after = timeout.unwrap_or_default();
                        return Err(Failure::Timeout(format!("{what} timed out after {after:?}")));
                    }
                    _ = tick.tick() => {
                        if let Some(Err(err)) = Python::try_attach(|py| py.check_signals()) {
                            return Err(Failure::Python(err));
                        }
                    }
                }
            }
        })
    })
}

/// Runs `fut` to completion on the runtime, from any thread: a thread of the
/// runtime itself (a Python authenticator runs on one) may not block on it,
/// so there a helper thread waits instead.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime().block_on(fut);
    }
    std::thread::scope(|scope| {
        let helper = scope.spawn(|| runtime().block_on(fut));
        match helper.join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Turns optional seconds from Python into a duration; negative, NaN or
/// infinite values are configuration errors.
pub fn seconds(name: &str, value: Option<f64>) -> Result<Option<Duration>, Failure> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| Failure::Config(format!("{name} must be a finite number of seconds >= 0, not {s}")))
        })
        .transpose()
}
