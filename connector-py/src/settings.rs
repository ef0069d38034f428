//! Keyword arguments into the settings schema (`connector_core::settings`):
//! `Server(...)` and `Agent(...)` pass theirs as a dict, each value set by
//! its name through the schema's setter, as a flag or a C key is.

use connector_core::settings::{AgentSettings, Schema, ServerSettings, SettingsError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::errors::Failure;

/// A refused setting as a `ConfigError`, naming it as Python does (`max_connections`).
pub fn config_error(err: SettingsError) -> Failure {
    let python = |key: &str| key.replace('-', "_");
    Failure::Config(match err {
        SettingsError::Invalid { key, reason } => format!("{}: {reason}", python(&key)),
        SettingsError::Missing { key, reason } => format!("{} is not set: {reason}", python(&key)),
        other => other.to_string(),
    })
}

/// The text of one value: a string, a number or a boolean.
fn scalar(name: &str, value: &Bound<'_, PyAny>) -> Result<String, Failure> {
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(text.to_string());
    }
    if let Ok(flag) = value.cast::<PyBool>() {
        return Ok(flag.is_true().to_string());
    }
    if value.is_instance_of::<PyInt>() {
        return Ok(value.str().map_err(Failure::Python)?.to_string());
    }
    if let Ok(number) = value.cast::<PyFloat>() {
        // Rust's notation: never an exponent, so a duration reads as seconds.
        return Ok(number.value().to_string());
    }
    let kind = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    Err(Failure::Config(format!(
        "{name} must be a string, a number or a list of them, not {kind}"
    )))
}

/// Sets every entry of `options` (keyword name → value; `None` keeps the default).
pub fn apply<T: Schema>(settings: &mut T, options: &Bound<'_, PyDict>) -> Result<(), Failure> {
    for (name, value) in options.iter() {
        if value.is_none() {
            continue;
        }
        let name: String = name.extract().map_err(Failure::Python)?;
        let items = if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
            value
                .try_iter()
                .map_err(Failure::Python)?
                .map(|item| scalar(&name, &item.map_err(Failure::Python)?))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![scalar(&name, &value)?]
        };
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        settings.set_items(&name, &items).map_err(config_error)?;
    }
    Ok(())
}

fn names<T: Schema>() -> Vec<String> {
    T::FIELDS.iter().map(|f| f.key.to_owned()).collect()
}

/// The server's settings, by their Python names (`max_agents`).
#[pyfunction]
pub fn server_settings() -> Vec<String> {
    names::<ServerSettings>()
}

/// The agent's settings, by their Python names (`max_connections`).
#[pyfunction]
pub fn agent_settings() -> Vec<String> {
    names::<AgentSettings>()
}
