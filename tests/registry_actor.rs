//! Registry tests with mock sessions: no sockets, just the registry, an
//! in-memory store, and test actors behind the same `Recipient<ToSession>`
//! real sessions use.

use std::sync::Mutex;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use herald::actors::messages::{Credit, Publish, Shutdown};
use herald::actors::{Registry, RegistryConfig, ToSession};
use herald::net::{ByeReason, ErrorCode, Tags};
use herald::store::{MemoryStore, Recovered, StoreActor};
use herald::{ClientId, Seq};
#[path = "common/mock.rs"]
mod mock;
use mock::{id, Client};

fn start(ids: &[&str], config: RegistryConfig) -> Addr<Registry> {
    let slot = Mutex::new(Some(
        Box::new(MemoryStore::new()) as Box<dyn herald::store::Store>
    ));
    let store = SyncArbiter::start(1, move || StoreActor::new(slot.lock().unwrap().take()));
    let ids: Vec<ClientId> = ids.iter().map(|s| id(s)).collect();
    Registry::new(config, ids, Recovered::default(), store).start()
}

#[actix_rt::test]
async fn broadcasts_to_every_other_online_client_never_to_the_sender() {
    let r = start(&["a", "b", "c"], RegistryConfig::default());
    let mut a = Client::connect(&r, "a", true).await;
    let mut b = Client::connect(&r, "b", true).await;
    let mut c = Client::connect(&r, "c", true).await;
    for cl in [&mut a, &mut b, &mut c] {
        assert_eq!(cl.welcome().await, 0);
    }
    a.publish("hi");
    assert_eq!(a.sent().await, vec![Seq(1)]);
    assert_eq!(b.delivered(1).await, vec![(1, "a".into(), "hi".into())]);
    assert_eq!(c.delivered(1).await, vec![(1, "a".into(), "hi".into())]);
    // If `a` had been sent its own message it would come before b's.
    b.publish("back");
    assert_eq!(b.sent().await, vec![Seq(2)]);
    assert_eq!(a.delivered(1).await, vec![(2, "b".into(), "back".into())]);
}

#[actix_rt::test]
async fn sent_answers_come_in_order_and_seqs_are_dense() {
    let r = start(&["a", "b"], RegistryConfig::default());
    let mut a = Client::connect(&r, "a", true).await;
    a.welcome().await;
    for i in 0..500 {
        a.publish(&format!("m{i}"));
    }
    assert_eq!(a.sent_n(500).await, (1..=500).map(Seq).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn a_client_that_was_away_gets_its_backlog_then_live_messages() {
    let r = start(&["a", "b", "c"], RegistryConfig::default());
    let mut a = Client::connect(&r, "a", true).await;
    a.welcome().await;
    a.publish("one");
    a.publish("two");
    assert_eq!(a.sent_n(2).await, vec![Seq(1), Seq(2)]);
    let mut c = Client::connect(&r, "c", true).await;
    assert_eq!(c.welcome().await, 2);
    assert_eq!(
        c.delivered(2).await,
        vec![(1, "a".into(), "one".into()), (2, "a".into(), "two".into())]
    );
    a.publish("three");
    assert_eq!(c.delivered(1).await, vec![(3, "a".into(), "three".into())]);
}

#[actix_rt::test]
async fn own_messages_are_not_counted_or_replayed() {
    let r = start(&["a", "b"], RegistryConfig::default());
    let mut a = Client::connect(&r, "a", true).await;
    let mut b = Client::connect(&r, "b", true).await;
    a.welcome().await;
    b.welcome().await;
    b.publish("from b");
    b.sent().await;
    assert_eq!(a.delivered(1).await, vec![(1, "b".into(), "from b".into())]);
    b.disconnect();
    a.publish("from a");
    a.sent().await;
    let mut b = Client::connect(&r, "b", true).await;
    assert_eq!(b.welcome().await, 1);
    assert_eq!(b.delivered(1).await, vec![(2, "a".into(), "from a".into())]);
}

#[actix_rt::test]
async fn acks_are_cumulative_and_unacked_messages_come_again() {
    let r = start(&["a", "b"], RegistryConfig::default());
    let mut a = Client::connect(&r, "a", true).await;
    let mut b = Client::connect(&r, "b", true).await;
    a.welcome().await;
    b.welcome().await;
    for t in ["1", "2", "3"] {
        a.publish(t);
    }
    assert_eq!(b.delivered(3).await.len(), 3);
    b.ack(2);
    b.disconnect();
    let mut b = Client::connect(&r, "b", true).await;
    assert_eq!(b.welcome().await, 1);
    assert_eq!(b.delivered(1).await, vec![(3, "a".into(), "3".into())]);
    // An older ack never moves the cursor back.
    b.ack(1);
    b.ack(3);
    b.disconnect();
    let mut b = Client::connect(&r, "b", true).await;
    assert_eq!(b.welcome().await, 0);
}

#[actix_rt::test]
async fn a_second_login_replaces_the_first() {
    let r = start(&["a", "b"], RegistryConfig::default());
    let mut b1 = Client::connect(&r, "b", true).await;
    b1.welcome().await;
    let mut b2 = Client::connect(&r, "b", true).await;
    assert!(matches!(
        b1.next().await,
        ToSession::Bye(ByeReason::Replaced)
    ));
    assert_eq!(b2.welcome().await, 0);
    // The old session's late disconnect must not log the new one out.
    b1.disconnect();
    let mut a = Client::connect(&r, "a", true).await;
    a.welcome().await;
    a.publish("still there?");
    assert_eq!(
        b2.delivered(1).await,
        vec![(1, "a".into(), "still there?".into())]
    );
}

#[actix_rt::test]
async fn unknown_ids_are_refused() {
    let r = start(&["a"], RegistryConfig::default());
    let mut x = Client::connect(&r, "x", true).await;
    match x.next().await {
        ToSession::LoginRefused(e, ByeReason::UnknownClient) => {
            assert_eq!(e.code, ErrorCode::UnknownClient)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[actix_rt::test]
async fn a_reader_without_credit_is_not_pushed_to_and_catches_up_from_the_store() {
    let config = RegistryConfig {
        session_window_bytes: 4096,
        tail_messages: 16,
        read_chunk: 10,
        ..RegistryConfig::default()
    };
    let r = start(&["a", "slow"], config);
    let mut a = Client::connect(&r, "a", true).await;
    let mut slow = Client::connect(&r, "slow", false).await;
    a.welcome().await;
    slow.welcome().await;
    let text = "x".repeat(100);
    for _ in 0..1000 {
        a.publish(&text);
    }
    a.sent_n(1000).await;
    // Everything is stored; the slow reader was pushed no more than its
    // window (plus at most one message) while it returned no credit.
    let mut pushed = Vec::new();
    let mut bytes = 0;
    while let Ok(msg) = slow.rx.try_recv() {
        match msg {
            ToSession::Deliver(ms) => {
                bytes += ms.iter().map(|m| m.frame().len()).sum::<usize>();
                pushed.extend(ms.iter().map(|m| m.seq().0));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(bytes <= 4096 + 200, "pushed {bytes} bytes without credit");
    // Now it drains: returning credit brings the rest, from the store since
    // the tail holds only the newest 16.
    let mut next = pushed.last().copied().unwrap_or(0);
    let mut all = pushed.clone();
    r.do_send(Credit {
        session: slow.session,
        bytes,
    });
    while next < 1000 {
        match slow.next().await {
            ToSession::Deliver(ms) => {
                let b = ms.iter().map(|m| m.frame().len()).sum();
                all.extend(ms.iter().map(|m| m.seq().0));
                next = ms.last().unwrap().seq().0;
                r.do_send(Credit {
                    session: slow.session,
                    bytes: b,
                });
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(all, (1..=1000).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn backlog_and_live_traffic_meet_without_gap_or_duplicate() {
    let config = RegistryConfig {
        tail_messages: 64,
        read_chunk: 50,
        ..RegistryConfig::default()
    };
    let r = start(&["a", "late"], config);
    let mut a = Client::connect(&r, "a", true).await;
    a.welcome().await;
    for i in 0..2000 {
        a.publish(&format!("{i}"));
    }
    // Log in while those are still being stored, then send more.
    let mut late = Client::connect(&r, "late", true).await;
    for i in 2000..3000 {
        a.publish(&format!("{i}"));
    }
    let pending = late.welcome().await;
    assert!(pending <= 3000);
    let got = late.delivered(3000).await;
    let seqs: Vec<u64> = got.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (1..=3000).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn shutdown_says_bye_to_every_session() {
    let r = start(&["a", "b"], RegistryConfig::default());
    let mut a = Client::connect(&r, "a", true).await;
    a.welcome().await;
    a.publish("last words");
    let shutdown = r.send(Shutdown);
    assert_eq!(a.sent().await, vec![Seq(1)]);
    assert!(matches!(
        a.next().await,
        ToSession::Bye(ByeReason::Shutdown)
    ));
    a.disconnect();
    shutdown.await.unwrap();
}

#[actix_rt::test]
async fn during_shutdown_sends_are_left_unanswered_and_logins_refused() {
    let r = start(&["a", "b"], RegistryConfig::default());
    let mut a = Client::connect(&r, "a", true).await;
    a.welcome().await;
    a.publish("before");
    let shutdown = r.send(Shutdown);
    // Arrives after the shutdown began: never refused with ERR (the client
    // would drop it), only left unanswered until `BYE shutdown`.
    a.publish("during");
    assert_eq!(a.sent().await, vec![Seq(1)]);
    assert!(matches!(
        a.next().await,
        ToSession::Bye(ByeReason::Shutdown)
    ));
    let mut b = Client::connect(&r, "b", true).await;
    match b.next().await {
        ToSession::LoginRefused(e, ByeReason::Shutdown) => assert_eq!(e.code, ErrorCode::Limit),
        other => panic!("expected a refusal with BYE shutdown, got {other:?}"),
    }
    a.disconnect();
    shutdown.await.unwrap();
}

#[actix_rt::test]
async fn a_resent_mid_is_answered_with_the_first_seq_from_any_session() {
    let r = start(&["a", "b"], RegistryConfig::default());
    let mut a1 = Client::connect(&r, "a", true).await;
    let mut b = Client::connect(&r, "b", true).await;
    a1.welcome().await;
    b.welcome().await;
    let send = |c: &Client, mid: &str, text: &str| {
        c.registry.do_send(Publish {
            session: c.session,
            text: Bytes::copy_from_slice(text.as_bytes()),
            tags: Tags {
                mid: Some(mid.into()),
            },
        })
    };
    send(&a1, "x", "once");
    send(&a1, "x", "once");
    assert_eq!(a1.sent_n(2).await, vec![Seq(1), Seq(1)]);
    let mut a2 = Client::connect(&r, "a", true).await;
    assert!(matches!(
        a1.next().await,
        ToSession::Bye(ByeReason::Replaced)
    ));
    a2.welcome().await;
    send(&a2, "x", "once");
    send(&a2, "y", "twice");
    assert_eq!(a2.sent_n(2).await, vec![Seq(1), Seq(2)]);
    // b got each stored message once.
    assert_eq!(
        b.delivered(2).await,
        vec![
            (1, "a".into(), "once".into()),
            (2, "a".into(), "twice".into())
        ]
    );
}

#[test]
fn the_mid_window_keeps_the_newest_and_the_recent() {
    use herald::actors::dedupe::MidWindow;
    let mut w = MidWindow::default();
    let (keep, age, now) = (3, 1_000, 10_000);
    // Old ones beyond `keep` are forgotten…
    for (i, t) in [(1, 1_000), (2, 2_000), (3, 3_000), (4, 4_000)] {
        w.insert(format!("m{i}"), Seq(i), t, keep, age, now);
    }
    assert_eq!(w.get("m1"), None);
    assert_eq!(w.get("m2"), Some(Seq(2)));
    assert_eq!(w.len(), 3);
    // …recent ones are kept even beyond `keep`.
    let mut w = MidWindow::default();
    for i in 1..=5 {
        w.insert(format!("m{i}"), Seq(i), now, keep, age, now);
    }
    assert_eq!(w.len(), 5);
    assert_eq!(w.get("m1"), Some(Seq(1)));
}

/// A memory store the test can look into while the registry uses it; it
/// also records the size of every append (one commit each).
#[derive(Clone, Default)]
struct Shared(
    std::sync::Arc<Mutex<MemoryStore>>,
    std::sync::Arc<Mutex<Vec<usize>>>,
);

impl Shared {
    /// How many messages each append so far held.
    fn appends(&self) -> Vec<usize> {
        self.1.lock().unwrap().clone()
    }

    /// Seqs of the stored messages.
    fn seqs(&self) -> Vec<u64> {
        use herald::store::Store;
        let mut s = self.0.lock().unwrap();
        s.read_after(Seq(0), Seq(u64::MAX), usize::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(|m| m.seq().0)
            .collect()
    }
}

impl herald::store::Store for Shared {
    fn recover(&mut self) -> Result<Recovered, herald::store::StoreError> {
        self.0.lock().unwrap().recover()
    }
    fn append(
        &mut self,
        batch: &[herald::store::NewMessage],
    ) -> Result<Vec<herald::store::Appended>, herald::store::StoreError> {
        self.1.lock().unwrap().push(batch.len());
        self.0.lock().unwrap().append(batch)
    }
    fn forget_mids(
        &mut self,
        cutoffs: &[(ClientId, Seq)],
        policy: &herald::store::MidPolicy,
    ) -> Result<(), herald::store::StoreError> {
        self.0.lock().unwrap().forget_mids(cutoffs, policy)
    }
    fn read_after(
        &mut self,
        after: Seq,
        upto: Seq,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<herald::Message>, herald::store::StoreError> {
        self.0
            .lock()
            .unwrap()
            .read_after(after, upto, max, max_bytes)
    }
    fn first_not_from(
        &mut self,
        after: Seq,
        upto: Seq,
        sender: &ClientId,
    ) -> Result<Option<Seq>, herald::store::StoreError> {
        self.0.lock().unwrap().first_not_from(after, upto, sender)
    }
    fn count_from_others(
        &mut self,
        after: Seq,
        upto: Seq,
        reader: &ClientId,
    ) -> Result<u64, herald::store::StoreError> {
        self.0
            .lock()
            .unwrap()
            .count_from_others(after, upto, reader)
    }
    fn save_acks(&mut self, acks: &[(ClientId, Seq)]) -> Result<(), herald::store::StoreError> {
        self.0.lock().unwrap().save_acks(acks)
    }
    fn prune(&mut self, upto: Seq) -> Result<u64, herald::store::StoreError> {
        self.0.lock().unwrap().prune(upto)
    }
    fn flush(&mut self) -> Result<(), herald::store::StoreError> {
        self.0.lock().unwrap().flush()
    }
}

fn start_shared(ids: &[&str], config: RegistryConfig) -> (Addr<Registry>, Shared) {
    let shared = Shared::default();
    let slot = Mutex::new(Some(
        Box::new(shared.clone()) as Box<dyn herald::store::Store>
    ));
    let store = SyncArbiter::start(1, move || StoreActor::new(slot.lock().unwrap().take()));
    let ids: Vec<ClientId> = ids.iter().map(|s| id(s)).collect();
    let r = Registry::new(config, ids, Recovered::default(), store).start();
    (r, shared)
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn catch_up_reads_stop_at_the_credit_plus_one_window_in_bytes() {
    const WINDOW: usize = 4096;
    let config = RegistryConfig {
        session_window_bytes: WINDOW,
        tail_messages: 4,
        read_chunk: 4096,
        ..RegistryConfig::default()
    };
    let r = start(&["a", "slow"], config);
    let mut a = Client::connect(&r, "a", true).await;
    a.welcome().await;
    // Small messages (many fit one window) and big ones (each bigger than
    // the window): the store holds all of them before the reader logs in.
    let small = "s".repeat(300);
    let big = "B".repeat(3 * WINDOW);
    for i in 0..400 {
        a.publish(if i % 50 == 49 { &big } else { &small });
    }
    a.sent_n(400).await;
    let mut slow = Client::connect(&r, "slow", false).await;
    assert_eq!(slow.welcome().await, 400);
    let frame_max = 3 * WINDOW + 100;
    let mut all = Vec::new();
    // Pushed and not yet handed back as credit.
    let mut outstanding = 0usize;
    while all.len() < 400 {
        let ms = match slow.next().await {
            ToSession::Deliver(ms) => ms,
            other => panic!("unexpected {other:?}"),
        };
        outstanding += ms.iter().map(|m| m.frame().len()).sum::<usize>();
        assert!(
            outstanding <= 2 * WINDOW + frame_max,
            "{outstanding} bytes pushed past the credit"
        );
        all.extend(ms.iter().map(|m| m.seq().0));
        // Hand credit back only once nothing more comes: the registry
        // must stop by itself.
        if slow.rx.is_empty() {
            tokio::task::yield_now().await;
        }
        if slow.rx.is_empty() {
            r.do_send(Credit {
                session: slow.session,
                bytes: outstanding,
            });
            outstanding = 0;
        }
    }
    assert_eq!(all, (1..=400).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn a_stalled_reader_is_pushed_no_more_than_its_credit_and_one_window() {
    const WINDOW: usize = 8192;
    let config = RegistryConfig {
        session_window_bytes: WINDOW,
        tail_messages: 1,
        ..RegistryConfig::default()
    };
    let r = start(&["a", "slow"], config);
    let mut a = Client::connect(&r, "a", true).await;
    a.welcome().await;
    let text = "x".repeat(1000);
    for _ in 0..2000 {
        a.publish(&text);
    }
    a.sent_n(2000).await;
    let mut slow = Client::connect(&r, "slow", false).await;
    assert_eq!(slow.welcome().await, 2000);
    // It never returns credit: what it gets is bounded in bytes, not by a
    // count of messages. Everything the registry will push comes before
    // the registry answers this ping-pong through the store.
    a.publish("marker");
    a.sent().await;
    let mut bytes = 0;
    while let Ok(msg) = slow.rx.try_recv() {
        match msg {
            ToSession::Deliver(ms) => bytes += ms.iter().map(|m| m.frame().len()).sum::<usize>(),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(bytes > 0, "nothing pushed");
    assert!(
        bytes <= 2 * WINDOW + 1100,
        "pushed {bytes} bytes to a reader that returned no credit"
    );
}

#[actix_rt::test]
async fn retention_counts_a_senders_own_messages_as_handled() {
    let config = RegistryConfig {
        retain: herald::actors::Retain::Newest(0),
        ack_flush_interval: Duration::from_millis(10),
        tail_messages: 1,
        ..RegistryConfig::default()
    };
    let (r, store) = start_shared(&["talker", "b", "c"], config);
    // `talker` only sends: it is never sent its own messages, so it never
    // acknowledges them.
    let mut talker = Client::connect(&r, "talker", true).await;
    let mut b = Client::connect(&r, "b", true).await;
    let mut c = Client::connect(&r, "c", true).await;
    for cl in [&mut talker, &mut b, &mut c] {
        cl.welcome().await;
    }
    for i in 1..=5 {
        talker.publish(&format!("t{i}"));
    }
    talker.sent_n(5).await;
    b.delivered(5).await;
    c.delivered(5).await;
    b.ack(5);
    c.ack(3);
    // c holds pruning back at 3; talker holds nothing back.
    eventually("messages 1..3 pruned", || store.seqs() == [4, 5]).await;
    c.ack(5);
    eventually("everything pruned", || store.seqs().is_empty()).await;
    // A message from b must still be acknowledged by talker (and c).
    b.publish("from b");
    assert_eq!(b.sent().await, vec![Seq(6)]);
    c.delivered(1).await;
    c.ack(6);
    talker.delivered(1).await;
    talker.publish("t7");
    talker.sent().await;
    b.ack(7);
    c.ack(7);
    eventually("7 is stored", || store.seqs() == [6, 7]).await;
    talker.ack(6);
    eventually("6 and 7 pruned", || store.seqs().is_empty()).await;
}

#[actix_rt::test]
async fn the_mid_window_is_capped_per_client_id_and_evicts_the_oldest() {
    use herald::actors::dedupe::MAX_MIDS_PER_ID;
    let r = start(&["a"], RegistryConfig::default());
    let mut a = Client::connect(&r, "a", true).await;
    a.welcome().await;
    let send = |c: &Client, mid: String| {
        c.registry.do_send(Publish {
            session: c.session,
            text: Bytes::from_static(b"t"),
            tags: Tags { mid: Some(mid) },
        })
    };
    // All within the 24 h window: only the cap forgets.
    let n = MAX_MIDS_PER_ID + 5;
    for i in 0..n {
        send(&a, format!("m{i}"));
    }
    a.sent_n(n).await;
    // The oldest five are forgotten (stored again), the sixth is remembered.
    send(&a, "m0".into());
    send(&a, "m5".into());
    send(&a, format!("m{}", n - 1));
    assert_eq!(
        a.sent_n(3).await,
        vec![Seq(n as u64 + 1), Seq(6), Seq(n as u64)]
    );
}

#[test]
fn the_mid_window_drops_a_stale_copy_without_forgetting_the_newer_one() {
    use herald::actors::dedupe::{MidWindow, MAX_MIDS_PER_ID};
    let mut w = MidWindow::default();
    let (keep, age, now) = (2, 1_000, 10_000);
    w.insert("x".into(), Seq(1), 1_000, keep, age, now);
    assert_eq!(w.cutoff_changed(), Some(Seq(1)));
    w.insert("x".into(), Seq(2), now, keep, age, now);
    w.insert("y".into(), Seq(3), now, keep, age, now);
    w.insert("z".into(), Seq(4), 2_000, keep, age, now);
    // The old copy of x went, its newer copy stays.
    assert_eq!(w.get("x"), Some(Seq(2)));
    assert_eq!(w.cutoff_changed(), Some(Seq(2)));
    assert_eq!(w.cutoff_changed(), None);
    // The hard cap holds even for recent mids.
    let mut w = MidWindow::default();
    for i in 0..MAX_MIDS_PER_ID as u64 + 3 {
        w.insert(format!("m{i}"), Seq(i + 1), now, 10, age, now);
    }
    assert_eq!(w.len(), MAX_MIDS_PER_ID);
    assert_eq!(w.get("m2"), None);
    assert_eq!(w.get("m3"), Some(Seq(4)));
}

#[actix_rt::test]
async fn one_reads_burst_of_sends_is_stored_in_one_commit() {
    let (r, shared) = start_shared(&["a", "b"], RegistryConfig::default());
    let mut a = Client::connect(&r, "a", true).await;
    a.welcome().await;
    let texts: Vec<String> = (0..64).map(|i| format!("line {i}")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    a.publish_burst(&texts);
    let seqs: Vec<u64> = a.sent_n(64).await.iter().map(|s| s.0).collect();
    assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
    assert_eq!(shared.appends(), vec![64], "one commit for the whole burst");
}

#[actix_rt::test]
async fn sends_waiting_in_the_mailbox_together_share_one_commit() {
    let (r, shared) = start_shared(&["a", "b", "c"], RegistryConfig::default());
    let mut clients = Vec::new();
    for name in ["a", "b", "c"] {
        let mut c = Client::connect(&r, name, true).await;
        c.welcome().await;
        clients.push(c);
    }
    // The registry runs on this thread: all three reach its mailbox before
    // it handles the first, as SENDs from several sessions' reads do.
    for c in &clients {
        c.publish("hello");
    }
    for c in &mut clients {
        assert_eq!(c.sent_n(1).await.len(), 1);
    }
    assert_eq!(
        shared.appends(),
        vec![3],
        "the first SEND does not go alone while the others wait a whole commit"
    );
}

#[actix_rt::test]
async fn a_backlog_read_from_sqlite_comes_in_bounded_pieces_without_the_readers_own() {
    use herald::store::{NewMessage, SqliteStore, Store, SyncPolicy};
    const WINDOW: usize = 8192;
    // 600 stored messages before the server starts, one in five the
    // reader's own, texts of 1 to 300 bytes.
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
    let batch: Vec<NewMessage> = (0..600)
        .map(|i| NewMessage {
            from: id(if i % 5 == 2 { "r" } else { "a" }),
            unix_ms: 1_000 + i,
            text: Bytes::from(format!("{i} {}", "x".repeat((i as usize * 37) % 300))),
            mid: None,
        })
        .collect();
    sqlite.append(&batch).unwrap();
    let recovered = sqlite.recover().unwrap();
    let slot = Mutex::new(Some(Box::new(sqlite) as Box<dyn Store>));
    let store = SyncArbiter::start(1, move || StoreActor::new(slot.lock().unwrap().take()));
    let config = RegistryConfig {
        session_window_bytes: WINDOW,
        tail_messages: 4,
        ..RegistryConfig::default()
    };
    let r = Registry::new(config, vec![id("a"), id("r")], recovered, store).start();
    let mut reader = Client::connect(&r, "r", true).await;
    assert_eq!(reader.welcome().await, 480);
    let (mut got, mut pieces) = (Vec::new(), 0);
    while got.len() < 480 {
        let ms = match reader.next().await {
            ToSession::Deliver(ms) => ms,
            other => panic!("unexpected {other:?}"),
        };
        pieces += 1;
        let bytes: usize = ms.iter().map(|m| m.frame().len()).sum();
        let longest = ms.iter().map(|m| m.frame().len()).max().unwrap_or(0);
        assert!(
            bytes <= WINDOW / 2 || ms.len() == 1,
            "a piece of {bytes} bytes ({longest} the longest frame)"
        );
        got.extend(ms);
    }
    let want: Vec<(u64, String)> = batch
        .iter()
        .enumerate()
        .filter(|(_, m)| m.from != id("r"))
        .map(|(i, m)| (i as u64 + 1, String::from_utf8(m.text.to_vec()).unwrap()))
        .collect();
    let got: Vec<(u64, String)> = got
        .iter()
        .map(|m| (m.seq().0, String::from_utf8(m.text().to_vec()).unwrap()))
        .collect();
    assert_eq!(got, want);
    assert!(
        pieces > 10,
        "{pieces} pieces: the backlog was not read in pieces"
    );
}

/// Collects the pieces of one [`StreamBacklog`] for a test.
struct Pieces(tokio::sync::mpsc::UnboundedSender<(Seq, usize, bool)>);

impl Actor for Pieces {
    type Context = Context<Self>;
}

impl Handler<herald::store::BacklogPiece> for Pieces {
    type Result = ();
    fn handle(&mut self, piece: herald::store::BacklogPiece, _: &mut Self::Context) {
        let b = piece.backlog.expect("the memory store reads");
        let _ = self.0.send((b.last(), b.len(), piece.done));
    }
}

#[actix_rt::test]
async fn one_backlog_read_goes_through_at_most_its_count_of_stored_messages_own_ones_included() {
    use herald::store::{NewMessage, Store, StreamBacklog};
    // 50 messages of the reader's own, then 2 of another id's: a read that
    // skipped own messages without counting them would scan all 52 rows
    // in one request, holding the store thread (and every commit behind
    // it) for as long as the reader has sent.
    let mut memory = MemoryStore::new();
    let batch: Vec<NewMessage> = (0..52)
        .map(|i| NewMessage {
            from: id(if i < 50 { "r" } else { "a" }),
            unix_ms: 1_000 + i,
            text: Bytes::from(format!("m{i}")),
            mid: None,
        })
        .collect();
    memory.append(&batch).unwrap();
    let slot = Mutex::new(Some(Box::new(memory) as Box<dyn Store>));
    let store = SyncArbiter::start(1, move || StoreActor::new(slot.lock().unwrap().take()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let to = Pieces(tx).start().recipient();
    store
        .send(StreamBacklog {
            key: 1,
            after: Seq(0),
            upto: Seq(52),
            reader: id("r"),
            max: 4,
            max_bytes: 1 << 20,
            piece_bytes: 1 << 20,
            to,
        })
        .await
        .unwrap();
    let mut last = Seq(0);
    for _ in 0..100 {
        let (seq, frames, done) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a piece within 5 s")
            .expect("the collector is alive");
        assert_eq!(frames, 0, "the reader's own messages are never frames");
        last = seq;
        if done {
            break;
        }
    }
    assert_eq!(
        last,
        Seq(4),
        "a read with a count bound of 4 ends after 4 stored messages"
    );
}

#[actix_rt::test]
async fn a_backlog_behind_many_of_the_readers_own_messages_comes_whole_in_bounded_reads() {
    use herald::store::{NewMessage, Store};
    // 30 own messages, one of another id's, 30 own again, one more: read
    // four at a time through the default `read_backlog`.
    let mut memory = MemoryStore::new();
    let batch: Vec<NewMessage> = (0..62)
        .map(|i| NewMessage {
            from: id(if i == 30 || i == 61 { "a" } else { "r" }),
            unix_ms: 1_000 + i,
            text: Bytes::from(format!("m{i}")),
            mid: None,
        })
        .collect();
    memory.append(&batch).unwrap();
    let recovered = memory.recover().unwrap();
    let slot = Mutex::new(Some(Box::new(memory) as Box<dyn Store>));
    let store = SyncArbiter::start(1, move || StoreActor::new(slot.lock().unwrap().take()));
    let config = RegistryConfig {
        tail_messages: 2,
        read_chunk: 4,
        ..RegistryConfig::default()
    };
    let r = Registry::new(config, vec![id("a"), id("r")], recovered, store).start();
    let mut reader = Client::connect(&r, "r", true).await;
    assert_eq!(reader.welcome().await, 2);
    assert_eq!(
        reader.delivered(2).await,
        vec![
            (31, "a".into(), "m30".into()),
            (62, "a".into(), "m61".into())
        ]
    );
}
