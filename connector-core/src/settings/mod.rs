//! The settings of a server and an agent, written once: [`ServerSettings`]
//! and [`AgentSettings`]. Every front door fills them through the same path:
//! the `connector` binary's flags, environment variables and TOML file, the
//! C ABI's `connector_*_config_set(key, value)`, and the Python keyword
//! arguments. Each setting is one field with one doc comment, which is its
//! help text everywhere; [`Schema::FIELDS`] lists them (name, help, kind) for
//! the front doors that build their own interface from it (clap arguments,
//! the docs' settings reference, the binding tests).
//!
//! A value always has one text form (`30s`, `10000`, `off`, `10.0.0.0/8`),
//! the one a flag takes; lists are several values (a TOML array, a repeated
//! flag) or one text with commas. [`Schema::set`] parses a value and checks
//! its range at once; [`ServerSettings::validate`] and
//! [`AgentSettings::validate`] also check the rules between fields, and
//! `into_setup` reads the files the settings name and assembles a
//! [`ServerSetup`](crate::setup::ServerSetup) or
//! [`AgentSetup`](crate::setup::AgentSetup), which stay the runtime
//! assembly for what is not data (a user's authenticator or credential
//! source, PEM material held in memory).
//!
//! Why a small declarative macro (`settings_schema!`) rather than
//! `serde(derive)` plus `schemars`: the front doors need a field table at
//! run time (name, help, kind) and a by-name setter taking the text form,
//! which neither derive gives; the macro emits the struct, its `Default`,
//! that table, the setter, and a `Deserialize` that goes through the same
//! setter (so TOML and JSON refuse unknown keys, take `max-agents` or
//! `max_agents`, and parse values exactly as a flag does).
//!
//! ```
//! use connector_core::settings::{AgentSettings, Schema};
//!
//! let mut settings = AgentSettings::default();
//! settings.set("server", "connector.example:8443").unwrap();
//! settings.set("max-connections", "500").unwrap();
//! assert!(settings.set("max-connections", "0").is_err()); // out of range
//! assert!(settings.set("max-conections", "5").is_err()); // unknown
//! assert_eq!(settings.max_connections, 500);
//! ```

mod agent;
mod server;
pub mod value;

pub use agent::AgentSettings;
pub use server::ServerSettings;
pub use value::{Items, SettingsMap, Value, parse_duration, parse_size};

/// What kind of value a setting takes; front doors use it for value names
/// and to tell lists from single values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text or one of a few words.
    Text,
    /// A whole number.
    Number,
    /// A duration: `500ms`, `5s`, `2m`, `1h` (a bare number is seconds).
    Duration,
    /// A file path.
    Path,
    /// An address: `IP:PORT` or `host:port`.
    Address,
    /// Several values: a TOML array, a repeated flag, or commas.
    List,
}

impl Kind {
    /// The placeholder for the value in help texts.
    pub fn value_name(self) -> &'static str {
        match self {
            Kind::Text => "TEXT",
            Kind::Number => "N",
            Kind::Duration => "DURATION",
            Kind::Path => "FILE",
            Kind::Address => "ADDR",
            Kind::List => "VALUE",
        }
    }
}

/// One setting, as the front doors see it.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The field's Rust name (`max_agents`).
    pub key: &'static str,
    /// Its doc comment, one line per source line.
    pub doc: &'static str,
    /// What it takes.
    pub kind: Kind,
}

impl Field {
    /// The setting's name: flag, TOML key and C key (`max-agents`).
    pub fn name(&self) -> String {
        self.key.replace('_', "-")
    }

    /// The environment variable of the `connector` binary (`CONNECTOR_MAX_AGENTS`).
    pub fn env(&self) -> String {
        format!("CONNECTOR_{}", self.key.to_ascii_uppercase())
    }

    /// The doc comment as one paragraph.
    pub fn help(&self) -> String {
        self.doc
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A value `T` accepts for this field, for the front doors' tests: the
    /// default's text, or else one of its kind.
    #[doc(hidden)]
    pub fn sample<T: Schema>(&self) -> String {
        let default = T::default().text(self.key).unwrap_or_default();
        let of_kind = match self.kind {
            Kind::Path => "/nonexistent/connector-sample",
            Kind::Number => "1",
            Kind::Duration => "1s",
            Kind::Text | Kind::Address | Kind::List => "localhost:1",
        };
        // Then a plain word and a namespaced name, for the Kubernetes settings.
        [
            default.as_str(),
            of_kind,
            "host=localhost",
            "connector",
            "connector/agent",
        ]
        .into_iter()
        .find(|text| !text.is_empty() && T::default().set(self.key, text).is_ok())
        .unwrap_or_default()
        .to_owned()
    }
}

/// Why a setting was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// No setting has this name.
    #[error("unknown setting {0:?}")]
    Unknown(String),
    /// A value that does not parse, is out of range, or breaks a rule
    /// between settings (`key` names the setting to change).
    #[error("{key}: {reason}")]
    Invalid {
        /// The setting (`max-connections`).
        key: String,
        /// What is wrong, with the value when it is not secret.
        reason: String,
    },
    /// A setting needed to start is not set.
    #[error("{key} is not set: {reason}")]
    Missing {
        /// The setting.
        key: String,
        /// What it is for.
        reason: String,
    },
    /// A file a setting names cannot be used.
    #[error("{key}: {source}")]
    File {
        /// The setting naming the file.
        key: String,
        /// Why the file cannot be used (it names the file).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SettingsError {
    /// The setting the error is about (`None` for an unknown one).
    pub fn key(&self) -> Option<&str> {
        match self {
            SettingsError::Unknown(_) => None,
            SettingsError::Invalid { key, .. }
            | SettingsError::Missing { key, .. }
            | SettingsError::File { key, .. } => Some(key),
        }
    }

    pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> Self {
        SettingsError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn file(key: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        SettingsError::File {
            key: key.to_owned(),
            source: Box::new(source),
        }
    }
}

/// A settings struct: its field table and the by-name setter every front
/// door uses. Implemented by `settings_schema!`.
pub trait Schema: Default + Sized {
    /// Every setting, in order.
    const FIELDS: &'static [Field];

    /// Sets `key` (`max-agents` or `max_agents`) from one value or, for a
    /// list, several; checks the value's range.
    fn set_items(&mut self, key: &str, items: &[&str]) -> Result<(), SettingsError>;

    /// Adds one value (or several, with commas) to a list setting.
    fn push(&mut self, key: &str, text: &str) -> Result<(), SettingsError>;

    /// The current value of `key` in its text form (a list joined by commas).
    fn text(&self, key: &str) -> Result<String, SettingsError>;

    /// Sets `key` from its text form (a list: values separated by commas).
    fn set(&mut self, key: &str, text: &str) -> Result<(), SettingsError> {
        self.set_items(key, &[text])
    }

    /// The field `key` names (with `-` or `_`).
    fn field(key: &str) -> Result<&'static Field, SettingsError> {
        let wanted = key.trim().replace('-', "_");
        Self::FIELDS
            .iter()
            .find(|f| f.key == wanted)
            .ok_or_else(|| SettingsError::Unknown(key.to_owned()))
    }

    /// Sets every entry of `map` (a TOML table, a JSON object).
    fn merge(&mut self, map: SettingsMap) -> Result<(), SettingsError> {
        for (key, items) in map {
            let items: Vec<&str> = items.0.iter().map(String::as_str).collect();
            self.set_items(&key, &items)?;
        }
        Ok(())
    }
}

/// Emits a settings struct: the fields with their docs and defaults, and
/// its [`Schema`] and `Deserialize` implementations. The struct must have an
/// inherent `fn check_field(&self, key: &str) -> Result<(), SettingsError>`
/// (the ranges) that its `validate` also calls.
macro_rules! settings_schema {
    (
        $(#[doc = $struct_doc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                pub $field:ident : $ty:ty = $default:expr,
            )+
        }
    ) => {
        $(#[doc = $struct_doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            $( $(#[doc = $doc])+ pub $field: $ty, )+
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )+ }
            }
        }

        impl $crate::settings::Schema for $name {
            const FIELDS: &'static [$crate::settings::Field] = &[
                $( $crate::settings::Field {
                    key: stringify!($field),
                    doc: concat!($($doc, "\n"),+),
                    kind: <$ty as $crate::settings::Value>::KIND,
                }, )+
            ];

            fn set_items(&mut self, key: &str, items: &[&str]) -> Result<(), $crate::settings::SettingsError> {
                let field = Self::field(key)?;
                let invalid = |reason| $crate::settings::SettingsError::Invalid { key: field.name(), reason };
                match field.key {
                    $( stringify!($field) => {
                        let value = <$ty as $crate::settings::Value>::from_items(items).map_err(invalid)?;
                        let old = std::mem::replace(&mut self.$field, value);
                        // A value out of range leaves the setting as it was.
                        self.check_field(field.key).inspect_err(|_| self.$field = old)
                    } )+
                    _ => unreachable!("every field is matched"),
                }
            }

            fn push(&mut self, key: &str, text: &str) -> Result<(), $crate::settings::SettingsError> {
                let field = Self::field(key)?;
                let invalid = |reason| $crate::settings::SettingsError::Invalid { key: field.name(), reason };
                match field.key {
                    $( stringify!($field) => {
                        let mut value = self.$field.clone();
                        <$ty as $crate::settings::Value>::push(&mut value, text).map_err(invalid)?;
                        let old = std::mem::replace(&mut self.$field, value);
                        self.check_field(field.key).inspect_err(|_| self.$field = old)
                    } )+
                    _ => unreachable!("every field is matched"),
                }
            }

            fn text(&self, key: &str) -> Result<String, $crate::settings::SettingsError> {
                let field = Self::field(key)?;
                Ok(match field.key {
                    $( stringify!($field) => <$ty as $crate::settings::Value>::to_text(&self.$field), )+
                    _ => unreachable!("every field is matched"),
                })
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let map = <$crate::settings::SettingsMap as serde::Deserialize>::deserialize(deserializer)?;
                let mut settings = Self::default();
                $crate::settings::Schema::merge(&mut settings, map).map_err(serde::de::Error::custom)?;
                Ok(settings)
            }
        }
    };
}
pub(crate) use settings_schema;

/// Checks that `value` is within `range`, naming `key` otherwise.
/// `max-udp-payload`, the same bound for a server and an agent.
pub(crate) fn check_udp_payload(value: u16) -> Result<(), SettingsError> {
    use crate::transport::quic::{MAX_UDP_PAYLOAD, MIN_UDP_PAYLOAD};
    check_range("max-udp-payload", value, MIN_UDP_PAYLOAD..=MAX_UDP_PAYLOAD)
}

pub(crate) fn check_range<T>(key: &str, value: T, range: std::ops::RangeInclusive<T>) -> Result<(), SettingsError>
where
    T: PartialOrd + std::fmt::Display,
{
    if range.contains(&value) {
        return Ok(());
    }
    Err(SettingsError::invalid(
        key,
        format!("must be from {} to {}, not {value}", range.start(), range.end()),
    ))
}

#[cfg(test)]
mod tests;
