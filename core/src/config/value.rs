//! The value types a knob may have, and how each is read from text (a flag,
//! an environment variable) and from TOML, and shown again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::Secret;

/// A knob's value type.
pub trait Setting: Sized {
    /// Its value is never shown (errors, `Debug`, `--print-config`) and never
    /// comes from a flag.
    const SECRET: bool = false;

    /// From a flag or an environment variable (never empty: empty is unset).
    fn from_text(text: &str) -> Option<Self>;

    /// From the TOML file; by default a string read like [`from_text`](Self::from_text).
    fn from_toml(value: &toml::Value) -> Option<Self> {
        value.as_str().and_then(Self::from_text)
    }

    /// The value as TOML, for `--print-config` and errors; `None` for a secret.
    fn to_toml(&self) -> Option<toml::Value>;

    /// A value read from the file whose directory is `dir`: relative paths
    /// are taken from there. Values that are not paths stay as they are.
    fn anchor(self, _dir: &Path) -> Self {
        self
    }
}

impl Setting for String {
    fn from_text(text: &str) -> Option<Self> {
        Some(text.to_owned())
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.clone()))
    }
}

impl Setting for PathBuf {
    fn from_text(text: &str) -> Option<Self> {
        Some(PathBuf::from(text))
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.display().to_string()))
    }
    fn anchor(self, dir: &Path) -> Self {
        if self.is_relative() { dir.join(self) } else { self }
    }
}

impl Setting for Secret {
    const SECRET: bool = true;
    fn from_text(text: &str) -> Option<Self> {
        Some(Secret::new(text))
    }
    fn to_toml(&self) -> Option<toml::Value> {
        None
    }
}

impl Setting for SocketAddr {
    fn from_text(text: &str) -> Option<Self> {
        text.parse().ok()
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.to_string()))
    }
}

/// The words clap's boolish parser took, so existing settings keep working.
impl Setting for bool {
    fn from_text(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "y" | "yes" | "t" | "true" | "on" | "1" => Some(true),
            "n" | "no" | "f" | "false" | "off" | "0" => Some(false),
            _ => None,
        }
    }
    fn from_toml(value: &toml::Value) -> Option<Self> {
        value.as_bool()
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Boolean(*self))
    }
}

/// A finite number (a cost, for example); ranges are the knob's to check.
impl Setting for f64 {
    fn from_text(text: &str) -> Option<Self> {
        text.trim().parse().ok().filter(|n: &f64| n.is_finite())
    }
    fn from_toml(value: &toml::Value) -> Option<Self> {
        value
            .as_float()
            .or_else(|| value.as_integer().map(|i| i as f64))
            .filter(|n| n.is_finite())
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Float(*self))
    }
}

/// A length of time as a whole number with its unit: `250ms`, `90s`, `5m`,
/// `24h` (no unit is refused: a bare number reads as seconds to some and
/// milliseconds to others). Shown in the largest unit that is exact.
impl Setting for Duration {
    fn from_text(text: &str) -> Option<Self> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().ok()?;
        let millis = match unit.trim() {
            "ms" => Some(number),
            "s" => number.checked_mul(1000),
            "m" | "min" => number.checked_mul(60_000),
            "h" => number.checked_mul(3_600_000),
            _ => None,
        }?;
        Some(Duration::from_millis(millis))
    }
    fn to_toml(&self) -> Option<toml::Value> {
        let millis = self.as_millis();
        let text = [(3_600_000, "h"), (60_000, "m"), (1000, "s")]
            .into_iter()
            .find(|(unit, _)| millis > 0 && millis.is_multiple_of(*unit))
            .map_or_else(
                || format!("{millis}ms"),
                |(unit, name)| format!("{}{name}", millis / unit),
            );
        Some(toml::Value::String(text))
    }
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            fn from_text(text: &str) -> Option<Self> {
                text.parse().ok()
            }
            fn from_toml(value: &toml::Value) -> Option<Self> {
                value.as_integer().and_then(|i| <$t>::try_from(i).ok())
            }
            fn to_toml(&self) -> Option<toml::Value> {
                // Beyond i64 only as text: TOML integers are 64-bit signed.
                Some(i64::try_from(*self).map_or_else(|_| toml::Value::String(self.to_string()), toml::Value::Integer))
            }
        }
    )*};
}
unsigned!(u16, u32, u64, usize);
