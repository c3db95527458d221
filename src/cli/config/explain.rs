//! clap's refusals in the terms of where each value came from: the config
//! file's line and key, the environment variable, or the flag.

use std::path::Path;

use clap::error::{ContextKind, ContextValue, ErrorKind};

use super::file::Setting;
use super::Refusal;

/// Where a flag's value came from.
pub(super) enum Origin<'a> {
    /// A key of the config file.
    File(&'a Setting),
    /// An environment variable (its name, when known).
    Env(Option<String>),
    /// A flag on the command line (its long name).
    Flag(String),
    /// Not a flag (a subcommand).
    Other,
}

impl Origin<'_> {
    /// The origin as a message names it.
    fn describe(&self) -> String {
        match self {
            Origin::File(s) => format!("key '{}' (line {})", s.key, s.line),
            Origin::Env(Some(var)) => format!("{var} from the environment"),
            Origin::Env(None) => "a variable from the environment".to_owned(),
            Origin::Flag(long) => format!("--{long}"),
            Origin::Other => "another argument".to_owned(),
        }
    }
}

/// clap's error `e` in the file's terms when it is about a value from the
/// file or the environment; clap's own error otherwise.
pub(super) fn explain<'a>(
    e: clap::Error,
    path: &Path,
    origin: &dyn Fn(&str) -> Origin<'a>,
) -> Refusal {
    match e.kind() {
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => bad_value(e, path, origin),
        ErrorKind::ArgumentConflict => conflict(e, path, origin),
        _ => Refusal::Clap(e),
    }
}

/// The long names of the arguments `e` names under `kind`.
fn named(e: &clap::Error, kind: ContextKind) -> Vec<String> {
    match e.get(kind) {
        Some(ContextValue::String(s)) => vec![long_of(s)],
        Some(ContextValue::Strings(v)) => v.iter().map(|s| long_of(s)).collect(),
        _ => Vec::new(),
    }
}

/// A value clap refused: with the line of the file's value.
fn bad_value<'a>(e: clap::Error, path: &Path, origin: &dyn Fn(&str) -> Origin<'a>) -> Refusal {
    let Some(long) = named(&e, ContextKind::InvalidArg).into_iter().next() else {
        return Refusal::Clap(e);
    };
    let Origin::File(s) = origin(&long) else {
        return Refusal::Clap(e);
    };
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => Some(v.as_str()),
        _ => None,
    };
    let possible = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(v)) => format!(" (possible values: {})", v.join(", ")),
        _ => String::new(),
    };
    // clap's first line says what is wrong with the value.
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    Refusal::Usage(format!(
        "{}:{}: key '{}': {first}{possible}",
        path.display(),
        s.line_of(value),
        s.key,
    ))
}

/// Settings that exclude each other: each side named by where it came
/// from, the file's first so its line leads.
fn conflict<'a>(e: clap::Error, path: &Path, origin: &dyn Fn(&str) -> Origin<'a>) -> Refusal {
    let mut sides: Vec<Origin> = named(&e, ContextKind::InvalidArg)
        .iter()
        .chain(named(&e, ContextKind::PriorArg).iter())
        .map(|long| origin(long))
        .collect();
    // A subcommand among them, or nothing from the file or the
    // environment: clap says it best.
    let plain = |o: &Origin| matches!(o, Origin::Flag(_) | Origin::Other);
    if e.get(ContextKind::InvalidArg).is_none()
        || sides.len() < 2
        || sides.iter().any(|o| matches!(o, Origin::Other))
        || sides.iter().all(plain)
    {
        return Refusal::Clap(e);
    }
    sides.sort_by_key(|o| match o {
        Origin::File(s) => (0, s.line),
        Origin::Env(_) => (1, 0),
        Origin::Flag(_) | Origin::Other => (2, 0),
    });
    let rest: Vec<String> = sides[1..].iter().map(|o| o.describe()).collect();
    let head = match &sides[0] {
        Origin::File(s) => format!("{}:{}: key '{}'", path.display(), s.line, s.key),
        other => other.describe(),
    };
    Refusal::Usage(format!("{head} cannot be used with {}", rest.join(" or ")))
}

/// `--data-dir <DATA_DIR>` → `data-dir`.
pub(super) fn long_of(shown: &str) -> String {
    let s = shown.trim_start_matches('-');
    s.split([' ', '=']).next().unwrap_or(s).to_owned()
}
