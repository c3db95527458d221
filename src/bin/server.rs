//! `server`: the Herald broker. Parses the command line and runs
//! [`herald::server::run`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use herald::auth::Secrets;
use herald::server::reload::Reloader;
use herald::server::{ServerConfig, StorageConfig};
use herald::store::SyncPolicy;
use herald::ClientId;

#[path = "server/inspect.rs"]
mod inspect;

/// When a `SEND` is confirmed relative to the disk.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum SyncMode {
    /// `SENT` only once the message is on stable storage (fsync).
    Always,
    /// `SENT` once written; the OS flushes it later.
    None,
}

/// Herald chat broker: relays every line a client sends to every other
/// allowed client, and replays what a client missed when it logs in.
#[derive(Parser, Debug)]
#[command(
    name = "server",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// TOML file of settings, one key per flag with the flag's name
    /// (`port = 5000`, `client-ids = ["1", "2"]`, `memory = true`; see
    /// dist/herald.toml). Every flag also reads HERALD_<FLAG>; a flag wins
    /// over its variable, which wins over the file. A missing or bad file is
    /// a usage error (exit 2). The subcommands do not read it. SIGHUP reads
    /// it again, with the secrets and TLS files: the allow-list, secrets and
    /// certificate change without a restart (see README, "Operating Herald").
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Allowed client ids, comma separated (e.g. 1,2,3). With
    /// --secrets-file too, only ids in both are allowed.
    #[arg(long, value_delimiter = ',', required_unless_present = "secrets_file", value_parser = parse_client_id)]
    client_ids: Vec<ClientId>,

    /// One `id:argon2id-hash` line per client id (see `server hash-secret`);
    /// every LOGIN must then carry its id's secret. Read again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    secrets_file: Option<PathBuf>,

    /// Port to listen on; 0 lets the OS pick one (printed on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Address to listen on: loopback only by default; 0.0.0.0 accepts
    /// other machines (then use --secrets-file and TLS).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,

    /// Directory of the durable store.
    #[arg(long, default_value = "./herald-data")]
    data_dir: PathBuf,

    /// When a message counts as stored.
    #[arg(long, value_enum, default_value_t = SyncMode::Always)]
    sync: SyncMode,

    /// Keep everything in memory (lost when the server stops) instead of in
    /// --data-dir.
    #[arg(long, conflicts_with_all = ["data_dir", "sync"])]
    memory: bool,

    /// Keep everything in this PostgreSQL database (`postgres://…`) instead
    /// of in --data-dir; every server given the same database and allow-list
    /// is a node of one broker (see docs/cluster.md).
    #[arg(
        long,
        env = "HERALD_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        conflicts_with_all = ["data_dir", "sync", "memory"]
    )]
    database_url: Option<String>,

    /// Which fully acknowledged messages to keep: `all`, or a number N to
    /// delete messages every allowed id has acknowledged except the newest N.
    #[arg(long, default_value = "all", value_name = "all|N")]
    retain: herald::actors::Retain,

    /// Prune messages stored more than SECS seconds ago, even those an id
    /// never received (each such id is named in the log and `inspect`
    /// shows its loss). Off by default.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    retain_max_age: Option<u64>,

    /// Prune the oldest messages while the stored text of all messages is
    /// more than BYTES, even those an id never received (as
    /// --retain-max-age). Off by default; not with --database-url.
    #[arg(long, value_name = "BYTES", conflicts_with = "database_url")]
    retain_max_bytes: Option<u64>,

    /// PEM certificate chain: connections then speak TLS (with --tls-key).
    /// Read again with the key on SIGHUP, for new connections.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Seconds a client's message ids (`@mid`) are remembered to drop
    /// resends; the newest 10,000 per client id are remembered regardless.
    #[arg(long, default_value_t = 86_400, value_name = "SECS")]
    dedupe_window: u64,

    /// Connections served at once; more get `ERR LIMIT` and `BYE limit`.
    /// Lowered (with a warning) when the open-file limit leaves room for
    /// fewer.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,

    /// Seconds a new connection has to send LOGIN (0: no limit).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    login_timeout: u64,

    /// Seconds a logged-in connection may stay silent (not even PING)
    /// before it gets `BYE idle` (0: no limit).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    idle_timeout: u64,

    /// Serve the web chat page at / and the protocol over WebSocket at /ws
    /// on this address (port 0: the OS picks; printed as `http on …`).
    /// HTTPS/WSS with --tls-cert/--tls-key.
    #[arg(long, value_name = "IP:PORT")]
    http_bind: Option<std::net::SocketAddr>,

    /// Origins (`https://chat.example:8443`, comma separated) whose pages
    /// may open /ws besides the server's own; other sites' pages get 403.
    #[arg(long, value_name = "ORIGIN,...", value_delimiter = ',', value_parser = parse_origin, requires = "http_bind")]
    http_allowed_origins: Vec<herald::net::http::origin::Origin>,

    /// Longest accepted frame in bytes, newline excluded.
    #[arg(long, default_value_t = herald::net::DEFAULT_MAX_FRAME_BYTES as u64, value_parser = clap::value_parser!(u64).range(16..=1 << 30))]
    max_frame_bytes: u64,

    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` over HTTP on
    /// this address (IP:PORT, port 0 lets the OS pick). Internal: no
    /// authentication, keep it on a private address (see docs/metrics.md).
    #[arg(long, value_name = "IP:PORT")]
    admin_bind: Option<std::net::SocketAddr>,
}

/// An origin for --http-allowed-origins.
fn parse_origin(s: &str) -> Result<herald::net::http::origin::Origin, String> {
    herald::net::http::origin::Origin::parse(s.trim())
}

/// Seconds from the command line; 0 means no limit.
fn secs(n: u64) -> Option<std::time::Duration> {
    (n > 0).then(|| std::time::Duration::from_secs(n))
}

/// Subcommands.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Reads a secret from stdin (so it stays out of shell history) and
    /// prints its Argon2id hash, as a line for --secrets-file.
    HashSecret {
        /// Print `ID:hash`, ready to append to the file.
        #[arg(long)]
        client_id: Option<String>,
    },
    /// Makes a private CA and a server certificate signed by it in DIR
    /// (ca.pem, ca.key, server.pem, server.key; keys mode 0600) and prints
    /// the server's and the clients' command lines that use them.
    TlsInit {
        /// Directory to write the four files into (created if needed;
        /// existing files are never overwritten).
        dir: PathBuf,
        /// A name or IP address clients will connect to (repeatable:
        /// --host chat.example --host 127.0.0.1).
        #[arg(long = "host", value_name = "NAME", required = true)]
        hosts: Vec<String>,
    },
    /// Prints what a store holds (head, messages, each id's last ack and
    /// backlog, remembered message ids, size, cluster sessions) without
    /// writing to it; safe while a server runs on it.
    Inspect {
        #[command(flatten)]
        source: inspect::Source,
        /// One JSON object instead of text (see docs/storage.md).
        #[arg(long)]
        json: bool,
    },
}

/// `server tls-init`: writes the files and says how to use them.
fn tls_init(dir: &std::path::Path, hosts: &[String]) -> ExitCode {
    let written = match herald::net::certs::tls_init(dir, hosts) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let quote = |p: &std::path::Path| shell_quote(&p.display().to_string());
    eprintln!(
        "wrote {} (the CA: give it to clients), {} (the CA's key: keep it off the server), {} and {} (for the server); use them with:",
        written.ca_cert.display(),
        written.ca_key.display(),
        written.server_cert.display(),
        written.server_key.display()
    );
    // Other machines can reach the server only if it listens beyond loopback.
    let remote = hosts
        .iter()
        .any(|h| !matches!(h.parse::<IpAddr>(), Ok(ip) if ip.is_loopback()) && h != "localhost");
    // The binaries as this one was called: `./target/release/server` and
    // its sibling `client`, or `herald-server` and `herald-client` as the
    // Debian package installs them on the PATH.
    let me = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("server"));
    let client = me.with_file_name(
        me.file_name()
            .map(|n| n.to_string_lossy().replace("server", "client"))
            .unwrap_or_else(|| "client".to_owned()),
    );
    let (server, client) = (quote(&me), quote(&client));
    println!(
        "{server} --client-ids 1,2,3 --port 5000 --tls-cert {} --tls-key {}{}",
        quote(&written.server_cert),
        quote(&written.server_key),
        if remote { " --bind 0.0.0.0" } else { "" }
    );
    println!(
        "{client} --client-id 1 --server-ip {} --port 5000 --tls --ca-file {}",
        shell_quote(&hosts[0]),
        quote(&written.ca_cert)
    );
    ExitCode::SUCCESS
}

/// `s` as one shell word: as it is when it is plainly safe, else in single
/// quotes.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:+,@%=".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `server hash-secret`: one line from stdin in (typed twice, unechoed, at
/// a terminal), one hash line out.
fn hash_secret(client_id: Option<String>) -> ExitCode {
    let secret = match read_secret() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let secret = secret.as_str();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        eprintln!("error: the secret must be one word (no spaces) on the first line of stdin");
        return ExitCode::from(1);
    }
    let id = match client_id.map(|id| ClientId::new(&id).map_err(|e| format!("'{id}': {e}"))) {
        Some(Err(e)) => {
            eprintln!("error: bad --client-id {e}");
            return ExitCode::from(2);
        }
        Some(Ok(id)) => Some(id),
        None => None,
    };
    match herald::auth::hash_secret(secret) {
        Ok(hash) => {
            match id {
                Some(id) => println!("{id}:{hash}"),
                None => println!("{hash}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Reads the secret: from a terminal twice without echo (the two must
/// match), from a pipe or file its first line.
fn read_secret() -> Result<String, String> {
    let read = |prompt: &str| {
        herald::cli::read_secret_line(prompt)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("cannot read the secret from stdin: {e}"))
    };
    let secret = read("secret: ")?;
    if herald::cli::stdin_is_terminal() && read("again: ")? != secret {
        return Err("the two secrets differ".into());
    }
    Ok(secret)
}

/// Loads the secrets file and works out the allow-list: the file's ids, or
/// those also in --client-ids when both are given.
fn allow_list(
    ids: Vec<ClientId>,
    file: Option<&std::path::Path>,
) -> Result<(Vec<ClientId>, Option<Secrets>), String> {
    let Some(file) = file else {
        return Ok((ids, None));
    };
    let secrets = Secrets::load(file).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(file) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "secrets file {} can be read by others than its owner (chmod 600 it)",
                file.display()
            );
        }
    }
    let allowed: Vec<ClientId> = if ids.is_empty() {
        secrets.ids().cloned().collect()
    } else {
        ids.into_iter()
            .filter(|id| secrets.hash(id).is_some())
            .collect()
    };
    if allowed.is_empty() {
        return Err(format!(
            "no client id is allowed: none of --client-ids has a line in {}",
            file.display()
        ));
    }
    Ok((allowed, Some(secrets)))
}

/// The command line, over the environment (`HERALD_<FLAG>`), over the
/// config file; clap's own errors exit here, the file's give status 2.
fn parse_args() -> Result<Args, ExitCode> {
    use herald::cli::config::{self, Refusal};
    let cmd = config::with_env(Args::command(), "HERALD_");
    let argv = herald::cli::normalize_args(std::env::args_os(), &cmd);
    let matches = match config::parse(cmd, argv, "config") {
        Ok(m) => m,
        Err(Refusal::Clap(e)) => e.exit(),
        Err(Refusal::Usage(msg)) => {
            eprintln!("error: {msg}");
            return Err(ExitCode::from(2));
        }
    };
    Args::from_arg_matches(&matches).map_err(|e| e.exit())
}

fn parse_client_id(s: &str) -> Result<ClientId, String> {
    ClientId::new(s.trim()).map_err(|e| format!("'{s}': {e}"))
}

/// Blocks of 4 MiB and more (a secret check takes ~19 MiB) go back to the
/// OS when freed. glibc would otherwise raise its mmap threshold to 32 MiB
/// after the first such free and keep later ones in the thread's arena, so
/// a few failed logins would hold ~20 MiB per verifier thread for good.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_big_blocks_back() {
    // SAFETY: sets one allocator tunable, before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_big_blocks_back() {}

fn main() -> ExitCode {
    give_big_blocks_back();
    // Logs wait until the server has started, so a failed start prints
    // only its one-line reason.
    herald::logging::init_held_logging();
    let args = match parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    match args.command {
        Some(Command::HashSecret { client_id }) => {
            herald::logging::release_logs();
            return hash_secret(client_id);
        }
        Some(Command::TlsInit { dir, hosts }) => {
            herald::logging::release_logs();
            return tls_init(&dir, &hosts);
        }
        Some(Command::Inspect { source, json }) => {
            herald::logging::release_logs();
            return inspect::run(source, json);
        }
        None => {}
    }
    let config = match settings(args) {
        Ok(config) => ServerConfig {
            reload: Some(Reloader::new(read_again)),
            ..config
        },
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match actix_rt::System::new().block_on(herald::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// SIGHUP: the settings again, from the same command line and environment
/// and the config file as it is now; an error is one line.
fn read_again() -> Result<ServerConfig, String> {
    use herald::cli::config::{self, Refusal};
    let cmd = config::with_env(Args::command(), "HERALD_");
    let argv = herald::cli::normalize_args(std::env::args_os(), &cmd);
    let matches = config::parse(cmd, argv, "config").map_err(|r| match r {
        Refusal::Clap(e) => config::one_line(&e),
        Refusal::Usage(msg) => msg,
    })?;
    let args = Args::from_arg_matches(&matches).map_err(|e| config::one_line(&e))?;
    settings(args)
}

/// The broker's settings from the parsed arguments: reads the secrets file
/// and the TLS files; an error is one line (exit status 1 at start).
fn settings(args: Args) -> Result<ServerConfig, String> {
    let (client_ids, secrets) = allow_list(args.client_ids, args.secrets_file.as_deref())?;

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(herald::net::tls::server_config(cert, key).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let storage = if let Some(url) = args.database_url {
        StorageConfig::Postgres { url }
    } else if args.memory {
        StorageConfig::Memory
    } else {
        StorageConfig::Durable {
            dir: args.data_dir,
            sync: match args.sync {
                SyncMode::Always => SyncPolicy::Always,
                SyncMode::None => SyncPolicy::None,
            },
        }
    };
    Ok(ServerConfig {
        bind: args.bind,
        port: args.port,
        client_ids,
        secrets,
        tls,
        http: args.http_bind.map(|bind| herald::net::http::HttpConfig {
            bind,
            allowed_origins: args.http_allowed_origins,
        }),
        storage,
        registry: herald::actors::RegistryConfig {
            retain: args.retain,
            retain_max_age: args.retain_max_age.map(std::time::Duration::from_secs),
            retain_max_bytes: args.retain_max_bytes,
            dedupe_window: std::time::Duration::from_secs(args.dedupe_window),
            ..Default::default()
        },
        session: herald::actors::SessionConfig {
            max_frame_bytes: args.max_frame_bytes as usize,
            login_timeout: secs(args.login_timeout),
            idle_timeout: secs(args.idle_timeout),
            ..Default::default()
        },
        max_connections: args.max_connections,
        session_threads: 0,
        admin_bind: args.admin_bind,
        reload: None,
    })
}
