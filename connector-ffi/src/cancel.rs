//! [`connector_cancel`]: lets one thread abort another thread's blocking call.

use std::ffi::c_char;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::connector_result;
use crate::error::{Error, guard};
use crate::handle::Registry;

/// A cancellation flag. Pass it to blocking calls; [`connector_cancel_fire`]
/// from any thread makes every call waiting on it return
/// `CONNECTOR_ERR_CANCELLED`, and so will calls started later, until
/// [`connector_cancel_reset`].
pub struct connector_cancel {
    fired: AtomicBool,
    notify: Notify,
}

impl connector_cancel {
    pub(crate) fn new() -> Self {
        Self {
            fired: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Resolves once fired.
    pub(crate) async fn fired(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_fired() {
                return;
            }
            notified.await;
        }
    }
}

pub(crate) static CANCELS: Registry<connector_cancel> = Registry::new("cancel");

/// Looks up an optional cancel handle (null: none).
pub(crate) fn optional(cancel: *const connector_cancel) -> Result<Option<Arc<connector_cancel>>, Error> {
    if cancel.is_null() {
        Ok(None)
    } else {
        CANCELS.get(cancel).map(Some)
    }
}

/// Looks up the handle a blocking call is made on, then its optional cancel
/// handle.
pub(crate) fn with_handle<T>(
    registry: &Registry<T>,
    handle: *const T,
    cancel: *const connector_cancel,
) -> Result<(Arc<T>, Option<Arc<connector_cancel>>), Error> {
    let handle = registry.get(handle)?;
    Ok((handle, optional(cancel)?))
}

/// Creates a cancel handle in `*out`.
///
/// # Safety
/// `out` must be writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_cancel_new(
    out: *mut *mut connector_cancel,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || CANCELS.insert_out(out, || Ok(connector_cancel::new())))
}

/// Fires the handle: pending and later calls using it return `CONNECTOR_ERR_CANCELLED`.
/// Safe to call from any thread, also concurrently with a free (it then
/// returns `CONNECTOR_ERR_INVALID_HANDLE`).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_cancel_fire(
    cancel: *const connector_cancel,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        CANCELS.get(cancel)?.fire();
        Ok(())
    })
}

/// Clears a fired handle so it can be used again.
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_cancel_reset(
    cancel: *const connector_cancel,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        CANCELS.get(cancel)?.fired.store(false, Ordering::SeqCst);
        Ok(())
    })
}

/// Frees a cancel handle (calls still waiting on it keep working).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_cancel_free(
    cancel: *mut connector_cancel,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || CANCELS.remove(cancel).map(drop))
}
