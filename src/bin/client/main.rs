//! `client`: a line-oriented Herald chat client for terminals, pipes and
//! scripts. Parses the command line, then runs the I/O shell ([`conn`])
//! around the client's rules ([`machine`]).
//!
//! Every non-empty stdin line is sent as one message and kept until its
//! `SENT`; every received message is printed as `<from>: <text>` and
//! acknowledged once printed; status goes to stderr. A lost connection is
//! reconnected with backoff and every unconfirmed line resent in order with
//! its message id (`@mid=…`), so the broker stores it once.

// No panics on input or I/O paths: errors are values. Tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use herald::ClientId;

mod conn;
mod machine;
mod servers;
mod stdin;

use conn::{ClientTls, Target};
use machine::{Machine, Outcome, Settings};
use servers::{Node, NodeList, Rotation};

/// The client's default frame limit: 16 MiB. The server's own limit
/// (`--max-frame-bytes`, 64 KiB by default) may be raised up to 1 GiB.
const DEFAULT_MAX_FRAME_BYTES: u64 = 16 << 20;

/// Herald chat client: sends every line typed on stdin to the server at
/// --server-ip/--port (or one of --servers), prints every message received
/// as `<from>: <text>`.
///
/// Each line is kept until the server confirms it (SENT); when the
/// connection drops or the server stops or is full (BYE shutdown, BYE
/// limit, ERR LIMIT), the client reconnects with backoff (100 ms doubling
/// to 5 s, with jitter) and resends every unconfirmed line, in order, with
/// the same message id, so it is stored once. A line is dropped (with a
/// note on stderr) only when the server refuses it for good (EMPTY_MESSAGE,
/// FRAME_TOO_LONG, BAD_FRAME). It exits 1 on UNKNOWN_CLIENT, AUTH_FAILED,
/// BYE replaced, or a server it cannot reach in 6 tries (about 3 s) before
/// its first login (with --servers: 6 tries or once around the list,
/// whichever is more). A message is acknowledged only once printed and never
/// printed twice; a frame it cannot decode ends the connection instead of
/// being skipped. Memory is bounded: at most 1,024 unconfirmed lines (stdin
/// is not read while they hold 4 MiB or more; a line over --max-frame-bytes
/// is skipped), and at most 4 MiB + --max-frame-bytes + 64 KiB waiting to
/// be written (more means the server stopped reading: the connection is
/// made again).
#[derive(Parser, Debug)]
#[command(name = "client", version)]
struct Args {
    /// The client id to log in as.
    #[arg(long, value_parser = |s: &str| ClientId::new(s).map_err(|e| e.to_string()))]
    client_id: ClientId,

    /// Server address or host name.
    #[arg(long, default_value = "127.0.0.1")]
    server_ip: String,

    /// Server port (required unless --servers is given).
    #[arg(long, required_unless_present = "servers")]
    port: Option<u16>,

    /// Servers to fail over between, as `host:port,host:port…` (IPv6 as
    /// `[addr]:port`), instead of --server-ip/--port: the nodes of one
    /// broker, or several addresses of one server or load balancer (they
    /// must share one store, so one seq order). The
    /// client connects to the first; each time a connection is lost or
    /// cannot be made it tries the next (after the last, the first again),
    /// with the usual backoff. The first is always tried first, so the
    /// order is the preference (give clients different orders to spread
    /// them). Before the first login it gives up after 6 tries or once
    /// around the list, whichever is more.
    #[arg(long, value_name = "LIST", value_parser = servers::parse_list,
          conflicts_with_all = ["server_ip", "port"])]
    servers: Option<NodeList>,

    /// For scripts: once stdin has ended and every line is confirmed
    /// (SENT), quit (status 0) after no message (MSG) arrived and no line
    /// was read for MS milliseconds; pings and their answers do not count.
    /// Without it the client keeps receiving after stdin ends.
    #[arg(long, value_name = "MS")]
    exit_when_idle: Option<u64>,

    /// Exit (status 1) when the connection drops or the server stops or is
    /// full, instead of reconnecting with backoff and resending unconfirmed
    /// lines.
    #[arg(long)]
    no_reconnect: bool,

    /// Print each message's sequence number in front of it:
    /// `[<seq>] <from>: <text>`.
    #[arg(long)]
    show_seq: bool,

    /// A file whose first line is this client's secret, for servers that
    /// check secrets (or set HERALD_SECRET; never pass a secret itself on
    /// the command line, where `ps` shows it).
    #[arg(long, value_name = "PATH")]
    secret_file: Option<std::path::PathBuf>,

    /// Speak TLS to the server (needs --ca-file).
    #[arg(long, requires = "ca_file")]
    tls: bool,

    /// PEM file of the CA(s) that signed the server's certificate.
    #[arg(long, value_name = "FILE", requires = "tls")]
    ca_file: Option<std::path::PathBuf>,

    /// The name the server's certificate must carry (default: the host of
    /// --server-ip, or of each server in --servers).
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_server_name: Option<String>,

    /// Longest frame accepted from the server, and longest stdin line, in
    /// bytes (16 to 1 GiB). It must be at least the server's
    /// --max-frame-bytes: a longer frame ends the connection, unacknowledged.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FRAME_BYTES,
          value_parser = clap::value_parser!(u64).range(16..=1 << 30))]
    max_frame_bytes: u64,
}

/// The servers from the flags: --servers, else --server-ip and --port.
fn servers(args: &Args) -> Option<Rotation> {
    let nodes = match (&args.servers, args.port) {
        (Some(NodeList(nodes)), _) => nodes.clone(),
        (None, Some(port)) => vec![Node {
            host: args.server_ip.clone(),
            port,
        }],
        // clap requires one of the two.
        (None, None) => Vec::new(),
    };
    Rotation::new(nodes)
}

/// TLS settings from the flags; every server's name is checked here, so
/// that a bad one is refused at start.
fn tls(args: &Args, servers: &Rotation) -> Result<Option<ClientTls>, String> {
    let Some(ca) = args.ca_file.as_deref().filter(|_| args.tls) else {
        return Ok(None);
    };
    let config = herald::net::tls::client_config(ca).map_err(|e| e.to_string())?;
    let server_name = match &args.tls_server_name {
        Some(name) => Some(
            rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|e| format!("'{name}' is not a valid server name: {e}"))?,
        ),
        None => None,
    };
    let tls = ClientTls {
        config,
        server_name,
    };
    for node in servers.nodes() {
        tls.name_for(node)?;
    }
    Ok(Some(tls))
}

/// The secret from --secret-file, else from HERALD_SECRET, if any.
fn secret(file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let raw = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .to_owned(),
        None => match std::env::var("HERALD_SECRET") {
            Ok(s) => s,
            Err(_) => return Ok(None),
        },
    };
    let secret = raw.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        return Err("the secret must be one word, without spaces".into());
    }
    Ok(Some(secret))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = herald::cli::normalize_args(std::env::args_os(), &Args::command());
    let args = Args::parse_from(args);
    let secret = match secret(args.secret_file.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(servers) = servers(&args) else {
        eprintln!("error: give --servers LIST, or --port (with --server-ip)");
        return ExitCode::from(2);
    };
    let tls = match tls(&args, &servers) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let settings = Settings {
        id: args.client_id,
        secret,
        exit_when_idle: args.exit_when_idle.map(Duration::from_millis),
        reconnect: !args.no_reconnect,
        show_seq: args.show_seq,
        mid_prefix: mid_prefix(),
        servers: servers.len(),
    };
    let target = Target {
        servers,
        tls,
        max_frame_bytes: usize::try_from(args.max_frame_bytes).unwrap_or(usize::MAX),
    };
    let machine = Machine::new(settings, std::time::Instant::now());
    let run = conn::run(target, machine, tokio::io::stdin());
    let result = match herald::cli::block_on_current_thread(run) {
        Ok(result) => result,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match result {
        Ok(Outcome::Quit) => ExitCode::SUCCESS,
        Ok(Outcome::Refused(reason)) => {
            eprintln!("error: login refused: {reason}");
            ExitCode::from(1)
        }
        Ok(Outcome::Closed(reason)) => {
            eprintln!("error: {reason}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            ExitCode::from(1)
        }
    }
}

/// A message id prefix unique across this client's restarts: the clock and
/// the process id (a counter follows it in each id).
fn mid_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}.{:x}", nanos, std::process::id())
}
