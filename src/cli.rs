//! Process-level helpers shared by the binaries: argument spelling, stop
//! signals, the open-file limit, reading a secret from a terminal without
//! echo, and settings from a config file and the environment ([`config`]).

use std::ffi::OsString;

pub mod config;

/// Rewrites the seed's one-dash spelling (`-client_ids`, `-port`,
/// `-data_dir=x`) into the GNU spelling clap parses (`--client-ids`, …).
///
/// Only names that are long flags of `cmd` or of its subcommands are
/// rewritten, so real short flags (`-h`) and values that start with a dash
/// are left alone.
pub fn normalize_args<I>(args: I, cmd: &clap::Command) -> Vec<OsString>
where
    I: IntoIterator<Item = OsString>,
{
    let longs: Vec<String> = cmd
        .get_arguments()
        .chain(cmd.get_subcommands().flat_map(|s| s.get_arguments()))
        .filter_map(|a| a.get_long().map(str::to_owned))
        .chain(["help".to_owned(), "version".to_owned()])
        .collect();
    let mut out = Vec::new();
    let mut after_double_dash = false;
    for arg in args {
        if after_double_dash {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            after_double_dash = true;
            out.push(arg);
            continue;
        }
        let rewritten = rewrite(s, &longs);
        out.push(rewritten.map_or(arg, OsString::from));
    }
    out
}

/// `-name[=v]` or `--na_me[=v]` → `--na-me[=v]` when `na-me` is a known
/// long flag; anything else is left as it is.
fn rewrite(arg: &str, longs: &[String]) -> Option<String> {
    let (body, one_dash) = match arg.strip_prefix("--") {
        Some(body) => (body, false),
        None => (arg.strip_prefix('-').filter(|b| b.len() > 1)?, true),
    };
    let (name, value) = match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    };
    let hyphenated = name.replace('_', "-");
    if !(one_dash || hyphenated != name) || !longs.contains(&hyphenated) {
        return None;
    }
    Some(match value {
        Some(v) => format!("--{hyphenated}={v}"),
        None => format!("--{hyphenated}"),
    })
}

/// This process's open-file limit (the soft one, which is enforced).
pub fn fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid, initialised struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// Raises this process's open-file limit to its hard limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// How many file descriptors this process has open now (from
/// `/proc/self/fd`); `None` where that cannot be read.
pub fn open_fds() -> Option<usize> {
    // The directory handle itself is one of the entries.
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count().saturating_sub(1))
}

/// Is stdin a terminal?
pub fn stdin_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdin())
}

/// Reads one line from stdin: at a terminal, after `prompt` on stderr and
/// without echoing what is typed; from a pipe or file, as it comes.
pub fn read_secret_line(prompt: &str) -> std::io::Result<String> {
    let mut line = String::new();
    #[cfg(unix)]
    {
        if stdin_is_terminal() {
            // Echo goes off before the prompt shows, so nothing typed
            // after the prompt is ever echoed.
            let echo_off = EchoOff::new()?;
            eprint!("{prompt}");
            let read = std::io::stdin().read_line(&mut line);
            drop(echo_off);
            eprintln!();
            read?;
            return Ok(line);
        }
    }
    let _ = prompt;
    std::io::stdin().read_line(&mut line)?;
    Ok(line)
}

/// Turns the terminal's echo off for as long as it lives.
#[cfg(unix)]
struct EchoOff {
    saved: libc::termios,
}

#[cfg(unix)]
impl EchoOff {
    fn new() -> std::io::Result<EchoOff> {
        // SAFETY: termios is plain data; tcgetattr fills it in.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and pointer to an owned struct.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: as above.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EchoOff { saved })
    }
}

#[cfg(unix)]
impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}

/// Runs `fut` to completion on a single-threaded runtime and returns its
/// output; does not wait for a blocked read of stdin, which tokio runs on a
/// thread of its own that would otherwise hold the process open.
pub fn block_on_current_thread<F: std::future::Future>(fut: F) -> std::io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(fut);
    runtime.shutdown_background();
    Ok(out)
}

/// Completes on the first SIGINT or SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled, so a signal
/// that comes between the two (e.g. right after a server printed its
/// `listening on` line) is not a kill by the default action. Call it
/// inside a Tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                (int, term) => {
                    if let Err(e) = term.as_ref() {
                        log::warn!("cannot watch SIGTERM ({e}); only SIGINT stops this process");
                    }
                    if let Ok(mut term) = term {
                        term.recv().await;
                    } else if let Ok(mut int) = int {
                        int.recv().await;
                    } else {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cmd() -> Command {
        Command::new("t")
            .arg(Arg::new("client-ids").long("client-ids"))
            .arg(Arg::new("port").long("port"))
            .arg(
                Arg::new("verbose")
                    .short('v')
                    .action(clap::ArgAction::SetTrue),
            )
    }

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_args(args.iter().map(OsString::from), &cmd())
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn rewrites_the_seed_spelling_only_for_known_flags() {
        assert_eq!(
            norm(&[
                "t",
                "-client_ids",
                "1,2",
                "-port=5",
                "-v",
                "-x_y",
                "--client_ids",
                "3"
            ]),
            [
                "t",
                "--client-ids",
                "1,2",
                "--port=5",
                "-v",
                "-x_y",
                "--client-ids",
                "3"
            ]
        );
        assert_eq!(norm(&["t", "--", "-port"]), ["t", "--", "-port"]);
    }
}
