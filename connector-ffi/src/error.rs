//! Result codes, error messages and the panic guard every entry point runs under.

use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use connector_core::DialError;
use connector_core::proto::DialCode;

/// The outcome of a call. `CONNECTOR_OK` is 0; every other value is an error
/// whose details are in the call's `error` out-parameter.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum connector_result {
    /// Success.
    CONNECTOR_OK = 0,
    /// An argument is null, not UTF-8, or malformed (a bad address, PEM, rule...).
    CONNECTOR_ERR_INVALID_ARGUMENT = 1,
    /// A handle is null, already freed, or of the wrong kind.
    CONNECTOR_ERR_INVALID_HANDLE = 2,
    /// The call's timeout passed.
    CONNECTOR_ERR_TIMED_OUT = 3,
    /// The call's cancel handle was fired.
    CONNECTOR_ERR_CANCELLED = 4,
    /// The stream (or server) was freed or shut down while the call was pending.
    CONNECTOR_ERR_CLOSED = 5,
    /// No connected agent matches the selector.
    CONNECTOR_ERR_NO_AGENT = 6,
    /// The target refused the connection.
    CONNECTOR_ERR_REFUSED = 7,
    /// The target is unreachable from the agent (or the agent connection failed).
    CONNECTOR_ERR_UNREACHABLE = 8,
    /// The target's name did not resolve on the agent's side.
    CONNECTOR_ERR_DNS = 9,
    /// The agent's destination policy forbids the target.
    CONNECTOR_ERR_DENIED = 10,
    /// The agent (or server) is at its limit.
    CONNECTOR_ERR_OVERLOADED = 11,
    /// The target is not `host:port`.
    CONNECTOR_ERR_INVALID_TARGET = 12,
    /// The agent broke the protocol or failed internally.
    CONNECTOR_ERR_INTERNAL = 13,
    /// An I/O error on a stream (for example a reset by the target).
    CONNECTOR_ERR_IO = 14,
    /// A server, agent or frontend could not start (TLS material, bind, auth settings).
    CONNECTOR_ERR_SETUP = 15,
    /// The server refused the agent (authentication, identifiers).
    CONNECTOR_ERR_REJECTED = 16,
    /// A panic inside the library was caught; the handle involved may be unusable.
    CONNECTOR_ERR_PANIC = 17,
    /// The call is not allowed on this thread (a library thread, e.g. inside the auth callback).
    CONNECTOR_ERR_WRONG_THREAD = 18,
}

/// An error with its code and message.
#[derive(Debug, Clone)]
pub(crate) struct Error {
    pub(crate) code: connector_result,
    pub(crate) message: String,
}

impl Error {
    pub(crate) fn new(code: connector_result, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(connector_result::CONNECTOR_ERR_INVALID_ARGUMENT, message)
    }

    pub(crate) fn setup(message: impl std::fmt::Display) -> Self {
        Self::new(connector_result::CONNECTOR_ERR_SETUP, message.to_string())
    }

    pub(crate) fn io(err: &std::io::Error) -> Self {
        Self::new(connector_result::CONNECTOR_ERR_IO, err.to_string())
    }
}

impl From<DialError> for Error {
    fn from(err: DialError) -> Self {
        use connector_result::*;
        let code = match (&err, err.code()) {
            (DialError::NoAgent(_), _) => CONNECTOR_ERR_NO_AGENT,
            (DialError::ShuttingDown, _) => CONNECTOR_ERR_CLOSED,
            (_, DialCode::Refused) => CONNECTOR_ERR_REFUSED,
            (_, DialCode::Unreachable) => CONNECTOR_ERR_UNREACHABLE,
            (_, DialCode::TimedOut) => CONNECTOR_ERR_TIMED_OUT,
            (_, DialCode::DnsFailure) => CONNECTOR_ERR_DNS,
            (_, DialCode::DeniedByPolicy) => CONNECTOR_ERR_DENIED,
            (_, DialCode::Overloaded) => CONNECTOR_ERR_OVERLOADED,
            (_, DialCode::InvalidTarget) => CONNECTOR_ERR_INVALID_TARGET,
            _ => CONNECTOR_ERR_INTERNAL,
        };
        Error::new(code, err.to_string())
    }
}

/// Runs one entry point: clears `*error`, catches panics, and turns an
/// `Err` into its code plus a message in `*error`.
pub(crate) fn guard(error: *mut *mut c_char, body: impl FnOnce() -> Result<(), Error>) -> connector_result {
    if !error.is_null() {
        // SAFETY: the caller passes either null or a writable `char *` slot.
        unsafe { *error = std::ptr::null_mut() };
    }
    let outcome = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::new(
                connector_result::CONNECTOR_ERR_PANIC,
                format!("internal error (panic): {what}"),
            ))
        }
    };
    match outcome {
        Ok(()) => connector_result::CONNECTOR_OK,
        Err(err) => {
            if !error.is_null() {
                // SAFETY: as above.
                unsafe { *error = to_c_string(&err.message) };
            }
            err.code
        }
    }
}

/// A heap C string for the caller (freed with [`connector_string_free`]);
/// interior NULs are replaced.
pub(crate) fn to_c_string(text: &str) -> *mut c_char {
    CString::new(text.replace('\0', "\u{FFFD}"))
        .expect("NULs replaced")
        .into_raw()
}

/// Frees a string the library handed out (an error message, an address).
/// Null is ignored.
///
/// # Safety
/// `text` must be null or a string from this library, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_string_free(text: *mut c_char) {
    if text.is_null() {
        return;
    }
    let _ = catch_unwind(|| {
        // SAFETY: per the contract, `text` came from `CString::into_raw`.
        drop(unsafe { CString::from_raw(text) });
    });
}

/// What [`connector_result_name`] returns for a value that is no result code.
const UNKNOWN_RESULT: &[u8] = b"(unknown connector_result)\0";

/// A static, NUL-terminated name for a result code (`"CONNECTOR_ERR_TIMED_OUT"`).
/// Any value may be passed: one that is no result code gives the static
/// string `"(unknown connector_result)"`, never null.
#[unsafe(no_mangle)]
pub extern "C" fn connector_result_name(result: u32) -> *const c_char {
    use connector_result::*;
    let Ok(result) = connector_result::try_from(result) else {
        return UNKNOWN_RESULT.as_ptr().cast();
    };
    let name: &'static [u8] = match result {
        CONNECTOR_OK => b"CONNECTOR_OK\0",
        CONNECTOR_ERR_INVALID_ARGUMENT => b"CONNECTOR_ERR_INVALID_ARGUMENT\0",
        CONNECTOR_ERR_INVALID_HANDLE => b"CONNECTOR_ERR_INVALID_HANDLE\0",
        CONNECTOR_ERR_TIMED_OUT => b"CONNECTOR_ERR_TIMED_OUT\0",
        CONNECTOR_ERR_CANCELLED => b"CONNECTOR_ERR_CANCELLED\0",
        CONNECTOR_ERR_CLOSED => b"CONNECTOR_ERR_CLOSED\0",
        CONNECTOR_ERR_NO_AGENT => b"CONNECTOR_ERR_NO_AGENT\0",
        CONNECTOR_ERR_REFUSED => b"CONNECTOR_ERR_REFUSED\0",
        CONNECTOR_ERR_UNREACHABLE => b"CONNECTOR_ERR_UNREACHABLE\0",
        CONNECTOR_ERR_DNS => b"CONNECTOR_ERR_DNS\0",
        CONNECTOR_ERR_DENIED => b"CONNECTOR_ERR_DENIED\0",
        CONNECTOR_ERR_OVERLOADED => b"CONNECTOR_ERR_OVERLOADED\0",
        CONNECTOR_ERR_INVALID_TARGET => b"CONNECTOR_ERR_INVALID_TARGET\0",
        CONNECTOR_ERR_INTERNAL => b"CONNECTOR_ERR_INTERNAL\0",
        CONNECTOR_ERR_IO => b"CONNECTOR_ERR_IO\0",
        CONNECTOR_ERR_SETUP => b"CONNECTOR_ERR_SETUP\0",
        CONNECTOR_ERR_REJECTED => b"CONNECTOR_ERR_REJECTED\0",
        CONNECTOR_ERR_PANIC => b"CONNECTOR_ERR_PANIC\0",
        CONNECTOR_ERR_WRONG_THREAD => b"CONNECTOR_ERR_WRONG_THREAD\0",
    };
    name.as_ptr().cast()
}

/// Every result code, at the index of its value (a new code goes last, in
/// the enum and here).
const ALL_RESULTS: [connector_result; 19] = {
    use connector_result::*;
    [
        CONNECTOR_OK,
        CONNECTOR_ERR_INVALID_ARGUMENT,
        CONNECTOR_ERR_INVALID_HANDLE,
        CONNECTOR_ERR_TIMED_OUT,
        CONNECTOR_ERR_CANCELLED,
        CONNECTOR_ERR_CLOSED,
        CONNECTOR_ERR_NO_AGENT,
        CONNECTOR_ERR_REFUSED,
        CONNECTOR_ERR_UNREACHABLE,
        CONNECTOR_ERR_DNS,
        CONNECTOR_ERR_DENIED,
        CONNECTOR_ERR_OVERLOADED,
        CONNECTOR_ERR_INVALID_TARGET,
        CONNECTOR_ERR_INTERNAL,
        CONNECTOR_ERR_IO,
        CONNECTOR_ERR_SETUP,
        CONNECTOR_ERR_REJECTED,
        CONNECTOR_ERR_PANIC,
        CONNECTOR_ERR_WRONG_THREAD,
    ]
};

impl TryFrom<u32> for connector_result {
    type Error = ();

    fn try_from(value: u32) -> Result<Self, ()> {
        usize::try_from(value)
            .ok()
            .and_then(|i| ALL_RESULTS.get(i))
            .copied()
            .ok_or(())
    }
}

/// Reads a C enum argument. The C ABI takes enums as `uint32_t`: C lets a
/// caller pass any integer where an enum is declared, and such a value in a
/// Rust enum would be undefined behaviour (a `match` on it jumps anywhere).
/// A value that is no variant is `CONNECTOR_ERR_INVALID_ARGUMENT`.
pub(crate) fn arg_enum<T: TryFrom<u32>>(value: u32, what: &str) -> Result<T, Error> {
    T::try_from(value).map_err(|_| {
        Error::invalid(format!(
            "{what} {value} is not a {} value",
            std::any::type_name::<T>().rsplit("::").next().unwrap_or("valid")
        ))
    })
}

/// Reads a required C string argument.
pub(crate) fn arg_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Error> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{what} is null")));
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives the call.
    unsafe { std::ffi::CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Error::invalid(format!("{what} is not UTF-8")))
}

/// Reads an optional C string argument (null: `None`).
pub(crate) fn arg_opt_str<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>, Error> {
    if ptr.is_null() {
        Ok(None)
    } else {
        arg_str(ptr, what).map(Some)
    }
}

/// Reads a byte buffer argument (null with length 0 is an empty buffer).
pub(crate) fn arg_bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Error::invalid(format!("{what} is null but its length is {len}")));
    }
    // SAFETY: the caller passes `len` readable bytes that outlive the call.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Writes an out-parameter, failing on null.
pub(crate) fn write_out<T>(out: *mut T, value: T, what: &str) -> Result<(), Error> {
    if out.is_null() {
        return Err(Error::invalid(format!("{what} is null")));
    }
    // SAFETY: the caller passes a writable `T` slot.
    unsafe { out.write(value) };
    Ok(())
}

/// Checks that an out-parameter is non-null before doing any work.
pub(crate) fn check_out<T>(out: *mut T, what: &str) -> Result<(), Error> {
    if out.is_null() {
        Err(Error::invalid(format!("{what} is null")))
    } else {
        Ok(())
    }
}

/// Fills the out-parameter `out` with what `make` returns. `out` is checked
/// first, so that a null one is reported before any work is done.
pub(crate) fn fill_out<T>(out: *mut T, what: &str, make: impl FnOnce() -> Result<T, Error>) -> Result<(), Error> {
    check_out(out, what)?;
    let value = make()?;
    write_out(out, value, what)
}

/// [`fill_out`] for the usual `char **out`: a string for the caller (freed
/// with [`connector_string_free`]).
pub(crate) fn fill_string_out(
    out: *mut *mut c_char,
    make: impl FnOnce() -> Result<String, Error>,
) -> Result<(), Error> {
    fill_out(out, "out", || make().map(|text| to_c_string(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(message: *mut c_char) -> String {
        assert!(!message.is_null());
        // SAFETY: from `to_c_string`.
        let text = unsafe { std::ffi::CStr::from_ptr(message) }
            .to_str()
            .unwrap()
            .to_owned();
        unsafe { connector_string_free(message) };
        text
    }

    #[test]
    fn a_panic_becomes_an_error_code_with_a_message() {
        let mut message = std::ptr::null_mut();
        let result = guard(&mut message, || panic!("boom"));
        assert_eq!(result, connector_result::CONNECTOR_ERR_PANIC);
        assert!(take(message).contains("boom"));
    }

    #[test]
    fn errors_carry_their_message_and_success_clears_it() {
        let mut message = to_c_string("stale");
        let stale = message;
        assert_eq!(guard(&mut message, || Ok(())), connector_result::CONNECTOR_OK);
        assert!(message.is_null());
        take(stale);
        let result = guard(&mut message, || Err(Error::invalid("bad\0input")));
        assert_eq!(result, connector_result::CONNECTOR_ERR_INVALID_ARGUMENT);
        assert_eq!(take(message), "bad\u{FFFD}input");
        // A null error slot is allowed.
        let result = guard(std::ptr::null_mut(), || Err(Error::invalid("x")));
        assert_eq!(result, connector_result::CONNECTOR_ERR_INVALID_ARGUMENT);
    }

    #[test]
    fn every_code_has_a_name_and_converts_back() {
        for (value, code) in ALL_RESULTS.iter().enumerate() {
            let value = value as u32;
            assert_eq!(*code as u32, value, "ALL_RESULTS is in value order");
            assert_eq!(connector_result::try_from(value), Ok(*code));
            let name = unsafe { std::ffi::CStr::from_ptr(connector_result_name(value)) };
            assert_eq!(name.to_str().unwrap(), format!("{code:?}"));
        }
    }

    #[test]
    fn a_value_that_is_no_code_has_the_unknown_name() {
        for value in [19, 100, 1000, u32::MAX, -1i32 as u32] {
            let name = unsafe { std::ffi::CStr::from_ptr(connector_result_name(value)) };
            assert_eq!(name.to_str().unwrap(), "(unknown connector_result)");
            assert_eq!(connector_result::try_from(value), Err(()));
        }
    }

    #[test]
    fn an_enum_argument_out_of_range_is_an_invalid_argument() {
        let err = arg_enum::<connector_result>(19, "result").unwrap_err();
        assert_eq!(err.code, connector_result::CONNECTOR_ERR_INVALID_ARGUMENT);
        assert_eq!(err.message, "result 19 is not a connector_result value");
        assert_eq!(
            arg_enum::<connector_result>(5, "result").unwrap(),
            connector_result::CONNECTOR_ERR_CLOSED
        );
    }
}
