//! `client`: a line-oriented Herald chat client. Parses the command line and
//! runs [`herald::client::run`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use herald::client::{ClientConfig, ClientTls, Outcome};
use herald::ClientId;

/// Herald chat client: sends every line typed on stdin, prints every message
/// received as `<from>: <text>`.
#[derive(Parser, Debug)]
#[command(name = "client", version, about)]
struct Args {
    /// The client id to log in as.
    #[arg(long, value_parser = |s: &str| ClientId::new(s).map_err(|e| e.to_string()))]
    client_id: ClientId,

    /// Server address or host name.
    #[arg(long, default_value = "127.0.0.1")]
    server_ip: String,

    /// Server port.
    #[arg(long)]
    port: u16,

    /// For scripts: once stdin has ended and every line is confirmed
    /// (SENT), quit (status 0) after no message arrived for MS milliseconds.
    /// Without it the client keeps receiving after stdin ends.
    #[arg(long, value_name = "MS")]
    exit_when_idle: Option<u64>,

    /// Exit when the connection drops instead of reconnecting (by default
    /// the client reconnects with backoff and resends unconfirmed lines).
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

    /// The name the server's certificate must carry (default: --server-ip).
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_server_name: Option<String>,
}

/// TLS settings from the flags.
fn tls(args: &Args) -> Result<Option<ClientTls>, String> {
    let Some(ca) = args.ca_file.as_deref().filter(|_| args.tls) else {
        return Ok(None);
    };
    let config = herald::net::tls::client_config(ca).map_err(|e| e.to_string())?;
    let name = args
        .tls_server_name
        .clone()
        .unwrap_or_else(|| args.server_ip.clone());
    let server_name = rustls_pki_types::ServerName::try_from(name.clone())
        .map_err(|e| format!("'{name}' is not a valid server name: {e}"))?;
    Ok(Some(ClientTls {
        config,
        server_name,
    }))
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
    let tls = match tls(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let config = ClientConfig {
        tls,
        secret,
        server: args.server_ip,
        port: args.port,
        id: args.client_id,
        exit_when_idle: args.exit_when_idle.map(Duration::from_millis),
        reconnect: !args.no_reconnect,
        show_seq: args.show_seq,
    };
    let result = match herald::cli::block_on_current_thread(herald::client::run(config)) {
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
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
