//! Configuration errors as the operator reads them: one line per problem with the key path
//! (once), the source it came from (file, environment variable), what is wrong in plain words,
//! a suggestion for a near miss, and the `__` rule for environment variables.
//!
//! Never decides what is valid (the keys and their checks are in the parent module).

use std::path::PathBuf;

use super::ENV_PREFIX;
use crate::show::{did_you_mean, in_user_words};

/// Why the configuration could not be used. Each variant's message names the key and source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist (given with --config); create it or drop the flag")]
    MissingFile { path: PathBuf },
    #[error("invalid configuration:{}", describe(.0))]
    Invalid(#[from] Box<figment::Error>),
    #[error("invalid configuration: key `{key}` = {value:?}: {expected}")]
    Value {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("invalid configuration: {key}: {said}")]
    Tls { key: &'static str, said: String },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

/// One line per problem: the key path, where the value came from, what is wrong, what is accepted.
fn describe(errors: &figment::Error) -> String {
    let mut out = String::new();
    for e in errors.clone() {
        let key = e.path.join(".").to_lowercase();
        let origin = match (&e.metadata, e.path.is_empty()) {
            (Some(m), false) if m.name.contains(ENV_PREFIX) => format!(
                "environment variable {ENV_PREFIX}{}",
                e.path.join("__").to_uppercase()
            ),
            (Some(m), false) if m.name.contains("environment") => match key.as_str() {
                "database.url" => "environment variable DATABASE_URL".to_owned(),
                "nats.url" => "environment variable NATS_URL".to_owned(),
                _ => m.name.to_string(),
            },
            (Some(m), _) => match &m.source {
                Some(figment::Source::File(f)) => format!("file {}", f.display()),
                Some(other) => other.to_string(),
                None => m.name.to_string(),
            },
            (None, _) => "defaults".to_owned(),
        };
        let mut what = in_user_words(&e.kind.to_string());
        if let figment::error::Kind::UnknownField(field, expected) = &e.kind {
            what = format!(
                "unknown key{}; expected one of: {}",
                did_you_mean(field, expected)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default(),
                expected.join(", ")
            );
            if origin.starts_with("environment variable") && field.contains('_') {
                what.push_str(&format!(
                    ". In the environment, levels join with a double underscore: {ENV_PREFIX}RELAY__BATCH_SIZE is relay.batch_size"
                ));
            }
        }
        if key.is_empty() {
            out.push_str(&format!("\n  in {origin}: {what}"));
        } else if let figment::error::Kind::UnknownField(field, _) = &e.kind {
            // The path may already end with the unknown field: name it once.
            let full = if e.path.last().is_some_and(|l| l.eq_ignore_ascii_case(field)) {
                key.clone()
            } else {
                format!("{key}.{field}")
            };
            out.push_str(&format!("\n  key `{full}` in {origin}: {what}"));
        } else {
            out.push_str(&format!("\n  key `{key}` in {origin}: {what}"));
        }
    }
    out
}
