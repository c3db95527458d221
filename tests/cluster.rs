//! Cluster mode (protocol.md "Cluster"): three `server` nodes on one
//! PostgreSQL database are one broker. Over real sockets: broadcast across
//! nodes without self-delivery, one dense order for concurrent senders on
//! different nodes, backlog and acks whichever node a client logs in to,
//! takeover across nodes, mids remembered broker-wide, `WELCOME` counts,
//! and numbering that stays dense through node restarts.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/cluster_clients.rs"]
mod cluster_clients;
mod common;
#[path = "common/pg.rs"]
mod pg;

use cluster::Cluster;
use cluster_clients::Peer;
use common::parse_msg;

/// Logs in as `id` on node `i` of `c`.
async fn login(c: &Cluster, i: usize, id: &str) -> (Peer, u64) {
    Peer::login(c.node(i), id).await
}

#[tokio::test]
async fn a_message_sent_on_one_node_reaches_every_node_but_its_sender() {
    let c = Cluster::start(3, "1,2,3,4");
    let (mut a1, _) = login(&c, 0, "1").await;
    let (mut a2, _) = login(&c, 0, "2").await;
    let (mut b3, _) = login(&c, 1, "3").await;
    let (mut c4, _) = login(&c, 2, "4").await;

    assert_eq!(a1.send("from A").await, 1);
    for r in [&mut a2, &mut b3, &mut c4] {
        r.expect(1, "1", "from A").await;
    }
    assert_eq!(b3.send("from B").await, 2);
    for r in [&mut a1, &mut a2, &mut c4] {
        r.expect(2, "3", "from B").await;
    }
    assert_eq!(c4.send("from C").await, 3);
    for r in [&mut a1, &mut a2, &mut b3] {
        r.expect(3, "4", "from C").await;
    }
    // Each sender went on to a later seq without its own message (seqs only
    // increase on a connection, so it cannot come any more), and nothing
    // else is queued for anyone.
    for r in [&mut a1, &mut a2, &mut b3, &mut c4] {
        r.expect_quiet().await;
    }
}

#[tokio::test]
async fn concurrent_senders_on_different_nodes_share_one_dense_order() {
    const SENDERS: usize = 5;
    const EACH: usize = 200;
    const TOTAL: usize = SENDERS * EACH;
    let senders: Vec<String> = (0..SENDERS).map(|i| format!("s{i}")).collect();
    let readers = ["r0", "r1", "r2"];
    let ids: Vec<&str> = senders.iter().map(String::as_str).chain(readers).collect();
    let c = Cluster::start(3, &ids.join(","));

    let mut reader_tasks = Vec::new();
    for (i, r) in readers.iter().enumerate() {
        let (mut conn, pending) = c.node(i).login(r).await;
        assert_eq!(pending, 0);
        reader_tasks.push(tokio::spawn(async move { conn.msgs(TOTAL).await }));
    }
    let mut sender_tasks = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let (mut conn, _) = c.node(i % 3).login(s).await;
        let s = s.clone();
        sender_tasks.push(tokio::spawn(async move {
            let mut batch = String::new();
            for k in 0..EACH {
                batch.push_str(&format!("SEND {s}-{k}\n"));
            }
            conn.send_raw(batch.as_bytes()).await;
            // Its answers and everyone else's messages, interleaved.
            let (mut seqs, mut msgs) = (Vec::new(), Vec::new());
            while seqs.len() < EACH || msgs.len() < TOTAL - EACH {
                let line = conn.line().await;
                if let Some(n) = line.strip_prefix("SENT ") {
                    seqs.push(n.parse::<u64>().unwrap());
                } else {
                    msgs.push(parse_msg(&line).unwrap_or_else(|| panic!("{s} got {line:?}")));
                }
            }
            (s, seqs, msgs)
        }));
    }

    let mut views = Vec::new();
    for t in reader_tasks {
        views.push(t.await.unwrap());
    }
    let log = &views[0];
    assert_eq!(
        log.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=TOTAL as u64).collect::<Vec<_>>(),
        "reader r0 (node 0) did not see one dense sequence"
    );
    for (i, v) in views.iter().enumerate() {
        assert_eq!(v, log, "reader r{i} (node {i}) saw another order than r0");
    }
    for t in sender_tasks {
        let (s, seqs, msgs) = t.await.unwrap();
        // Its own lines, in the order sent, at the seqs it was told.
        let mine: Vec<(u64, String, String)> = (0..EACH)
            .map(|k| (seqs[k], s.clone(), format!("{s}-{k}")))
            .collect();
        for m in &mine {
            assert_eq!(
                &log[m.0 as usize - 1],
                m,
                "{s}'s SENT {} is not its line",
                m.0
            );
        }
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{s}: SENTs out of order"
        );
        // Everyone else's, in the one order.
        let others: Vec<_> = log.iter().filter(|m| m.1 != s).cloned().collect();
        assert_eq!(msgs, others, "{s} saw another order, or its own lines");
    }
    // The database holds the same log.
    assert_eq!(&c.stored(), log);
}

#[tokio::test]
async fn the_backlog_follows_a_client_to_another_node() {
    let c = Cluster::start(3, "1,2,3");
    let (a1, pending) = login(&c, 0, "1").await;
    assert_eq!(pending, 0);
    a1.quit().await;

    let (mut b2, _) = login(&c, 1, "2").await;
    let (mut c3, _) = login(&c, 2, "3").await;
    let mut want = Vec::new();
    for k in 0..5 {
        let text = format!("b{k}");
        want.push((b2.send(&text).await, "2".to_owned(), text));
        let text = format!("c{k}");
        want.push((c3.send(&text).await, "3".to_owned(), text));
    }
    assert_eq!(
        want.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );

    let (mut b1, pending) = login(&c, 1, "1").await;
    assert_eq!(pending, 10);
    assert_eq!(b1.msgs(10).await, want);
    // Then live, from a third node.
    assert_eq!(c3.send("live").await, 11);
    b1.expect(11, "3", "live").await;
    b1.expect_quiet().await;
}

/// A login on one node while another node's client keeps sending: the
/// backlog and the live messages after it join without a gap or a
/// duplicate.
#[tokio::test]
async fn backlog_and_live_join_without_gap_across_nodes() {
    const N: u64 = 400;
    let c = Cluster::start(3, "w,r");
    let (mut w, _) = login(&c, 2, "w").await;
    let mut batch = String::new();
    for k in 1..=N {
        batch.push_str(&format!("SEND m{k}\n"));
    }
    w.conn.send_raw(batch.as_bytes()).await;
    for k in 1..=50 {
        assert_eq!(w.conn.line().await, format!("SENT {k}"));
    }
    // The rest are being committed while r logs in on another node.
    let (mut r, pending) = login(&c, 0, "r").await;
    assert!(pending >= 50, "WELCOME r {pending} after 50 were confirmed");
    for k in 51..=N {
        assert_eq!(w.conn.line().await, format!("SENT {k}"));
    }
    for k in 1..=N {
        r.expect(k, "w", &format!("m{k}")).await;
    }
    r.expect_quiet().await;
}

#[tokio::test]
async fn an_ack_made_on_one_node_holds_on_another() {
    let c = Cluster::start(3, "1,2");
    let (mut a1, _) = login(&c, 0, "1").await;
    let (mut b2, _) = login(&c, 1, "2").await;
    for k in 1..=6 {
        assert_eq!(b2.send(&format!("m{k}")).await, k);
    }
    for k in 1..=6 {
        a1.expect(k, "2", &format!("m{k}")).await;
    }
    a1.conn.send("ACK 4").await;
    a1.quit().await;

    let (mut c1, pending) = login(&c, 2, "1").await;
    assert_eq!(pending, 2, "only what follows the ack is owed");
    c1.expect(5, "2", "m5").await;
    c1.expect(6, "2", "m6").await;
    c1.expect_quiet().await;
}

#[tokio::test]
async fn a_login_on_another_node_replaces_the_connection() {
    let c = Cluster::start(3, "1,2");
    let (mut a1, _) = login(&c, 0, "1").await;
    let (mut c2, _) = login(&c, 2, "2").await;

    let (mut b1, pending) = login(&c, 1, "1").await;
    assert_eq!(pending, 0);
    assert_eq!(a1.conn.line().await, "BYE replaced");
    a1.conn.expect_eof().await;

    // The new connection works both ways.
    assert_eq!(b1.send("from B").await, 1);
    c2.expect(1, "1", "from B").await;
    assert_eq!(c2.send("to 1").await, 2);
    b1.expect(2, "2", "to 1").await;

    // And on to a third node: b1 never acked message 2.
    let (mut c1, pending) = login(&c, 2, "1").await;
    assert_eq!(pending, 1);
    assert_eq!(b1.conn.line().await, "BYE replaced");
    b1.conn.expect_eof().await;
    c1.expect(2, "2", "to 1").await;
    assert_eq!(c1.send("from C").await, 3);
    c2.expect(3, "1", "from C").await;
    c1.expect_quiet().await;
    c2.expect_quiet().await;
}

#[tokio::test]
async fn a_mid_resent_through_another_node_is_answered_with_the_first_seq() {
    let c = Cluster::start(3, "1,2,3");
    let (mut a1, _) = login(&c, 0, "1").await;
    assert_eq!(a1.send("zero").await, 1);
    assert_eq!(a1.send_frame("@mid=x1 SEND hello").await, 2);
    a1.quit().await;

    let (mut b1, _) = login(&c, 1, "1").await;
    assert_eq!(
        b1.send_frame("@mid=x1 SEND hello").await,
        2,
        "the resend was not answered with the first copy's seq"
    );
    // The resend took no seq.
    assert_eq!(b1.send("after").await, 3);
    // Mids belong to a client id: another id's x1 is a new message.
    let (mut c2, _) = login(&c, 2, "2").await;
    assert_eq!(c2.send_frame("@mid=x1 SEND mine").await, 4);
    // Through a third node, the first copy's seq again.
    b1.quit().await;
    let (mut c1, _) = login(&c, 2, "1").await;
    assert_eq!(c1.send_frame("@mid=x1 SEND hello").await, 2);

    let (mut c3, pending) = login(&c, 2, "3").await;
    assert_eq!(pending, 4);
    assert_eq!(
        c3.msgs(4).await,
        vec![
            (1, "1".into(), "zero".into()),
            (2, "1".into(), "hello".into()),
            (3, "1".into(), "after".into()),
            (4, "2".into(), "mine".into()),
        ]
    );
    c3.expect_quiet().await;
    assert_eq!(c.stored().len(), 4, "stored: {:?}", c.stored());
}

#[tokio::test]
async fn welcome_counts_leave_out_the_clients_own_messages() {
    let c = Cluster::start(3, "1,2,3");
    let (mut a1, _) = login(&c, 0, "1").await;
    let (mut b2, _) = login(&c, 1, "2").await;
    assert_eq!(a1.send("m1").await, 1);
    assert_eq!(a1.send("m2").await, 2);
    assert_eq!(b2.send("n1").await, 3);
    assert_eq!(a1.send("m3").await, 4);
    // Both were online and were pushed the others' messages, unacked.
    a1.expect(3, "2", "n1").await;
    for (seq, text) in [(1, "m1"), (2, "m2"), (4, "m3")] {
        b2.expect(seq, "1", text).await;
    }
    a1.quit().await;
    b2.quit().await;

    let (mut c3, pending) = login(&c, 2, "3").await;
    assert_eq!(pending, 4, "a fresh id is owed everything");
    assert_eq!(c3.msgs(4).await.len(), 4);
    let (mut c1, pending) = login(&c, 2, "1").await;
    assert_eq!(pending, 1, "1 is owed only 2's message");
    c1.expect(3, "2", "n1").await;
    c1.expect_quiet().await;
    let (mut a2, pending) = login(&c, 0, "2").await;
    assert_eq!(pending, 3, "2 is owed only 1's messages");
    for (seq, text) in [(1, "m1"), (2, "m2"), (4, "m3")] {
        a2.expect(seq, "1", text).await;
    }
    a2.expect_quiet().await;
}

#[tokio::test]
async fn numbering_stays_dense_through_node_restarts() {
    let mut c = Cluster::start(3, "w,r");
    let (mut r, _) = login(&c, 2, "r").await;
    let (mut w, _) = login(&c, 0, "w").await;
    for k in 1..=5 {
        assert_eq!(w.send(&format!("m{k}")).await, k);
    }
    c.kill9(1);
    for k in 6..=10 {
        assert_eq!(w.send(&format!("m{k}")).await, k);
    }
    c.restart(1);
    w.quit().await;
    let (mut w, _) = login(&c, 1, "w").await;
    assert_eq!(w.send("m11").await, 11);
    for k in 1..=11 {
        r.expect(k, "w", &format!("m{k}")).await;
    }
    // Every node at once.
    for i in 0..3 {
        c.kill9(i);
    }
    w.conn.expect_eof().await;
    r.conn.expect_eof().await;
    for i in 0..3 {
        c.restart(i);
    }
    let (mut w, _) = login(&c, 2, "w").await;
    assert_eq!(w.send("m12").await, 12);
    w.quit().await;
    let (mut w, _) = login(&c, 0, "w").await;
    assert_eq!(w.send("m13").await, 13);

    let (mut r, pending) = login(&c, 1, "r").await;
    assert_eq!(pending, 13, "r never acked");
    for k in 1..=13 {
        r.expect(k, "w", &format!("m{k}")).await;
    }
    let stored: Vec<u64> = c.stored().iter().map(|m| m.0).collect();
    assert_eq!(stored, (1..=13).collect::<Vec<_>>());
    assert_eq!(c.counter(), 13);
}

#[tokio::test]
async fn nodes_started_together_on_an_empty_database_all_come_up() {
    let c = Cluster::start_together(3, "1,2,3");
    let mut peers = Vec::new();
    for i in 0..3 {
        peers.push(login(&c, i, &(i + 1).to_string()).await.0);
    }
    assert_eq!(peers[0].send("hi").await, 1);
    peers[1].expect(1, "1", "hi").await;
    peers[2].expect(1, "1", "hi").await;
}

/// Sends `LOGIN id` on node `i`; the peer and the first answer.
async fn raw_login(c: &Cluster, i: usize, id: &str) -> (Peer, String) {
    let mut conn = c.node(i).connect().await;
    conn.send(&format!("LOGIN {id}")).await;
    let first = conn.line().await;
    (Peer::new(conn, id), first)
}

/// Two logins for one id on two nodes at the same moment, several times:
/// each time exactly one connection is replaced and the other keeps the
/// id (it receives what is sent to it).
#[tokio::test]
async fn simultaneous_logins_on_two_nodes_leave_exactly_one_connection() {
    const ROUNDS: u64 = 10;
    let c = Cluster::start(3, "1,2");
    let (mut talker, _) = login(&c, 2, "2").await;
    for round in 1..=ROUNDS {
        let (x, y) = tokio::join!(raw_login(&c, 0, "1"), raw_login(&c, 1, "1"));
        let ((mut x, x_first), (mut y, y_first)) = (x, y);
        // A login overtaken before its WELCOME may be replaced at once;
        // otherwise both are welcomed and then one is replaced.
        let loser_is_x = match (x_first.as_str(), y_first.as_str()) {
            ("BYE replaced", "WELCOME 1 0") => true,
            ("WELCOME 1 0", "BYE replaced") => false,
            ("WELCOME 1 0", "WELCOME 1 0") => tokio::select! {
                line = x.conn.line() => { assert_eq!(line, "BYE replaced", "round {round}"); true }
                line = y.conn.line() => { assert_eq!(line, "BYE replaced", "round {round}"); false }
            },
            other => panic!("round {round}: the logins were answered {other:?}"),
        };
        let (winner, loser) = if loser_is_x {
            (&mut y, &mut x)
        } else {
            (&mut x, &mut y)
        };
        loser.conn.expect_eof().await;
        // The winner holds the id: it is sent the next message, and has not
        // been replaced meanwhile (the message comes before anything else).
        assert_eq!(talker.send(&format!("round {round}")).await, round);
        winner.expect(round, "2", &format!("round {round}")).await;
        winner.conn.send(&format!("ACK {round}")).await;
        winner.expect_quiet().await;
        winner.conn.send("QUIT").await;
        winner.expect_bye("quit").await;
    }
}

/// A client resends a SEND with its mid through another node while the
/// first node may still be committing it (the second login replaces the
/// first connection): every answer names one seq and the text is stored
/// once.
#[tokio::test]
async fn a_mid_raced_through_two_nodes_is_stored_once() {
    const ROUNDS: usize = 20;
    let c = Cluster::start(3, "1");
    for round in 0..ROUNDS {
        let frame = format!("@mid=r{round} SEND race {round}");
        let (mut first, _) = login(&c, round % 3, "1").await;
        first.conn.send(&frame).await;
        let (mut second, _) = login(&c, (round + 1) % 3, "1").await;
        let seq = second.send_frame(&frame).await;
        // The first connection was answered before it was replaced, or
        // was replaced with the SEND unanswered.
        let line = first.conn.line().await;
        if let Some(n) = line.strip_prefix("SENT ") {
            assert_eq!(
                n.parse::<u64>().unwrap(),
                seq,
                "round {round}: two seqs for one mid"
            );
            assert_eq!(first.conn.line().await, "BYE replaced");
        } else {
            assert_eq!(line, "BYE replaced", "round {round}");
        }
        second.quit().await;
    }
    let log = c.stored();
    let texts: Vec<String> = log.iter().map(|m| m.2.clone()).collect();
    let want: Vec<String> = (0..ROUNDS).map(|r| format!("race {r}")).collect();
    assert_eq!(texts, want, "each raced line stored once, in order");
}

/// A login right after another node committed (before this node may have
/// heard of it): the `WELCOME` count already includes the new message and
/// exactly that many messages follow, again and again.
#[tokio::test]
async fn welcome_counts_are_right_right_after_a_commit_on_another_node() {
    const ROUNDS: u64 = 20;
    let c = Cluster::start(3, "w,r");
    let (mut w, _) = login(&c, 0, "w").await;
    for n in 1..=ROUNDS {
        assert_eq!(w.send(&format!("m{n}")).await, n);
        let (mut r, pending) = login(&c, 1 + (n as usize % 2), "r").await;
        assert_eq!(pending, n, "round {n}: r never acked, so it is owed all");
        for k in 1..=n {
            r.expect(k, "w", &format!("m{k}")).await;
        }
        r.expect_quiet().await;
        r.quit().await;
    }
}
