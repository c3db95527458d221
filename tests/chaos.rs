//! Chaos soak: 20 reconnecting `client` processes send and receive at
//! random, quit and come back, take each other's ids over, while the server
//! is killed with SIGKILL and restarted on the same directory 5 times. Then
//! a checker reads every process's record and the stored log: nothing
//! confirmed is lost, and no line is stored twice (resends carry `@mid`).
//!
//! Bounded in time (HERALD_CHAOS_SECS, 20 s by default; e.g. 300 for a long
//! run) and in count, loopback only, stops by itself. HERALD_CHAOS_SEED
//! replays a run. Run the long version with
//! `HERALD_CHAOS_SECS=300 cargo test --release --test chaos -- --nocapture`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Rng, Server};

const CLIENTS: usize = 20;
const KILLS: usize = 5;

/// One client process and what it printed.
struct Proc {
    id: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    printed: Arc<Mutex<Vec<String>>>,
    typed: Vec<String>,
}

fn spawn_client(port: u16, id: usize) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
        .args([
            "--client-id",
            &format!("c{id}"),
            "--server-ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["--show-seq", "--exit-when-idle", "1500"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let printed = Arc::new(Mutex::new(Vec::new()));
    let sink = printed.clone();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Proc {
        id,
        stdin: child.stdin.take(),
        child,
        printed,
        typed: Vec::new(),
    }
}

fn start_server(dir: &std::path::Path, port: u16) -> Server {
    let ids: Vec<String> = (0..CLIENTS)
        .map(|i| format!("c{i}"))
        .chain(["audit".to_owned()])
        .collect();
    Server::durable_on(dir, port, &ids.join(","))
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `[seq] from: text` → (seq, from, text).
fn parse_printed(line: &str) -> (u64, String, String) {
    let rest = line.strip_prefix('[').unwrap();
    let (seq, rest) = rest.split_once("] ").unwrap();
    let (from, text) = rest.split_once(": ").unwrap();
    (seq.parse().unwrap(), from.to_owned(), text.to_owned())
}

#[test]
fn chaos_soak_loses_nothing_confirmed() {
    let secs: u64 = std::env::var("HERALD_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("HERALD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("chaos: {secs} s, seed {seed} (HERALD_CHAOS_SEED={seed} replays the schedule)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path(), 0);
    let port = server.port;

    let mut live: Vec<Proc> = (0..CLIENTS).map(|i| spawn_client(port, i)).collect();
    let mut done: Vec<Proc> = Vec::new();
    let start = Instant::now();
    let run = Duration::from_secs(secs);
    let mut kills_at: Vec<Duration> = (0..KILLS)
        .map(|_| run.mul_f64((rng.below(900) + 50) as f64 / 1000.0))
        .collect();
    kills_at.sort();
    let mut restarts = 0;
    let mut counter = 0u64;

    while start.elapsed() < run {
        // Typing: a few clients type a line each tick.
        for _ in 0..3 {
            let p = &mut live[rng.below(CLIENTS as u64) as usize];
            let line = format!("c{}-{counter}", p.id);
            counter += 1;
            if let Some(stdin) = p.stdin.as_mut() {
                if writeln!(stdin, "{line}").is_ok() {
                    p.typed.push(line);
                }
            }
        }
        // Now and then a client quits (SIGTERM) and comes back, or a new
        // process takes an id over from the running one.
        if rng.below(100) < 4 {
            let i = rng.below(CLIENTS as u64) as usize;
            let quit = rng.below(2) == 0;
            if quit {
                let _ = Command::new("kill")
                    .args(["-TERM", &live[i].child.id().to_string()])
                    .status();
            }
            let fresh = spawn_client(port, i);
            let mut old = std::mem::replace(&mut live[i], fresh);
            old.stdin = None;
            if !quit {
                // A takeover: whichever of the two logs in last keeps the
                // id (the old one may be reconnecting and come back after
                // the new one); the other ends with BYE replaced.
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    if old.child.try_wait().unwrap().is_some() {
                        break;
                    }
                    if live[i].child.try_wait().unwrap().is_some() {
                        std::mem::swap(&mut old, &mut live[i]);
                        break;
                    }
                    if Instant::now() >= deadline {
                        let _ = old.child.kill();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            done.push(old);
        }
        if kills_at.first().is_some_and(|t| start.elapsed() >= *t) {
            kills_at.remove(0);
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            server = start_server(dir.path(), port);
            restarts += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    while restarts < KILLS {
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        server = start_server(dir.path(), port);
        restarts += 1;
    }

    // Wind down: the live clients see stdin end and quit once every line is
    // confirmed and nothing arrived for a while.
    for p in &mut live {
        p.stdin = None;
    }
    let mut final_codes = Vec::new();
    for p in &mut live {
        final_codes.push((p.id, wait_exit(&mut p.child, Duration::from_secs(60))));
    }
    for p in &mut done {
        wait_exit(&mut p.child, Duration::from_secs(10));
    }

    // The stored log, read by an id that never logged in.
    let log: Vec<(u64, String, String)> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (mut audit, pending) = server.login("audit").await;
            audit.msgs(pending as usize).await
        });
    let by_seq: BTreeMap<u64, (String, String)> = log
        .iter()
        .map(|(s, f, t)| (*s, (f.clone(), t.clone())))
        .collect();
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "the log has holes"
    );

    // Every process: seqs strictly increase (each at most once, one global
    // order) and match the log.
    let mut seen_by_id: HashMap<String, HashMap<u64, usize>> = HashMap::new();
    let mut delivered = 0usize;
    for p in live.iter().chain(&done) {
        let printed = p.printed.lock().unwrap();
        let mut last = 0;
        for line in printed.iter() {
            let (seq, from, text) = parse_printed(line);
            assert!(seq > last, "c{} printed seq {seq} after {last}", p.id);
            last = seq;
            assert_eq!(
                by_seq.get(&seq),
                Some(&(from.clone(), text.clone())),
                "c{} printed a seq the log does not hold",
                p.id
            );
            assert_ne!(
                from,
                format!("c{}", p.id),
                "c{} printed its own message",
                p.id
            );
            *seen_by_id
                .entry(format!("c{}", p.id))
                .or_default()
                .entry(seq)
                .or_default() += 1;
            delivered += 1;
        }
    }

    // Every stored message reached every other id at least once.
    let mut lost = 0;
    for (seq, (from, _)) in &by_seq {
        for i in 0..CLIENTS {
            let id = format!("c{i}");
            if &id != from && !seen_by_id.get(&id).is_some_and(|s| s.contains_key(seq)) {
                lost += 1;
                eprintln!("seq {seq} from {from} never reached {id}");
            }
        }
    }
    // Every line typed into a client that ran to the end was stored.
    let stored: HashSet<&str> = log.iter().map(|(_, _, t)| t.as_str()).collect();
    let mut unstored = 0;
    for p in &live {
        for t in &p.typed {
            if !stored.contains(t.as_str()) {
                unstored += 1;
                eprintln!("c{} typed {t:?}, never stored", p.id);
            }
        }
    }
    let typed: usize = live.iter().chain(&done).map(|p| p.typed.len()).sum();
    let texts: HashSet<&str> = log.iter().map(|(_, _, t)| t.as_str()).collect();
    let redelivered: usize = seen_by_id
        .values()
        .flat_map(|m| m.values())
        .map(|n| n - 1)
        .sum();
    eprintln!(
        "chaos summary: {typed} lines typed, {} stored ({} stored twice), {delivered} printed, \
         {redelivered} printed again by a later process of the same id, {restarts} server restarts survived, \
         {} client processes, lost {}",
        log.len(),
        log.len() - texts.len(),
        live.len() + done.len(),
        lost + unstored
    );
    for (id, code) in final_codes {
        assert_eq!(
            code,
            Some(0),
            "the last client c{id} did not finish cleanly"
        );
    }
    assert_eq!(lost + unstored, 0, "messages were lost");
    // Resent lines carry their @mid: none is stored twice, so every process
    // printed every line at most once.
    assert_eq!(texts.len(), log.len(), "a resent line was stored twice");
}
