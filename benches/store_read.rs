//! Reading a backlog back from SQLite, per message: the work of the store
//! thread while a client catches up after a restart.
//! `cargo bench --bench store_read`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::store::{NewMessage, SqliteStore, Store, SyncPolicy};
use herald::{ClientId, Seq};

const MESSAGES: u64 = 100_000;
/// What the registry asks for per read: its chunk count and one read's bytes.
const MAX: usize = 4096;
const MAX_BYTES: usize = 512 * 1024;

fn filled() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = SqliteStore::open(dir.path(), SyncPolicy::None).expect("store");
    let from = ClientId::new("bench-w").expect("id");
    let text = bytes::Bytes::from("x".repeat(100));
    for _ in 0..MESSAGES / 1000 {
        let batch: Vec<NewMessage> = (0..1000)
            .map(|_| NewMessage {
                from: from.clone(),
                unix_ms: 1_764_080_000_000,
                text: text.clone(),
                mid: None,
            })
            .collect();
        store.append(&batch).expect("append");
    }
    (dir, store)
}

fn read_backlog(c: &mut Criterion) {
    let (_dir, mut store) = filled();
    let reader = ClientId::new("bench-r").expect("id");
    let mut g = c.benchmark_group("store read");
    g.throughput(Throughput::Elements(MESSAGES));
    g.sample_size(20);
    g.bench_function("messages (read_after)", |b| {
        b.iter(|| {
            let (mut cursor, mut n) = (Seq(0), 0);
            while cursor < Seq(MESSAGES) {
                let ms = store
                    .read_after(cursor, Seq(MESSAGES), MAX, MAX_BYTES)
                    .expect("read");
                n += ms.len();
                cursor = ms.last().map_or(Seq(MESSAGES), |m| m.seq());
            }
            assert_eq!(n as u64, MESSAGES);
        })
    });
    g.bench_function("backlog frames (read_backlog)", |b| {
        b.iter(|| {
            let (mut cursor, mut n) = (Seq(0), 0);
            while cursor < Seq(MESSAGES) {
                let backlog = store
                    .read_backlog(cursor, Seq(MESSAGES), &reader, MAX, MAX_BYTES)
                    .expect("read");
                n += backlog.len();
                cursor = backlog.last();
            }
            assert_eq!(n as u64, MESSAGES);
        })
    });
    g.finish();
}

criterion_group!(benches, read_backlog);
criterion_main!(benches);
