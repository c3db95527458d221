//! Registries of several nodes on one shared store, with mock sessions: the
//! commit stream each node follows, takeover across nodes and broker-wide
//! message ids, without sockets or a database. The store here is a memory
//! store behind a lock that behaves as the PostgreSQL one promises: seqs
//! given in commit order, mids and session claims shared by every node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use herald::actors::messages::{Publish, SaveAck};
use herald::actors::{Registry, RegistryConfig, ToSession};
use herald::net::{ByeReason, Tags};
use herald::store::{
    Appended, LoginClaim, LoginView, MemoryStore, MidPolicy, NewMessage, Recovered, Store,
    StoreActor, StoreError, Wake,
};
use herald::{ClientId, Message, Seq};

#[path = "common/mock.rs"]
mod mock;
use mock::{id, Client};

/// What every node's store sees.
#[derive(Default)]
struct Db {
    log: MemoryStore,
    mids: HashMap<(ClientId, String), Seq>,
    epochs: HashMap<ClientId, u64>,
    acks: HashMap<ClientId, Seq>,
    head: Seq,
}

/// One node's handle on the shared [`Db`].
#[derive(Clone, Default)]
struct Node(Arc<Mutex<Db>>);

impl Store for Node {
    fn recover(&mut self) -> Result<Recovered, StoreError> {
        let db = self.0.lock().unwrap();
        Ok(Recovered {
            head: db.head,
            acks: db.acks.clone(),
            mids: Vec::new(),
            shared: true,
        })
    }
    fn append(&mut self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        let mut db = self.0.lock().unwrap();
        let mut out = Vec::new();
        for n in batch {
            if let Some(first) = n
                .mid
                .as_ref()
                .and_then(|m| db.mids.get(&(n.from.clone(), m.clone())))
            {
                out.push(Appended::Duplicate(*first));
                continue;
            }
            let stored = db.log.append(std::slice::from_ref(n))?;
            for a in stored {
                if let Appended::Stored(m) = &a {
                    db.head = m.seq();
                    if let Some(mid) = &n.mid {
                        db.mids.insert((n.from.clone(), mid.clone()), m.seq());
                    }
                }
                out.push(a);
            }
        }
        Ok(out)
    }
    fn forget_mids(&mut self, _: &[(ClientId, Seq)], _: &MidPolicy) -> Result<(), StoreError> {
        Ok(())
    }
    fn read_after(
        &mut self,
        after: Seq,
        upto: Seq,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.0
            .lock()
            .unwrap()
            .log
            .read_after(after, upto, max, max_bytes)
    }
    fn first_not_from(&mut self, a: Seq, u: Seq, s: &ClientId) -> Result<Option<Seq>, StoreError> {
        self.0.lock().unwrap().log.first_not_from(a, u, s)
    }
    fn count_from_others(&mut self, a: Seq, u: Seq, r: &ClientId) -> Result<u64, StoreError> {
        self.0.lock().unwrap().log.count_from_others(a, u, r)
    }
    fn login(&mut self, claim: &LoginClaim) -> Result<LoginView, StoreError> {
        let mut db = self.0.lock().unwrap();
        let epoch = db.epochs.entry(claim.client.clone()).or_insert(0);
        *epoch += 1;
        let epoch = *epoch;
        let last_ack = claim
            .known_ack
            .max(db.acks.get(&claim.client).copied().unwrap_or_default());
        let head = db.head.max(claim.known_head);
        let backlog = db.log.count_from_others(last_ack, head, &claim.client)?;
        Ok(LoginView {
            epoch,
            last_ack,
            head,
            backlog,
        })
    }
    fn session_epochs(&mut self, clients: &[ClientId]) -> Result<Vec<(ClientId, u64)>, StoreError> {
        let db = self.0.lock().unwrap();
        Ok(clients
            .iter()
            .filter_map(|c| Some((c.clone(), *db.epochs.get(c)?)))
            .collect())
    }
    fn save_acks(&mut self, acks: &[(ClientId, Seq)]) -> Result<(), StoreError> {
        let mut db = self.0.lock().unwrap();
        for (c, s) in acks {
            let e = db.acks.entry(c.clone()).or_default();
            *e = (*e).max(*s);
        }
        Ok(())
    }
    fn prune(&mut self, upto: Seq) -> Result<u64, StoreError> {
        self.0.lock().unwrap().log.prune(upto)
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

const IDS: [&str; 4] = ["a", "b", "c", "d"];

/// A node's registry on the shared store.
fn node(db: &Node) -> Addr<Registry> {
    let slot = Mutex::new(Some(Box::new(db.clone()) as Box<dyn Store>));
    let store = SyncArbiter::start(1, move || StoreActor::new(slot.lock().unwrap().take()));
    let recovered = db.clone().recover().unwrap();
    Registry::new(
        RegistryConfig::default(),
        IDS.iter().map(|s| id(s)),
        recovered,
        store,
    )
    .start()
}

fn publish_mid(c: &Client, text: &str, mid: &str) {
    let tags = Tags {
        mid: Some(mid.to_owned()),
    };
    c.registry.do_send(Publish {
        session: c.session,
        text: Bytes::copy_from_slice(text.as_bytes()),
        tags,
    });
}

#[actix_rt::test]
async fn a_message_committed_on_one_node_reaches_the_others_without_a_wake_up() {
    let db = Node::default();
    let (n1, n2) = (node(&db), node(&db));
    let mut a = Client::connect(&n1, "a", true).await;
    let mut b = Client::connect(&n2, "b", true).await;
    a.welcome().await;
    b.welcome().await;
    a.publish("hello");
    assert_eq!(a.sent().await, vec![Seq(1)]);
    // No wake-up is sent: the periodic catch-up finds it.
    assert_eq!(b.delivered(1).await, vec![(1, "a".into(), "hello".into())]);
}

#[actix_rt::test]
async fn interleaved_commits_of_two_nodes_reach_everyone_in_one_dense_order() {
    let db = Node::default();
    let (n1, n2) = (node(&db), node(&db));
    let mut a = Client::connect(&n1, "a", true).await;
    let mut b = Client::connect(&n2, "b", true).await;
    let mut c = Client::connect(&n1, "c", true).await;
    let mut d = Client::connect(&n2, "d", true).await;
    for cl in [&mut a, &mut b, &mut c, &mut d] {
        assert_eq!(cl.welcome().await, 0);
    }
    for i in 0..200 {
        a.publish(&format!("a{i}"));
        b.publish(&format!("b{i}"));
        if i % 20 == 0 {
            n1.do_send(Wake::Log);
            n2.do_send(Wake::Log);
        }
    }
    let (mut seqs, on_a) = sent_and_delivered(&mut a, 200, 200).await;
    let (seqs_b, on_b) = sent_and_delivered(&mut b, 200, 200).await;
    seqs.extend(seqs_b);
    seqs.sort();
    assert_eq!(seqs, (1..=400).map(Seq).collect::<Vec<_>>());
    let on_c = c.delivered(400).await;
    let on_d = d.delivered(400).await;
    assert_eq!(on_c, on_d, "both nodes deliver one order");
    let order: Vec<u64> = on_c.iter().map(|m| m.0).collect();
    assert_eq!(order, (1..=400).collect::<Vec<_>>());
    // Each sender gets only the other's messages, in that order.
    let only = |from: &str| -> Vec<_> { on_c.iter().filter(|m| m.1 == from).cloned().collect() };
    assert_eq!(on_a, only("b"));
    assert_eq!(on_b, only("a"));
}

/// Reads what a client that both sends and receives is told, until it has
/// `sent` answers and `delivered` messages.
async fn sent_and_delivered(
    c: &mut Client,
    sent: usize,
    delivered: usize,
) -> (Vec<Seq>, Vec<(u64, String, String)>) {
    let (mut seqs, mut msgs) = (Vec::new(), Vec::new());
    while seqs.len() < sent || msgs.len() < delivered {
        match c.next().await {
            ToSession::Sent(s) => seqs.extend(s),
            ToSession::Deliver(ms) => msgs.extend(ms.iter().map(|m| {
                let text = String::from_utf8(m.text().to_vec()).unwrap();
                (m.seq().0, m.from().to_string(), text)
            })),
            other => panic!("expected SENT or MSG, got {other:?}"),
        }
    }
    assert_eq!(
        (seqs.len(), msgs.len()),
        (sent, delivered),
        "more than expected"
    );
    (seqs, msgs)
}

#[actix_rt::test]
async fn a_login_on_another_node_replaces_the_session_and_counts_its_backlog() {
    let db = Node::default();
    let (n1, n2) = (node(&db), node(&db));
    let mut a1 = Client::connect(&n1, "a", true).await;
    let mut b = Client::connect(&n1, "b", true).await;
    a1.welcome().await;
    b.welcome().await;
    b.publish("one");
    b.publish("two");
    assert_eq!(b.sent_n(2).await, vec![Seq(1), Seq(2)]);
    assert_eq!(a1.delivered(2).await.len(), 2);
    a1.ack(1);
    // The ack reaches the shared store with the periodic flush.
    let saved = || db.0.lock().unwrap().acks.get(&id("a")) == Some(&Seq(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !saved() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ack was never saved"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut a2 = Client::connect(&n2, "a", true).await;
    assert_eq!(a2.welcome().await, 1, "only seq 2 is not acknowledged");
    assert_eq!(a2.delivered(1).await, vec![(2, "b".into(), "two".into())]);
    // Node 1 learns of the claim from the periodic check.
    match a1.next().await {
        ToSession::Bye(ByeReason::Replaced) => {}
        other => panic!("expected BYE replaced, got {other:?}"),
    }
    b.publish("three");
    assert_eq!(a2.delivered(1).await, vec![(3, "b".into(), "three".into())]);
}

#[actix_rt::test]
async fn a_mid_resent_through_another_node_is_answered_with_the_first_seq() {
    let db = Node::default();
    let (n1, n2) = (node(&db), node(&db));
    let mut a1 = Client::connect(&n1, "a", true).await;
    a1.welcome().await;
    publish_mid(&a1, "once", "m-1");
    assert_eq!(a1.sent().await, vec![Seq(1)]);
    a1.disconnect();
    let mut a2 = Client::connect(&n2, "a", true).await;
    a2.welcome().await;
    publish_mid(&a2, "once", "m-1");
    publish_mid(&a2, "next", "m-2");
    assert_eq!(a2.sent_n(2).await, vec![Seq(1), Seq(2)]);
    let all = db
        .clone()
        .read_after(Seq(0), Seq(100), 100, usize::MAX)
        .unwrap();
    let texts: Vec<_> = all.iter().map(|m| m.text().to_vec()).collect();
    assert_eq!(texts, vec![b"once".to_vec(), b"next".to_vec()]);
}

#[actix_rt::test]
async fn a_saved_ack_is_in_the_store_when_the_request_is_answered() {
    let db = Node::default();
    let n1 = node(&db);
    let mut a = Client::connect(&n1, "a", true).await;
    let mut b = Client::connect(&n1, "b", true).await;
    a.welcome().await;
    b.welcome().await;
    b.publish("one");
    assert_eq!(a.delivered(1).await.len(), 1);
    a.ack(1);
    // What a session asks for on QUIT, before it says BYE quit.
    n1.send(SaveAck { id: id("a") }).await.unwrap();
    assert_eq!(db.0.lock().unwrap().acks.get(&id("a")), Some(&Seq(1)));
}
