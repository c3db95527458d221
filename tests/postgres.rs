//! The PostgreSQL store, against a real private PostgreSQL 15: the store's
//! promises (recovery, numbering, mids, acks, pruning, bounded reads), and
//! the server on it (kill -9 of the server and of PostgreSQL, refused
//! starts, flag conflicts, one node per database).

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::time::Duration;

use common::{assert_one_line_failure, failed_start, Server};
use herald::net::Message;
use herald::store::{MidRecord, PostgresStore, Store};
use herald::types::{ClientId, Seq};
use pg::PgServer;

fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

fn msg(seq: u64, from: &str, text: &str) -> Message {
    Message::new(Seq(seq), 1000 + seq, id(from), text.as_bytes())
}

fn mid(client: &str, mid: &str, seq: u64) -> MidRecord {
    MidRecord {
        client: id(client),
        mid: mid.into(),
        seq: Seq(seq),
        unix_ms: 1000 + seq,
    }
}

#[test]
fn the_store_recovers_what_it_stored_and_numbering_continues() {
    let pg = PgServer::start();
    let url = pg.new_database();
    {
        let mut s = PostgresStore::open(&url).unwrap();
        let r = s.recover().unwrap();
        assert_eq!((r.head, r.acks.len(), r.mids.len()), (Seq(0), 0, 0));
        s.append(
            &[msg(1, "a", "one"), msg(2, "b", "two"), msg(3, "a", "three")],
            &[mid("a", "m1", 1), mid("a", "m3", 3)],
        )
        .unwrap();
        s.save_acks(&[(id("b"), Seq(1)), (id("b"), Seq(3))])
            .unwrap();
        // A cursor never goes back.
        s.save_acks(&[(id("b"), Seq(2))]).unwrap();
    }
    let mut s = PostgresStore::open(&url).unwrap();
    let r = s.recover().unwrap();
    assert_eq!(r.head, Seq(3));
    assert_eq!(r.acks.get(&id("b")), Some(&Seq(3)));
    assert_eq!(r.mids, vec![mid("a", "m1", 1), mid("a", "m3", 3)]);
    assert_eq!(
        s.read_after(Seq(1), Seq(3), 10, usize::MAX).unwrap(),
        vec![msg(2, "b", "two"), msg(3, "a", "three")]
    );
    assert_eq!(s.count_from_others(Seq(0), Seq(3), &id("a")).unwrap(), 1);
    assert_eq!(
        s.first_not_from(Seq(0), Seq(3), &id("a")).unwrap(),
        Some(Seq(2))
    );
    assert_eq!(s.first_not_from(Seq(2), Seq(3), &id("a")).unwrap(), None);
    // Numbering goes on after the head; a batch whose seqs are taken is refused.
    s.append(&[msg(4, "b", "four")], &[]).unwrap();
    assert!(s.append(&[msg(4, "b", "again")], &[]).is_err());
    assert_eq!(s.recover().unwrap().head, Seq(4));
    // Forgetting mids: a's below 3 go.
    s.forget_mids(&[(id("a"), Seq(3))]).unwrap();
    assert_eq!(s.recover().unwrap().mids, vec![mid("a", "m3", 3)]);
}

#[test]
fn reads_are_bounded_by_count_and_bytes_but_return_at_least_one() {
    let pg = PgServer::start();
    let mut s = PostgresStore::open(&pg.new_database()).unwrap();
    let big = "x".repeat(1000);
    let batch: Vec<Message> = (1..=10).map(|i| msg(i, "a", &big)).collect();
    s.append(&batch, &[]).unwrap();
    assert_eq!(
        s.read_after(Seq(0), Seq(10), 3, usize::MAX).unwrap().len(),
        3
    );
    assert_eq!(
        s.read_after(Seq(2), Seq(4), 100, usize::MAX).unwrap().len(),
        2
    );
    let frame = batch[0].frame().len();
    assert_eq!(
        s.read_after(Seq(0), Seq(10), 100, frame * 2).unwrap().len(),
        2
    );
    assert_eq!(s.read_after(Seq(0), Seq(10), 100, 1).unwrap().len(), 1);
    assert!(s.read_after(Seq(10), Seq(20), 100, 1).unwrap().is_empty());
}

#[test]
fn pruning_keeps_the_numbering() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let mut s = PostgresStore::open(&url).unwrap();
    s.append(&[msg(1, "a", "x"), msg(2, "a", "y"), msg(3, "b", "z")], &[])
        .unwrap();
    assert_eq!(s.prune(Seq(2)).unwrap(), 2);
    assert_eq!(
        s.read_after(Seq(0), Seq(3), 10, usize::MAX).unwrap(),
        vec![msg(3, "b", "z")]
    );
    assert_eq!(s.prune(Seq(3)).unwrap(), 1);
    drop(s);
    let mut s = PostgresStore::open(&url).unwrap();
    assert_eq!(s.recover().unwrap().head, Seq(3));
    s.append(&[msg(4, "a", "w")], &[]).unwrap();
}

#[test]
fn an_unreachable_database_fails_the_start_with_one_line() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://herald:secret-pw@127.0.0.1:{port}/herald");
    let out = failed_start(
        &["--client-ids", "1", "--port", "0", "--database-url", &url],
        &[],
    );
    assert_one_line_failure(&out, "cannot connect to the database");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("secret-pw"));
}

#[test]
fn the_database_url_conflicts_with_the_other_stores() {
    let url = "postgres://u@127.0.0.1:1/db";
    for extra in [
        &["--data-dir", "/tmp/x"][..],
        &["--memory"][..],
        &["--sync", "none"][..],
    ] {
        let mut args = vec!["--client-ids", "1", "--database-url", url];
        args.extend_from_slice(extra);
        let out = failed_start(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        // The same from the environment.
        let mut args = vec!["--client-ids", "1"];
        args.extend_from_slice(extra);
        let out = failed_start(&args, &[("HERALD_DATABASE_URL", url)]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{extra:?} with HERALD_DATABASE_URL"
        );
    }
}

fn on_pg(url: &str, ids: &str) -> Server {
    Server::start(&["--client-ids", ids, "--database-url", url])
}

#[test]
fn a_database_from_a_newer_herald_is_refused_with_one_line() {
    let pg = PgServer::start();
    let url = pg.new_database();
    drop(PostgresStore::open(&url).unwrap());
    let db = url.rsplit('/').next().unwrap();
    pg.execute(
        db,
        "UPDATE meta SET value = 99 WHERE key = 'schema_version'",
    );
    let out = failed_start(
        &["--client-ids", "1", "--port", "0", "--database-url", &url],
        &[],
    );
    assert_one_line_failure(&out, "newer Herald");
}

#[tokio::test]
async fn a_second_server_on_the_same_database_is_refused_with_one_line() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let first = on_pg(&url, "1");
    let out = failed_start(
        &["--client-ids", "1", "--port", "0", "--database-url", &url],
        &[],
    );
    assert_one_line_failure(&out, "another Herald server uses this database");
    // The first one still works.
    let (mut c, _) = first.login("1").await;
    c.send("SEND still here").await;
    assert_eq!(c.line().await, "SENT 1");
}

#[tokio::test]
async fn confirmed_messages_survive_kill_9_of_the_server() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let mut s = on_pg(&url, "w,r");
    let (mut w, _) = s.login("w").await;
    let mut batch = String::new();
    for i in 0..2000 {
        batch.push_str(&format!("SEND m{i}\n"));
    }
    w.send_raw(batch.as_bytes()).await;
    for i in 1..=2000 {
        assert_eq!(w.line().await, format!("SENT {i}"));
    }
    s.child.kill().unwrap();
    s.child.wait().unwrap();

    let s = on_pg(&url, "w,r");
    common::assert_2000_survived(&s).await;
}

/// Reads `SENT n` or `ERR …` for one `SEND`.
async fn answer(c: &mut common::Conn) -> Result<u64, String> {
    let line = c.line().await;
    match line.strip_prefix("SENT ") {
        Some(n) => Ok(n.parse().unwrap()),
        None => {
            assert!(line.starts_with("ERR "), "unexpected {line:?}");
            Err(line)
        }
    }
}

/// `r` logs in and is owed exactly `confirmed` (seq, text), in order.
async fn assert_backlog_is(s: &Server, confirmed: &[(u64, String)]) {
    let (mut r, pending) = s.login("r").await;
    assert_eq!(pending as usize, confirmed.len());
    let got: Vec<(u64, String)> = r
        .msgs(confirmed.len())
        .await
        .into_iter()
        .map(|(seq, _, text)| (seq, text))
        .collect();
    assert_eq!(got, confirmed);
}

#[tokio::test]
async fn the_server_rides_out_a_kill_9_of_postgresql() {
    let mut pg = PgServer::start();
    let url = pg.new_database();
    let s = on_pg(&url, "w,r");
    let (mut w, _) = s.login("w").await;
    let mut confirmed: Vec<(u64, String)> = Vec::new();
    for i in 0..100 {
        let text = format!("before {i}");
        w.send(&format!("SEND {text}")).await;
        confirmed.push((answer(&mut w).await.unwrap(), text));
    }
    pg.kill9();
    // While the database is down a SEND is neither refused (a resend would
    // be stored later, so an ERR would make a client drop it for nothing)
    // nor confirmed: it waits, unanswered.
    w.send("SEND while down").await;
    let early = tokio::time::timeout(Duration::from_millis(1500), w.line()).await;
    assert!(
        early.is_err(),
        "answered while the database was down: {early:?}"
    );
    pg.run();
    // The server reconnects by itself (backoff at most 2 s) and stores it.
    let seq = answer(&mut w).await.expect("the waiting SEND was refused");
    confirmed.push((seq, "while down".to_owned()));
    w.send("SEND after").await;
    confirmed.push((answer(&mut w).await.unwrap(), "after".to_owned()));
    assert_backlog_is(&s, &confirmed).await;
}

#[tokio::test]
async fn pipelined_sends_through_a_postgresql_kill_are_answered_truthfully() {
    let mut pg = PgServer::start();
    let url = pg.new_database();
    let s = on_pg(&url, "w,r");
    let (mut w, _) = s.login("w").await;
    let n = 3000;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("SEND line {i}\n"));
    }
    w.send_raw(batch.as_bytes()).await;
    let mut answers = Vec::with_capacity(n);
    // Kill PostgreSQL while the batches are being committed.
    for _ in 0..300 {
        answers.push(answer(&mut w).await);
    }
    pg.kill9();
    pg.run();
    while answers.len() < n {
        answers.push(answer(&mut w).await);
    }
    let confirmed: Vec<(u64, String)> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.as_ref().ok().map(|seq| (*seq, format!("line {i}"))))
        .collect();
    assert!(confirmed.len() >= 300);
    // Dense numbering, in the order sent.
    for (k, (seq, _)) in confirmed.iter().enumerate() {
        assert_eq!(*seq, k as u64 + 1);
    }
    // Everything confirmed is stored, and nothing refused is.
    assert_backlog_is(&s, &confirmed).await;
}
