//! Helpers for tests/inspect.rs: running `server inspect`, reading its
//! report, and the traffic whose figures it must show.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::{self, Conn, DEADLINE};

/// Runs `server inspect ARGS` (with `env`), bounded by [`DEADLINE`].
pub fn inspect_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .arg("inspect")
        .args(args)
        .env_remove("HERALD_DATABASE_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_child(&mut child, DEADLINE);
    child.wait_with_output().unwrap()
}

/// `server inspect ARGS --json`, which must succeed: its object.
pub fn report(args: &[&str]) -> Value {
    let out = inspect_with(&[args, &["--json"]].concat(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "inspect {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The `--json` report of the store in `dir`.
pub fn dir_report(dir: &Path) -> Value {
    report(&["--data-dir", dir.to_str().unwrap()])
}

/// Each id's row of a report, by id.
pub fn ids(r: &Value) -> BTreeMap<String, Value> {
    r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["id"].as_str().unwrap().to_owned(), row.clone()))
        .collect()
}

/// Asks `report` again (bounded) until `done` holds for its result: acks
/// reach the store a moment after the `ACK`.
pub fn poll_report(report: impl Fn() -> Value, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = report();
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "the report never showed it: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The saved `last_ack` of `id`, if the report has a row with one.
pub fn ack_of(r: &Value, id: &str) -> Option<u64> {
    ids(r).get(id).and_then(|row| row["last_ack"].as_u64())
}

/// `(last_ack, backlog, sent, mids)` of `id`'s row.
pub fn row(r: &Value, id: &str) -> (Value, u64, u64, u64) {
    let rows = ids(r);
    let row = rows
        .get(id)
        .unwrap_or_else(|| panic!("no row for {id}: {r}"));
    let n = |k: &str| row[k].as_u64().unwrap();
    (row["last_ack"].clone(), n("backlog"), n("sent"), n("mids"))
}

/// `w` sends `n` pipelined messages (with mids `<tag>0`… when `tag` is
/// given) and reads every `SENT`; returns the seqs.
pub async fn send_all(w: &mut Conn, n: usize, tag: Option<&str>) -> Vec<u64> {
    let mut batch = String::new();
    for i in 0..n {
        match tag {
            Some(t) => batch.push_str(&format!("@mid={t}{i} SEND m{i}\n")),
            None => batch.push_str(&format!("SEND m{i}\n")),
        }
    }
    w.send_raw(batch.as_bytes()).await;
    let mut seqs = Vec::with_capacity(n);
    while seqs.len() < n {
        let line = w.line().await;
        if let Some(seq) = line.strip_prefix("SENT ") {
            seqs.push(seq.parse().unwrap());
        }
    }
    seqs
}

/// Reads `n` messages on `c` (all it is owed), acknowledges up to `ack`
/// and makes sure the server has the `ACK` (a `PING` after it); returns the
/// seqs read.
pub async fn read_and_ack(c: &mut Conn, n: usize, ack: u64) -> Vec<u64> {
    let seqs = c.msgs(n).await.iter().map(|m| m.0).collect();
    c.send(&format!("ACK {ack}")).await;
    c.send("PING acked").await;
    assert_eq!(c.line().await, "PONG acked");
    seqs
}

/// The names of the files in `dir`.
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The text report's `label value` lines above the tables, and its rows.
pub fn parse_text(text: &str) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
    let mut top = BTreeMap::new();
    let mut rows = Vec::new();
    let mut blocks = text.split("\n\n");
    for line in blocks.next().unwrap().lines() {
        let (label, value) = line.split_at(16);
        top.insert(label.trim().to_owned(), value.to_owned());
    }
    for block in blocks {
        for line in block.lines() {
            rows.push(line.split_whitespace().map(str::to_owned).collect());
        }
    }
    (top, rows)
}
