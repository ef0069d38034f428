//! The text form of each kind of setting value, and the values of a TOML
//! table or JSON object as text ([`Items`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::Kind;
use crate::Identifiers;
use crate::agent::Rule;
use crate::auth::{ServiceAccount, UnboundTokens};
use crate::kubernetes::Label;
use crate::server::ProxyStrategy;
use crate::setup::{ClientCertificates, TcpListen};
use crate::transport::congestion::CongestionControl;
use crate::transport::fallback::TransportMode;
use crate::transport::qmux::proxy::ProxyChoice;

/// A setting's type: parsed from, and shown as, the text a flag takes.
pub trait Value: Sized {
    /// What kind of value it is.
    const KIND: Kind;

    /// Parses one value; the error says what is wrong, with the text unless it is secret.
    fn parse(text: &str) -> Result<Self, String>;

    /// The value as text.
    fn to_text(&self) -> String;

    /// Parses several values: exactly one, except for lists.
    fn from_items(items: &[&str]) -> Result<Self, String> {
        match items {
            [one] => Self::parse(one),
            _ => Err(format!("takes one value, not {}", items.len())),
        }
    }

    /// Adds a value: replaces it, except for lists.
    fn push(&mut self, text: &str) -> Result<(), String> {
        *self = Self::parse(text)?;
        Ok(())
    }

    /// Whether `text` means "not set" for an optional setting of this type
    /// (empty; durations also take `off` and `0`).
    fn means_none(text: &str) -> bool {
        text.trim().is_empty()
    }

    /// The text of "not set".
    fn none_text() -> &'static str {
        ""
    }
}

impl<T: Value> Value for Option<T> {
    const KIND: Kind = T::KIND;

    fn parse(text: &str) -> Result<Self, String> {
        if T::means_none(text) {
            return Ok(None);
        }
        T::parse(text).map(Some)
    }

    fn to_text(&self) -> String {
        match self {
            Some(value) => value.to_text(),
            None => T::none_text().to_owned(),
        }
    }
}

impl<T: Value> Value for Vec<T> {
    const KIND: Kind = Kind::List;

    /// Values separated by commas.
    fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(T::parse)
            .collect()
    }

    fn to_text(&self) -> String {
        self.iter().map(Value::to_text).collect::<Vec<_>>().join(",")
    }

    fn from_items(items: &[&str]) -> Result<Self, String> {
        let mut list = Vec::new();
        for item in items {
            list.extend(Self::parse(item)?);
        }
        Ok(list)
    }

    fn push(&mut self, text: &str) -> Result<(), String> {
        self.extend(Self::parse(text)?);
        Ok(())
    }
}

macro_rules! number_value {
    ($($ty:ty),*) => {$(
        impl Value for $ty {
            const KIND: Kind = Kind::Number;

            fn parse(text: &str) -> Result<Self, String> {
                text.trim()
                    .parse()
                    .map_err(|_| format!("{text:?} is not a whole number"))
            }

            fn to_text(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
number_value!(u16, u32, usize);

impl Value for String {
    const KIND: Kind = Kind::Text;

    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }

    fn to_text(&self) -> String {
        self.clone()
    }

    /// Never: an empty name is set, and refused where a name must not be empty.
    fn means_none(_: &str) -> bool {
        false
    }
}

impl Value for PathBuf {
    const KIND: Kind = Kind::Path;

    fn parse(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }

    fn to_text(&self) -> String {
        self.display().to_string()
    }
}

impl Value for SocketAddr {
    const KIND: Kind = Kind::Address;

    fn parse(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| format!("{text:?} is not IP:PORT"))
    }

    fn to_text(&self) -> String {
        self.to_string()
    }
}

impl Value for Duration {
    const KIND: Kind = Kind::Duration;

    fn parse(text: &str) -> Result<Self, String> {
        parse_duration(text)
    }

    fn to_text(&self) -> String {
        let ms = self.as_millis();
        match ms {
            _ if !self.subsec_nanos().is_multiple_of(1_000_000) => format!("{}s", self.as_secs_f64()),
            _ if !ms.is_multiple_of(1000) => format!("{ms}ms"),
            _ if ms.is_multiple_of(3_600_000) && ms > 0 => format!("{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) && ms > 0 => format!("{}m", ms / 60_000),
            _ => format!("{}s", ms / 1000),
        }
    }

    fn means_none(text: &str) -> bool {
        let text = text.trim();
        text.is_empty() || text.eq_ignore_ascii_case("off") || parse_duration(text).is_ok_and(|d| d.is_zero())
    }

    fn none_text() -> &'static str {
        "off"
    }
}

/// Types whose text form is their `FromStr` and `Display`.
macro_rules! text_value {
    ($($ty:ty),*) => {$(
        impl Value for $ty {
            const KIND: Kind = Kind::Text;

            fn parse(text: &str) -> Result<Self, String> {
                text.parse::<$ty>().map_err(|e| e.to_string())
            }

            fn to_text(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
text_value!(
    Identifiers,
    Rule,
    ProxyStrategy,
    TransportMode,
    ServiceAccount,
    UnboundTokens,
    Label
);

impl Value for TcpListen {
    const KIND: Kind = Kind::Address;

    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|e: crate::setup::TcpListenParseError| e.to_string())
    }

    fn to_text(&self) -> String {
        match self {
            TcpListen::SameAsQuic => "same".into(),
            TcpListen::Off => "off".into(),
            TcpListen::At(addr) => addr.to_string(),
        }
    }
}

impl Value for ClientCertificates {
    const KIND: Kind = Kind::Text;

    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "authenticate" => Ok(ClientCertificates::Authenticate),
            "verify-only" => Ok(ClientCertificates::VerifyOnly),
            other => Err(format!("must be \"authenticate\" or \"verify-only\", not {other:?}")),
        }
    }

    fn to_text(&self) -> String {
        match self {
            ClientCertificates::Authenticate => "authenticate".into(),
            ClientCertificates::VerifyOnly => "verify-only".into(),
        }
    }
}

impl Value for CongestionControl {
    const KIND: Kind = Kind::Text;

    fn parse(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map_err(|e: crate::transport::UnknownChoice| e.to_string())
    }

    fn to_text(&self) -> String {
        match self {
            CongestionControl::Auto => "auto".into(),
            CongestionControl::Cubic => "cubic".into(),
            CongestionControl::Bbr => "bbr".into(),
        }
    }
}

impl Value for ProxyChoice {
    const KIND: Kind = Kind::Text;

    /// Its errors never hold the URL's credentials.
    fn parse(text: &str) -> Result<Self, String> {
        ProxyChoice::parse(text).map_err(|e| e.to_string())
    }

    fn to_text(&self) -> String {
        match self {
            ProxyChoice::Environment => String::new(),
            ProxyChoice::Direct => "off".into(),
            ProxyChoice::Via(proxy) => format!("{proxy:?}"),
        }
    }
}

/// Parses `N`, `Nms`, `Ns`, `Nm` or `Nh` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 5s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses a byte count: `N`, `NKiB`, `NMiB`, `NGiB` (also `K`, `M`, `G`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 64MiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use KiB, MiB or GiB)")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The values of one setting as text: one for a string, number or boolean,
/// several for an array.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Items(pub Vec<String>);

/// Settings by name, as a TOML table or a JSON object holds them.
pub type SettingsMap = BTreeMap<String, Items>;

impl<'de> serde::Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ItemsVisitor { nested: false })
    }
}

struct ItemsVisitor {
    /// Inside an array: another array is refused.
    nested: bool,
}

impl<'de> Visitor<'de> for ItemsVisitor {
    type Value = Items;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.nested {
            "a string, number or boolean"
        } else {
            "a string, number, boolean or an array of them"
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Items, E> {
        Ok(Items(vec![v.to_owned()]))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Items, E> {
        Ok(Items(vec![v.to_string()]))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Items, E> {
        Ok(Items(vec![v.to_string()]))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Items, E> {
        Ok(Items(vec![v.to_string()]))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Items, E> {
        Ok(Items(vec![v.to_string()]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
        if self.nested {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        let mut items = Vec::new();
        while let Some(Scalar(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Items(items))
    }
}

/// One array element.
struct Scalar(String);

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut items = deserializer.deserialize_any(ItemsVisitor { nested: true })?;
        Ok(Scalar(items.0.pop().unwrap_or_default()))
    }
}
