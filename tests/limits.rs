//! Server limits: each refused politely (an `ERR`/`BYE` with a reason, then
//! close), never a crash, and the server goes on serving the others.

mod common;

use std::time::{Duration, Instant};

use common::{Server, DEADLINE};

#[tokio::test]
async fn a_connection_that_never_logs_in_is_closed() {
    let s = Server::start(&["--memory", "--client-ids", "1", "--login-timeout", "1"]);
    let start = Instant::now();
    let mut c = s.connect().await;
    // Sending bytes that are not a LOGIN does not keep it alive.
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
    assert!(c.line().await.starts_with("ERR LIMIT "));
    assert_eq!(c.line().await, "BYE limit");
    c.expect_eof().await;
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    // A client that logs in in time is not affected.
    let (mut ok, _) = s.login("1").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ok.send("PING still").await;
    assert_eq!(ok.line().await, "PONG still");
}

#[tokio::test]
async fn a_silent_client_gets_bye_idle_and_a_pinging_one_does_not() {
    let s = Server::start(&["--memory", "--client-ids", "1,2", "--idle-timeout", "1"]);
    let (mut silent, _) = s.login("1").await;
    let (mut pinger, _) = s.login("2").await;
    let pinging = tokio::spawn(async move {
        // Well within the timeout, for twice its length.
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            pinger.send(&format!("PING {i}")).await;
            assert_eq!(pinger.line().await, format!("PONG {i}"));
        }
        pinger
    });
    assert_eq!(silent.line().await, "BYE idle");
    silent.expect_eof().await;
    let mut pinger = pinging.await.unwrap();
    // Once it stops too, it is closed as well.
    assert_eq!(pinger.line().await, "BYE idle");
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_the_rest_go_on() {
    let s = Server::start(&[
        "--memory",
        "--client-ids",
        "1,2,3",
        "--max-connections",
        "2",
    ]);
    let (mut c1, _) = s.login("1").await;
    let (c2, _) = s.login("2").await;
    let mut over = s.connect().await;
    assert!(over.line().await.starts_with("ERR LIMIT "));
    assert_eq!(over.line().await, "BYE limit");
    over.expect_eof().await;
    c1.send("PING fine").await;
    assert_eq!(c1.line().await, "PONG fine");
    // A place frees up when a connection ends.
    drop(c2);
    let deadline = Instant::now() + DEADLINE;
    loop {
        // Until the place is free the server refuses at once, maybe before
        // the LOGIN arrives.
        let mut c = s.connect().await;
        c.try_send("LOGIN 3").await;
        let line = c.try_line().await.unwrap_or_default();
        if line.starts_with("WELCOME 3 ") {
            break;
        }
        assert!(line.starts_with("ERR LIMIT "), "{line}");
        assert!(
            Instant::now() < deadline,
            "the closed connection's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The log is read by another thread: wait (bounded) for the line.
    while !s.log.lock().unwrap().contains("refusing connections") {
        assert!(
            Instant::now() < deadline,
            "no refusal in the log: {}",
            s.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
