//! Stand-in sessions for registry tests: test actors behind the same
//! `Recipient<ToSession>` real sessions use, and a client handle that logs
//! in through one and reads what the registry sends it.
#![allow(dead_code)]

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use herald::actors::messages::{Ack, Credit, Disconnect, Login, Publish, PublishBatch, SessionId};
use herald::actors::{Registry, ToSession};
use herald::net::Tags;
use herald::{ClientId, Seq};
use tokio::sync::mpsc;

/// A stand-in session: forwards everything it is sent to the test, and
/// returns delivery credit at once when `auto_credit` is set.
pub struct Mock {
    session: SessionId,
    registry: Addr<Registry>,
    tx: mpsc::UnboundedSender<ToSession>,
    auto_credit: bool,
}

impl Actor for Mock {
    type Context = Context<Self>;
}

impl Handler<ToSession> for Mock {
    type Result = ();
    fn handle(&mut self, msg: ToSession, _: &mut Self::Context) {
        // A backlog read from the store reaches the test as the messages
        // its frames hold, so tests see one kind of delivery whichever path
        // the registry took (the frames are the same bytes either way).
        let msg = match msg {
            ToSession::Backlog(b) => {
                ToSession::Deliver(b.messages().expect("backlog frames parse"))
            }
            other => other,
        };
        if let (true, ToSession::Deliver(ms)) = (self.auto_credit, &msg) {
            let bytes = ms.iter().map(|m| m.frame().len()).sum();
            self.registry.do_send(Credit {
                session: self.session,
                bytes,
            });
        }
        let _ = self.tx.send(msg);
    }
}

pub fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

pub struct Client {
    /// The session's id.
    pub session: SessionId,
    /// The client id it logs in as.
    pub id: ClientId,
    /// The registry it talks to.
    pub registry: Addr<Registry>,
    /// What the registry sent it.
    pub rx: mpsc::UnboundedReceiver<ToSession>,
}

impl Client {
    pub async fn connect(registry: &Addr<Registry>, name: &str, auto_credit: bool) -> Client {
        let session = SessionId::next();
        let (tx, rx) = mpsc::unbounded_channel();
        let mock = Mock {
            session,
            registry: registry.clone(),
            tx,
            auto_credit,
        }
        .start();
        registry.do_send(Login {
            session,
            id: id(name),
            secret: None,
            to: mock.recipient(),
            peer: None,
        });
        Client {
            session,
            id: id(name),
            registry: registry.clone(),
            rx,
        }
    }

    pub async fn next(&mut self) -> ToSession {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("timed out waiting for the registry")
            .expect("mock session gone")
    }

    pub async fn welcome(&mut self) -> u64 {
        match self.next().await {
            ToSession::Welcome { pending, .. } => pending,
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    pub fn publish(&self, text: &str) {
        self.registry.do_send(Publish {
            session: self.session,
            text: Bytes::copy_from_slice(text.as_bytes()),
            tags: Tags::default(),
        });
    }

    /// `SEND`s as a session forwards one read's worth: one message.
    pub fn publish_burst(&self, texts: &[&str]) {
        let sends = texts
            .iter()
            .map(|t| Publish {
                session: self.session,
                text: Bytes::copy_from_slice(t.as_bytes()),
                tags: Tags::default(),
            })
            .collect();
        self.registry.do_send(PublishBatch(sends));
    }

    pub async fn sent(&mut self) -> Vec<Seq> {
        match self.next().await {
            ToSession::Sent(seqs) => seqs,
            other => panic!("expected SENT, got {other:?}"),
        }
    }

    /// Collects `SENT` answers until `n` seqs arrived.
    pub async fn sent_n(&mut self, n: usize) -> Vec<Seq> {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            seqs.extend(self.sent().await);
        }
        assert_eq!(seqs.len(), n, "more answers than sends");
        seqs
    }

    /// Collects delivered (seq, from, text) until `n` messages arrived.
    pub async fn delivered(&mut self, n: usize) -> Vec<(u64, String, String)> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next().await {
                ToSession::Deliver(ms) => out.extend(ms.iter().map(|m| {
                    (
                        m.seq().0,
                        m.from().to_string(),
                        String::from_utf8(m.text().to_vec()).unwrap(),
                    )
                })),
                other => panic!("expected MSG, got {other:?}"),
            }
        }
        assert_eq!(out.len(), n, "more messages than expected");
        out
    }

    pub fn ack(&self, seq: u64) {
        self.registry.do_send(Ack {
            id: self.id.clone(),
            seq: Seq(seq),
        });
    }

    pub fn disconnect(&self) {
        self.registry.do_send(Disconnect {
            session: self.session,
        });
    }
}
