//! Handle registries: a handle given to C is a number disguised as a
//! pointer, looked up here on every call and never dereferenced. A null,
//! freed or wrong-kind handle is therefore an error code, and freeing a
//! handle while another thread is inside a call on it is safe: the call holds
//! its own reference until it returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, connector_result, fill_out};

/// Handle numbers are unique across all kinds and never reused.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0x1000);

/// The live handles of one kind.
pub(crate) struct Registry<T> {
    kind: &'static str,
    live: Mutex<BTreeMap<usize, Arc<T>>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new(kind: &'static str) -> Self {
        Self {
            kind,
            live: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, Arc<T>>> {
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `value` and returns its handle.
    pub(crate) fn insert(&self, value: Arc<T>) -> *mut T {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, value);
        id as *mut T
    }

    /// Builds an object with `make` and registers it, its handle going to
    /// the out-parameter `out` (checked before `make` runs).
    pub(crate) fn insert_out(&self, out: *mut *mut T, make: impl FnOnce() -> Result<T, Error>) -> Result<(), Error> {
        fill_out(out, "out", || make().map(|value| self.insert(Arc::new(value))))
    }

    /// The object behind a handle.
    pub(crate) fn get(&self, handle: *const T) -> Result<Arc<T>, Error> {
        if handle.is_null() {
            return Err(self.invalid("null"));
        }
        self.lock()
            .get(&(handle as usize))
            .cloned()
            .ok_or_else(|| self.invalid("freed or not a"))
    }

    /// Unregisters a handle; the object lives on until in-flight calls end.
    pub(crate) fn remove(&self, handle: *const T) -> Result<Arc<T>, Error> {
        if handle.is_null() {
            return Err(self.invalid("null"));
        }
        self.lock()
            .remove(&(handle as usize))
            .ok_or_else(|| self.invalid("freed or not a"))
    }

    fn invalid(&self, what: &str) -> Error {
        Error::new(
            connector_result::CONNECTOR_ERR_INVALID_HANDLE,
            format!("{what} {} handle", self.kind),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_null_and_foreign_handles_are_errors() {
        static A: Registry<u32> = Registry::new("a");
        static B: Registry<u32> = Registry::new("b");
        let h = A.insert(Arc::new(7));
        assert_eq!(*A.get(h).unwrap(), 7);
        let foreign = B.get(h).unwrap_err();
        assert_eq!(foreign.code, connector_result::CONNECTOR_ERR_INVALID_HANDLE);
        assert_eq!(foreign.message, "freed or not a b handle");
        let held = A.get(h).unwrap();
        A.remove(h).unwrap();
        assert_eq!(*held, 7, "in-flight users keep the object alive");
        assert!(A.get(h).is_err());
        assert!(A.remove(h).is_err());
        assert_eq!(A.get(std::ptr::null()).unwrap_err().message, "null a handle");
        let next = A.insert(Arc::new(8));
        assert_ne!(next, h, "handles are never reused");
    }
}
