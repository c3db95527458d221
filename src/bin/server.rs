//! `server`: the Herald broker. Parses the command line and runs
//! [`herald::server::run`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, ValueEnum};
use herald::server::{ServerConfig, StorageConfig};
use herald::store::SyncPolicy;
use herald::ClientId;

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
#[command(name = "server", version, about)]
struct Args {
    /// Allowed client ids, comma separated (e.g. 1,2,3).
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_client_id)]
    client_ids: Vec<ClientId>,

    /// Port to listen on; 0 lets the OS pick one (printed on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
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

    /// Which fully acknowledged messages to keep: `all`, or a number N to
    /// delete messages every allowed id has acknowledged except the newest N.
    #[arg(long, default_value = "all", value_name = "all|N")]
    retain: herald::actors::Retain,

    /// Connections served at once; more get `ERR LIMIT` and `BYE limit`.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,

    /// Seconds a new connection has to send LOGIN (0: no limit).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    login_timeout: u64,

    /// Seconds a logged-in connection may stay silent (not even PING)
    /// before it gets `BYE idle` (0: no limit).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    idle_timeout: u64,

    /// Longest accepted frame in bytes, newline excluded.
    #[arg(long, default_value_t = herald::net::DEFAULT_MAX_FRAME_BYTES as u64, value_parser = clap::value_parser!(u64).range(16..=1 << 30))]
    max_frame_bytes: u64,
}

/// Seconds from the command line; 0 means no limit.
fn secs(n: u64) -> Option<std::time::Duration> {
    (n > 0).then(|| std::time::Duration::from_secs(n))
}

fn parse_client_id(s: &str) -> Result<ClientId, String> {
    ClientId::new(s.trim()).map_err(|e| format!("'{s}': {e}"))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = herald::cli::normalize_args(std::env::args_os(), &Args::command());
    let args = Args::parse_from(args);

    let storage = if args.memory {
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
    let config = ServerConfig {
        bind: args.bind,
        port: args.port,
        client_ids: args.client_ids,
        storage,
        registry: herald::actors::RegistryConfig {
            retain: args.retain,
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
    };
    match actix_rt::System::new().block_on(herald::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
