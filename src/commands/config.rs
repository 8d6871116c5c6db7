//! `config show`: every setting's effective value and where it came from, secrets
//! redacted.

use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::config::{Origin, Settings};

/// Every setting as `(key, value, origin)`, in key order.
#[derive(Debug, Clone)]
pub struct ConfigReport(pub Vec<(String, String, Origin)>);

pub fn show(settings: &Settings) -> ConfigReport {
    ConfigReport(settings.entries())
}

/// `{ "<key>": { "value": …, "origin": … }, … }`.
impl Serialize for ConfigReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Entry<'a> {
            value: &'a str,
            origin: Origin,
        }
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (key, value, origin) in &self.0 {
            map.serialize_entry(key, &Entry { value, origin: *origin })?;
        }
        map.end()
    }
}

impl fmt::Display for ConfigReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.0.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
        for (key, value, origin) in &self.0 {
            writeln!(f, "{key:<width$}  {value}  ({origin})")?;
        }
        Ok(())
    }
}
