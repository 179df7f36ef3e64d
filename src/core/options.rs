//! Reading one TOML table into typed values while collecting diagnostics.
//!
//! `TableReader` walks a `toml_edit` table (which keeps byte spans), expands `${VAR}` and
//! `${VAR:-default}` in strings, flags unknown keys with the nearest valid name, and converts
//! values into serde types, attaching every error to the key's place in the file.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml_edit::de::ValueDeserializer;
use toml_edit::{Item, TableLike, Value};

use crate::core::diagnostic::{suggest, Diagnostic, Diagnostics};

/// A view of one table of the config with a human name for messages (e.g. "stage `rfm`").
pub struct TableReader<'a> {
    pub table: &'a dyn TableLike,
    pub context: String,
    pub span: Option<Range<usize>>,
}

impl<'a> TableReader<'a> {
    pub fn new(table: &'a dyn TableLike, context: impl Into<String>, span: Option<Range<usize>>) -> Self {
        TableReader {
            table,
            context: context.into(),
            span,
        }
    }

    pub fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.table
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .or_else(|| self.span.clone())
    }

    pub fn value_span(&self, key: &str) -> Option<Range<usize>> {
        self.table.get(key).and_then(item_span).or_else(|| self.key_span(key))
    }

    pub fn keys(&self) -> Vec<String> {
        self.table.iter().map(|(k, _)| k.to_string()).collect()
    }

    /// Report every key not in `known` (with a suggestion); return whether all were known.
    pub fn check_keys(&self, known: &[&str], diagnostics: &mut Diagnostics) -> bool {
        let mut ok = true;
        for key in self.keys() {
            if !known.contains(&key.as_str()) {
                ok = false;
                diagnostics.push(
                    Diagnostic::new(format!("{} has no key `{key}`", self.context), self.key_span(&key)).with_help(
                        suggest(&key, known.iter().copied())
                            .or_else(|| Some(format!("valid keys: {}", backticked(known)))),
                    ),
                );
            }
        }
        ok
    }

    /// The value of `key` converted to `T`, `None` when absent or wrong (the error is recorded).
    pub fn get<T: DeserializeOwned>(&self, key: &str, diagnostics: &mut Diagnostics) -> Option<T> {
        let item = self.table.get(key)?;
        let value = self.expanded(key, item, diagnostics)?;
        match T::deserialize(value_deserializer(value)) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                self.invalid(key, &error, diagnostics);
                None
            }
        }
    }

    fn invalid(&self, key: &str, error: &toml_edit::de::Error, diagnostics: &mut Diagnostics) {
        diagnostics.error(
            format!(
                "key `{key}` of {} is invalid: {}",
                self.context,
                clean_serde_message(&error.to_string())
            ),
            self.value_span(key),
        );
    }

    /// A required key: records "missing key" when absent.
    pub fn require<T: DeserializeOwned>(&self, key: &str, diagnostics: &mut Diagnostics) -> Option<T> {
        if self.table.get(key).is_none() {
            diagnostics.error(
                format!("{} is missing required key `{key}`", self.context),
                self.span.clone(),
            );
            return None;
        }
        self.get(key, diagnostics)
    }

    /// The table's keys except `skip` deserialized as an options struct. Unknown keys and each bad
    /// value are reported separately, at their own place, with suggestions.
    pub fn options<T: DeserializeOwned + Default>(&self, skip: &[&str], diagnostics: &mut Diagnostics) -> Option<T> {
        let fields = serde_aux::serde_introspection::serde_introspect::<T>();
        let mut known: Vec<&str> = skip.to_vec();
        known.extend(fields.iter().copied());
        let mut ok = self.check_keys(&known, diagnostics);
        let mut all = toml_edit::InlineTable::new();
        for (key, item) in self.table.iter() {
            if skip.contains(&key) || !fields.contains(&key) {
                continue;
            }
            let Some(value) = self.expanded(key, item, diagnostics) else {
                ok = false;
                continue;
            };
            let mut single = toml_edit::InlineTable::new();
            single.insert(key, value.clone());
            if let Err(error) = T::deserialize(value_deserializer(Value::InlineTable(single))) {
                ok = false;
                self.invalid(key, &error, diagnostics);
                continue;
            }
            all.insert(key, value);
        }
        if !ok {
            return None;
        }
        match T::deserialize(value_deserializer(Value::InlineTable(all))) {
            Ok(options) => Some(options),
            Err(error) => {
                diagnostics.error(
                    format!(
                        "{} is invalid: {}",
                        self.context,
                        clean_serde_message(&error.to_string())
                    ),
                    self.span.clone(),
                );
                None
            }
        }
    }

    fn expanded(&self, key: &str, item: &Item, diagnostics: &mut Diagnostics) -> Option<Value> {
        let value = match item {
            Item::Value(value) => value.clone(),
            Item::Table(table) => Value::InlineTable(table.clone().into_inline_table()),
            Item::ArrayOfTables(array) => Value::Array(array.clone().into_array()),
            Item::None => return None,
        };
        match expand_value(&value) {
            Ok(value) => Some(value),
            Err(message) => {
                diagnostics.error(
                    format!("key `{key}` of {}: {message}", self.context),
                    self.value_span(key),
                );
                None
            }
        }
    }
}

fn value_deserializer(value: Value) -> ValueDeserializer {
    serde::de::IntoDeserializer::into_deserializer(value)
}

pub fn item_span(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::Value(value) => value.span(),
        Item::Table(table) => table.span(),
        Item::ArrayOfTables(array) => array.span(),
        Item::None => None,
    }
}

pub fn backticked(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// serde's messages end in a newline and sometimes name the inline table; keep the useful part.
fn clean_serde_message(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

/// Expand `${VAR}` and `${VAR:-default}` in every string inside a value.
pub fn expand_value(value: &Value) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => {
            let expanded = expand_env(s.value())?;
            Value::from(expanded)
        }
        Value::Array(array) => {
            let mut out = toml_edit::Array::new();
            for element in array.iter() {
                out.push(expand_value(element)?);
            }
            Value::Array(out)
        }
        Value::InlineTable(table) => {
            let mut out = toml_edit::InlineTable::new();
            for (key, element) in table.iter() {
                out.insert(key, expand_value(element)?);
            }
            Value::InlineTable(out)
        }
        other => other.clone(),
    })
}

/// Expand environment references in one string; an unset variable without default is an error.
pub fn expand_env(text: &str) -> Result<String, String> {
    expand_with(text, |name| std::env::var(name).ok())
}

fn expand_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed `${{` in \"{text}\""))?;
        let reference = &after[..end];
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{reference}}}` is not a valid variable reference"));
        }
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "OUT_DIR").then(|| "/data/out".to_string())
    }

    #[test]
    fn expands_set_default_and_missing_variables() {
        assert_eq!(expand_with("${OUT_DIR}/x", lookup).unwrap(), "/data/out/x");
        assert_eq!(expand_with("${NOPE:-../out}", lookup).unwrap(), "../out");
        assert_eq!(expand_with("a${OUT_DIR:-z}b", lookup).unwrap(), "a/data/outb");
        assert_eq!(expand_with("plain", lookup).unwrap(), "plain");
        let error = expand_with("${NOPE}", lookup).unwrap_err();
        assert!(error.contains("`NOPE` is not set"), "{error}");
        assert!(expand_with("${OUT_DIR", lookup).unwrap_err().contains("unclosed"));
    }
}
