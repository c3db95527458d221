//! `server --config FILE` and `HERALD_<FLAG>`: flags win over the
//! environment, which wins over the file, which wins over the defaults;
//! every bad file is refused at start with exit 2 and one line naming the
//! file, line and key; dist/herald.toml lists every flag and is accepted as
//! it is; every binary prints its version.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use common::{lines_of, Conn, Server, DEADLINE};
use tokio::io::BufReader;
use tokio::net::TcpStream;

/// The example shipped with the server.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/herald.toml");

/// `server` run in `dir` with `args` and `env`, and no other `HERALD_*`
/// variable from the test's own environment.
fn server_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("HERALD_")) {
        cmd.env_remove(var);
    }
    cmd.current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A server process and its stdout lines; killed when dropped.
struct Running {
    child: Child,
    lines: Receiver<String>,
}

impl Running {
    /// Starts the server and reads its first `n` stdout lines.
    fn start(cmd: &mut Command, n: usize) -> (Running, Vec<String>) {
        let mut child = cmd.spawn().expect("spawn server");
        let lines = lines_of(child.stdout.take().unwrap());
        let mut r = Running { child, lines };
        let first = (0..n).map(|_| r.line()).collect();
        (r, first)
    }

    fn line(&mut self) -> String {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = self.child.kill();
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("no line from the server: {err}");
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `listening on IP:PORT` → the address.
fn address(line: &str, prefix: &str) -> std::net::SocketAddr {
    line.strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
        .parse()
        .unwrap()
}

async fn connect(addr: std::net::SocketAddr) -> Conn {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (r, w) = stream.into_split();
    Conn {
        reader: BufReader::new(r),
        writer: w,
    }
}

/// Whether `id` may log in; the connection when it may.
async fn login(addr: std::net::SocketAddr, id: &str) -> Option<Conn> {
    let mut c = connect(addr).await;
    c.send(&format!("LOGIN {id}")).await;
    let answer = c.line().await;
    if answer.starts_with(&format!("WELCOME {id} ")) {
        Some(c)
    } else {
        assert!(answer.starts_with("ERR UNKNOWN_CLIENT"), "{answer}");
        None
    }
}

/// Whether a `SEND` frame of `len` bytes is accepted.
async fn fits(c: &mut Conn, len: usize) -> bool {
    c.send(&format!("SEND {}", "x".repeat(len - 5))).await;
    let answer = c.line().await;
    if answer.starts_with("SENT ") {
        true
    } else {
        assert!(answer.starts_with("ERR FRAME_TOO_LONG"), "{answer}");
        false
    }
}

/// What one level of settings should give.
struct Expect<'a> {
    bind: &'a str,
    http_ip: &'a str,
    allowed: &'a str,
    refused: &'a str,
    /// A frame length accepted and one refused.
    frame_ok: usize,
    frame_too_long: usize,
    durable: bool,
}

async fn check(args: &[&str], env: &[(&str, &str)], expect: Expect<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "client-ids = [\"a\", \"b\"]\nbind = \"127.0.0.2\"\nmax-frame-bytes = 100\n\
         memory = true\nhttp-bind = \"127.0.0.2:0\"\n",
    )
    .unwrap();
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let (_server, lines) = Running::start(&mut server_in(dir.path(), &all, env), 2);
    let addr = address(&lines[0], "listening on ");
    assert_eq!(addr.ip().to_string(), expect.bind);
    assert_eq!(
        address(&lines[1], "http on ").ip().to_string(),
        expect.http_ip
    );
    let mut c = login(addr, expect.allowed).await.expect("allowed id");
    assert!(login(addr, expect.refused).await.is_none());
    assert!(fits(&mut c, expect.frame_ok).await);
    assert!(!fits(&mut c, expect.frame_too_long).await);
    assert_eq!(dir.path().join("herald-data").exists(), expect.durable);
}

#[tokio::test]
async fn the_file_sets_what_nothing_else_does() {
    let expect = Expect {
        bind: "127.0.0.2",
        http_ip: "127.0.0.2",
        allowed: "a",
        refused: "c",
        frame_ok: 100,
        frame_too_long: 101,
        durable: false,
    };
    check(&[], &[], expect).await;
}

#[tokio::test]
async fn the_environment_wins_over_the_file() {
    let env = [
        ("HERALD_BIND", "127.0.0.3"),
        ("HERALD_HTTP_BIND", "127.0.0.3:0"),
        ("HERALD_CLIENT_IDS", "c,d"),
        ("HERALD_MAX_FRAME_BYTES", "200"),
        ("HERALD_MEMORY", "false"),
    ];
    let expect = Expect {
        bind: "127.0.0.3",
        http_ip: "127.0.0.3",
        allowed: "c",
        refused: "a",
        frame_ok: 200,
        frame_too_long: 201,
        durable: true,
    };
    check(&[], &env, expect).await;
}

#[tokio::test]
async fn flags_win_over_the_environment_and_the_file() {
    let env = [
        ("HERALD_BIND", "127.0.0.3"),
        ("HERALD_HTTP_BIND", "127.0.0.3:0"),
        ("HERALD_CLIENT_IDS", "c"),
        ("HERALD_MAX_FRAME_BYTES", "200"),
        ("HERALD_MEMORY", "false"),
    ];
    let args = [
        "--bind",
        "127.0.0.4",
        "-http_bind",
        "127.0.0.4:0",
        "--client-ids",
        "e",
        "--max-frame-bytes=300",
        "--memory",
    ];
    let expect = Expect {
        bind: "127.0.0.4",
        http_ip: "127.0.0.4",
        allowed: "e",
        refused: "c",
        frame_ok: 300,
        frame_too_long: 301,
        durable: false,
    };
    check(&args, &env, expect).await;
}

/// Runs a start that must fail, bounded, and returns its output.
fn run_to_exit(mut cmd: Command) -> Output {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Starts the server on a file holding `toml`, plus `args` and `env`, and
/// returns the one line it must refuse with (exit 2, nothing on stdout).
fn refusal(toml: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.toml"), toml).unwrap();
    let mut all = vec!["--config", "herald.toml"];
    all.extend_from_slice(args);
    let out = run_to_exit(server_in(dir.path(), &all, env));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let err = refusal(
        "client-ids = [\"1\"]\n\n# a comment\nprot = 5000\n",
        &[],
        &[],
    );
    assert!(err.contains("herald.toml:4: unknown key 'prot'"), "{err}");
    let err = refusal("client_ids = [\"1\"]\n", &[], &[]);
    assert!(
        err.contains("herald.toml:1: unknown key 'client_ids' (did you mean 'client-ids'?)"),
        "{err}"
    );
    let err = refusal("client-ids = [\"1\"]\n[server]\nport = 1\n", &[], &[]);
    assert!(err.contains("herald.toml:2: unknown key 'server'"), "{err}");
    let err = refusal("client-ids = [\"1\"]\nconfig = \"other.toml\"\n", &[], &[]);
    assert!(err.contains("herald.toml:2: unknown key 'config'"), "{err}");
}

#[test]
fn wrong_types_are_refused() {
    for (toml, needle) in [
        (
            "client-ids = [\"1\"]\nport = \"5000\"\n",
            "herald.toml:2: key 'port' must be an integer",
        ),
        (
            "client-ids = [\"1\"]\nmemory = \"yes\"\n",
            "herald.toml:2: key 'memory' must be a boolean",
        ),
        (
            "client-ids = \"1,2\"\n",
            "herald.toml:1: key 'client-ids' must be an array of strings",
        ),
        (
            "client-ids = [\"1\", 2]\n",
            "herald.toml:1: key 'client-ids' must be an array of strings",
        ),
        (
            "client-ids = [\"1,2\"]\n",
            "herald.toml:1: key 'client-ids' must be an array of strings (one value per element",
        ),
        (
            "client-ids = [\"1\"]\nbind = 127\n",
            "herald.toml:2: key 'bind' must be a string",
        ),
        (
            "client-ids = [\"1\"]\nlogin-timeout = 1.5\n",
            "herald.toml:2: key 'login-timeout' must be an integer",
        ),
    ] {
        let err = refusal(toml, &[], &[]);
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn bad_values_are_refused_as_the_flag_refuses_them() {
    for (toml, needle) in [
        (
            "client-ids = [\"1\"]\nport = 70000\n",
            "herald.toml:2: key 'port': invalid value '70000'",
        ),
        (
            "client-ids = [\"1\",\n  \"no way\"]\n",
            "herald.toml:2: key 'client-ids': invalid value 'no way'",
        ),
        (
            "client-ids = [\"1\"]\nsync = \"sometimes\"\n",
            "possible values: always, none",
        ),
        (
            "client-ids = [\"1\"]\nmax-frame-bytes = 8\n",
            "herald.toml:2: key 'max-frame-bytes': invalid value '8'",
        ),
        (
            "client-ids = [\"1\"]\nhttp-bind = \"localhost\"\n",
            "herald.toml:2: key 'http-bind': invalid value",
        ),
        ("client-ids = [\"1\"\n", "herald.toml:1: not valid TOML"),
    ] {
        let err = refusal(toml, &[], &[]);
        assert!(err.contains(needle), "{err}");
    }
    // Even when a flag overrides it: the file itself is wrong.
    let err = refusal("client-ids = [\"1\"]\nport = -1\n", &["--port", "0"], &[]);
    assert!(err.contains("herald.toml:2: key 'port'"), "{err}");
}

#[test]
fn conflicting_settings_are_refused_wherever_they_come_from() {
    let err = refusal(
        "client-ids = [\"1\"]\nmemory = true\ndata-dir = \"d\"\n",
        &[],
        &[],
    );
    assert!(
        err.contains("herald.toml:2: key 'memory' cannot be used with key 'data-dir' (line 3)"),
        "{err}"
    );
    let err = refusal(
        "client-ids = [\"1\"]\nmemory = true\n",
        &["--data-dir", "d"],
        &[],
    );
    assert!(
        err.contains("herald.toml:2: key 'memory' cannot be used with --data-dir"),
        "{err}"
    );
    let err = refusal(
        "client-ids = [\"1\"]\ndata-dir = \"d\"\n",
        &["-memory"],
        &[],
    );
    assert!(
        err.contains("herald.toml:2: key 'data-dir' cannot be used with --memory"),
        "{err}"
    );
    let err = refusal(
        "client-ids = [\"1\"]\ndata-dir = \"d\"\n",
        &[],
        &[("HERALD_DATABASE_URL", "postgres://h@127.0.0.1:1/x")],
    );
    assert!(err.contains("herald.toml:2: key 'data-dir' cannot be used with HERALD_DATABASE_URL from the environment"), "{err}");
    let err = refusal(
        "client-ids = [\"1\"]\ndatabase-url = \"postgres://h@127.0.0.1:1/x\"\nsync = \"none\"\n",
        &[],
        &[],
    );
    assert!(
        err.contains("herald.toml:2: key 'database-url' cannot be used with key 'sync' (line 3)"),
        "{err}"
    );
    // A switch left off is no conflict: `memory = false` in the file, or
    // HERALD_MEMORY=false in the environment.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "client-ids = [\"1\"]\nmemory = false\n",
    )
    .unwrap();
    for (data, env) in [("d", vec![]), ("e", vec![("HERALD_MEMORY", "false")])] {
        let args = [
            "--config",
            "c.toml",
            "--bind",
            "127.0.0.1",
            "--data-dir",
            data,
        ];
        let (_s, lines) = Running::start(&mut server_in(dir.path(), &args, &env), 1);
        address(&lines[0], "listening on ");
        assert!(dir.path().join(data).join("herald.db").exists());
    }
}

#[test]
fn a_missing_config_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env) in [
        (vec!["--config", "nope.toml", "--client-ids", "1"], vec![]),
        (
            vec!["--client-ids", "1"],
            vec![("HERALD_CONFIG", "nope.toml")],
        ),
    ] {
        let out = run_to_exit(server_in(dir.path(), &args, &env));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: cannot read config file nope.toml: "),
            "{err}"
        );
    }
}

#[test]
fn subcommands_do_not_read_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = server_in(
        dir.path(),
        &["hash-secret"],
        &[("HERALD_CONFIG", "nope.toml")],
    );
    let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("$argon2id$"));
    // Named beside a subcommand, it is a usage error.
    let out = run_to_exit(server_in(
        dir.path(),
        &["--config", "nope.toml", "hash-secret"],
        &[],
    ));
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn a_server_started_only_from_a_file_serves() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.toml"),
        "client-ids = [\"1\", \"2\"]\nmemory = true\nport = 0\nbind = \"127.0.0.1\"\n",
    )
    .unwrap();
    let s = Server::spawn(server_in(dir.path(), &["--config", "herald.toml"], &[]));
    let (mut one, _) = s.login("1").await;
    let (mut two, _) = s.login("2").await;
    one.send("SEND hello from the file").await;
    assert!(one.line().await.starts_with("SENT "));
    let (_, from, text) = two.msgs(1).await.remove(0);
    assert_eq!((from.as_str(), text.as_str()), ("1", "hello from the file"));
    assert!(!dir.path().join("herald-data").exists());
}

/// The long flags of `server --help` (not --config, --help, --version) and
/// the default each shows, if any.
fn flags_of_help() -> Vec<(String, Option<String>)> {
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    for line in help.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("--") {
            let name = rest.split([' ', '=']).next().unwrap().to_owned();
            if !["config", "help", "version"].contains(&name.as_str()) {
                flags.push((name, None));
            }
        } else if let (Some(d), Some(last)) = (line.strip_prefix("[default: "), flags.last_mut()) {
            last.1 = Some(d.trim_end_matches(']').to_owned());
        }
    }
    assert!(flags.len() >= 19, "{flags:?}");
    flags
}

#[test]
fn the_example_lists_every_flag_with_its_default() {
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    for (flag, default) in flags_of_help() {
        let line = example
            .lines()
            .map(|l| l.trim_start_matches("# "))
            .find(|l| l.starts_with(&format!("{flag} = ")))
            .unwrap_or_else(|| panic!("dist/herald.toml has no `{flag} = …` line"));
        let value = &line[flag.len() + 3..];
        if let Some(d) = default {
            let quoted = format!("\"{d}\"");
            assert!(
                value == d || value == quoted,
                "{flag}: {value} is not the default {d}"
            );
        }
    }
}

#[test]
fn the_example_is_accepted_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    // It sets port 5000; a flag wins over the file, so the test needs no
    // fixed port.
    let (_s, lines) = Running::start(
        &mut server_in(dir.path(), &["--config", EXAMPLE, "--port", "0"], &[]),
        1,
    );
    // Its defaults: loopback, the data directory in the working directory.
    assert_eq!(
        address(&lines[0], "listening on ").ip().to_string(),
        "127.0.0.1"
    );
    assert!(dir.path().join("herald-data").is_dir());
}

#[test]
fn every_flag_has_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, _) in flags_of_help() {
        // `[env: VAR=value]`, or `[env: VAR]` where the value is hidden.
        let var = format!("[env: HERALD_{}", flag.to_uppercase().replace('-', "_"));
        assert!(
            help.contains(&format!("{var}=")) || help.contains(&format!("{var}]")),
            "no {var} in --help"
        );
    }
}

#[test]
fn every_binary_prints_its_version() {
    for (name, exe) in [
        ("server", env!("CARGO_BIN_EXE_server")),
        ("client", env!("CARGO_BIN_EXE_client")),
        ("bench", env!("CARGO_BIN_EXE_bench")),
    ] {
        for flag in ["--version", "-V"] {
            let out = Command::new(exe)
                .arg(flag)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(out.status.success(), "{name} {flag}");
            let want = format!("{name} {}\n", env!("CARGO_PKG_VERSION"));
            assert_eq!(String::from_utf8_lossy(&out.stdout), want);
        }
    }
}
