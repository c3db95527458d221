//! Settings from a TOML file and the environment, under the command line.
//!
//! clap stays the one source of truth for names, types, defaults and
//! validation: each file key is the long name of a flag, its value becomes
//! that flag's argument (`--key=value`), and clap parses the result. This
//! module only knows TOML's shapes (boolean, integer, string, array), which
//! one each flag takes (from its clap action and value type), and where in
//! the file each value was, so clap's refusals can name the file's line.

use std::any::TypeId;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use toml::de::{DeTable, DeValue};

/// Why the settings were refused: a clap error (help, version and usage
/// errors, printed by clap) or a one-line usage error of our own.
#[derive(Debug)]
pub enum Refusal {
    /// clap's own error; `exit()` prints it with the right status.
    Clap(clap::Error),
    /// One line (without `error: `), for exit status 2.
    Usage(String),
}

/// Gives every top-level flag of `cmd` that has no environment variable
/// yet the variable `PREFIX<FLAG>` (upper case, `-` as `_`), so a flag
/// added later gets one too.
pub fn with_env(cmd: Command, prefix: &str) -> Command {
    let prefix = prefix.to_owned();
    cmd.mut_args(move |a| match a.get_long() {
        Some(long) if a.get_env().is_none() => {
            let var = format!("{prefix}{}", long.to_uppercase().replace('-', "_"));
            a.env(var)
        }
        _ => a,
    })
}

/// Parses `argv` with `cmd`. Unless a subcommand is given, the file named
/// by the flag `config_id` (when given) fills in every flag that neither
/// the command line nor the environment sets.
pub fn parse(cmd: Command, argv: Vec<OsString>, config_id: &str) -> Result<ArgMatches, Refusal> {
    // What the command line and the environment set on their own; help
    // and version are still shown from here.
    let probe = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
        .map_err(Refusal::Clap)?;
    let cmd = without_false_env_flags(cmd, &probe);
    let path = match probe.try_get_one::<PathBuf>(config_id) {
        Ok(Some(path)) if probe.subcommand_name().is_none() => path.clone(),
        _ => return cmd.try_get_matches_from(argv).map_err(Refusal::Clap),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Refusal::Usage(format!("cannot read config file {}: {e}", path.display())))?;
    let file = File::parse(&path, &text, &cmd, config_id)?;
    file.check_alone(&cmd)?;

    // The file's settings go first; the command line follows unchanged.
    let from_file: Vec<&Setting> = file
        .settings
        .iter()
        .filter(|s| {
            !matches!(
                probe.value_source(&s.id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .collect();
    let mut all: Vec<OsString> = argv.iter().take(1).cloned().collect();
    all.extend(from_file.iter().flat_map(|s| s.args()));
    all.extend(argv.iter().skip(1).cloned());
    cmd.clone().try_get_matches_from(all).map_err(|e| {
        if e.get(ContextKind::InvalidSubcommand).is_some() {
            // `--config` beside a subcommand: the error as the user wrote it.
            return Refusal::Clap(cmd.clone().try_get_matches_from(&argv).err().unwrap_or(e));
        }
        let origin = |long: &str| match from_file.iter().find(|s| s.key == long) {
            Some(s) => Origin::File(s),
            None => match cmd.get_arguments().find(|a| a.get_long() == Some(long)) {
                Some(a)
                    if probe.value_source(a.get_id().as_str())
                        == Some(ValueSource::EnvVariable) =>
                {
                    Origin::Env(a.get_env().map(|v| v.to_string_lossy().into_owned()))
                }
                Some(_) => Origin::Flag(long.to_owned()),
                None => Origin::Other,
            },
        };
        explain(e, &file.path, &origin)
    })
}

/// `cmd` without the environment variables of the switches they turn off
/// (`HERALD_MEMORY=false`): clap would count such a switch as given, in
/// conflict with the flags it excludes, though it leaves it off.
fn without_false_env_flags(cmd: Command, probe: &ArgMatches) -> Command {
    let off: Vec<String> = cmd
        .get_arguments()
        .filter(|a| matches!(a.get_action(), ArgAction::SetTrue))
        .map(|a| a.get_id().as_str().to_owned())
        .filter(|id| {
            probe.value_source(id) == Some(ValueSource::EnvVariable)
                && matches!(probe.try_get_one::<bool>(id), Ok(Some(false)))
        })
        .collect();
    off.iter()
        .fold(cmd, |cmd, id| cmd.mut_arg(id, |a| a.env(None)))
}

/// One argument for clap (`None`: a bare `--key`) and its line.
type Arg1 = (Option<String>, usize);

/// One key of the file, checked against its flag's shape.
#[derive(Debug)]
struct Setting {
    /// The key, which is the flag's long name.
    key: String,
    /// The flag's clap id.
    id: String,
    /// The key's line.
    line: usize,
    /// Arguments for clap with each value's line: `Some(v)` gives
    /// `--key=v`, `None` a bare `--key`. Empty for `false` and `[]`.
    values: Vec<Arg1>,
}

impl Setting {
    /// The setting as command-line arguments.
    fn args(&self) -> impl Iterator<Item = OsString> + '_ {
        self.values.iter().map(|(v, _)| match v {
            Some(v) => OsString::from(format!("--{}={v}", self.key)),
            None => OsString::from(format!("--{}", self.key)),
        })
    }

    /// The line of the value `value`, else of the key.
    fn line_of(&self, value: Option<&str>) -> usize {
        self.values
            .iter()
            .find(|(v, _)| v.is_some() && v.as_deref() == value)
            .map_or(self.line, |(_, line)| *line)
    }
}

/// A config file's settings, in the file's order.
struct File {
    path: PathBuf,
    settings: Vec<Setting>,
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
    fn parse(path: &Path, text: &str, cmd: &Command, config_id: &str) -> Result<File, Refusal> {
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
    fn check_alone(&self, cmd: &Command) -> Result<(), Refusal> {
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

/// Where a flag's value came from.
enum Origin<'a> {
    File(&'a Setting),
    Env(Option<String>),
    Flag(String),
    /// Not a flag (a subcommand).
    Other,
}

impl Origin<'_> {
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
fn explain<'a>(e: clap::Error, path: &Path, origin: &dyn Fn(&str) -> Origin<'a>) -> Refusal {
    let args = |kind: ContextKind| -> Vec<String> {
        match e.get(kind) {
            Some(ContextValue::String(s)) => vec![long_of(s)],
            Some(ContextValue::Strings(v)) => v.iter().map(|s| long_of(s)).collect(),
            _ => Vec::new(),
        }
    };
    let first_line = || {
        let text = e.render().to_string();
        let line = text.lines().next().unwrap_or_default();
        line.strip_prefix("error: ").unwrap_or(line).to_owned()
    };
    match e.kind() {
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let Some(long) = args(ContextKind::InvalidArg).into_iter().next() else {
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
            Refusal::Usage(format!(
                "{}:{}: key '{}': {}{possible}",
                path.display(),
                s.line_of(value),
                s.key,
                first_line()
            ))
        }
        ErrorKind::ArgumentConflict => {
            let mut sides: Vec<Origin> = args(ContextKind::InvalidArg)
                .iter()
                .chain(args(ContextKind::PriorArg).iter())
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
            // The file's side first, so the line leads the message.
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
        _ => Refusal::Clap(e),
    }
}

/// `--data-dir <DATA_DIR>` → `data-dir`.
fn long_of(shown: &str) -> String {
    let s = shown.trim_start_matches('-');
    s.split([' ', '=']).next().unwrap_or(s).to_owned()
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    fn cmd() -> Command {
        with_env(
            Command::new("t")
                .arg(
                    Arg::new("config")
                        .long("config")
                        .value_parser(clap::value_parser!(PathBuf)),
                )
                .arg(
                    Arg::new("n")
                        .long("n")
                        .value_parser(clap::value_parser!(u16)),
                )
                .arg(
                    Arg::new("ids")
                        .long("ids")
                        .value_delimiter(',')
                        .action(ArgAction::Append),
                )
                .arg(Arg::new("on").long("on").action(ArgAction::SetTrue)),
            "HERALD_TEST_CONFIG_",
        )
    }

    fn from(text: &str) -> Result<ArgMatches, Refusal> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let argv = ["t", "--config", path.to_str().unwrap()].map(OsString::from);
        parse(cmd(), argv.to_vec(), "config")
    }

    #[test]
    fn toml_forms_become_the_flags_values() {
        let m = from("n = 0x10\nids = [\"a\",\n \"b\"]\non = true\n").unwrap();
        assert_eq!(m.get_one::<u16>("n"), Some(&16));
        let ids: Vec<&String> = m.get_many("ids").unwrap().collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(m.get_flag("on"));
        let m = from("ids = []\non = false\n").unwrap();
        assert!(m.get_many::<String>("ids").is_none());
        assert!(!m.get_flag("on"));
    }

    #[test]
    fn refusals_name_the_line() {
        let usage = |text: &str| match from(text) {
            Err(Refusal::Usage(msg)) => msg,
            other => panic!("{other:?}"),
        };
        assert!(usage("\n\nn = 70000\n").contains("c.toml:3: key 'n': invalid value '70000'"));
        assert!(usage("ids = [\"a\",\n 7]\n")
            .contains("c.toml:2: key 'ids' must be an array of strings"));
        assert!(usage("on = 1\n").contains("c.toml:1: key 'on' must be a boolean"));
        assert!(usage("x = 1\n").contains("c.toml:1: unknown key 'x'"));
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_at("a\nb\n", 0), 1);
        assert_eq!(line_at("a\nb\n", 2), 2);
        assert_eq!(line_at("a\nb\n", 99), 3);
        assert_eq!(long_of("--data-dir <DATA_DIR>"), "data-dir");
        assert_eq!(long_of("--memory"), "memory");
    }
}
