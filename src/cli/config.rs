//! Settings from a TOML file and the environment, under the command line.
//!
//! clap stays the one source of truth for names, types, defaults and
//! validation: each file key is the long name of a flag, its value becomes
//! that flag's argument (`--key=value`), and clap parses the result. This
//! module only knows TOML's shapes (boolean, integer, string, array), which
//! one each flag takes (from its clap action and value type), and where in
//! the file each value was, so clap's refusals can name the file's line.

mod explain;
mod file;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ContextKind;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

use explain::{explain, Origin};
use file::{File, Setting};

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

/// A clap error as one line, without its `error: ` prefix and usage
/// notes: for a log line.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    line.trim_start_matches("error: ").trim().to_owned()
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

#[cfg(test)]
mod tests {
    use super::explain::long_of;
    use super::file::line_at;
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
