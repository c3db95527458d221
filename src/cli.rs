//! Process-level helpers shared by the binaries: argument spelling, stop
//! signals, the open-file limit.

use std::ffi::OsString;

/// Rewrites the seed's one-dash spelling (`-client_ids`, `-port`,
/// `-data_dir=x`) into the GNU spelling clap parses (`--client-ids`, …).
///
/// Only names that are long flags of `cmd` are rewritten, so real short
/// flags (`-h`) and values that start with a dash are left alone.
pub fn normalize_args<I>(args: I, cmd: &clap::Command) -> Vec<OsString>
where
    I: IntoIterator<Item = OsString>,
{
    let longs: Vec<String> = cmd
        .get_arguments()
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

/// Completes on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(e) => log::warn!("cannot watch SIGTERM ({e}); only SIGINT stops this process"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
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
