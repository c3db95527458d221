//! The registry's secret checks with mock sessions and real verifier
//! threads: checks wait out their penalty, a check whose session left while
//! it waited never runs, and `SEND`s pipelined behind a `LOGIN` follow its
//! fate; a stop, or the end of its input, settles a login still waiting.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use herald::actors::messages::{Disconnect, Login, Publish, SessionId};
use herald::actors::{Registry, RegistryConfig, ToSession};
use herald::auth::{hash_secret, Secrets, Verifier, VERIFIER_THREADS};
use herald::net::{ByeReason, ErrorCode, Tags};
use herald::store::{MemoryStore, Recovered, StoreActor};
use herald::{ClientId, Seq};
use tokio::sync::mpsc;

/// A stand-in session: forwards everything it is sent to the test.
struct Mock(mpsc::UnboundedSender<ToSession>);

impl Actor for Mock {
    type Context = Context<Self>;
}

impl Handler<ToSession> for Mock {
    type Result = ();
    fn handle(&mut self, msg: ToSession, _: &mut Self::Context) {
        let _ = self.0.send(msg);
    }
}

/// A registry for ids 1 and 2 whose secrets are `one` and `two`.
fn start() -> Addr<Registry> {
    let slot = Mutex::new(Some(
        Box::new(MemoryStore::new()) as Box<dyn herald::store::Store>
    ));
    let store = SyncArbiter::start(1, move || StoreActor::new(slot.lock().unwrap().take()));
    let text = format!(
        "1:{}\n2:{}\n",
        hash_secret("one").unwrap(),
        hash_secret("two").unwrap()
    );
    let secrets = Secrets::parse(&text).unwrap();
    let ids: Vec<ClientId> = secrets.ids().cloned().collect();
    let verifier = SyncArbiter::start(VERIFIER_THREADS, || Verifier);
    Registry::new(RegistryConfig::default(), ids, Recovered::default(), store)
        .with_secrets(secrets, verifier)
        .start()
}

struct Client {
    session: SessionId,
    registry: Addr<Registry>,
    rx: mpsc::UnboundedReceiver<ToSession>,
}

impl Client {
    /// Logs in as `id` with `secret` from `peer`.
    fn login(registry: &Addr<Registry>, peer: &str, id: &str, secret: &str) -> Client {
        let session = SessionId::next();
        let (tx, rx) = mpsc::unbounded_channel();
        registry.do_send(Login {
            session,
            id: ClientId::new(id).unwrap(),
            secret: Some(secret.to_owned()),
            to: Mock(tx).start().recipient(),
            peer: Some(peer.parse::<SocketAddr>().unwrap()),
        });
        Client {
            session,
            registry: registry.clone(),
            rx,
        }
    }

    async fn next(&mut self) -> ToSession {
        tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .expect("timed out waiting for the registry")
            .expect("mock session gone")
    }

    /// Waits for a refusal with `code` and says how long it took since `t`.
    async fn refused(&mut self, code: ErrorCode, t: Instant) -> Duration {
        match self.next().await {
            ToSession::LoginRefused(e, _) if e.code == code => t.elapsed(),
            other => panic!("expected a {code:?} refusal, got {other:?}"),
        }
    }

    async fn welcome(&mut self) {
        match self.next().await {
            ToSession::Welcome { .. } => {}
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    fn publish(&self, text: &str) {
        self.registry.do_send(Publish {
            session: self.session,
            text: Bytes::copy_from_slice(text.as_bytes()),
            tags: Tags::default(),
        });
    }

    fn disconnect(&self) {
        self.registry.do_send(Disconnect {
            session: self.session,
        });
    }
}

const A: &str = "10.0.0.1:4000";
const B: &str = "10.0.0.2:4000";

#[actix_rt::test]
async fn a_check_whose_session_left_while_it_waited_never_runs() {
    let r = start();
    for _ in 0..2 {
        let t = Instant::now();
        let mut wrong = Client::login(&r, A, "1", "wrong");
        wrong.refused(ErrorCode::AuthFailed, t).await;
    }
    // `wrong` is checked now; `right` waits behind it (its address has
    // failures, so one check at a time) and leaves before its turn.
    let t = Instant::now();
    let mut wrong = Client::login(&r, A, "1", "wrong");
    let right = Client::login(&r, A, "1", "one");
    right.disconnect();
    wrong.refused(ErrorCode::AuthFailed, t).await;
    // Had the right secret been checked, it would have cleared the count
    // and this would be a first failure, refused after 100 ms; it is the
    // fourth, refused after 800.
    let t = Instant::now();
    let mut fourth = Client::login(&r, A, "1", "wrong");
    let took = fourth.refused(ErrorCode::AuthFailed, t).await;
    assert!(took >= Duration::from_millis(800), "{took:?}");
}

#[actix_rt::test]
async fn a_right_secret_waits_its_turn_and_sends_behind_it_follow_the_login() {
    let r = start();
    let t = Instant::now();
    let mut first = Client::login(&r, A, "1", "wrong");
    first.refused(ErrorCode::AuthFailed, t).await;
    let t = Instant::now();
    let mut second = Client::login(&r, A, "1", "wrong");
    second.publish("never stored");
    // The second failure earns 200 ms for address A and for id 1.
    let mut right = Client::login(&r, B, "1", "one");
    right.publish("stored");
    let mut other = Client::login(&r, B, "2", "two");
    // Another id from another address is not held back.
    other.welcome().await;
    assert!(second.refused(ErrorCode::AuthFailed, t).await >= Duration::from_millis(200));
    right.welcome().await;
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    match right.next().await {
        ToSession::Sent(seqs) => assert_eq!(seqs, vec![Seq(1)]),
        other => panic!("expected SENT, got {other:?}"),
    }
    // The unknown id costs a check like any other and is refused as such.
    let t = Instant::now();
    let mut unknown = Client::login(&r, B, "3", "x");
    match unknown.next().await {
        ToSession::LoginRefused(e, ByeReason::UnknownClient) => {
            assert_eq!(e.code, ErrorCode::UnknownClient)
        }
        other => panic!("expected UNKNOWN_CLIENT, got {other:?}"),
    }
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
}

#[actix_rt::test]
async fn logins_waiting_for_their_check_hear_bye_shutdown_when_the_server_stops() {
    let r = start();
    for _ in 0..4 {
        let t = Instant::now();
        let mut wrong = Client::login(&r, A, "1", "wrong");
        wrong.refused(ErrorCode::AuthFailed, t).await;
    }
    // Address A has failures, so its checks run one at a time: `waiting`
    // queues behind `wrong`, whose failure then holds it back 1.6 s.
    let t = Instant::now();
    let _wrong = Client::login(&r, A, "1", "wrong");
    let mut waiting = Client::login(&r, A, "1", "one");
    let stop = r.send(herald::actors::messages::Shutdown);
    match waiting.next().await {
        ToSession::LoginRefused(e, ByeReason::Shutdown) => assert_eq!(e.code, ErrorCode::Limit),
        other => panic!("expected a refusal with BYE shutdown, got {other:?}"),
    }
    // Told by the stop itself, not by a check that ran once the wait was
    // over.
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    waiting.disconnect();
    stop.await.unwrap();
}

#[actix_rt::test]
async fn a_login_whose_input_ended_while_it_waited_is_refused_unchecked() {
    let r = start();
    let t = Instant::now();
    let mut first = Client::login(&r, A, "1", "wrong");
    first.refused(ErrorCode::AuthFailed, t).await;
    // Address A has a failure: its checks run one at a time, so `gave_up`
    // waits behind `wrong` — and its client ends its input meanwhile.
    let t = Instant::now();
    let mut wrong = Client::login(&r, A, "1", "wrong");
    let mut gave_up = Client::login(&r, A, "1", "one");
    r.do_send(herald::actors::messages::InputEnded {
        session: gave_up.session,
    });
    match gave_up.next().await {
        ToSession::LoginRefused(e, ByeReason::Limit) => assert_eq!(e.code, ErrorCode::Limit),
        other => panic!("expected a refusal with BYE limit, got {other:?}"),
    }
    wrong.refused(ErrorCode::AuthFailed, t).await;
    // Had the right secret been checked, it would have cleared the count
    // and this would be a first failure, refused after 100 ms; it is the
    // third, refused after 400.
    let t = Instant::now();
    let mut third = Client::login(&r, A, "1", "wrong");
    let took = third.refused(ErrorCode::AuthFailed, t).await;
    assert!(took >= Duration::from_millis(400), "{took:?}");
}
