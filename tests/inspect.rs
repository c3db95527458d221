//! `server inspect` through the real binary: a live SQLite server with
//! traffic, after a kill -9, a live PostgreSQL cluster with its sessions,
//! `--json` against the text, and the refusals (missing or foreign stores,
//! usage errors) that must neither create nor change anything.

mod common;
#[path = "common/inspect.rs"]
mod helpers;
#[path = "common/pg.rs"]
mod pg;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_one_line_failure, Server, DEADLINE};
use helpers::*;
use pg::PgServer;
use serde_json::Value;

#[tokio::test]
async fn a_live_sqlite_store_shows_what_was_sent_and_acked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::durable_on(dir.path(), 0, "a,b,c");
    let (mut a, _) = s.login("a").await;
    let (mut b, _) = s.login("b").await;
    assert_eq!(send_all(&mut a, 5, Some("x")).await, [1, 2, 3, 4, 5]);
    // b has a's five and acknowledges them, then sends three.
    assert_eq!(read_and_ack(&mut b, 5, 5).await, [1, 2, 3, 4, 5]);
    assert_eq!(send_all(&mut b, 3, None).await, [6, 7, 8]);
    // c is owed all eight and acknowledges six.
    let (mut c, backlog) = s.login("c").await;
    assert_eq!(backlog, 8);
    assert_eq!(
        read_and_ack(&mut c, 8, 6).await,
        (1..=8).collect::<Vec<u64>>()
    );

    let r = poll_report(
        || dir_report(dir.path()),
        |r| ack_of(r, "c") == Some(6) && ack_of(r, "b") == Some(5),
    );
    assert_eq!(r["store"], "sqlite");
    assert_eq!(r["schema_version"], 3);
    assert_eq!(
        (r["head"].clone(), r["messages"].clone()),
        (8.into(), 8.into())
    );
    assert_eq!(r["oldest_seq"], 1);
    assert_eq!(r["mids"], 5);
    // a never acknowledged: b's three are its backlog. b is owed nothing
    // after 5 but its own; c is owed 7 and 8.
    assert_eq!(row(&r, "a"), (Value::Null, 3, 5, 5));
    assert_eq!(row(&r, "b"), (5.into(), 0, 3, 0));
    assert_eq!(row(&r, "c"), (6.into(), 2, 0, 0));
    let parts = &r["size_bytes"]["parts"];
    assert!(parts["herald.db"].as_u64().is_some(), "{r}");
    // A running server has its WAL.
    assert!(parts["herald.db-wal"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        r["size_bytes"]["total"].as_u64().unwrap(),
        ["herald.db", "herald.db-wal", "herald.db-shm"]
            .iter()
            .map(|f| parts[*f].as_u64().unwrap())
            .sum::<u64>()
    );
    assert_eq!(r["sessions"], Value::Array(vec![]));
}

#[tokio::test]
async fn inspecting_again_and_again_does_not_hold_up_the_servers_commits() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::durable_on(dir.path(), 0, "w,r");
    let (mut w, _) = s.login("w").await;
    let path = dir.path().to_owned();
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    // Reports taken over and over while 3,000 sends are committed: each
    // one is a snapshot (every seq up to its head stored), heads never go
    // back.
    let reader = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            let mut heads = Vec::new();
            while !stop.load(Ordering::SeqCst) && heads.len() < 1000 {
                let r = dir_report(&path);
                assert_eq!(r["messages"], r["head"], "{r}");
                heads.push(r["head"].as_u64().unwrap());
                done.fetch_add(1, Ordering::SeqCst);
            }
            heads
        })
    };
    let mut sent = Vec::new();
    for round in 0..6 {
        // At least one more report has been read before each round.
        let seen = done.load(Ordering::SeqCst);
        let deadline = Instant::now() + DEADLINE;
        while done.load(Ordering::SeqCst) == seen {
            assert!(Instant::now() < deadline, "no report came back");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent.extend(send_all(&mut w, 500, Some(&format!("r{round}-"))).await);
    }
    stop.store(true, Ordering::SeqCst);
    assert_eq!(sent, (1..=3000).collect::<Vec<u64>>());
    let heads = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    assert!(heads.windows(2).all(|p| p[0] <= p[1]), "{heads:?}");
    let r = dir_report(dir.path());
    assert_eq!(
        (r["head"].as_u64(), r["mids"].as_u64()),
        (Some(3000), Some(3000))
    );
    assert_eq!(row(&r, "w"), (Value::Null, 0, 3000, 3000));
}

#[tokio::test]
async fn after_kill_9_every_sent_message_is_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::durable_on(dir.path(), 0, "w,r");
    let (mut w, _) = s.login("w").await;
    let (mut r, _) = s.login("r").await;
    assert_eq!(send_all(&mut w, 300, Some("k")).await.last(), Some(&300));
    assert_eq!(read_and_ack(&mut r, 300, 120).await.len(), 300);
    poll_report(
        || dir_report(dir.path()),
        |rep| ack_of(rep, "r") == Some(120),
    );
    s.child.kill().unwrap();
    s.child.wait().unwrap();

    let rep = dir_report(dir.path());
    assert_eq!(
        (rep["head"].as_u64(), rep["messages"].as_u64()),
        (Some(300), Some(300))
    );
    assert_eq!(row(&rep, "w"), (Value::Null, 0, 300, 300));
    assert_eq!(row(&rep, "r"), (120.into(), 180, 0, 0));
    // The server started again agrees: r is owed what the report said.
    let s = Server::durable_on(dir.path(), 0, "w,r");
    let (_, backlog) = s.login("r").await;
    assert_eq!(backlog, 180);
}

#[tokio::test]
async fn json_matches_the_text_and_a_stopped_store_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::durable_on(dir.path(), 0, "1,2,10");
    let (mut one, _) = s.login("1").await;
    send_all(&mut one, 4, Some("t")).await;
    let (mut ten, _) = s.login("10").await;
    assert_eq!(read_and_ack(&mut ten, 4, 4).await, [1, 2, 3, 4]);
    s.signal("TERM");
    assert_eq!(s.wait_exit(), Some(0));

    let before = files(dir.path());
    let json = dir_report(dir.path());
    // The seed's spelling means the same.
    let seed = inspect_with(&["-data_dir", dir.path().to_str().unwrap(), "-json"], &[]);
    assert_eq!(serde_json::from_slice::<Value>(&seed.stdout).unwrap(), json);
    let out = inspect_with(&["--data-dir", dir.path().to_str().unwrap()], &[]);
    assert!(out.status.success());
    assert_eq!(files(dir.path()), before, "inspect left files behind");
    let text = String::from_utf8(out.stdout).unwrap();
    let (top, rows) = parse_text(&text);
    let num = |k: &str| json[k].to_string();
    assert_eq!(top["store"], format!("sqlite {}", dir.path().display()));
    assert_eq!(top["schema version"], num("schema_version"));
    assert_eq!(top["head seq"], num("head"));
    assert_eq!(top["messages"], num("messages"));
    assert_eq!(top["oldest seq"], num("oldest_seq"));
    assert_eq!(top["pruned up to"], num("pruned_upto"));
    assert_eq!(top["remembered mids"], num("mids"));
    let total = json["size_bytes"]["total"].to_string();
    assert!(
        top["size bytes"].starts_with(&format!("{total} (")),
        "{text}"
    );
    // A row per id, numbers by value: 1, 10 (2 never sent, acked or
    // logged in, so the store does not know it).
    assert_eq!(
        rows[0],
        [
            "ID",
            "LAST_ACK",
            "BACKLOG",
            "SENT",
            "MIDS",
            "LOST",
            "LOST_UPTO"
        ]
    );
    let want: Vec<Vec<String>> = json["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let ack = match &r["last_ack"] {
                Value::Null => "-".to_owned(),
                v => v.to_string(),
            };
            let n = |k: &str| r[k].to_string();
            vec![
                r["id"].as_str().unwrap().to_owned(),
                ack,
                n("backlog"),
                n("sent"),
                n("mids"),
                n("lost"),
                match &r["lost_upto"] {
                    Value::Null => "-".to_owned(),
                    v => v.to_string(),
                },
            ]
        })
        .collect();
    assert_eq!(rows[1..], want[..], "{text}");
    assert_eq!(
        want,
        [
            ["1", "-", "0", "4", "4", "0", "-"],
            ["10", "4", "0", "0", "0", "0", "-"]
        ]
    );
}

#[test]
fn a_missing_directory_is_refused_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-store");
    let out = inspect_with(&["--data-dir", missing.to_str().unwrap()], &[]);
    assert_one_line_failure(&out, "does not exist");
    assert!(!missing.exists());
    // A file where the directory should be.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = inspect_with(&["--data-dir", file.to_str().unwrap()], &[]);
    assert_one_line_failure(&out, "is not a directory");
}

#[test]
fn what_is_not_a_herald_store_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // A directory of something else: nothing is created in it.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let out = inspect_with(&["--data-dir", other.to_str().unwrap()], &[]);
    assert_one_line_failure(&out, "not a Herald data directory");
    assert_eq!(files(&other), ["notes.txt"]);
    // A herald.db that is not a database, or another program's, or a
    // newer Herald's.
    type Make = dyn Fn(&Path);
    let cases: [(&str, &Make); 3] = [
        ("cannot be read as a database", &|p| {
            std::fs::write(p, vec![7u8; 4096]).unwrap()
        }),
        ("is not a Herald database", &|p| {
            rusqlite::Connection::open(p)
                .unwrap()
                .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
                .unwrap()
        }),
        ("newer Herald", &|p| {
            rusqlite::Connection::open(p)
                .unwrap()
                .execute_batch("CREATE TABLE t (x); PRAGMA user_version = 99;")
                .unwrap()
        }),
    ];
    for (i, (needle, make)) in cases.iter().enumerate() {
        let d = dir.path().join(format!("case{i}"));
        std::fs::create_dir(&d).unwrap();
        make(&d.join("herald.db"));
        let before = std::fs::read(d.join("herald.db")).unwrap();
        let out = inspect_with(&["--data-dir", d.to_str().unwrap()], &[]);
        assert_one_line_failure(&out, needle);
        assert_eq!(files(&d), ["herald.db"], "{needle}");
        assert_eq!(std::fs::read(d.join("herald.db")).unwrap(), before);
    }
}

#[test]
fn usage_errors_exit_2_with_the_usage() {
    let url = "postgres://u@127.0.0.1:1/db";
    for (args, env) in [
        (
            &["--data-dir", "/tmp/x", "--database-url", url][..],
            &[][..],
        ),
        (&[][..], &[][..]),
        (&["--json"][..], &[][..]),
        (
            &["--data-dir", "/tmp/x"][..],
            &[("HERALD_DATABASE_URL", url)][..],
        ),
        (&["--data-dir", "/tmp/x", "--client-ids", "1"][..], &[][..]),
    ] {
        let out = inspect_with(args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains("Usage: server inspect"), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

/// A cluster node on `url` for `ids`.
fn node(url: &str, ids: &str) -> Server {
    Server::start(&["--client-ids", ids, "--database-url", url])
}

#[tokio::test]
async fn a_live_postgresql_cluster_shows_its_figures_and_sessions() {
    let pg = PgServer::start();
    let url = pg.new_database();
    let first = node(&url, "a,b,r");
    let second = node(&url, "a,b,r");
    let (mut a, _) = first.login("a").await;
    assert_eq!(send_all(&mut a, 4, Some("p")).await, [1, 2, 3, 4]);
    let (mut b, _) = second.login("b").await;
    assert_eq!(read_and_ack(&mut b, 4, 4).await, [1, 2, 3, 4]);
    assert_eq!(send_all(&mut b, 2, None).await, [5, 6]);
    // r logs in twice: its session is claimed again, epoch 2, on the
    // second node.
    let (r1, _) = first.login("r").await;
    drop(r1);
    let (mut r, backlog) = second.login("r").await;
    assert_eq!(backlog, 6);
    assert_eq!(read_and_ack(&mut r, 6, 5).await, [1, 2, 3, 4, 5, 6]);

    // A password in the URL is never printed.
    let secret_url = url.replace("postgres@", "postgres:pw-hidden@");
    let report_pg = || report(&["--database-url", &secret_url]);
    let rep = poll_report(report_pg, |rep| {
        ack_of(rep, "r") == Some(5) && ack_of(rep, "b") == Some(4)
    });
    assert!(!rep.to_string().contains("pw-hidden"));
    assert_eq!(rep["store"], "postgresql");
    assert_eq!(rep["schema_version"], 3);
    assert_eq!(
        (rep["head"].as_u64(), rep["messages"].as_u64()),
        (Some(6), Some(6))
    );
    assert_eq!(rep["mids"], 4);
    assert_eq!(row(&rep, "a"), (Value::Null, 2, 4, 4));
    assert_eq!(row(&rep, "b"), (4.into(), 0, 2, 0));
    assert_eq!(row(&rep, "r"), (5.into(), 1, 0, 0));
    let node_of = |s: &Server| format!("{:x}-", s.child.id());
    let sessions: Vec<(String, u64, bool, bool)> = rep["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let node = s["node"].as_str().unwrap();
            (
                s["id"].as_str().unwrap().to_owned(),
                s["epoch"].as_u64().unwrap(),
                node.starts_with(&node_of(&first)),
                node.starts_with(&node_of(&second)),
            )
        })
        .collect();
    assert_eq!(
        sessions,
        [
            ("a".into(), 1, true, false),
            ("b".into(), 1, false, true),
            ("r".into(), 2, false, true)
        ]
    );
    let parts = &rep["size_bytes"]["parts"];
    assert!(parts["messages"].as_u64().unwrap() > 0, "{rep}");
    assert!(parts["sessions"].as_u64().unwrap() > 0, "{rep}");

    // The text, from HERALD_DATABASE_URL, has the sessions too.
    let out = inspect_with(&[], &[("HERALD_DATABASE_URL", &url)]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\nSESSION  EPOCH  NODE\n"), "{text}");
    let r_line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("r "))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(r_line.split_whitespace().nth(1), Some("2"), "{text}");
    // The nodes go on committing after being read.
    assert_eq!(send_all(&mut a, 1, None).await, [7]);
}

/// Whether database `url` has a table `meta`.
fn has_meta(url: &str) -> bool {
    let url = url.to_owned();
    std::thread::spawn(move || {
        postgres::Client::connect(&url, postgres::NoTls)
            .unwrap()
            .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])
            .unwrap()
            .get(0)
    })
    .join()
    .unwrap()
}

#[test]
fn a_database_without_herald_or_with_a_newer_herald_is_refused() {
    let pg = PgServer::start();
    let empty = pg.new_database();
    let out = inspect_with(&["--database-url", &empty], &[]);
    assert_one_line_failure(&out, "no Herald schema");
    assert!(!has_meta(&empty), "inspect created the schema");

    let newer = pg.new_database();
    let db = newer.rsplit('/').next().unwrap();
    pg.execute(
        db,
        "CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);
         INSERT INTO meta VALUES ('schema_version', 99);",
    );
    let out = inspect_with(&["--database-url", &newer], &[]);
    assert_one_line_failure(&out, "newer Herald");

    // Nobody listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let away = format!("postgres://u:pw-hidden@127.0.0.1:{port}/db");
    let out = inspect_with(&["--database-url", &away], &[]);
    assert_one_line_failure(&out, "cannot connect to the database");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("pw-hidden"));
}
