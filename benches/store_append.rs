//! Appending to SQLite, per message: the CPU of one commit of a sender's
//! window (64 messages of 100 B), without the fsync (`--sync none`), which
//! is the store thread's part of every confirmation round trip.
//! `cargo bench --bench store_append`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::store::{NewMessage, SqliteStore, Store, SyncPolicy};
use herald::ClientId;

/// One sender's window of unconfirmed `SEND`s, committed together.
const WINDOW: usize = 64;

fn append_window(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = SqliteStore::open(dir.path(), SyncPolicy::None).expect("store");
    let from = ClientId::new("bench-w").expect("id");
    let text = bytes::Bytes::from("x".repeat(100));
    let batch: Vec<NewMessage> = (0..WINDOW)
        .map(|_| NewMessage {
            from: from.clone(),
            unix_ms: 1_764_080_000_000,
            text: text.clone(),
            mid: None,
        })
        .collect();
    let mut g = c.benchmark_group("store append");
    g.throughput(Throughput::Elements(WINDOW as u64));
    g.bench_function("a window of 64 in one commit", |b| {
        b.iter(|| store.append(&batch).expect("append"))
    });
    g.finish();
}

criterion_group!(benches, append_window);
criterion_main!(benches);
