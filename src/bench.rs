//! Load generation against a running server, for the `bench` binary. Each
//! workload speaks protocol v1 over its own connections and checks what it
//! gets (a run that loses or reorders a message fails instead of reporting a
//! number).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Options of the `durable` workload.
#[derive(Clone, Copy, Debug)]
pub struct DurableOpts {
    /// Concurrent senders.
    pub senders: usize,
    /// Messages per sender.
    pub messages: usize,
    /// Text bytes per message.
    pub size: usize,
    /// Unconfirmed SENDs in flight per sender.
    pub window: usize,
}

/// Result of the `durable` workload.
#[derive(Clone, Copy, Debug)]
pub struct DurableReport {
    /// Confirmed SENDs.
    pub sends: u64,
    /// MSG frames received by the senders meanwhile.
    pub deliveries: u64,
    /// Wall time from the first SEND to the last SENT.
    pub seconds: f64,
}

/// Options of the `catchup` workload.
#[derive(Clone, Copy, Debug)]
pub struct CatchupOpts {
    /// Backlog size.
    pub messages: usize,
    /// Text bytes per message.
    pub size: usize,
    /// Unconfirmed SENDs in flight while filling the backlog.
    pub window: usize,
}

/// Result of the `catchup` workload.
#[derive(Clone, Copy, Debug)]
pub struct CatchupReport {
    /// From `LOGIN` to the last backlog message.
    pub seconds: f64,
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

async fn login(addr: &(String, u16), id: &str) -> anyhow::Result<(Conn, u64)> {
    let stream = TcpStream::connect((addr.0.as_str(), addr.1))
        .await
        .with_context(|| format!("cannot connect to {}:{}", addr.0, addr.1))?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("LOGIN {id}\n").as_bytes()).await?;
    let mut reader = BufReader::with_capacity(256 * 1024, r);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let pending = line
        .trim_end()
        .strip_prefix(&format!("WELCOME {id} "))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("login as {id} refused: {}", line.trim_end()))?;
    Ok((Conn { reader, writer: w }, pending))
}

/// Sends `count` messages of `size` bytes with at most `window` unconfirmed,
/// reading everything that comes back; returns the MSG frames seen.
async fn send_all(conn: Conn, count: usize, size: usize, window: usize) -> anyhow::Result<u64> {
    let Conn { mut reader, mut writer } = conn;
    let permits = Arc::new(Semaphore::new(window.max(1)));
    let text = "x".repeat(size.saturating_sub(8).max(1));
    let writer_permits = permits.clone();
    let write = tokio::spawn(async move {
        let mut sent = 0usize;
        let mut buf = Vec::with_capacity(64 * 1024);
        while sent < count {
            let p = writer_permits.acquire().await?;
            p.forget();
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
            for i in sent..sent + n {
                buf.extend_from_slice(format!("SEND {i:07} {text}\n").as_bytes());
            }
            writer.write_all(&buf).await?;
            sent += n;
        }
        anyhow::Ok(writer)
    });
    let mut confirmed = 0usize;
    let mut last_seq = 0u64;
    let mut deliveries = 0u64;
    let mut line = Vec::with_capacity(256);
    while confirmed < count {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            bail!("server closed the connection after {confirmed} confirmations");
        }
        if let Some(seq) = line.strip_prefix(b"SENT ") {
            let seq: u64 = std::str::from_utf8(seq)?.trim_end().parse()?;
            ensure!(seq > last_seq, "SENT {seq} after SENT {last_seq}");
            last_seq = seq;
            confirmed += 1;
            permits.add_permits(1);
        } else if line.starts_with(b"MSG ") {
            deliveries += 1;
        } else {
            bail!("unexpected frame: {}", String::from_utf8_lossy(&line).trim_end());
        }
    }
    let mut writer = write.await??;
    writer.write_all(b"QUIT\n").await?;
    Ok(deliveries)
}

/// The `durable` workload; see [`DurableOpts`].
pub async fn durable(addr: &(String, u16), opts: DurableOpts) -> anyhow::Result<DurableReport> {
    let mut conns = Vec::new();
    for i in 0..opts.senders {
        conns.push(login(addr, &format!("bench-{i}")).await?.0);
    }
    let deliveries = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for conn in conns {
        let deliveries = deliveries.clone();
        tasks.push(tokio::spawn(async move {
            let d = send_all(conn, opts.messages, opts.size, opts.window).await?;
            deliveries.fetch_add(d, Ordering::Relaxed);
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(DurableReport {
        sends: (opts.senders * opts.messages) as u64,
        deliveries: deliveries.load(Ordering::Relaxed),
        seconds,
    })
}

/// First half of the `catchup` workload: `bench-w` stores the backlog.
pub async fn fill(addr: &(String, u16), opts: CatchupOpts) -> anyhow::Result<()> {
    let (w, _) = login(addr, "bench-w").await?;
    send_all(w, opts.messages, opts.size, opts.window).await?;
    Ok(())
}

/// Second half of the `catchup` workload: `bench-r` logs in and drains
/// exactly `opts.messages` backlog messages (see [`fill`]).
pub async fn catchup(addr: &(String, u16), opts: CatchupOpts) -> anyhow::Result<CatchupReport> {
    let start = Instant::now();
    let (mut r, pending) = login(addr, "bench-r").await?;
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
        let end = rest.iter().position(|&b| b == b' ').context("bad MSG")?;
        let seq: u64 = std::str::from_utf8(&rest[..end])?.parse()?;
        ensure!(seq > last, "MSG {seq} after {last}");
        last = seq;
    }
    let seconds = start.elapsed().as_secs_f64();
    r.writer.write_all(format!("ACK {last}\nQUIT\n").as_bytes()).await?;
    Ok(CatchupReport { seconds })
}

/// Writes 64 records of 100 bytes and fsyncs, repeatedly for `duration`;
/// returns (fsyncs, seconds).
pub fn fsync_rate(dir: &std::path::Path, duration: Duration) -> anyhow::Result<(u64, f64)> {
    use std::io::Write;
    let path = dir.join(".herald-bench-fsync");
    let mut f = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
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
