//! Cluster mode under faults (protocol.md "Cluster", cluster design 9):
//! a node killed with SIGKILL while real `client --servers …` processes
//! keep typing, PostgreSQL killed and restarted during traffic, and every
//! node's database connections cut at once. The nodes that stay up recover
//! by themselves; nothing confirmed or typed is lost, nothing is stored
//! twice, and every client sees one order.
//!
//! A node started against an unreachable database exits 1 with one line:
//! that start is the same for one node or many and is covered by
//! `postgres::an_unreachable_database_fails_the_start_with_one_line`.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/cluster_clients.rs"]
mod cluster_clients;
mod common;
#[path = "common/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{wait_until, Cluster};
use cluster_clients::{ClientProc, Peer};

/// Each client types one line per this interval.
const TYPING_EVERY: Duration = Duration::from_millis(20);

/// How long the clients get to settle (reconnect, resend, deliver) once
/// typing stopped.
const SETTLE: Duration = Duration::from_secs(30);

/// Types one line into every client each [`TYPING_EVERY`] for `length`.
fn type_for(clients: &mut [ClientProc], length: Duration, counter: &mut usize) {
    let end = Instant::now() + length;
    while Instant::now() < end {
        for p in clients.iter_mut() {
            let line = format!("{}-{counter}", p.id);
            *counter += 1;
            assert!(
                p.type_line(&line),
                "{} stopped reading stdin: {:?}",
                p.id,
                p.notes()
            );
        }
        // Pacing, not waiting for a condition: a steady typing rate.
        std::thread::sleep(TYPING_EVERY);
    }
}

/// Every line typed into `clients` was printed by every other client;
/// waits (bounded) for it.
fn wait_all_delivered(clients: &[ClientProc]) {
    let missing = || {
        let mut missing = Vec::new();
        for p in clients {
            let printed: std::collections::HashSet<String> =
                p.received().into_iter().map(|m| m.2).collect();
            for q in clients.iter().filter(|q| q.id != p.id) {
                let n = q.typed.iter().filter(|t| !printed.contains(*t)).count();
                if n > 0 {
                    missing.push(format!("{} misses {n} of {}'s lines", p.id, q.id));
                }
            }
        }
        missing
    };
    wait_until(
        SETTLE,
        || missing().is_empty(),
        || {
            let notes: Vec<String> = clients
                .iter()
                .map(|p| format!("{} said: {:?}", p.id, p.notes()))
                .collect();
            format!(
                "not every line reached every other client: {:?}\n{}",
                missing(),
                notes.join("\n")
            )
        },
    );
}

/// The stored log is dense, holds every typed line exactly once from its
/// typist and nothing else, and each client printed exactly the others'
/// messages, each once, in seq order, as stored.
fn check_log_and_prints(c: &Cluster, clients: &[ClientProc]) {
    let log = c.stored();
    assert_eq!(
        log.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "the stored log has holes"
    );
    assert_eq!(c.counter(), log.len() as u64, "the counter is not the head");
    let mut copies: HashMap<&str, Vec<u64>> = HashMap::new();
    for (seq, _, text) in &log {
        copies.entry(text.as_str()).or_default().push(*seq);
    }
    let mut typed = 0;
    for p in clients {
        for t in &p.typed {
            typed += 1;
            match copies.get(t.as_str()).map(Vec::as_slice) {
                Some([seq]) => assert_eq!(
                    log[*seq as usize - 1].1,
                    p.id,
                    "{t:?} stored under another sender"
                ),
                Some(seqs) => panic!("{t:?} stored {} times, at {seqs:?}", seqs.len()),
                None => panic!("{t:?} typed into {} was never stored", p.id),
            }
        }
    }
    assert_eq!(log.len(), typed, "lines nobody typed were stored");
    for p in clients {
        let want: Vec<_> = log.iter().filter(|m| m.1 != p.id).cloned().collect();
        assert_eq!(
            p.received(),
            want,
            "{} did not print the others' lines once each in seq order",
            p.id
        );
    }
}

#[test]
fn a_node_killed_mid_stream_loses_no_typed_line_and_stores_none_twice() {
    const CLIENTS: usize = 6;
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    let mut c = Cluster::start(3, &ids.join(","));
    // Two clients prefer each node.
    let mut clients: Vec<ClientProc> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| ClientProc::spawn(&c.servers_from(i % 3), id, &[]))
        .collect();
    for p in &clients {
        p.wait_logged_in(1);
    }
    let mut counter = 0;
    type_for(&mut clients, Duration::from_millis(1000), &mut counter);
    c.kill9(0);
    type_for(&mut clients, Duration::from_millis(1500), &mut counter);
    // The clients that were on node 0 moved on to another node.
    for p in clients.iter().filter(|p| p.id == "c0" || p.id == "c3") {
        p.wait_logged_in(2);
    }
    c.restart(0);
    type_for(&mut clients, Duration::from_millis(1000), &mut counter);
    for p in &mut clients {
        p.close_stdin();
    }
    wait_all_delivered(&clients);
    for p in &mut clients {
        assert!(p.running(), "{} exited: {:?}", p.id, p.notes());
    }
    check_log_and_prints(&c, &clients);
    eprintln!("{counter} lines typed, each stored and delivered once");
}

/// Writers and readers on every node; PostgreSQL is killed with SIGKILL
/// and restarted while the writers' SENDs are in flight. Every confirmed
/// message is kept, the waiting SENDs are answered once the database is
/// back, the readers stay connected (sessions are not closed while the
/// database is away) and see one dense order, and new messages cross
/// between nodes again without any node being restarted.
#[tokio::test]
async fn the_nodes_ride_out_a_kill_9_of_postgresql() {
    let mut c = Cluster::start(3, "w0,w1,w2,r0,r1,r2,late");
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for i in 0..3 {
        readers.push(Peer::login(c.node(i), &format!("r{i}")).await.0);
        writers.push(Peer::login(c.node(i), &format!("w{i}")).await.0);
    }
    let mut confirmed: Vec<(u64, String, String)> = Vec::new();
    for k in 0..20 {
        for w in &mut writers {
            let text = format!("before {k}");
            confirmed.push((w.send(&text).await, w.id.clone(), text));
        }
    }
    // SENDs in flight through every node when the database dies.
    for w in &mut writers {
        let mut batch = String::new();
        for k in 0..20 {
            batch.push_str(&format!("SEND during {k}\n"));
        }
        w.conn.send_raw(batch.as_bytes()).await;
    }
    c.kill9_pg();
    c.restart_pg();
    for w in &mut writers {
        let mut k = 0;
        while k < 20 {
            let line = w.conn.line().await;
            let Some(seq) = line.strip_prefix("SENT ") else {
                // A message from another writer, or a wrong answer.
                let m = common::parse_msg(&line)
                    .unwrap_or_else(|| panic!("{} got {line:?} for a SEND", w.id));
                assert_ne!(m.1, w.id, "a writer was sent its own message");
                continue;
            };
            confirmed.push((seq.parse().unwrap(), w.id.clone(), format!("during {k}")));
            k += 1;
        }
    }
    // The nodes recovered by themselves: new messages through each node.
    for w in &mut writers {
        let text = "after".to_owned();
        confirmed.push((w.send(&text).await, w.id.clone(), text));
    }
    confirmed.sort();
    assert_eq!(
        confirmed.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=confirmed.len() as u64).collect::<Vec<_>>(),
        "the confirmed seqs are not dense"
    );
    for r in &mut readers {
        assert_eq!(
            r.msgs(confirmed.len()).await,
            confirmed,
            "{} (online throughout) saw another log",
            r.id
        );
        r.expect_quiet().await;
    }
    assert_eq!(c.stored(), confirmed);
    let (mut late, pending) = Peer::login(c.node(1), "late").await;
    assert_eq!(pending, confirmed.len() as u64);
    assert_eq!(late.msgs(confirmed.len()).await, confirmed);
}

/// Every database connection of every node is cut at once (the listener's
/// too, so wake-ups sent meanwhile are lost): the nodes reconnect by
/// themselves and messages cross between nodes again.
#[tokio::test]
async fn the_nodes_recover_when_their_database_connections_are_cut() {
    let c = Cluster::start(3, "w0,w1,w2,r0,r1,r2");
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for i in 0..3 {
        readers.push(Peer::login(c.node(i), &format!("r{i}")).await.0);
        writers.push(Peer::login(c.node(i), &format!("w{i}")).await.0);
    }
    let mut log = Vec::new();
    for w in &mut writers {
        log.push((w.send("before").await, w.id.clone(), "before".to_owned()));
    }
    let cut: i64 = c.query(|db| {
        db.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .len() as i64
    });
    assert!(
        cut >= c.len() as i64,
        "only {cut} node connections were found to cut"
    );
    for w in &mut writers {
        log.push((w.send("after").await, w.id.clone(), "after".to_owned()));
    }
    log.sort();
    assert_eq!(
        log.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    for r in &mut readers {
        assert_eq!(r.msgs(6).await, log, "{}", r.id);
        r.expect_quiet().await;
    }
}

/// PostgreSQL backends paused with SIGSTOP; resumed when dropped, so the
/// database can stop at the end of the test.
struct Paused(Vec<i32>);

impl Paused {
    fn pause(pids: Vec<i32>) -> Paused {
        for pid in &pids {
            signal(*pid, "STOP");
        }
        Paused(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal(*pid, "CONT");
        }
    }
}

fn signal(pid: i32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// The backends of the nodes' listener connections (the ones that ran
/// `LISTEN`), once every node has one and all of them are idle.
fn idle_listeners(c: &Cluster) -> Vec<i32> {
    let listeners = || {
        c.query(|db| {
            db.query(
                "SELECT pid, coalesce(state, ''), coalesce(wait_event, '') \
                 FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND query ILIKE '%LISTEN%'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, i32>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                )
            })
            .collect::<Vec<_>>()
        })
    };
    let ready = |l: &[(i32, String, String)]| {
        l.len() == c.len() && l.iter().all(|b| b.1 == "idle" && b.2 == "ClientRead")
    };
    wait_until(
        common::DEADLINE,
        || ready(&listeners()),
        || {
            format!(
                "expected one idle LISTEN connection per node, found {:?}",
                listeners()
            )
        },
    );
    listeners().into_iter().map(|b| b.0).collect()
}

/// Every node's listener is paused, so no wake-up between nodes arrives:
/// a message still reaches the other nodes' clients, and a login still
/// replaces the same id's connection on another node (the nodes' periodic
/// catch-up finds both in the database).
#[tokio::test]
async fn messages_and_takeovers_cross_nodes_when_wake_ups_are_lost() {
    let c = Cluster::start(3, "1,2,3");
    let (mut a1, _) = Peer::login(c.node(0), "1").await;
    let (mut b2, _) = Peer::login(c.node(1), "2").await;
    let (mut c3, _) = Peer::login(c.node(2), "3").await;
    let paused = Paused::pause(idle_listeners(&c));

    let t = Instant::now();
    assert_eq!(a1.send("no wake-up").await, 1);
    b2.expect(1, "1", "no wake-up").await;
    c3.expect(1, "1", "no wake-up").await;
    eprintln!(
        "delivered to two other nodes without wake-ups in {:?}",
        t.elapsed()
    );
    assert_eq!(c3.send("back").await, 2);
    a1.expect(2, "3", "back").await;
    b2.expect(2, "3", "back").await;

    let t = Instant::now();
    let (mut b1, pending) = Peer::login(c.node(1), "1").await;
    assert_eq!(pending, 1, "1 never acked message 2");
    a1.expect_bye("replaced").await;
    eprintln!(
        "replaced across nodes without wake-ups in {:?}",
        t.elapsed()
    );
    b1.expect(2, "3", "back").await;
    assert_eq!(b1.send("from B").await, 3);
    c3.expect(3, "1", "from B").await;
    drop(paused);
}

/// Rounds of kill -9 and restart of PostgreSQL in
/// [`every_sent_names_its_message_through_repeated_postgresql_kills`].
const PG_KILLS: usize = 8;

/// One writer's stream: SENDs paced through one node's connection until
/// `stop`, and every answer read; returns (texts sent, SENT seqs).
async fn stream_sends(
    peer: Peer,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
) -> (Vec<String>, Vec<u64>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let id = peer.id.clone();
    let common::Conn {
        mut reader,
        mut writer,
    } = peer.conn;
    let total = Arc::new(AtomicUsize::new(usize::MAX));
    let sender = {
        let (id, total) = (id.clone(), total.clone());
        tokio::spawn(async move {
            let mut texts = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let text = format!("{id}-{}", texts.len());
                writer
                    .write_all(format!("SEND {text}\n").as_bytes())
                    .await
                    .unwrap();
                texts.push(text);
                // Pacing: a steady stream of commits, not a wait.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            total.store(texts.len(), Ordering::SeqCst);
            (texts, writer)
        })
    };
    let mut seqs = Vec::new();
    while seqs.len() < total.load(Ordering::SeqCst) {
        let mut line = String::new();
        let read = tokio::time::timeout(common::DEADLINE, reader.read_line(&mut line)).await;
        let n = read
            .unwrap_or_else(|_| panic!("{id}: no answer for {:?}", common::DEADLINE))
            .unwrap();
        assert!(n > 0, "{id}: the node closed the connection");
        let line = line.trim_end();
        if let Some(seq) = line.strip_prefix("SENT ") {
            seqs.push(seq.parse().unwrap());
            answered.fetch_add(1, Ordering::SeqCst);
        } else {
            assert!(line.starts_with("MSG "), "{id}: {line:?} for a SEND");
        }
    }
    let (texts, _writer) = sender.await.unwrap();
    (texts, seqs)
}

/// PostgreSQL is killed with SIGKILL and restarted several times while
/// every node commits a steady stream of SENDs, so commits are cut at every
/// stage (before, during and after `COMMIT`). Every SEND is answered `SENT`
/// in the end, and every `SENT <seq>` names its own message in the stored
/// log: an interrupted commit is never taken for applied, nor one applied
/// for lost.
#[tokio::test]
async fn every_sent_names_its_message_through_repeated_postgresql_kills() {
    let mut c = Cluster::start(3, "w0,w1,w2");
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for i in 0..3 {
        let (peer, _) = Peer::login(c.node(i), &format!("w{i}")).await;
        writers.push(tokio::spawn(stream_sends(
            peer,
            stop.clone(),
            answered.clone(),
        )));
    }
    for _ in 0..PG_KILLS {
        // Traffic flows (again) before each kill.
        let from = answered.load(Ordering::SeqCst);
        let deadline = Instant::now() + common::DEADLINE;
        while answered.load(Ordering::SeqCst) < from + 150 {
            assert!(Instant::now() < deadline, "commits did not resume");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Off the runtime's thread, so the writers keep reading meanwhile.
        c = tokio::task::spawn_blocking(move || {
            c.kill9_pg();
            c.restart_pg();
            c
        })
        .await
        .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let mut claims = Vec::new();
    for w in writers {
        let (texts, seqs) = w.await.unwrap();
        assert_eq!(texts.len(), seqs.len());
        claims.extend(seqs.into_iter().zip(texts));
    }
    let log = c.stored();
    let mut wrong = Vec::new();
    for (seq, text) in &claims {
        let stored = log.get(*seq as usize - 1).map(|m| m.2.as_str());
        if stored != Some(text.as_str()) {
            let at: Vec<u64> = log.iter().filter(|m| &m.2 == text).map(|m| m.0).collect();
            wrong.push(format!(
                "SENT {seq} for {text:?}: the log holds {stored:?} there, {text:?} at {at:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} answers were wrong; the first ones:\n{}",
        wrong.len(),
        claims.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
    claims.sort();
    assert_eq!(
        claims.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=claims.len() as u64).collect::<Vec<_>>(),
        "the SENT seqs are not dense"
    );
    assert_eq!(log.len(), claims.len(), "messages stored without a SENT");
}
