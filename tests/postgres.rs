//! The PostgreSQL store, against a real private PostgreSQL 15: the store's
//! promises (recovery, numbering inside the commit across stores, mids,
//! acks, session claims, pruning, bounded reads), the schema's creation and
//! upgrade, the wake-up listener, and the server on it (kill -9 of the
//! server and of PostgreSQL, refused starts, flag conflicts, two servers on
//! one database).

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use common::{assert_one_line_failure, failed_start, Server};
use herald::net::Message;
use herald::store::postgres::Listener;
use herald::store::{
    Appended, Limits, LoginClaim, MidPolicy, MidRecord, NewMessage, PostgresStore, Store,
    StoreError, Wake,
};
use herald::types::{ClientId, Seq};
use pg::PgServer;

fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

/// The message stored as `seq` from `new(from, text, _)`.
fn msg(seq: u64, from: &str, text: &str) -> Message {
    Message::new(
        Seq(seq),
        1000 + text.len() as u64,
        id(from),
        text.as_bytes(),
    )
}

/// A message to append, received at 1000 + its length (so `msg` can
/// rebuild it).
fn new(from: &str, text: &str, mid: Option<&str>) -> NewMessage {
    NewMessage {
        from: id(from),
        unix_ms: 1000 + text.len() as u64,
        text: bytes::Bytes::copy_from_slice(text.as_bytes()),
        mid: mid.map(str::to_owned),
    }
}

/// Appends messages without mids and returns their seqs.
fn append(s: &mut PostgresStore, from: &str, texts: &[&str]) -> Vec<u64> {
    let batch: Vec<NewMessage> = texts.iter().map(|t| new(from, t, None)).collect();
    s.append(&batch).unwrap().iter().map(stored_seq).collect()
}

fn stored_seq(a: &Appended) -> u64 {
    match a {
        Appended::Stored(m) => m.seq().0,
        Appended::Duplicate(s) => panic!("unexpected duplicate of {s}"),
    }
}

fn mid(client: &str, mid: &str, seq: u64, text: &str) -> MidRecord {
    MidRecord {
        client: id(client),
        mid: mid.into(),
        seq: Seq(seq),
        unix_ms: 1000 + text.len() as u64,
    }
}

fn all(s: &mut PostgresStore) -> Vec<Message> {
    s.read_after(Seq(0), Seq(i64::MAX as u64), 100_000, usize::MAX)
        .unwrap()
}

/// A blocking client on `url`, for looking at the tables directly.
fn psql(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

#[test]
fn the_store_recovers_what_it_stored_and_numbering_continues() {
    let pg = PgServer::start();
    let url = pg.new_database();
    {
        let mut s = PostgresStore::open(&url).unwrap();
        let r = s.recover().unwrap();
        assert_eq!((r.head, r.acks.len(), r.mids.len()), (Seq(0), 0, 0));
        assert!(r.shared);
        let got = s
            .append(&[
                new("a", "one", Some("m1")),
                new("b", "two", None),
                new("a", "three", Some("m3")),
            ])
            .unwrap();
        assert_eq!(
            got,
            vec![
                Appended::Stored(msg(1, "a", "one")),
                Appended::Stored(msg(2, "b", "two")),
                Appended::Stored(msg(3, "a", "three")),
            ]
        );
        s.save_acks(&[(id("b"), Seq(1)), (id("b"), Seq(3))])
            .unwrap();
        // A cursor never goes back.
        s.save_acks(&[(id("b"), Seq(2))]).unwrap();
    }
    let mut s = PostgresStore::open(&url).unwrap();
    let r = s.recover().unwrap();
    assert_eq!(r.head, Seq(3));
    assert_eq!(r.acks.get(&id("b")), Some(&Seq(3)));
    assert_eq!(
        r.mids,
        vec![mid("a", "m1", 1, "one"), mid("a", "m3", 3, "three")]
    );
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
    // Numbering goes on after the head; a stored mid is answered with its
    // first seq, also after a restart.
    assert_eq!(append(&mut s, "b", &["four"]), [4]);
    assert_eq!(
        s.append(&[new("a", "one again", Some("m1")), new("a", "five", None)])
            .unwrap(),
        vec![
            Appended::Duplicate(Seq(1)),
            Appended::Stored(msg(5, "a", "five"))
        ]
    );
    assert_eq!(s.recover().unwrap().head, Seq(5));
}

#[test]
fn reads_are_bounded_by_count_and_bytes_but_return_at_least_one() {
    let pg = PgServer::start();
    let mut s = PostgresStore::open(&pg.new_database()).unwrap();
    let big = "x".repeat(1000);
    let texts = vec![big.as_str(); 10];
    assert_eq!(append(&mut s, "a", &texts), (1..=10).collect::<Vec<_>>());
    assert_eq!(
        s.read_after(Seq(0), Seq(10), 3, usize::MAX).unwrap().len(),
        3
    );
    assert_eq!(
        s.read_after(Seq(2), Seq(4), 100, usize::MAX).unwrap().len(),
        2
    );
    let frame = msg(1, "a", &big).frame().len();
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
    append(&mut s, "a", &["x", "y"]);
    append(&mut s, "b", &["z"]);
    assert_eq!(s.prune(Seq(2)).unwrap(), 2);
    assert_eq!(all(&mut s), vec![msg(3, "b", "z")]);
    assert_eq!(s.prune(Seq(3)).unwrap(), 1);
    drop(s);
    let mut s = PostgresStore::open(&url).unwrap();
    assert_eq!(s.recover().unwrap().head, Seq(3));
    assert_eq!(append(&mut s, "a", &["w"]), [4]);
}

#[test]
fn a_limit_prune_by_two_nodes_charges_each_id_once_and_keeps_the_newest() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let (mut a, mut b) = (
        PostgresStore::open(&url).unwrap(),
        PostgresStore::open(&url).unwrap(),
    );
    // Stored at unix ms 1001..=1003 (1000 + the text's length).
    append(&mut a, "w", &["1", "22", "333"]);
    let limits = |age: u64| Limits {
        max_age_ms: Some(age),
        max_bytes: None,
        now_ms: 2000,
        batch: 100,
        upto: Seq(u64::MAX),
    };
    // Older than 1001: none; than 1002: seq 1; than 1003: 1 and 2; all
    // three old: never the newest.
    assert_eq!(a.limit_cut(&limits(999)).unwrap(), Seq(0));
    assert_eq!(a.limit_cut(&limits(998)).unwrap(), Seq(1));
    assert_eq!(a.limit_cut(&limits(997)).unwrap(), Seq(2));
    assert_eq!(b.limit_cut(&limits(1)).unwrap(), Seq(2));
    a.save_acks(&[(id("r"), Seq(1))]).unwrap();
    // Node b knows no ack of r (0); the stored 1 counts.
    let acks = [(id("r"), Seq(0)), (id("w"), Seq(0)), (id("idle"), Seq(0))];
    let first = a.limit_prune(Seq(2), &acks).unwrap();
    assert_eq!(first.deleted, 2);
    let lost: Vec<(String, u64, u64)> = first
        .losses
        .iter()
        .map(|l| (l.client.to_string(), l.after.0, l.lost))
        .collect();
    assert_eq!(lost, [("r".into(), 1, 1), ("idle".into(), 0, 2)]);
    // The other node, a moment later, finds it done: nobody is charged twice.
    let second = b.limit_prune(Seq(2), &acks).unwrap();
    assert_eq!((second.deleted, second.losses.len()), (0, 0));
    let mut q = psql(&url);
    let rows: Vec<(String, i64, i64)> = q
        .query(
            "SELECT client_id, lost, lost_upto FROM losses ORDER BY client_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows, [("idle".into(), 2, 2), ("r".into(), 1, 2)]);
    let r = b.recover().unwrap();
    assert_eq!(r.acks.get(&id("idle")), Some(&Seq(2)));
    assert_eq!(r.acks.get(&id("w")), Some(&Seq(2)));
    assert_eq!(all(&mut b), vec![msg(3, "w", "333")]);
    assert_eq!(append(&mut b, "w", &["4"]), [4]);
}

#[test]
fn two_stores_on_one_database_number_densely_in_commit_order() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let mut a = PostgresStore::open(&url).unwrap();
    let mut b = PostgresStore::open(&url).unwrap();
    assert_eq!(append(&mut a, "a", &["a1", "a2"]), [1, 2]);
    assert_eq!(append(&mut b, "b", &["b1", "b2", "b3"]), [3, 4, 5]);
    assert_eq!(append(&mut a, "a", &["a3"]), [6]);
    let texts: Vec<(u64, Vec<u8>)> = all(&mut b)
        .iter()
        .map(|m| (m.seq().0, m.text().to_vec()))
        .collect();
    let want: Vec<(u64, Vec<u8>)> = ["a1", "a2", "b1", "b2", "b3", "a3"]
        .iter()
        .enumerate()
        .map(|(i, t)| (i as u64 + 1, t.as_bytes().to_vec()))
        .collect();
    assert_eq!(texts, want);
}

#[test]
fn concurrent_appends_from_two_stores_are_dense_without_duplicates() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let (batches, per_batch) = (150, 4);
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|who| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut s = PostgresStore::open(&url).unwrap();
                let mut got = Vec::new();
                for i in 0..batches {
                    let texts: Vec<String> =
                        (0..per_batch).map(|j| format!("{who} {i} {j}")).collect();
                    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                    got.extend(append(&mut s, who, &texts));
                }
                got
            })
        })
        .collect();
    let mut seqs: Vec<Vec<u64>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    // Each writer's seqs grow, batch after batch.
    for s in &seqs {
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
    }
    let mut every: Vec<u64> = seqs.concat();
    every.sort_unstable();
    let n = 2 * batches * per_batch;
    assert_eq!(every, (1..=n as u64).collect::<Vec<_>>());
    // What is stored under each seq is what its writer was told.
    let mut s = PostgresStore::open(&url).unwrap();
    let stored = all(&mut s);
    assert_eq!(stored.len(), n);
    for (who, mine) in ["a", "b"].iter().zip(seqs.iter_mut()) {
        for (k, seq) in mine.iter().enumerate() {
            let m = &stored[*seq as usize - 1];
            let text = format!("{who} {} {}", k / per_batch, k % per_batch);
            assert_eq!((m.from().as_str(), m.text()), (*who, text.as_bytes()));
        }
    }
}

#[test]
fn a_mid_is_a_duplicate_through_another_store_and_within_one_batch() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let mut a = PostgresStore::open(&url).unwrap();
    let mut b = PostgresStore::open(&url).unwrap();
    assert_eq!(
        a.append(&[new("w", "first", Some("x"))]).unwrap(),
        vec![Appended::Stored(msg(1, "w", "first"))]
    );
    // Through the other store: the first seq, nothing stored.
    assert_eq!(
        b.append(&[new("v", "other", None), new("w", "resent", Some("x"))])
            .unwrap(),
        vec![
            Appended::Stored(msg(2, "v", "other")),
            Appended::Duplicate(Seq(1))
        ]
    );
    // The same mid from another client id is another message.
    assert_eq!(
        b.append(&[new("v", "own x", Some("x"))]).unwrap(),
        vec![Appended::Stored(msg(3, "v", "own x"))]
    );
    // Twice in one batch: stored once, the second answered with the first.
    assert_eq!(
        a.append(&[
            new("w", "y once", Some("y")),
            new("w", "plain", None),
            new("w", "y twice", Some("y")),
        ])
        .unwrap(),
        vec![
            Appended::Stored(msg(4, "w", "y once")),
            Appended::Stored(msg(5, "w", "plain")),
            Appended::Duplicate(Seq(4)),
        ]
    );
    // A batch of nothing but duplicates stores nothing and moves no seq.
    assert_eq!(
        b.append(&[new("w", "y", Some("y"))]).unwrap(),
        vec![Appended::Duplicate(Seq(4))]
    );
    assert_eq!(all(&mut a).len(), 5);
    assert_eq!(append(&mut b, "v", &["next"]), [6]);
}

fn claim(client: &str, node: &str, known_ack: u64, known_head: u64) -> LoginClaim {
    LoginClaim {
        client: id(client),
        node: node.into(),
        known_ack: Seq(known_ack),
        known_head: Seq(known_head),
    }
}

#[test]
fn login_claims_raise_the_epoch_across_stores_and_count_from_the_database() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let mut a = PostgresStore::open(&url).unwrap();
    let mut b = PostgresStore::open(&url).unwrap();
    let first = a.login(&claim("r", "node-a", 0, 0)).unwrap();
    assert_eq!(
        (first.epoch, first.last_ack, first.head, first.backlog),
        (1, Seq(0), Seq(0), 0)
    );
    // b stores 4 messages (one of them r's own) and r's ack of the first.
    append(&mut b, "w", &["1", "2"]);
    append(&mut b, "r", &["3"]);
    append(&mut b, "w", &["4"]);
    b.save_acks(&[(id("r"), Seq(1))]).unwrap();
    // a knows nothing of them: the view comes from the database.
    let second = b.login(&claim("r", "node-b", 0, 0)).unwrap();
    assert_eq!(
        (second.epoch, second.last_ack, second.head, second.backlog),
        (2, Seq(1), Seq(4), 2)
    );
    let third = a.login(&claim("r", "node-a", 2, 0)).unwrap();
    assert_eq!(
        (third.epoch, third.last_ack, third.head, third.backlog),
        (3, Seq(2), Seq(4), 1)
    );
    // What the registry knows counts when it is ahead.
    let fourth = a.login(&claim("r", "node-a", 3, 9)).unwrap();
    assert_eq!(
        (fourth.epoch, fourth.last_ack, fourth.head),
        (4, Seq(3), Seq(9))
    );
    a.login(&claim("w", "node-a", 0, 0)).unwrap();
    let mut epochs = b.session_epochs(&[id("r"), id("w"), id("never")]).unwrap();
    epochs.sort();
    assert_eq!(epochs, vec![(id("r"), 4), (id("w"), 1)]);
    assert!(b.session_epochs(&[]).unwrap().is_empty());
    let node: String = psql(&url)
        .query_one("SELECT node FROM sessions WHERE client_id = 'r'", &[])
        .unwrap()
        .get(0);
    assert_eq!(node, "node-a");
}

#[test]
fn forgetting_mids_keeps_the_newest_and_the_young_of_every_store() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let mut a = PostgresStore::open(&url).unwrap();
    let mut b = PostgresStore::open(&url).unwrap();
    let at = |from: &str, mid: &str, unix_ms: u64| NewMessage {
        unix_ms,
        ..new(from, mid, Some(mid))
    };
    // "old" has five old mids (through both stores); "young" has five
    // recent ones.
    a.append(&[
        at("old", "o1", 100),
        at("old", "o2", 200),
        at("old", "o3", 300),
    ])
    .unwrap();
    b.append(&[at("old", "o4", 400), at("old", "o5", 500)])
        .unwrap();
    a.append(&[
        at("young", "y1", 9_100),
        at("young", "y2", 9_200),
        at("young", "y3", 9_300),
        at("young", "y4", 9_400),
        at("young", "y5", 9_500),
    ])
    .unwrap();
    // Keep the newest 2 of each and everything younger than 1 s at 10 s;
    // the cutoffs of a single node do not count in a shared store.
    let policy = MidPolicy {
        keep: 2,
        max_age_ms: 1000,
        now_ms: 10_000,
        cap: 100,
    };
    b.forget_mids(&[(id("young"), Seq(100))], &policy).unwrap();
    let left: Vec<String> = a
        .recover()
        .unwrap()
        .mids
        .into_iter()
        .map(|m| m.mid)
        .collect();
    assert_eq!(left, ["o4", "o5", "y1", "y2", "y3", "y4", "y5"]);
    // A forgotten mid is a new message again; a kept one is not.
    let got = b
        .append(&[at("old", "o1", 10_000), at("old", "o4", 10_000)])
        .unwrap();
    assert_eq!(stored_seq(&got[0]), 11);
    assert_eq!(got[1], Appended::Duplicate(Seq(4)));
    // Later, the young ones age too, down to the newest 2.
    let later = MidPolicy {
        now_ms: 20_000,
        ..policy
    };
    a.forget_mids(&[], &later).unwrap();
    let mut left: Vec<String> = b
        .recover()
        .unwrap()
        .mids
        .into_iter()
        .map(|m| m.mid)
        .collect();
    left.sort();
    assert_eq!(left, ["o1", "o5", "y4", "y5"]);
    // The cap holds however young they are.
    b.append(&[
        at("young", "y6", 20_000),
        at("young", "y7", 20_000),
        at("young", "y8", 20_000),
    ])
    .unwrap();
    let capped = MidPolicy { cap: 3, ..later };
    a.forget_mids(&[], &capped).unwrap();
    let mut young: Vec<String> = b
        .recover()
        .unwrap()
        .mids
        .into_iter()
        .filter(|m| m.client == id("young"))
        .map(|m| m.mid)
        .collect();
    young.sort();
    assert_eq!(young, ["y6", "y7", "y8"]);
}

#[test]
fn a_mid_stored_by_another_node_while_a_batch_waits_for_the_counter_is_a_duplicate() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let mut a = PostgresStore::open(&url).unwrap();
    append(&mut a, "v", &["one"]);
    // Another node holds the counter row: `a`'s batch looks its mid up
    // (not stored yet) and then waits for the row.
    let mut other = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut tx = other.transaction().unwrap();
    tx.query_one("SELECT last FROM counter FOR UPDATE", &[])
        .unwrap();
    let waiting = std::thread::spawn(move || {
        let got = a.append(&[new("w", "raced", Some("r"))]).unwrap();
        (a, got)
    });
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    backend_waiting(&mut admin, &db, "transactionid");
    // Meanwhile the other node stores the same mid as seq 2 and commits.
    tx.batch_execute(
        "INSERT INTO messages (seq, unix_ms, sender, text) VALUES (2, 1005, 'w', 'raced');
         INSERT INTO mids (client_id, mid, seq, unix_ms) VALUES ('w', 'r', 2, 1005);
         UPDATE counter SET last = 2;",
    )
    .unwrap();
    tx.commit().unwrap();
    let (mut a, got) = waiting.join().unwrap();
    assert_eq!(got, vec![Appended::Duplicate(Seq(2))]);
    // Nothing was stored twice, and numbering goes on densely.
    assert_eq!(append(&mut a, "v", &["three"]), vec![3]);
    let all = a.read_after(Seq(0), Seq(100), 100, usize::MAX).unwrap();
    assert_eq!(all.iter().map(|m| m.seq().0).collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn a_batch_waits_for_the_counter_row_whatever_the_databases_statement_timeout() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    // A database whose default would cancel a statement that waits 50 ms.
    pg.execute(
        &db,
        &format!("ALTER DATABASE \"{db}\" SET statement_timeout = '50ms'"),
    );
    let mut a = PostgresStore::open(&url).unwrap();
    append(&mut a, "v", &["one"]);
    let mut other = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut tx = other.transaction().unwrap();
    tx.query_one("SELECT last FROM counter FOR UPDATE", &[])
        .unwrap();
    let waiting = std::thread::spawn(move || append(&mut a, "v", &["two"]));
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    backend_waiting(&mut admin, &db, "transactionid");
    // Held well past the database's statement timeout.
    std::thread::sleep(Duration::from_millis(300));
    tx.commit().unwrap();
    assert_eq!(waiting.join().unwrap(), vec![2]);
}

/// The process id of the backend of database `db` that waits on
/// `wait_event` (bounded by the deadline).
fn backend_waiting(admin: &mut postgres::Client, db: &str, wait_event: &str) -> i32 {
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event = $2",
                &[&db, &wait_event],
            )
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "no backend waits on {wait_event}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn terminate(admin: &mut postgres::Client, pid: i32) {
    let done: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(done);
}

#[test]
fn a_commit_cut_off_after_it_was_written_is_settled_as_stored() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let db = url.rsplit('/').next().unwrap();
    let mut admin = psql(&pg.url("postgres"));
    let mut s = PostgresStore::open(&url).unwrap();
    assert_eq!(append(&mut s, "w", &["before"]), [1]);
    // Commits now wait for a standby that does not exist: written locally,
    // never answered. The server reloads its settings in the background;
    // a new connection shows when it has.
    let set_standby = |admin: &mut postgres::Client, names: &str| {
        admin
            .batch_execute(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{names}'"
            ))
            .unwrap();
        admin.batch_execute("SELECT pg_reload_conf()").unwrap();
        let deadline = Instant::now() + common::DEADLINE;
        while psql(&url)
            .query_one("SHOW synchronous_standby_names", &[])
            .unwrap()
            .get::<_, String>(0)
            != names
        {
            assert!(Instant::now() < deadline, "the setting was not reloaded");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    set_standby(&mut admin, "nobody");
    let mut s = PostgresStore::open(&url).unwrap();
    let appender = std::thread::spawn(move || s.append(&[new("w", "in doubt", None)]));
    // Its session is ended while it waits: the answer to COMMIT is lost,
    // but the batch is committed; the store asks and says so.
    let pid = backend_waiting(&mut admin, db, "SyncRep");
    terminate(&mut admin, pid);
    assert_eq!(
        appender.join().unwrap().unwrap(),
        vec![Appended::Stored(msg(2, "w", "in doubt"))]
    );
    set_standby(&mut admin, "");
    let mut s = PostgresStore::open(&url).unwrap();
    assert_eq!(append(&mut s, "w", &["after"]), [3]);
}

#[test]
fn a_commit_cut_off_before_it_was_written_is_settled_as_not_stored() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let db = url.rsplit('/').next().unwrap();
    let mut admin = psql(&pg.url("postgres"));
    // A check that runs at COMMIT and takes its time, for sender "slow".
    psql(&url)
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN PERFORM pg_sleep(60); RETURN NULL; END $$;",
        )
        .unwrap();
    let mut s = PostgresStore::open(&url).unwrap();
    psql(&url)
        .batch_execute(
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON messages
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                 WHEN (NEW.sender = 'slow') EXECUTE FUNCTION slow();",
        )
        .unwrap();
    assert_eq!(append(&mut s, "w", &["before"]), [1]);
    let appender = std::thread::spawn(move || {
        let r = s.append(&[new("slow", "in doubt", None)]);
        (s, r)
    });
    // Its session is ended during COMMIT, before the commit was written:
    // the store asks, learns it was not stored, and says "unavailable"
    // (the registry retries such a batch).
    let pid = backend_waiting(&mut admin, db, "PgSleep");
    terminate(&mut admin, pid);
    let (mut s, r) = appender.join().unwrap();
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert_eq!(append(&mut s, "w", &["after"]), [2]);
    assert_eq!(
        all(&mut s),
        vec![msg(1, "w", "before"), msg(2, "w", "after")]
    );
}

/// The schema of version 1, as the first PostgreSQL store created it.
const SCHEMA_V1: &str = "
    CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);
    CREATE TABLE counter (
        id boolean PRIMARY KEY DEFAULT true CHECK (id),
        last bigint NOT NULL
    );
    CREATE TABLE messages (
        seq bigint PRIMARY KEY,
        unix_ms bigint NOT NULL,
        sender text NOT NULL,
        text bytea NOT NULL
    );
    CREATE TABLE mids (
        client_id text NOT NULL,
        mid text NOT NULL,
        seq bigint NOT NULL,
        unix_ms bigint NOT NULL,
        PRIMARY KEY (client_id, mid)
    );
    CREATE INDEX mids_by_age ON mids (client_id, seq);
    CREATE TABLE acks (client_id text PRIMARY KEY, last_ack bigint NOT NULL);
    INSERT INTO counter (last) VALUES (0);
    INSERT INTO meta (key, value) VALUES ('pruned_upto', 0);
    INSERT INTO meta (key, value) VALUES ('schema_version', 1);
";

fn schema_version(url: &str) -> i64 {
    psql(url)
        .query_one("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .unwrap()
        .get(0)
}

#[test]
fn a_version_1_database_is_upgraded_at_start_and_keeps_its_data() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let mut v1 = psql(&url);
    v1.batch_execute(SCHEMA_V1).unwrap();
    v1.batch_execute(
        "INSERT INTO messages VALUES (1, 1003, 'w', 'one'), (2, 1003, 'w', 'two');
         UPDATE counter SET last = 2;
         INSERT INTO mids VALUES ('w', 'm1', 1, 1003);
         INSERT INTO acks VALUES ('r', 1);",
    )
    .unwrap();
    let mut s = PostgresStore::open(&url).unwrap();
    assert_eq!(schema_version(&url), 3);
    let r = s.recover().unwrap();
    assert_eq!((r.head, r.acks.get(&id("r"))), (Seq(2), Some(&Seq(1))));
    assert_eq!(r.mids, vec![mid("w", "m1", 1, "one")]);
    assert_eq!(all(&mut s), vec![msg(1, "w", "one"), msg(2, "w", "two")]);
    // The new table is there and used.
    let view = s.login(&claim("r", "n", 0, 0)).unwrap();
    assert_eq!((view.epoch, view.last_ack, view.backlog), (1, Seq(1), 1));
    assert_eq!(append(&mut s, "w", &["three"]), [3]);
    // Opening again finds version 3 and changes nothing.
    drop(PostgresStore::open(&url).unwrap());
    assert_eq!(schema_version(&url), 3);
}

#[test]
fn a_version_1_database_is_not_upgraded_under_a_running_version_1_server() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let mut v1 = psql(&url);
    v1.batch_execute(SCHEMA_V1).unwrap();
    // A version-1 server holds this lock while it runs.
    v1.execute("SELECT pg_advisory_lock(x'686572616c64'::bigint)", &[])
        .unwrap();
    let err = PostgresStore::open(&url).unwrap_err();
    assert!(matches!(err, StoreError::Unusable(_)), "{err}");
    assert!(err.to_string().contains("older version"), "{err}");
    assert_eq!(schema_version(&url), 1);
    // Once it is gone, the upgrade goes ahead.
    drop(v1);
    PostgresStore::open(&url).unwrap();
    assert_eq!(schema_version(&url), 3);
}

#[test]
fn stores_opening_at_once_on_an_empty_database_create_the_schema_once() {
    let pg = PgServer::start();
    for _ in 0..3 {
        let url = pg.new_database();
        let start = std::sync::Arc::new(std::sync::Barrier::new(3));
        let openers: Vec<_> = (0..3)
            .map(|_| {
                let (url, start) = (url.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    PostgresStore::open(&url).map(|_| ())
                })
            })
            .collect();
        for o in openers {
            o.join().unwrap().unwrap();
        }
        assert_eq!(schema_version(&url), 3);
        let mut s = PostgresStore::open(&url).unwrap();
        assert_eq!(append(&mut s, "a", &["x"]), [1]);
    }
}

/// A stand-in registry: passes every wake-up to the test.
struct Catcher(mpsc::Sender<Wake>);

impl Actor for Catcher {
    type Context = Context<Self>;
}

impl Handler<Wake> for Catcher {
    type Result = ();
    fn handle(&mut self, msg: Wake, _: &mut Self::Context) {
        let _ = self.0.send(msg);
    }
}

/// A [`Catcher`] on an actix system of its own thread: its recipient, the
/// wake-ups it got, and the system (stop it to end the thread).
fn catcher() -> (Recipient<Wake>, mpsc::Receiver<Wake>, System) {
    let (wakes, got) = mpsc::channel();
    let (ready, started) = mpsc::channel();
    std::thread::spawn(move || {
        let system = System::new();
        system.block_on(async move {
            let addr = Catcher(wakes).start();
            ready.send((addr.recipient(), System::current())).unwrap();
        });
        system.run().unwrap();
    });
    let (recipient, system) = started.recv_timeout(common::DEADLINE).unwrap();
    (recipient, got, system)
}

/// Waits for `want` (bounded by the deadline); returns the other wake-ups
/// that came before it.
fn wait_for_wake(got: &mpsc::Receiver<Wake>, want: Wake) -> Vec<Wake> {
    let deadline = Instant::now() + common::DEADLINE;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match got.recv_timeout(left) {
            Ok(w) if w == want => return skipped,
            Ok(w) => skipped.push(w),
            Err(e) => panic!("no {want:?} within the deadline ({e}); got {skipped:?}"),
        }
    }
}

#[test]
fn the_listener_wakes_on_commits_and_logins_and_after_postgresql_restarts() {
    let mut pg = PgServer::start();
    let url = pg.new_database();
    let mut s = PostgresStore::open(&url).unwrap();
    let (recipient, got, system) = catcher();
    let listener = Listener::start(&url, recipient).unwrap();
    // Connected: one wake-up to look at everything.
    wait_for_wake(&got, Wake::Reconnected);
    append(&mut s, "w", &["hello"]);
    wait_for_wake(&got, Wake::Log);
    s.login(&claim("r", "n", 0, 0)).unwrap();
    wait_for_wake(&got, Wake::Sessions);
    // A burst of 100 notifications (one transaction, 100 payloads) comes
    // as a few wake-ups, not 100; the login after it marks its end (a
    // burst's Log goes before its Sessions).
    psql(&url)
        .batch_execute(
            "BEGIN;
             SELECT pg_notify('herald_log', n::text) FROM generate_series(1, 100) n;
             COMMIT;",
        )
        .unwrap();
    s.login(&claim("r", "n", 0, 0)).unwrap();
    let before = wait_for_wake(&got, Wake::Sessions);
    assert!(!before.is_empty() && before.len() <= 3, "{before:?}");
    assert!(before.iter().all(|w| *w == Wake::Log), "{before:?}");
    // PostgreSQL dies and comes back: the listener reconnects by itself
    // and says so, and wakes on commits again.
    pg.kill9();
    pg.run();
    wait_for_wake(&got, Wake::Reconnected);
    let mut s = PostgresStore::open(&url).unwrap();
    append(&mut s, "w", &["again"]);
    wait_for_wake(&got, Wake::Log);
    // A stop while the database is away ends the thread too.
    pg.kill9();
    listener.stop();
    system.stop();
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
        &["--retain-max-bytes", "1000"][..],
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
async fn an_age_limit_prunes_a_shared_log_and_a_returning_id_gets_what_is_kept() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let start = || {
        Server::start(&[
            "--client-ids",
            "w,r,idle",
            "--database-url",
            &url,
            "--retain-max-age",
            "1",
        ])
    };
    let (first, second) = (start(), start());
    let (mut w, _) = first.login("w").await;
    for i in 1..=20 {
        w.send(&format!("SEND old{i}")).await;
        assert_eq!(w.line().await, format!("SENT {i}"));
    }
    let sent = Instant::now();
    // The condition is the time itself: the 20 are older than 1 s.
    while sent.elapsed() <= Duration::from_millis(1100) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.send("SEND new").await;
    assert_eq!(w.line().await, "SENT 21");
    // r, on the second node, reads everything and acknowledges it: the
    // prune that follows takes 1..=20 from idle, which never logged in.
    let (mut r, pending) = second.login("r").await;
    assert_eq!(pending, 21);
    assert_eq!(r.msgs(21).await.last().map(|m| m.0), Some(21));
    r.send("ACK 21").await;
    let line = "retention: client idle will not get 20 message(s) in seqs 1..=20";
    let deadline = Instant::now() + common::DEADLINE;
    while !second.log.lock().unwrap().contains(line) {
        assert!(Instant::now() < deadline, "the loss was not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // idle, on the other node, is owed exactly what is kept.
    let (mut idle, pending) = first.login("idle").await;
    assert_eq!(pending, 1);
    let got = idle.msgs(1).await;
    assert_eq!((got[0].0, got[0].2.as_str()), (21, "new"));
    idle.send("PING end").await;
    assert_eq!(idle.line().await, "PONG end");
    let report = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["inspect", "--database-url", &url, "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let ids = v["ids"].as_array().unwrap();
    let idle = ids.iter().find(|i| i["id"] == "idle").unwrap();
    assert_eq!(
        (idle["lost"].as_u64(), idle["lost_upto"].as_u64()),
        (Some(20), Some(20))
    );
}

#[tokio::test]
async fn two_servers_on_one_database_both_start_and_share_one_log() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let first = on_pg(&url, "w,v,r");
    let second = on_pg(&url, "w,v,r");
    let (mut w, _) = first.login("w").await;
    w.send("SEND on the first").await;
    assert_eq!(w.line().await, "SENT 1");
    // Each node delivers the other's commits: v, on the second, is owed
    // w's message; w, online on the first, gets v's live.
    let (mut v, pending) = second.login("v").await;
    assert_eq!(pending, 1);
    assert_eq!(
        v.msgs(1).await,
        vec![(1, "w".into(), "on the first".into())]
    );
    v.send("SEND on the second").await;
    assert_eq!(v.line().await, "SENT 2");
    assert_eq!(
        w.msgs(1).await,
        vec![(2, "v".into(), "on the second".into())]
    );
    // A reader on either node is owed both, in one order.
    let (mut r, pending) = second.login("r").await;
    assert_eq!(pending, 2);
    let got: Vec<(u64, String, String)> = r.msgs(2).await;
    assert_eq!(
        got,
        vec![
            (1, "w".into(), "on the first".into()),
            (2, "v".into(), "on the second".into())
        ]
    );
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

/// PostgreSQL's data directory (its processes' working directory), asked
/// on a thread of its own (the blocking client must not run inside a
/// test's async runtime).
fn data_directory(url: &str) -> std::path::PathBuf {
    let url = url.to_owned();
    let dir: String = std::thread::spawn(move || {
        psql(&url)
            .query_one("SHOW data_directory", &[])
            .unwrap()
            .get(0)
    })
    .join()
    .unwrap();
    std::fs::canonicalize(dir).unwrap()
}

/// kill -9 of PostgreSQL, and the wait until its backends are gone too:
/// each notices the postmaster's death a moment later, and until then may
/// still finish a commit.
fn kill9_and_wait(pg: &mut PgServer, data_dir: &std::path::Path) {
    pg.kill9();
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let alive = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .any(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd == data_dir));
        if !alive {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL's backends outlived it"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn the_server_rides_out_a_kill_9_of_postgresql() {
    let mut pg = PgServer::start();
    let url = pg.new_database();
    let data_dir = data_directory(&url);
    let s = on_pg(&url, "w,r");
    let (mut w, _) = s.login("w").await;
    let mut confirmed: Vec<(u64, String)> = Vec::new();
    for i in 0..100 {
        let text = format!("before {i}");
        w.send(&format!("SEND {text}")).await;
        confirmed.push((answer(&mut w).await.unwrap(), text));
    }
    kill9_and_wait(&mut pg, &data_dir);
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
    // The loss and the return are logged once each, by the store and by
    // the wake-up listener, however many attempts it took.
    let log = wait_for_log(&s, "wake-up connection to the database is back").await;
    for line in [
        "lost the database connection",
        "reconnected to the database",
        "lost the wake-up connection",
        "wake-up connection to the database is back",
    ] {
        assert_eq!(log.matches(line).count(), 1, "{line:?} in:\n{log}");
    }
}

/// The server's log once it holds `needle` (bounded by the deadline).
async fn wait_for_log(s: &Server, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let log = s.log.lock().unwrap().clone();
        if log.contains(needle) {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
