//! A reload reaching the registry, with mock sessions: ids removed from the
//! allow-list are logged out with `ERR UNKNOWN_CLIENT` and `BYE
//! unknown-client` while the others stay, ids added can log in (an id
//! allowed again continues from its last ack), and changed secrets apply
//! to new logins only.

use std::sync::Mutex;
use std::time::Duration;

use actix::prelude::*;
use herald::actors::messages::{Login, SessionId};
use herald::actors::registry::{AllowChanged, Reconfigure};
use herald::actors::{Registry, RegistryConfig, ToSession};
use herald::auth::{hash_secret, Secrets, Verifier, VERIFIER_THREADS};
use herald::net::{ByeReason, ErrorCode};
use herald::store::{MemoryStore, Recovered, StoreActor};
use herald::{ClientId, Seq};
use tokio::sync::mpsc;
#[path = "common/mock.rs"]
mod mock;
use mock::{id, Client};

fn store() -> Addr<StoreActor> {
    let slot = Mutex::new(Some(
        Box::new(MemoryStore::new()) as Box<dyn herald::store::Store>
    ));
    SyncArbiter::start(1, move || StoreActor::new(slot.lock().unwrap().take()))
}

fn start(ids: &[&str]) -> Addr<Registry> {
    let ids: Vec<ClientId> = ids.iter().map(|s| id(s)).collect();
    Registry::new(
        RegistryConfig::default(),
        ids,
        Recovered::default(),
        store(),
    )
    .start()
}

fn ids(names: &[&str]) -> Vec<ClientId> {
    names.iter().map(|s| id(s)).collect()
}

async fn reconfigure(r: &Addr<Registry>, allowed: &[&str]) -> AllowChanged {
    r.send(Reconfigure {
        allowed: ids(allowed),
        secrets: None,
    })
    .await
    .unwrap()
}

/// The next message is the end of a logged-in session as unknown.
async fn ended_as_unknown(c: &mut Client) {
    match c.next().await {
        ToSession::Ended(e, ByeReason::UnknownClient) => {
            assert_eq!(e.code, ErrorCode::UnknownClient);
            assert!(e.to_string().contains(c.id.as_str()), "{e}");
        }
        other => panic!("expected the end as unknown-client, got {other:?}"),
    }
}

#[actix_rt::test]
async fn a_removed_id_is_logged_out_and_the_others_stay() {
    let r = start(&["a", "b", "c"]);
    let mut a = Client::connect(&r, "a", true).await;
    let mut b = Client::connect(&r, "b", true).await;
    let mut c = Client::connect(&r, "c", true).await;
    for cl in [&mut a, &mut b, &mut c] {
        cl.welcome().await;
    }
    let changed = reconfigure(&r, &["a", "c", "d"]).await;
    assert_eq!(
        changed,
        AllowChanged {
            added: ids(&["d"]),
            removed: ids(&["b"]),
            ended: 1
        }
    );
    ended_as_unknown(&mut b).await;
    // The others go on: a's message reaches c and the new id d, not b.
    let mut d = Client::connect(&r, "d", true).await;
    assert_eq!(d.welcome().await, 0);
    a.publish("still here");
    assert_eq!(a.sent().await, vec![Seq(1)]);
    assert_eq!(
        c.delivered(1).await,
        vec![(1, "a".into(), "still here".into())]
    );
    assert_eq!(
        d.delivered(1).await,
        vec![(1, "a".into(), "still here".into())]
    );
    // b can no longer log in.
    let mut b2 = Client::connect(&r, "b", true).await;
    match b2.next().await {
        ToSession::LoginRefused(e, ByeReason::UnknownClient) => {
            assert_eq!(e.code, ErrorCode::UnknownClient)
        }
        other => panic!("expected UNKNOWN_CLIENT, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), b.rx.recv())
            .await
            .ok()
            .flatten()
            .is_none(),
        "a removed session was sent more"
    );
}

#[actix_rt::test]
async fn an_id_allowed_again_continues_from_its_last_ack() {
    let r = start(&["a", "b"]);
    let mut a = Client::connect(&r, "a", true).await;
    let mut b = Client::connect(&r, "b", true).await;
    a.welcome().await;
    b.welcome().await;
    a.publish("one");
    a.sent().await;
    assert_eq!(b.delivered(1).await.len(), 1);
    b.ack(1);
    // The ack is known to the registry before b goes: b's next push shows it.
    a.publish("two");
    a.sent().await;
    b.delivered(1).await;
    reconfigure(&r, &["a"]).await;
    ended_as_unknown(&mut b).await;
    a.publish("three");
    assert_eq!(a.sent().await, vec![Seq(3)]);
    let changed = reconfigure(&r, &["a", "b"]).await;
    assert_eq!(changed.added, ids(&["b"]));
    let mut b = Client::connect(&r, "b", true).await;
    // Acked 1: messages 2 and 3 are its backlog.
    assert_eq!(b.welcome().await, 2);
    let seqs: Vec<u64> = b.delivered(2).await.iter().map(|m| m.0).collect();
    assert_eq!(seqs, vec![2, 3]);
}

#[actix_rt::test]
async fn an_unchanged_list_changes_nothing() {
    let r = start(&["a", "b"]);
    let mut a = Client::connect(&r, "a", true).await;
    a.welcome().await;
    assert_eq!(reconfigure(&r, &["b", "a"]).await, AllowChanged::default());
    a.publish("x");
    assert_eq!(a.sent().await, vec![Seq(1)]);
}

fn secrets(pairs: &[(&str, &str)]) -> Secrets {
    let text: String = pairs
        .iter()
        .map(|(id, s)| format!("{id}:{}\n", hash_secret(s).unwrap()))
        .collect();
    Secrets::parse(&text).unwrap()
}

/// Logs in as `name` with `secret`; returns what the registry sends it.
fn login(r: &Addr<Registry>, name: &str, secret: &str) -> mpsc::UnboundedReceiver<ToSession> {
    struct Fwd(mpsc::UnboundedSender<ToSession>);
    impl Actor for Fwd {
        type Context = Context<Self>;
    }
    impl Handler<ToSession> for Fwd {
        type Result = ();
        fn handle(&mut self, msg: ToSession, _: &mut Self::Context) {
            let _ = self.0.send(msg);
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    r.do_send(Login {
        session: SessionId::next(),
        id: id(name),
        secret: Some(secret.to_owned()),
        to: Fwd(tx).start().recipient(),
        peer: None,
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<ToSession>) -> ToSession {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("timed out waiting for the registry")
        .expect("mock session gone")
}

#[actix_rt::test]
async fn a_changed_secret_applies_to_new_logins_only() {
    let old = secrets(&[("1", "old-one"), ("2", "two")]);
    let verifier = SyncArbiter::start(VERIFIER_THREADS, || Verifier);
    let r = Registry::new(
        RegistryConfig::default(),
        ids(&["1", "2"]),
        Recovered::default(),
        store(),
    )
    .with_secrets(old, verifier)
    .start();
    let mut online = login(&r, "1", "old-one");
    assert!(matches!(next(&mut online).await, ToSession::Welcome { .. }));

    let new = secrets(&[("1", "new-one"), ("2", "two")]);
    let changed = r
        .send(Reconfigure {
            allowed: ids(&["1", "2"]),
            secrets: Some(new),
        })
        .await
        .unwrap();
    assert_eq!(changed, AllowChanged::default());

    let mut with_old = login(&r, "1", "old-one");
    match next(&mut with_old).await {
        ToSession::LoginRefused(e, ByeReason::AuthFailed) => {
            assert_eq!(e.code, ErrorCode::AuthFailed)
        }
        other => panic!("expected AUTH_FAILED, got {other:?}"),
    }
    // The session logged in with the old secret is still there: the new
    // login replaces it.
    let mut with_new = login(&r, "1", "new-one");
    assert!(matches!(
        next(&mut with_new).await,
        ToSession::Welcome { .. }
    ));
    assert!(matches!(
        next(&mut online).await,
        ToSession::Bye(ByeReason::Replaced)
    ));
}
