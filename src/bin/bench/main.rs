//! `bench`: a load generator for a running Herald server. Parses the
//! command line and runs a workload from [`workloads`]; see
//! docs/benchmarks.md.

// No panics on input or I/O paths: errors are values. Tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

// The client's `--servers` parser, so both programs read a list alike (the
// client's failover rotation in it is not used here).
#[allow(dead_code)]
#[path = "../client/servers.rs"]
mod servers;
mod transport;
mod workloads;
mod ws;

use servers::NodeList;
use workloads as bench;
use workloads::{Addr, CatchupOpts, LoadOpts, Nodes, Transport};

/// Herald load generator: measures a running Herald server (it is not a
/// server itself) over ordinary protocol connections.
///
/// The server must allow the client ids the workload uses: fanout and
/// durable use bench-0 … bench-<N-1> (N = --clients); catchup uses bench-w
/// and bench-r; connections uses idle-0 … idle-<N-1> and bench-0; fsync
/// needs no server. For example: server --client-ids
/// bench-0,bench-1,bench-w,bench-r … --max-connections 20000. Every
/// workload wants a fresh server (or fresh ids): it refuses to run when its
/// ids have old messages pending, and catchup in particular needs bench-r
/// to have nothing pending before it fills.
///
/// With --servers the clients are dealt round-robin over the nodes of a
/// cluster (client number i on node i mod n: bench-0 on the first, bench-1
/// on the second, …; catchup fills through the first and drains through the
/// second), and fanout and durable also report the latency of deliveries
/// whose receiver is on another node than their sender.
#[derive(Parser, Debug)]
#[command(name = "bench", version)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1", global = true)]
    server_ip: String,
    /// Server port.
    #[arg(long, default_value_t = 5000, global = true)]
    port: u16,
    /// The nodes of a cluster, `host:port,host:port…` (IPv6 as
    /// `[addr]:port`), instead of --server-ip/--port: clients are dealt
    /// round-robin over them.
    #[arg(long, value_name = "LIST", global = true, value_parser = servers::parse_list,
          conflicts_with_all = ["server_ip", "port"])]
    servers: Option<NodeList>,
    /// How to connect: `tcp`, or `ws` for WebSocket at /ws of the port
    /// the server was given with --http-bind (pass that port as --port).
    #[arg(long, value_enum, default_value_t = Transport::Tcp, global = true)]
    transport: Transport,
    /// Print one JSON object per run instead of the human summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// N clients (bench-0 …) online, each sends M messages with at most W
    /// unconfirmed; every message reaches the N-1 others. Reports
    /// deliveries/s, sends/s and end-to-end latency.
    Fanout {
        /// Clients online, each sending and receiving (bench-0 …).
        #[arg(long, default_value_t = 20)]
        clients: usize,
        /// Messages each client sends.
        #[arg(long, default_value_t = 2_000)]
        messages: usize,
        /// Bytes of text per message.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Most unconfirmed SENDs per client.
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// N clients (bench-0 …) each send M messages with at most W
    /// unconfirmed; reports sustained confirmed SENDs per second.
    Durable {
        /// Sending clients (bench-0 …); `--senders` is an old name for it.
        #[arg(long, alias = "senders", default_value_t = 20)]
        clients: usize,
        /// Messages each client sends.
        #[arg(long, default_value_t = 2_000)]
        messages: usize,
        /// Bytes of text per message.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Most unconfirmed SENDs per client.
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// bench-w stores K messages while bench-r is away, then bench-r logs in;
    /// reports how long its backlog takes to arrive. Needs a server where
    /// bench-r has nothing pending (a fresh one, or one where the last
    /// catchup drained). `--phase fill` and
    /// `--phase drain` split the two, so the server can be restarted between
    /// them and the backlog comes from disk.
    Catchup {
        /// Fill the backlog, drain it, or both.
        #[arg(long, value_enum, default_value_t = Phase::Both)]
        phase: Phase,
        /// Messages in the backlog.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Bytes of text per message.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Most unconfirmed SENDs while filling.
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// C idle clients (idle-0 …) log in, then bench-0 broadcasts one
    /// message; reports the time until all have it and, with --server-pid,
    /// the server's memory per connection.
    Connections {
        /// Idle clients to log in (idle-0 …).
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// The server's process id, to read its memory from /proc.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// The raw fsync rate of a directory's disk, 64 records of 100 bytes per
    /// fsync.
    Fsync {
        /// A directory on the disk to measure.
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        /// How long to measure.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}

/// Which part of the catch-up workload to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Phase {
    Fill,
    Drain,
    Both,
}

/// Prints a run's report: the JSON object (with its workload's name) with
/// `--json`, else the human summary.
fn emit(
    json: bool,
    workload: &str,
    report: &impl serde::Serialize,
    human: String,
) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(report)?;
        value["workload"] = workload.into();
        println!("{value}");
    } else {
        println!("{human}");
    }
    Ok(())
}

/// The nodes from the flags: --servers, else --server-ip and --port.
fn nodes(args: &Args) -> anyhow::Result<Nodes> {
    let addr = |host: &str, port| Addr {
        host: host.to_owned(),
        port,
        transport: args.transport,
    };
    let list = match &args.servers {
        Some(list) => list.0.iter().map(|n| addr(&n.host, n.port)).collect(),
        None => vec![addr(&args.server_ip, args.port)],
    };
    Nodes::new(list).context("--servers names no server")
}

/// The fanout/durable summary line; with several nodes it adds the
/// deliveries between nodes and their latency.
fn load_summary(name: &str, r: &bench::LoadReport) -> String {
    let o = &r.opts;
    let ms = |us: u64| us as f64 / 1000.0;
    let mut line = format!(
        "{name}: {} clients x {} msgs of {} B, window {}, over {}: \
         {:.0} deliveries/s, {:.0} sends/s in {:.3} s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        o.clients,
        o.messages,
        o.size,
        o.window,
        match r.transport {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        },
        r.deliveries_per_sec,
        r.sends_per_sec,
        r.seconds,
        ms(r.latency_us_p50),
        ms(r.latency_us_p99),
        ms(r.latency_us_max)
    );
    if r.nodes > 1 {
        line += &format!(
            "\n  over {} nodes: {:.0} cross-node deliveries/s",
            r.nodes, r.cross_node_deliveries_per_sec
        );
        if let (Some(p50), Some(p99)) = (r.cross_node_latency_us_p50, r.cross_node_latency_us_p99) {
            line += &format!(
                ", cross-node latency p50 {:.2} ms, p99 {:.2} ms",
                ms(p50),
                ms(p99)
            );
        }
    }
    line
}

async fn run(args: Args) -> anyhow::Result<()> {
    let addr = nodes(&args)?;
    let json = args.json;
    match args.workload {
        Workload::Fanout {
            clients,
            messages,
            size,
            window,
        }
        | Workload::Durable {
            clients,
            messages,
            size,
            window,
        } => {
            let fanout = matches!(args.workload, Workload::Fanout { .. });
            let opts = LoadOpts {
                clients,
                messages,
                size,
                window,
                wait_deliveries: fanout,
            };
            let r = bench::load(&addr, opts).await?;
            let name = if fanout { "fanout" } else { "durable" };
            emit(json, name, &r, load_summary(name, &r))?;
        }
        Workload::Catchup {
            phase,
            messages,
            size,
            window,
        } => {
            let opts = CatchupOpts {
                messages,
                size,
                window,
            };
            if phase != Phase::Drain {
                bench::fill(&addr, opts).await?;
            }
            if phase == Phase::Fill {
                eprintln!("catchup: {messages} messages of {size} B stored for bench-r");
                return Ok(());
            }
            let r = bench::drain(&addr, opts).await?;
            let human = format!(
                "catchup: {messages} msgs of {size} B drained in {:.3} s: {:.0} msgs/s",
                r.seconds, r.msgs_per_sec
            );
            emit(json, "catchup", &r, human)?;
        }
        Workload::Connections {
            clients,
            server_pid,
        } => {
            let r = bench::connections(&addr, clients, server_pid).await?;
            let per = r.server_bytes_per_connection.map_or_else(
                || "server memory not measured (no --server-pid)".to_owned(),
                |b| format!("{b:.0} B of server memory each"),
            );
            let human = format!(
                "connections: {clients} idle clients logged in in {:.2} s; broadcast reached all in {:.1} ms; {per}",
                r.login_seconds, r.broadcast_ms
            );
            emit(json, "connections", &r, human)?;
        }
        Workload::Fsync { dir, seconds } => {
            let (n, secs) = bench::fsync_rate(&dir, Duration::from_secs_f64(seconds))?;
            let rate = n as f64 / secs;
            let human = format!(
                "fsync: {rate:.0} fsyncs/s (64 x 100 B each) in {}",
                dir.display()
            );
            let report = serde_json::json!({"fsyncs_per_sec": rate, "dir": dir});
            emit(json, "fsync", &report, human)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse_from(herald::cli::normalize_args(
        std::env::args_os(),
        &Args::command(),
    ));
    let result = match herald::cli::block_on_current_thread(run(args)) {
        Ok(result) => result,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
