//! The `bench` workloads: load generation against a running server.
//!
//! Every workload speaks protocol v1 over its own connections and checks
//! what it gets: a run that loses, duplicates or reorders a message fails
//! instead of reporting a number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

pub use crate::transport::{Addr, Transport};
use crate::transport::{Reader, Writer};

/// The servers a run spreads its clients over: the nodes of one broker (or
/// one server, as a list of one). Client `i` of a workload connects to node
/// `i mod n`, so clients are dealt round-robin.
#[derive(Clone, Debug)]
pub struct Nodes(Vec<Addr>);

impl Nodes {
    /// The nodes in list order; `None` for an empty list.
    pub fn new(nodes: Vec<Addr>) -> Option<Nodes> {
        (!nodes.is_empty()).then_some(Nodes(nodes))
    }

    /// How many nodes there are (at least 1).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The node of the workload's client number `client`.
    pub fn of(&self, client: usize) -> &Addr {
        // `new` refuses an empty list, so the modulus is never 0.
        &self.0[client % self.0.len()]
    }
}

/// Options of the `fanout` and `durable` workloads.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LoadOpts {
    /// Clients, all online, each sending (ids `bench-0` …).
    pub clients: usize,
    /// Messages each client sends.
    pub messages: usize,
    /// Text bytes per message (at least room for a timestamp).
    pub size: usize,
    /// Unconfirmed SENDs in flight per client.
    pub window: usize,
    /// Wait for every delivery (fanout) or only for every SENT (durable).
    pub wait_deliveries: bool,
}

/// What a `fanout` or `durable` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The options of the run.
    pub opts: LoadOpts,
    /// Wall time from the first SEND until the run's goal was reached.
    pub seconds: f64,
    /// Confirmed SENDs.
    pub sends: u64,
    /// MSG frames received.
    pub deliveries: u64,
    /// Confirmed SENDs per second.
    pub sends_per_sec: f64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// End-to-end latency (SEND written to MSG read), microseconds.
    pub latency_us_p50: u64,
    /// 99th percentile of the latency, microseconds.
    pub latency_us_p99: u64,
    /// Highest latency, microseconds.
    pub latency_us_max: u64,
    /// Nodes the clients were spread over (`--servers`; 1 for one server).
    pub nodes: usize,
    /// How the clients connected.
    pub transport: Transport,
    /// Deliveries whose receiver is on another node than their sender.
    pub cross_node_deliveries: u64,
    /// Those per second.
    pub cross_node_deliveries_per_sec: f64,
    /// Latency of those deliveries, microseconds (null without any).
    pub cross_node_latency_us_p50: Option<u64>,
    /// Its 99th percentile, microseconds (null without any).
    pub cross_node_latency_us_p99: Option<u64>,
}

/// Options of the `catchup` workload.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CatchupOpts {
    /// Backlog size.
    pub messages: usize,
    /// Text bytes per message.
    pub size: usize,
    /// Unconfirmed SENDs in flight while filling the backlog.
    pub window: usize,
}

/// What a `catchup` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct CatchupReport {
    /// The options of the run.
    pub opts: CatchupOpts,
    /// From `LOGIN` to the last backlog message.
    pub seconds: f64,
    /// Backlog messages per second.
    pub msgs_per_sec: f64,
}

/// What a `connections` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionsReport {
    /// Idle clients logged in.
    pub connections: usize,
    /// Time to connect and log them all in.
    pub login_seconds: f64,
    /// From the broadcast SEND until every idle client had the message.
    pub broadcast_ms: f64,
    /// Server resident memory growth per connection, when its pid was given.
    pub server_bytes_per_connection: Option<f64>,
}

struct Conn {
    reader: Reader,
    writer: Writer,
}

async fn login(addr: &Addr, id: &str) -> anyhow::Result<(Conn, u64)> {
    login_with_buffer(addr, id, 64 * 1024).await
}

/// Logs in with a read buffer of `capacity` bytes (small for idle clients).
async fn login_with_buffer(addr: &Addr, id: &str, capacity: usize) -> anyhow::Result<(Conn, u64)> {
    let (mut reader, mut w) = crate::transport::connect(addr, capacity).await?;
    w.write_all(format!("LOGIN {id}\n").as_bytes()).await?;
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    let line = String::from_utf8_lossy(&line);
    let pending = line
        .trim_end()
        .strip_prefix(&format!("WELCOME {id} "))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("login as {id} refused: {:?}", line.trim_end()))?;
    Ok((Conn { reader, writer: w }, pending))
}

/// Parses a decimal number at the start of `b`; returns it and the rest
/// after one separator byte.
fn number(b: &[u8]) -> Option<(u64, &[u8])> {
    let end = b
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len());
    if end == 0 {
        return None;
    }
    let mut n = 0u64;
    for &c in &b[..end] {
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some((n, b.get(end + 1..).unwrap_or(&[])))
}

/// Shared progress counters, read by the progress bar.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
}

/// Shows a progress bar on stderr once a run has lasted two seconds.
fn progress_bar(
    progress: Arc<Progress>,
    total: u64,
    what: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed} [{bar:40}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(what);
        loop {
            let done = progress.done.load(Ordering::Relaxed);
            bar.set_position(done);
            if done >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bar.finish_and_clear();
    })
}

/// The latencies one client (or a whole run) measured: of every delivery,
/// and of those whose sender was on another node.
struct Latencies {
    all: Histogram<u64>,
    cross_node: Histogram<u64>,
}

impl Latencies {
    fn new() -> anyhow::Result<Latencies> {
        Ok(Latencies {
            all: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            cross_node: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        })
    }

    fn add(&mut self, other: &Latencies) -> anyhow::Result<()> {
        self.all.add(&other.all)?;
        self.cross_node.add(&other.cross_node)?;
        Ok(())
    }
}

/// One client of a fanout/durable run: sends its messages (text
/// `<micros since start> <k> xxx…`) and reads until its goal; checks that
/// SENTs increase and that each sender's messages arrive complete and in
/// order. `nodes` is how many nodes the clients are dealt over (client `i`
/// on node `i mod nodes`), to tell cross-node deliveries apart.
async fn client_run(
    conn: Conn,
    me: usize,
    opts: LoadOpts,
    nodes: usize,
    start: Instant,
    progress: Arc<Progress>,
) -> anyhow::Result<(u64, Latencies)> {
    let Conn {
        mut reader,
        mut writer,
    } = conn;
    let permits = Arc::new(Semaphore::new(opts.window.max(1)));
    let pad = "x".repeat(opts.size.saturating_sub(20).max(1));
    let writer_permits = permits.clone();
    let count = opts.messages;
    let write = tokio::spawn(async move {
        let mut sent = 0usize;
        let mut buf = Vec::with_capacity(64 * 1024);
        while sent < count {
            writer_permits.acquire().await?.forget();
            let mut n = 1;
            while n < count - sent {
                match writer_permits.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            buf.clear();
            let now = start.elapsed().as_micros();
            for k in sent..sent + n {
                buf.extend_from_slice(format!("SEND {now} {k} {pad}\n").as_bytes());
            }
            writer.write_all(&buf).await?;
            sent += n;
        }
        anyhow::Ok(writer)
    });

    let expected_deliveries = if opts.wait_deliveries {
        ((opts.clients - 1) * opts.messages) as u64
    } else {
        0
    };
    let mut next_k = vec![0u64; opts.clients];
    let mut lat = Latencies::new()?;
    let mut confirmed = 0usize;
    let mut last_sent = 0u64;
    let mut last_msg = 0u64;
    let mut deliveries = 0u64;
    let mut line = Vec::with_capacity(256);
    while confirmed < count || deliveries < expected_deliveries {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            bail!("bench-{me}: server closed the connection");
        }
        if let Some(rest) = line.strip_prefix(b"SENT ") {
            let (seq, _) = number(rest).context("bad SENT")?;
            ensure!(
                seq > last_sent,
                "bench-{me}: SENT {seq} after SENT {last_sent}"
            );
            last_sent = seq;
            confirmed += 1;
            permits.add_permits(1);
            if !opts.wait_deliveries {
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
        } else if let Some(rest) = line.strip_prefix(b"MSG ") {
            let now = start.elapsed().as_micros() as u64;
            let (seq, rest) = number(rest).context("bad MSG seq")?;
            ensure!(seq > last_msg, "bench-{me}: MSG {seq} after MSG {last_msg}");
            last_msg = seq;
            let (_, rest) = number(rest).context("bad MSG time")?;
            let from = rest
                .strip_prefix(b"bench-")
                .context("MSG from a stranger")?;
            let (from, text) = number(from).context("bad sender")?;
            let (sent_at, text) = number(text).context("bad payload")?;
            let (k, _) = number(text).context("bad payload")?;
            let from = from as usize;
            ensure!(
                from != me && from < opts.clients,
                "bench-{me}: MSG from bench-{from}"
            );
            ensure!(
                k == next_k[from],
                "bench-{me}: from bench-{from} got message {k}, expected {}",
                next_k[from]
            );
            next_k[from] += 1;
            deliveries += 1;
            let latency = now.saturating_sub(sent_at).max(1);
            lat.all.saturating_record(latency);
            if from % nodes != me % nodes {
                lat.cross_node.saturating_record(latency);
            }
            if opts.wait_deliveries {
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            bail!(
                "bench-{me}: unexpected frame {:?}",
                String::from_utf8_lossy(&line).trim_end()
            );
        }
    }
    let mut writer = write.await??;
    writer
        .write_all(format!("ACK {last_msg}\nQUIT\n").as_bytes())
        .await?;
    Ok((deliveries, lat))
}

/// The `fanout` and `durable` workloads; see [`LoadOpts`].
pub async fn load(nodes: &Nodes, opts: LoadOpts) -> anyhow::Result<LoadReport> {
    ensure!(
        opts.clients >= 1 && opts.messages >= 1,
        "need at least one client and one message"
    );
    let mut conns = Vec::new();
    for i in 0..opts.clients {
        let (conn, pending) = login(nodes.of(i), &format!("bench-{i}")).await?;
        ensure!(
            pending == 0,
            "bench-{i} has {pending} old messages pending: use a fresh server"
        );
        conns.push(conn);
    }
    let progress = Arc::new(Progress::default());
    let total = if opts.wait_deliveries {
        (opts.clients * (opts.clients - 1) * opts.messages) as u64
    } else {
        (opts.clients * opts.messages) as u64
    };
    let bar = progress_bar(
        progress.clone(),
        total,
        if opts.wait_deliveries {
            "deliveries"
        } else {
            "sends"
        },
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(client_run(
            conn,
            i,
            opts,
            nodes.len(),
            start,
            progress.clone(),
        )));
    }
    let mut deliveries = 0;
    let mut lat = Latencies::new()?;
    for t in tasks {
        let (d, l) = t.await??;
        deliveries += d;
        lat.add(&l)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.abort();
    let sends = (opts.clients * opts.messages) as u64;
    let cross = &lat.cross_node;
    let cross_quantile = |q| (!cross.is_empty()).then(|| cross.value_at_quantile(q));
    Ok(LoadReport {
        opts,
        transport: nodes.of(0).transport,
        seconds,
        sends,
        deliveries,
        sends_per_sec: sends as f64 / seconds,
        deliveries_per_sec: deliveries as f64 / seconds,
        latency_us_p50: lat.all.value_at_quantile(0.5),
        latency_us_p99: lat.all.value_at_quantile(0.99),
        latency_us_max: lat.all.max(),
        nodes: nodes.len(),
        cross_node_deliveries: cross.len(),
        cross_node_deliveries_per_sec: cross.len() as f64 / seconds,
        cross_node_latency_us_p50: cross_quantile(0.5),
        cross_node_latency_us_p99: cross_quantile(0.99),
    })
}

/// First half of `catchup`: `bench-w` stores the backlog (and acknowledges
/// nothing, `bench-r` being away), through the first node.
pub async fn fill(nodes: &Nodes, opts: CatchupOpts) -> anyhow::Result<()> {
    let (mut w, _) = login(nodes.of(0), "bench-w").await?;
    let permits = opts.window.max(1);
    let pad = "x".repeat(opts.size.saturating_sub(8).max(1));
    let mut sent = 0;
    let mut confirmed = 0;
    let mut line = Vec::new();
    while confirmed < opts.messages {
        let mut buf = Vec::new();
        while sent < opts.messages && sent - confirmed < permits {
            buf.extend_from_slice(format!("SEND {sent:07} {pad}\n").as_bytes());
            sent += 1;
        }
        w.writer.write_all(&buf).await?;
        line.clear();
        if w.reader.read_until(b'\n', &mut line).await? == 0 {
            bail!("server closed the connection while filling");
        }
        ensure!(
            line.starts_with(b"SENT "),
            "unexpected {:?}",
            String::from_utf8_lossy(&line)
        );
        confirmed += 1;
    }
    w.writer.write_all(b"QUIT\n").await?;
    Ok(())
}

/// Second half of `catchup`: `bench-r` logs in, through the second node
/// (the first when there is one), and drains exactly `opts.messages`
/// backlog messages, checking their order.
pub async fn drain(nodes: &Nodes, opts: CatchupOpts) -> anyhow::Result<CatchupReport> {
    let start = Instant::now();
    let (mut r, pending) = login(nodes.of(1), "bench-r").await?;
    ensure!(
        pending == opts.messages as u64,
        "bench-r has {pending} pending, expected {}: use a fresh server",
        opts.messages
    );
    let mut line = Vec::with_capacity(256);
    let mut last = 0u64;
    for _ in 0..opts.messages {
        line.clear();
        if r.reader.read_until(b'\n', &mut line).await? == 0 {
            bail!("server closed the connection during the backlog");
        }
        let rest = line.strip_prefix(b"MSG ").context("expected MSG")?;
        let (seq, _) = number(rest).context("bad MSG")?;
        ensure!(seq == last + 1, "MSG {seq} after {last}");
        last = seq;
    }
    let seconds = start.elapsed().as_secs_f64();
    r.writer
        .write_all(format!("ACK {last}\nQUIT\n").as_bytes())
        .await?;
    Ok(CatchupReport {
        opts,
        seconds,
        msgs_per_sec: opts.messages as f64 / seconds,
    })
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read the memory of process {pid}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

/// The `connections` workload: `count` idle clients (`idle-0` …, dealt over
/// the nodes) log in, then `bench-0` broadcasts one message through the
/// first node; measures how long until all have it and, with `server_pid`
/// (one server only), the server's memory per connection.
pub async fn connections(
    nodes: &Nodes,
    count: usize,
    server_pid: Option<u32>,
) -> anyhow::Result<ConnectionsReport> {
    ensure!(
        server_pid.is_none() || nodes.len() == 1,
        "--server-pid measures one server: give one server, not {} in --servers",
        nodes.len()
    );
    let limit = herald::cli::raise_fd_limit().context("cannot raise the open-file limit")?;
    ensure!(
        (count as u64) + 64 < limit,
        "{count} connections need more than the open-file limit {limit}"
    );
    let rss_before = server_pid.map(rss_bytes).transpose()?;
    let login_start = Instant::now();
    let mut conns = Vec::with_capacity(count);
    // Log in 100 at a time: a bigger burst of connects can overflow the
    // listen backlog, and a dropped SYN is retried only after a second.
    for first in (0..count).step_by(100) {
        let logins = (first..(first + 100).min(count)).map(|i| {
            let addr = nodes.of(i).clone();
            async move { login_with_buffer(&addr, &format!("idle-{i}"), 256).await }
        });
        for r in futures_join(logins).await {
            let (c, pending) = r?;
            ensure!(
                pending == 0,
                "an idle client has old messages pending: use a fresh server"
            );
            conns.push(c);
        }
    }
    let login_seconds = login_start.elapsed().as_secs_f64();
    let rss_after = server_pid.map(rss_bytes).transpose()?;

    let (mut sender, _) = login(nodes.of(0), "bench-0").await?;
    let start = Instant::now();
    sender.writer.write_all(b"SEND hello everyone\n").await?;
    let waits = conns.into_iter().map(|mut c| async move {
        let mut line = Vec::new();
        c.reader.read_until(b'\n', &mut line).await?;
        ensure!(
            line.starts_with(b"MSG "),
            "unexpected {:?}",
            String::from_utf8_lossy(&line)
        );
        anyhow::Ok((start.elapsed(), c))
    });
    let mut slowest = Duration::ZERO;
    let mut done = Vec::with_capacity(count);
    for r in futures_join(waits).await {
        let (elapsed, c) = r?;
        slowest = slowest.max(elapsed);
        done.push(c);
    }
    for mut c in done {
        c.writer.write_all(b"QUIT\n").await?;
    }
    Ok(ConnectionsReport {
        connections: count,
        login_seconds,
        broadcast_ms: slowest.as_secs_f64() * 1000.0,
        server_bytes_per_connection: match (rss_before, rss_after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / count as f64),
            _ => None,
        },
    })
}

/// Runs futures concurrently and collects their results in order.
async fn futures_join<F, T>(futs: impl IntoIterator<Item = F>) -> Vec<anyhow::Result<T>>
where
    F: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.map_err(anyhow::Error::from).and_then(|r| r));
    }
    out
}

/// Writes 64 records of 100 bytes and fsyncs, repeatedly for `duration`;
/// returns (fsyncs, seconds).
pub fn fsync_rate(dir: &std::path::Path, duration: Duration) -> anyhow::Result<(u64, f64)> {
    use std::io::Write;
    let path = dir.join(".herald-bench-fsync");
    let mut f = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let record = [b'r'; 100];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        for _ in 0..64 {
            f.write_all(&record)?;
        }
        f.sync_data()?;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok((n, secs))
}
