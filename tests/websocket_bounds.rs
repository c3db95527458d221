//! A WebSocket reader that stops reading costs the server a bounded buffer,
//! as a stalled TCP reader does: 100,000 messages of 1 KB flow past a
//! stalled WebSocket client while the server's anonymous resident memory
//! (`RssAnon`, as in tests/memory_bounds.rs) is sampled; afterwards the
//! client reads every message, in order.

mod common;
#[path = "common/rss.rs"]
mod rss;
#[path = "common/ws.rs"]
mod ws;

use std::time::Instant;

use rss::{Sampler, MAX_RSS_ANON_KIB};

use common::{parse_msg, Server};

const MESSAGES: usize = 100_000;
const SIZE: usize = 1000;

#[tokio::test]
async fn a_websocket_reader_that_stops_reading_keeps_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // The idle timeout is long so the stalled client is pinged only after
    // 30 s of silence (it answers no ping while it does not read).
    let (s, port) = Server::start_http(&[
        "--client-ids",
        "w,r",
        "--data-dir",
        data,
        "--sync",
        "none",
        "--idle-timeout",
        "3600",
    ]);
    let sampler = Sampler::start(s.child.id());
    let mut tab = ws::connect(port).await;
    assert_eq!(tab.login("r").await, 0);
    // The tab stops reading; 100 MB of messages flow to it.
    let started = Instant::now();
    s.fill("w", MESSAGES, SIZE).await;
    let stalled = sampler.max_kib();
    eprintln!(
        "sent {MESSAGES} x {SIZE} B in {:?}; RssAnon at most {stalled} KiB",
        started.elapsed()
    );
    // It reads again: everything comes, in order.
    for i in 0..MESSAGES {
        let line = tab.line().await;
        let (seq, from, text) = parse_msg(&line).unwrap_or_else(|| panic!("not a MSG: {line:.80}"));
        assert_eq!((seq, from.as_str()), (i as u64 + 1, "w"));
        assert!(text.starts_with(&format!("{i:08}-")), "message {i}");
        assert_eq!(text.len(), SIZE);
    }
    let max = sampler.max_kib();
    eprintln!("read in {:?}; RssAnon at most {max} KiB", started.elapsed());
    assert!(stalled < MAX_RSS_ANON_KIB, "{stalled} KiB while stalled");
    assert!(max < MAX_RSS_ANON_KIB, "{max} KiB");
}
