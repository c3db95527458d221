//! `server inspect`: what a store holds, as aligned text for people or as
//! one JSON object for machines (the object is described in
//! docs/storage.md, "Inspecting a store").

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use herald::store::inspect::Report;
use herald::store::{PostgresStore, SqliteStore};
use serde_json::json;

/// The store to read: exactly one of the two.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Source {
    /// The data directory of a SQLite store (read-only; never created).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// The PostgreSQL database of a cluster (`postgres://…`; read in a
    /// read-only transaction).
    #[arg(
        long,
        env = "HERALD_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
}

/// `server inspect`: reads the store and prints its report.
pub fn run(source: Source, as_json: bool) -> ExitCode {
    let report = match (&source.data_dir, &source.database_url) {
        (Some(dir), _) => SqliteStore::inspect(dir),
        (None, Some(url)) => PostgresStore::inspect(url),
        (None, None) => {
            eprintln!("error: give --data-dir or --database-url");
            return ExitCode::from(2);
        }
    };
    let out = match report {
        Ok(r) if as_json => format!("{}\n", to_json(&r)),
        Ok(r) => to_text(&r),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`| head`) needs no message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: cannot write the report: {e}");
            ExitCode::from(1)
        }
    }
}

/// The report as one JSON object (keys in alphabetical order).
pub fn to_json(r: &Report) -> String {
    let ids: Vec<_> = r
        .ids
        .iter()
        .map(|i| {
            json!({
                "id": i.id,
                "last_ack": i.last_ack.map(|s| s.0),
                "backlog": i.backlog,
                "sent": i.sent,
                "mids": i.mids,
                "lost": i.lost,
                "lost_upto": i.lost_upto.map(|s| s.0),
            })
        })
        .collect();
    let sessions: Vec<_> = r
        .sessions
        .iter()
        .map(|s| json!({"id": s.id, "epoch": s.epoch, "node": s.node}))
        .collect();
    let parts: serde_json::Map<String, serde_json::Value> = r
        .size
        .iter()
        .map(|(name, n)| (name.clone(), json!(n)))
        .collect();
    json!({
        "store": r.kind,
        "location": r.location,
        "schema_version": r.schema_version,
        "head": r.head.0,
        "messages": r.messages,
        "oldest_seq": r.oldest.map(|s| s.0),
        "pruned_upto": r.pruned_upto.0,
        "mids": r.mids,
        "size_bytes": {"total": r.total_size(), "parts": parts},
        "ids": ids,
        "sessions": sessions,
    })
    .to_string()
}

/// The report as aligned text: the store's figures, then a line per id,
/// then (a cluster) a line per session.
pub fn to_text(r: &Report) -> String {
    let parts: Vec<String> = r.size.iter().map(|(n, b)| format!("{n} {b}")).collect();
    let mut out = String::new();
    for (label, value) in [
        ("store", format!("{} {}", r.kind, r.location)),
        ("schema version", r.schema_version.to_string()),
        ("head seq", r.head.to_string()),
        ("messages", r.messages.to_string()),
        ("oldest seq", opt(r.oldest.map(|s| s.0))),
        ("pruned up to", r.pruned_upto.to_string()),
        ("remembered mids", r.mids.to_string()),
        (
            "size bytes",
            format!("{} ({})", r.total_size(), parts.join(", ")),
        ),
    ] {
        out.push_str(&format!("{label:<16}{value}\n"));
    }
    let ids: Vec<[String; 7]> = r
        .ids
        .iter()
        .map(|i| {
            [
                i.id.clone(),
                opt(i.last_ack.map(|s| s.0)),
                i.backlog.to_string(),
                i.sent.to_string(),
                i.mids.to_string(),
                i.lost.to_string(),
                opt(i.lost_upto.map(|s| s.0)),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        [
            "ID",
            "LAST_ACK",
            "BACKLOG",
            "SENT",
            "MIDS",
            "LOST",
            "LOST_UPTO",
        ],
        &ids,
    ));
    if r.kind == "postgresql" {
        let sessions: Vec<[String; 3]> = r
            .sessions
            .iter()
            .map(|s| [s.id.clone(), s.epoch.to_string(), s.node.clone()])
            .collect();
        out.push('\n');
        out.push_str(&table(["SESSION", "EPOCH", "NODE"], &sessions));
    }
    out
}

/// A number, or `-` for none.
fn opt(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// `rows` under `head`, each column as wide as its widest cell.
fn table<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    let mut width = head.map(str::len);
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(head.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use herald::store::inspect::{IdReport, SessionRow};
    use herald::Seq;

    fn report() -> Report {
        Report {
            kind: "postgresql",
            location: "h:5432/db".into(),
            schema_version: 2,
            head: Seq(12),
            messages: 10,
            oldest: Some(Seq(3)),
            pruned_upto: Seq(2),
            mids: 4,
            size: vec![("messages".into(), 8192), ("mids".into(), 100)],
            ids: vec![
                IdReport {
                    id: "1".into(),
                    last_ack: Some(Seq(12)),
                    backlog: 0,
                    sent: 10,
                    mids: 4,
                    lost: 5,
                    lost_upto: Some(Seq(2)),
                },
                IdReport {
                    id: "long-name\"x".into(),
                    last_ack: None,
                    backlog: 10,
                    sent: 0,
                    mids: 0,
                    lost: 0,
                    lost_upto: None,
                },
            ],
            sessions: vec![SessionRow {
                id: "1".into(),
                epoch: 3,
                node: "n\u{1}\"".into(),
            }],
        }
    }

    #[test]
    fn text_aligns_the_columns() {
        let text = to_text(&report());
        assert!(text.contains("head seq        12\n"), "{text}");
        assert!(
            text.contains("size bytes      8292 (messages 8192, mids 100)\n"),
            "{text}"
        );
        assert!(text.contains("\nID           LAST_ACK  BACKLOG  SENT  MIDS  LOST  LOST_UPTO\n1            12        0        10    4     5     2\nlong-name\"x  -         10       0     0     0     -\n"), "{text}");
        assert!(
            text.contains("\nSESSION  EPOCH  NODE\n1        3      n"),
            "{text}"
        );
    }

    #[test]
    fn json_escapes_and_holds_every_figure() {
        let v: serde_json::Value = serde_json::from_str(&to_json(&report())).unwrap();
        assert_eq!(v["head"], 12);
        assert_eq!(v["oldest_seq"], 3);
        assert_eq!(v["size_bytes"]["total"], 8292);
        assert_eq!(v["size_bytes"]["parts"]["mids"], 100);
        assert_eq!(v["ids"][1]["id"], "long-name\"x");
        assert!(v["ids"][1]["last_ack"].is_null());
        assert_eq!(
            (
                v["ids"][0]["lost"].clone(),
                v["ids"][0]["lost_upto"].clone()
            ),
            (5.into(), 2.into())
        );
        assert!(v["ids"][1]["lost_upto"].is_null());
        assert_eq!(v["sessions"][0]["node"], "n\u{1}\"");
    }
}
