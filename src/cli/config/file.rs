//! A config file's keys: each one a flag's long name, its TOML value in
//! the shape the flag takes, turned into arguments for clap with the line
//! each came from.

use std::any::TypeId;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{Arg, ArgAction, Command};
use toml::de::{DeTable, DeValue};

use super::explain::{explain, Origin};
use super::Refusal;

/// One argument for clap (`None`: a bare `--key`) and its line.
type Arg1 = (Option<String>, usize);

/// One key of the file, checked against its flag's shape.
#[derive(Debug)]
pub(super) struct Setting {
    /// The key, which is the flag's long name.
    pub(super) key: String,
    /// The flag's clap id.
    pub(super) id: String,
    /// The key's line.
    pub(super) line: usize,
    /// Arguments for clap with each value's line: `Some(v)` gives
    /// `--key=v`, `None` a bare `--key`. Empty for `false` and `[]`.
    pub(super) values: Vec<Arg1>,
}

impl Setting {
    /// The setting as command-line arguments.
    pub(super) fn args(&self) -> impl Iterator<Item = OsString> + '_ {
        self.values.iter().map(|(v, _)| match v {
            Some(v) => OsString::from(format!("--{}={v}", self.key)),
            None => OsString::from(format!("--{}", self.key)),
        })
    }

    /// The line of the value `value`, else of the key.
    pub(super) fn line_of(&self, value: Option<&str>) -> usize {
        self.values
            .iter()
            .find(|(v, _)| v.is_some() && v.as_deref() == value)
            .map_or(self.line, |(_, line)| *line)
    }
}

/// A config file's settings, in the file's order.
pub(super) struct File {
    pub(super) path: PathBuf,
    pub(super) settings: Vec<Setting>,
}

/// The TOML shape a flag takes in the file.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Boolean,
    Integer,
    String,
}

impl Shape {
    /// The shape of `arg`'s values, from its clap value type.
    fn of(arg: &Arg) -> Shape {
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            return Shape::Boolean;
        }
        let ty = arg.get_value_parser().type_id();
        let integers = [
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i8>(),
            TypeId::of::<i16>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
            TypeId::of::<isize>(),
        ];
        if integers.iter().any(|t| ty == *t) {
            Shape::Integer
        } else {
            Shape::String
        }
    }

    /// What a value of this shape is called, for errors.
    fn name(self) -> &'static str {
        match self {
            Shape::Boolean => "a boolean (true or false)",
            Shape::Integer => "an integer",
            Shape::String => "a string",
        }
    }

    /// What an array of this shape is called, for errors.
    fn array_name(self) -> &'static str {
        match self {
            Shape::Boolean => "an array of booleans",
            Shape::Integer => "an array of integers",
            Shape::String => "an array of strings",
        }
    }
}

impl File {
    /// Reads the keys of `text` and checks each one names a flag of `cmd`
    /// and has that flag's TOML shape.
    pub(super) fn parse(
        path: &Path,
        text: &str,
        cmd: &Command,
        config_id: &str,
    ) -> Result<File, Refusal> {
        let at = |offset: usize| format!("{}:{}", path.display(), line_at(text, offset));
        let table = DeTable::parse(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            Refusal::Usage(format!(
                "{}: not valid TOML: {}",
                at(offset),
                e.message().trim()
            ))
        })?;
        let mut entries: Vec<_> = table.get_ref().iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut settings = Vec::new();
        for (key, value) in entries {
            let name = key.get_ref().as_ref();
            let arg = cmd.get_arguments().find(|a| {
                a.get_long() == Some(name) && a.get_id() != "help" && a.get_id() != "version"
            });
            let Some(arg) = arg.filter(|a| a.get_id() != config_id) else {
                let hint = if name == config_id {
                    " (a config file cannot name another)".to_owned()
                } else if name.contains('_')
                    && cmd
                        .get_arguments()
                        .any(|a| a.get_long() == Some(&name.replace('_', "-")))
                {
                    format!(" (did you mean '{}'?)", name.replace('_', "-"))
                } else {
                    String::new()
                };
                return Err(Refusal::Usage(format!(
                    "{}: unknown key '{name}'{hint}",
                    at(key.span().start)
                )));
            };
            let values = values_of(arg, value.get_ref(), value.span().start, text).map_err(
                |(offset, want)| {
                    Refusal::Usage(format!("{}: key '{name}' must be {want}", at(offset)))
                },
            )?;
            settings.push(Setting {
                key: name.to_owned(),
                id: arg.get_id().as_str().to_owned(),
                line: line_at(text, key.span().start),
                values,
            });
        }
        Ok(File {
            path: path.to_owned(),
            settings,
        })
    }

    /// Lets clap check the file's settings on their own (no command line,
    /// no environment): bad values and conflicts within the file. What the
    /// file leaves out is for the full parse to find.
    pub(super) fn check_alone(&self, cmd: &Command) -> Result<(), Refusal> {
        let alone = cmd.clone().mut_args(|a| a.env(None));
        let args = std::iter::once(OsString::from(cmd.get_name()))
            .chain(self.settings.iter().flat_map(|s| s.args()));
        match alone.try_get_matches_from(args) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::MissingRequiredArgument => Ok(()),
            Err(e) => {
                let origin = |long: &str| match self.settings.iter().find(|s| s.key == long) {
                    Some(s) => Origin::File(s),
                    None => Origin::Other,
                };
                Err(explain(e, &self.path, &origin))
            }
        }
    }
}

/// The values of `arg` from the TOML `value` at `offset`, or the offset
/// and description of the shape it should have had.
fn values_of(
    arg: &Arg,
    value: &DeValue,
    offset: usize,
    text: &str,
) -> Result<Vec<Arg1>, (usize, String)> {
    let shape = Shape::of(arg);
    let line = line_at(text, offset);
    if shape == Shape::Boolean {
        return match value {
            DeValue::Boolean(true) => Ok(vec![(None, line)]),
            DeValue::Boolean(false) => Ok(Vec::new()),
            _ => Err((offset, shape.name().to_owned())),
        };
    }
    let many = matches!(arg.get_action(), ArgAction::Append);
    let scalar = |v: &DeValue, offset: usize| -> Result<String, (usize, String)> {
        let want = || {
            if many {
                shape.array_name().to_owned()
            } else {
                shape.name().to_owned()
            }
        };
        match (shape, v) {
            (Shape::String, DeValue::String(s)) => {
                // One value per element: the flag's own delimiter would
                // split it behind the file's back.
                match arg.get_value_delimiter() {
                    Some(d) if s.contains(d) => Err((
                        offset,
                        format!("{} (one value per element, no '{d}')", want()),
                    )),
                    _ => Ok(s.to_string()),
                }
            }
            (Shape::Integer, DeValue::Integer(i)) => i128::from_str_radix(i.as_str(), i.radix())
                .map(|n| n.to_string())
                .map_err(|_| (offset, want())),
            _ => Err((offset, want())),
        }
    };
    if many {
        let DeValue::Array(items) = value else {
            return Err((offset, shape.array_name().to_owned()));
        };
        items
            .iter()
            .map(|item| {
                let at = item.span().start;
                scalar(item.get_ref(), at).map(|v| (Some(v), line_at(text, at)))
            })
            .collect()
    } else {
        Ok(vec![(Some(scalar(value, offset)?), line)])
    }
}

/// The 1-based line of byte `offset` in `text`.
pub(super) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
