//! Rust `tracing` events forwarded to Python's `logging`.
//!
//! Events at or above the threshold set by `set_log_level` are formatted on
//! the thread that emits them (prefixed with their spans' fields, such as a
//! dial's request id) and queued; one forwarding thread hands them to
//! `logging.getLogger("connector.<module>")`. Runtime threads therefore never
//! wait for the GIL (which a Python thread may hold while it waits for them).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Records queued and not yet forwarded, at most; beyond, records are dropped (and counted).
const QUEUE: usize = 10_000;

/// The most verbose level forwarded: 0 nothing, 1 error ... 5 trace.
static THRESHOLD: AtomicU8 = AtomicU8::new(2);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUE_TX: OnceLock<SyncSender<Message>> = OnceLock::new();

struct Record {
    logger: String,
    level: u8,
    message: String,
}

enum Message {
    Record(Record),
    Flush(std::sync::mpsc::Sender<()>),
}

fn rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Python's number for a level (TRACE becomes 5, below DEBUG).
fn python_level(rank: u8) -> u8 {
    match rank {
        1 => 40,
        2 => 30,
        3 => 20,
        4 => 10,
        _ => 5,
    }
}

/// Sets the threshold from a Python logging level number.
pub fn set_level(python_level: i64) {
    let rank = match python_level {
        i64::MIN..=5 => 5,
        6..=10 => 4,
        11..=20 => 3,
        21..=30 => 2,
        31..=40 => 1,
        _ => 0,
    };
    THRESHOLD.store(rank, Ordering::Relaxed);
}

/// `connector_core::server::dial` → `connector.core.server.dial`; other crates
/// go below `connector.` under their own name.
fn logger_name(target: &str) -> String {
    let dotted = target.replace("::", ".");
    match dotted.strip_prefix("connector_core") {
        Some(rest) => format!("connector.core{rest}"),
        None => format!("connector.{dotted}"),
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={:?}", field.name(), value);
        }
    }
}

/// A span's fields, formatted once when it is created (`name{a=1 b=2}`).
struct SpanFields(String);

struct PythonLogging;

impl<S> Layer<S> for PythonLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, _meta: &'static Metadata<'static>) -> Interest {
        // The threshold can change at any time: ask `enabled` every time.
        Interest::sometimes()
    }

    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        rank(meta.level()) <= THRESHOLD.load(Ordering::Relaxed)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let text = format!("{}{{{}}}", span.name(), fields.rest.trim_start());
        span.extensions_mut().insert(SpanFields(text));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(tx) = QUEUE_TX.get() else { return };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        // The enclosing spans' fields (a dial's request id, agent, target) come first.
        let mut message = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(text)) = span.extensions().get::<SpanFields>() {
                    message.push_str(text);
                    message.push_str(": ");
                }
            }
        }
        message.push_str(&fields.message);
        message.push_str(&fields.rest);
        let record = Record {
            logger: logger_name(meta.target()),
            level: python_level(rank(meta.level())),
            message,
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(Message::Record(record)) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Installs the forwarding (once, at import). Leaves an already installed
/// global subscriber alone.
pub fn init() -> PyResult<()> {
    if QUEUE_TX.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("connector-log".into())
        .spawn(move || forward(rx))
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start the log thread: {e}")))?;
    let _ = QUEUE_TX.set(tx);
    let subscriber = tracing_subscriber::registry().with(PythonLogging);
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(())
}

fn forward(rx: Receiver<Message>) {
    let mut loggers: HashMap<String, Py<PyAny>> = HashMap::new();
    for message in rx {
        match message {
            Message::Record(record) => {
                let _ = Python::try_attach(|py| emit(py, &mut loggers, record));
            }
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn emit(py: Python<'_>, loggers: &mut HashMap<String, Py<PyAny>>, record: Record) {
    let logger = match loggers.get(&record.logger) {
        Some(logger) => logger.bind(py).clone(),
        None => match py
            .import("logging")
            .and_then(|logging| logging.call_method1("getLogger", (record.logger.as_str(),)))
        {
            Ok(logger) => {
                loggers.insert(record.logger.clone(), logger.clone().unbind());
                logger
            }
            Err(_) => return,
        },
    };
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let _ = logger.call_method1("warning", (format!("{dropped} log records were dropped (queue full)"),));
    }
    // `%s` keeps a message containing `%` intact.
    if let Err(err) = logger.call_method1("log", (record.level, "%s", record.message)) {
        err.print(py);
    }
}

/// Waits until every record queued so far has been handed to `logging`.
pub fn flush(py: Python<'_>) {
    let Some(tx) = QUEUE_TX.get() else { return };
    // Detached before queueing: a full queue drains only with the GIL free.
    py.detach(|| {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if tx.send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
        }
    });
}
