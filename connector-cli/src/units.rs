//! Human-friendly durations (`500ms`, `5s`, `2m`) and sizes (`64MiB`) for
//! the flags that are not settings of the schema: the schema's own parsers.

pub use connector_core::settings::{parse_duration, parse_size};
