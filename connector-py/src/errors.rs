//! Rust failures and the Python exceptions they become. The exception
//! classes live in `connector.errors` (Python, so that `TimeoutError` can
//! subclass both `ConnectorError` and the builtin); this module raises them.

use connector_core::DialError;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule};

/// Why an operation failed, before it becomes a Python exception (so that
/// it can be produced without the GIL).
#[derive(Debug)]
pub enum Failure {
    /// Bad settings or arguments (`ConfigError`).
    Config(String),
    /// A deadline passed (`TimeoutError`).
    Timeout(String),
    /// A dial failed (`DialError`, or `DialTimeoutError` for its timeouts).
    Dial(DialError),
    /// A transfer failed: reset, connection lost (`StreamError`).
    Stream(String),
    /// The object was closed (`ClosedError`).
    Closed(String),
    /// The server refused the agent (`AuthError`).
    Auth {
        /// The reject code's name.
        code: String,
        /// The server's reason.
        reason: String,
    },
    /// A listener could not be bound (`ListenError`, an `OSError` with the errno).
    Listen {
        /// The OS error number (`EADDRINUSE`, ...), when there is one.
        errno: Option<i32>,
        /// What failed, and why.
        message: String,
    },
    /// Already a Python exception (`KeyboardInterrupt` from a signal handler, ...).
    Python(PyErr),
}

impl Failure {
    /// A stream I/O error, with what was being done.
    pub fn io(doing: &str, err: std::io::Error) -> Self {
        Failure::Stream(format!("{doing} failed: {err}"))
    }
}

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let module = ERRORS.get_or_try_init(py, || py.import("connector.errors").map(Bound::unbind))?;
    module.bind(py).getattr(name)
}

fn raise(py: Python<'_>, name: &str, message: String, kwargs: Option<Bound<'_, PyDict>>) -> PyErr {
    match class(py, name).and_then(|cls| cls.call((message.clone(),), kwargs.as_ref())) {
        Ok(exc) => PyErr::from_value(exc),
        // `connector.errors` is missing (the extension imported on its own): still raise something clear.
        Err(_) => match name {
            "ConfigError" => PyValueError::new_err(message),
            _ => PyRuntimeError::new_err(message),
        },
    }
}

fn dial_error(py: Python<'_>, err: &DialError) -> PyErr {
    let (kind, agent, target): (&str, Option<&str>, Option<&str>) = match err {
        DialError::InvalidTarget { target, .. } => ("invalid_target", None, Some(target)),
        DialError::NoAgent(_) => ("no_agent", None, None),
        DialError::AgentBusy { agent, .. } => ("agent_busy", Some(agent), None),
        DialError::TooManyPendingDials { .. } => ("too_many_pending_dials", None, None),
        DialError::TimedOut { target, agent, .. } => ("timed_out", Some(agent), Some(target)),
        DialError::Failed { agent, target, .. } => ("failed", Some(agent), Some(target)),
        DialError::Transport { agent, .. } => ("transport", Some(agent), None),
        DialError::Protocol { agent, .. } => ("protocol", Some(agent), None),
        DialError::ShuttingDown => ("shutting_down", None, None),
        #[allow(unreachable_patterns)]
        _ => ("other", None, None),
    };
    let code = err.code();
    let name = if code == connector_core::proto::DialCode::TimedOut {
        "DialTimeoutError"
    } else {
        "DialError"
    };
    let kwargs = PyDict::new(py);
    let filled = kwargs
        .set_item("code", code.to_wire())
        .and_then(|_| kwargs.set_item("kind", kind))
        .and_then(|_| kwargs.set_item("agent", agent))
        .and_then(|_| kwargs.set_item("target", target));
    match filled {
        Ok(()) => raise(py, name, err.to_string(), Some(kwargs)),
        Err(e) => e,
    }
}

impl Failure {
    /// The Python exception for this failure.
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        match self {
            Failure::Config(m) => raise(py, "ConfigError", m, None),
            Failure::Timeout(m) => raise(py, "TimeoutError", m, None),
            Failure::Dial(err) => dial_error(py, &err),
            Failure::Stream(m) => raise(py, "StreamError", m, None),
            Failure::Closed(m) => raise(py, "ClosedError", m, None),
            Failure::Auth { code, reason } => {
                let kwargs = PyDict::new(py);
                match kwargs
                    .set_item("code", code.as_str())
                    .and_then(|_| kwargs.set_item("reason", reason.as_str()))
                {
                    Ok(()) => raise(
                        py,
                        "AuthError",
                        format!("the server rejected the agent: {reason} ({code})"),
                        Some(kwargs),
                    ),
                    Err(e) => e,
                }
            }
            // `OSError(errno, strerror)` sets both; without an errno, only the message.
            Failure::Listen { errno, message } => {
                let made = class(py, "ListenError").and_then(|cls| match errno {
                    Some(n) => cls.call1((n, message.clone())),
                    None => cls.call1((message.clone(),)),
                });
                match made {
                    Ok(exc) => PyErr::from_value(exc),
                    Err(_) => pyo3::exceptions::PyOSError::new_err(message),
                }
            }
            Failure::Python(err) => err,
        }
    }
}

impl From<Failure> for PyErr {
    fn from(failure: Failure) -> PyErr {
        Python::attach(|py| failure.into_pyerr(py))
    }
}

impl From<DialError> for Failure {
    fn from(err: DialError) -> Self {
        Failure::Dial(err)
    }
}

impl From<PyErr> for Failure {
    fn from(err: PyErr) -> Self {
        Failure::Python(err)
    }
}
