//! `bench`: a load generator for a running Herald server. See
//! `bench --help` and docs/benchmarks.md.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald::bench::{catchup, durable, fill, fsync_rate, CatchupOpts, DurableOpts};

/// Measures a running Herald server over its own protocol connections.
#[derive(Parser, Debug)]
#[command(name = "bench", version, about)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1", global = true)]
    server_ip: String,
    /// Server port.
    #[arg(long, default_value_t = 5000, global = true)]
    port: u16,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// N senders (ids bench-0 … bench-N-1) each send M messages with at most
    /// W unconfirmed; reports confirmed SENDs per second.
    Durable {
        #[arg(long, default_value_t = 20)]
        senders: usize,
        #[arg(long, default_value_t = 2_000)]
        messages: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// bench-w sends K messages while bench-r is away, then bench-r logs in;
    /// reports how long its backlog takes to arrive. `--phase fill` and
    /// `--phase drain` split the two, so the server can be restarted between
    /// them and the backlog comes from disk.
    Catchup {
        #[arg(long, value_enum, default_value_t = Phase::Both)]
        phase: Phase,
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// The raw fsync rate of a directory's disk, 64 records of 100 bytes per
    /// fsync.
    Fsync {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}

/// Which part of the catch-up workload to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Fill,
    Drain,
    Both,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let addr = (args.server_ip.clone(), args.port);
    let result = runtime.block_on(async move {
        match args.workload {
            Workload::Durable {
                senders,
                messages,
                size,
                window,
            } => {
                let r = durable(
                    &addr,
                    DurableOpts {
                        senders,
                        messages,
                        size,
                        window,
                    },
                )
                .await?;
                println!(
                    "durable: {} senders x {} msgs of {} B, window {}: {:.0} confirmed sends/s ({:.3} s), {:.0} deliveries/s",
                    senders,
                    messages,
                    size,
                    window,
                    r.sends as f64 / r.seconds,
                    r.seconds,
                    r.deliveries as f64 / r.seconds
                );
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
                    fill(&addr, opts).await?;
                }
                if phase == Phase::Fill {
                    println!("catchup: {messages} msgs of {size} B stored for bench-r");
                    return anyhow::Ok(());
                }
                let r = catchup(&addr, opts).await?;
                println!(
                    "catchup: {} msgs of {} B drained in {:.3} s: {:.0} msgs/s",
                    messages,
                    size,
                    r.seconds,
                    messages as f64 / r.seconds
                );
            }
            Workload::Fsync { dir, seconds } => {
                let (n, secs) = fsync_rate(&dir, Duration::from_secs_f64(seconds))?;
                println!(
                    "fsync: {:.0} fsyncs/s ({} in {:.2} s, 64 x 100 B each) in {}",
                    n as f64 / secs,
                    n,
                    secs,
                    dir.display()
                );
            }
        }
        anyhow::Ok(())
    });
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
