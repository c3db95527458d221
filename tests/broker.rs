//! The broker over real loopback sockets: the real `server` binary, raw
//! protocol connections.

mod common;

use std::collections::HashMap;

use common::{parse_msg, Server};
use tokio::io::AsyncWriteExt;

fn memory_server(ids: &str) -> Server {
    Server::start(&["--memory", "--client-ids", ids])
}

#[tokio::test]
async fn broadcast_reaches_every_other_client_and_never_the_sender() {
    let s = memory_server("1,2,3");
    let (mut c1, _) = s.login("1").await;
    let (mut c2, _) = s.login("2").await;
    let (mut c3, _) = s.login("3").await;
    c1.send("SEND hello from 1").await;
    assert_eq!(c1.line().await, "SENT 1");
    assert_eq!(
        c2.msgs(1).await,
        vec![(1, "1".into(), "hello from 1".into())]
    );
    assert_eq!(
        c3.msgs(1).await,
        vec![(1, "1".into(), "hello from 1".into())]
    );
    c2.send("SEND and from 2").await;
    assert_eq!(c2.line().await, "SENT 2");
    // c1's next line is 2's message: its own never came back.
    assert_eq!(c1.msgs(1).await, vec![(2, "2".into(), "and from 2".into())]);
    assert_eq!(c3.msgs(1).await, vec![(2, "2".into(), "and from 2".into())]);
}

#[tokio::test]
async fn five_concurrent_senders_share_one_total_order() {
    const PER: usize = 200;
    let s = memory_server("a,b,c,d,e");
    let ids = ["a", "b", "c", "d", "e"];
    let mut handles = Vec::new();
    for id in ids {
        let (mut c, _) = s.login(id).await;
        handles.push(tokio::spawn(async move {
            for i in 0..PER {
                c.send(&format!("SEND {id}-{i}")).await;
            }
            let mut sent = Vec::new();
            let mut got = Vec::new();
            while sent.len() < PER || got.len() < PER * 4 {
                let line = c.line().await;
                if let Some(seq) = line.strip_prefix("SENT ") {
                    sent.push(seq.parse::<u64>().unwrap());
                } else {
                    got.push(parse_msg(&line).unwrap_or_else(|| panic!("unexpected {line:?}")));
                }
            }
            (id, sent, got)
        }));
    }
    let mut order: HashMap<u64, (String, String)> = HashMap::new();
    for h in handles {
        let (id, sent, got) = h.await.unwrap();
        assert!(
            sent.windows(2).all(|w| w[0] < w[1]),
            "{id}: SENT out of order"
        );
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "{id}: MSG seqs not increasing"
        );
        assert!(got.iter().all(|m| m.1 != id), "{id} got its own message");
        for (seq, from, text) in got {
            let prev = order.insert(seq, (from.clone(), text.clone()));
            assert!(
                prev.is_none() || prev == Some((from, text)),
                "receivers disagree on seq {seq}"
            );
        }
        // Its own texts went out in its own order.
        for (i, seq) in sent.iter().enumerate() {
            order.insert(*seq, (id.to_owned(), format!("{id}-{i}")));
        }
    }
    let mut seqs: Vec<u64> = order.keys().copied().collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=(PER * 5) as u64).collect::<Vec<_>>(),
        "seqs are dense"
    );
}

#[tokio::test]
async fn a_late_client_gets_its_backlog_then_live_messages() {
    let s = memory_server("1,2,3");
    let (mut c1, _) = s.login("1").await;
    c1.send("SEND while you were away").await;
    c1.send("SEND second").await;
    assert_eq!(c1.line().await, "SENT 1");
    assert_eq!(c1.line().await, "SENT 2");
    let (mut c3, pending) = s.login("3").await;
    assert_eq!(pending, 2);
    assert_eq!(
        c3.msgs(2).await,
        vec![
            (1, "1".into(), "while you were away".into()),
            (2, "1".into(), "second".into())
        ]
    );
    c1.send("SEND live").await;
    assert_eq!(c3.msgs(1).await, vec![(3, "1".into(), "live".into())]);
}

#[tokio::test]
async fn backlog_replay_and_live_traffic_meet_without_gap_or_duplicate() {
    let s = memory_server("w,late");
    let (mut w, _) = s.login("w").await;
    let mut batch = String::new();
    for i in 0..20_000 {
        batch.push_str(&format!("SEND m{i}\n"));
    }
    w.send_raw(batch.as_bytes()).await;
    // Log in while those are being stored and replayed; keep sending.
    let (mut late, pending) = s.login("late").await;
    let mut more = String::new();
    for i in 20_000..25_000 {
        more.push_str(&format!("SEND m{i}\n"));
    }
    w.send_raw(more.as_bytes()).await;
    let got = late.msgs(25_000).await;
    assert!(pending <= 25_000);
    for (i, (seq, from, text)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(from, "w");
        assert_eq!(text, &format!("m{i}"));
    }
}

#[tokio::test]
async fn unacked_messages_come_again_at_the_next_login() {
    let s = memory_server("1,2");
    let (mut c1, _) = s.login("1").await;
    let (mut c2, _) = s.login("2").await;
    for t in ["a", "b", "c"] {
        c1.send(&format!("SEND {t}")).await;
    }
    assert_eq!(c2.msgs(3).await.len(), 3);
    c2.send("ACK 2").await;
    c2.send("QUIT").await;
    assert_eq!(c2.line().await, "BYE quit");
    c2.expect_eof().await;
    let (mut c2, pending) = s.login("2").await;
    assert_eq!(pending, 1);
    assert_eq!(c2.msgs(1).await, vec![(3, "1".into(), "c".into())]);
}

#[tokio::test]
async fn a_second_login_replaces_the_first_connection() {
    let s = memory_server("1,2");
    let (mut old, _) = s.login("2").await;
    let (mut new, _) = s.login("2").await;
    assert_eq!(old.line().await, "BYE replaced");
    old.expect_eof().await;
    let (mut c1, _) = s.login("1").await;
    c1.send("SEND to the new one").await;
    assert_eq!(
        new.msgs(1).await,
        vec![(1, "1".into(), "to the new one".into())]
    );
}

/// Sends each frame and checks the reply starts as expected.
async fn expect_replies(c: &mut common::Conn, cases: &[(&str, &str)]) {
    for (frame, want) in cases {
        c.send(frame).await;
        let got = c.line().await;
        assert!(
            got.starts_with(want),
            "{frame:?}: expected {want}, got {got:?}"
        );
    }
}

#[tokio::test]
async fn every_refused_frame_gets_its_error_and_the_connection_stays_usable() {
    let s = memory_server("1,2");
    let mut c = s.connect().await;
    let cases: &[(&str, &str)] = &[
        ("SEND too early", "ERR NOT_LOGGED_IN"),
        ("ACK 1", "ERR NOT_LOGGED_IN"),
        ("HELLO", "ERR BAD_FRAME"),
        ("login 1", "ERR BAD_FRAME"),
        ("LOGIN bad!id", "ERR BAD_FRAME"),
        ("", "ERR BAD_FRAME"),
    ];
    expect_replies(&mut c, cases).await;
    c.send_raw(b"SEND \xff\xfe\n").await;
    assert!(c.line().await.starts_with("ERR BAD_FRAME"));
    c.send("LOGIN 1").await;
    assert_eq!(c.line().await, "WELCOME 1 0");
    let cases: &[(&str, &str)] = &[
        ("LOGIN 2", "ERR ALREADY_LOGGED_IN"),
        ("LOGIN 1", "ERR ALREADY_LOGGED_IN"),
        ("SEND ", "ERR EMPTY_MESSAGE"),
        ("ACK 5", "ERR BAD_ACK"),
        ("ACK five", "ERR BAD_FRAME"),
        ("QUIT now", "ERR BAD_FRAME"),
        ("PING", "PONG"),
        ("PING tok en", "PONG tok en"),
    ];
    expect_replies(&mut c, cases).await;
    // Carriage returns from `nc -C` are dropped, never delivered.
    let (mut c2, _) = s.login("2").await;
    c.send_raw(b"SEND crlf line\r\n").await;
    assert_eq!(c.line().await, "SENT 1");
    assert_eq!(c2.msgs(1).await, vec![(1, "1".into(), "crlf line".into())]);
}

#[tokio::test]
async fn the_frame_limit_is_inclusive_and_a_long_line_is_skipped() {
    let s = memory_server("1,2");
    let (mut c1, _) = s.login("1").await;
    let (mut c2, _) = s.login("2").await;
    let max = 65_536;
    let fits = format!("SEND {}", "a".repeat(max - 5));
    let too_long = format!("SEND {}", "b".repeat(max - 4));
    c1.send(&fits).await;
    assert_eq!(c1.line().await, "SENT 1");
    c1.send(&too_long).await;
    assert!(c1.line().await.starts_with("ERR FRAME_TOO_LONG"));
    c1.send("SEND after").await;
    assert_eq!(c1.line().await, "SENT 2");
    let got = c2.msgs(2).await;
    assert_eq!(got[0].2.len(), max - 5);
    assert_eq!(got[1], (2, "1".into(), "after".into()));
}

#[tokio::test]
async fn an_unknown_id_is_refused_and_the_connection_closed() {
    let s = memory_server("1,2");
    let (mut c1, _) = s.login("1").await;
    let mut x = s.connect().await;
    x.send("LOGIN 99").await;
    assert!(x.line().await.starts_with("ERR UNKNOWN_CLIENT"));
    assert_eq!(x.line().await, "BYE unknown-client");
    x.expect_eof().await;
    c1.send("PING still-fine").await;
    assert_eq!(c1.line().await, "PONG still-fine");
}

#[tokio::test]
async fn quit_answers_after_pending_sends_and_closes() {
    let s = memory_server("1,2");
    let mut c = s.connect().await;
    c.send_raw(b"LOGIN 1\nSEND a\nSEND b\nQUIT\n").await;
    assert_eq!(c.line().await, "WELCOME 1 0");
    assert_eq!(c.line().await, "SENT 1");
    assert_eq!(c.line().await, "SENT 2");
    assert_eq!(c.line().await, "BYE quit");
    c.expect_eof().await;
}

#[tokio::test]
async fn frames_after_quit_are_not_handled() {
    let s = memory_server("1,2");
    let mut c = s.connect().await;
    // QUIT's answer is BYE quit and nothing else: the PING and SEND behind
    // it in the same read get no answer, and the SEND is not stored.
    c.send_raw(b"LOGIN 1\nSEND a\nQUIT\nPING late\nSEND b\n")
        .await;
    assert_eq!(c.line().await, "WELCOME 1 0");
    assert_eq!(c.line().await, "SENT 1");
    assert_eq!(c.line().await, "BYE quit");
    c.expect_eof().await;
    let (mut r, pending) = s.login("2").await;
    assert_eq!(pending, 1);
    let got = r.msgs(1).await;
    assert_eq!((got[0].0, got[0].2.as_str()), (1, "a"));
    r.send("PING end").await;
    assert_eq!(r.line().await, "PONG end");
}

#[tokio::test]
async fn half_closed_and_reset_connections_are_cleaned_up() {
    let s = memory_server("1,2");
    // Half-close: the server answers what it owes, then closes.
    let mut h = s.connect().await;
    h.send_raw(b"LOGIN 2\nSEND bye\n").await;
    h.writer.shutdown().await.unwrap();
    assert_eq!(h.line().await, "WELCOME 2 0");
    assert_eq!(h.line().await, "SENT 1");
    h.expect_eof().await;
    // Reset: the socket vanishes without a word.
    let (r, _) = s.login("2").await;
    let std = r
        .writer
        .reunite(r.reader.into_inner())
        .unwrap()
        .into_std()
        .unwrap();
    socket_linger_zero(&std);
    drop(std);
    // The id logs in again normally, and gets what was sent meanwhile.
    let (mut c1, _) = s.login("1").await;
    c1.send("SEND after the reset").await;
    assert!(c1.line().await.starts_with("MSG 1 "));
    assert_eq!(c1.line().await, "SENT 2");
    let (mut again, pending) = s.login("2").await;
    assert_eq!(pending, 1);
    assert_eq!(
        again.msgs(1).await,
        vec![(2, "1".into(), "after the reset".into())]
    );
}

fn socket_linger_zero(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, val: *const Linger, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let l = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd and a correctly sized struct.
    let rc = unsafe { setsockopt(s.as_raw_fd(), SOL_SOCKET, SO_LINGER, &l, 8) };
    assert_eq!(rc, 0);
}

/// One client stops reading while 100,000 messages of 1 KB flow from
/// another to a third. Returns how much the server's peak memory grew.
async fn stalled_reader(s: &Server) -> u64 {
    const N: usize = 100_000;
    let (mut stalled, _) = s.login("stalled").await;
    let (mut fast, _) = s.login("fast").await;
    let (mut sender, _) = s.login("sender").await;
    let text = "x".repeat(1000);
    let rss_before = s.peak_rss_kib();
    let writer = tokio::spawn(async move {
        let mut chunk = String::new();
        for i in 0..N {
            chunk.push_str(&format!("SEND {i:06}{text}\n"));
            if chunk.len() > 256 * 1024 {
                sender.send_raw(chunk.as_bytes()).await;
                chunk.clear();
            }
        }
        sender.send_raw(chunk.as_bytes()).await;
        let mut last = 0;
        while last < N as u64 {
            let line = sender.line().await;
            last = line.strip_prefix("SENT ").unwrap().parse().unwrap();
        }
        sender
    });
    // The fast reader gets everything while the stalled one reads nothing.
    for expect in 1..=N as u64 {
        let line = fast.line().await;
        assert_eq!(parse_msg(&line).unwrap().0, expect);
    }
    writer.await.unwrap();
    let grown_kib = s.peak_rss_kib().saturating_sub(rss_before);
    eprintln!("server grew by {grown_kib} KiB while {N} messages flowed");
    // Now it reads again and catches up from the log, in order.
    for seq in 1..=N as u64 {
        let line = stalled.line().await;
        assert_eq!(parse_msg(&line).unwrap().0, seq);
    }
    grown_kib
}

#[tokio::test]
async fn a_stalled_reader_neither_grows_memory_nor_slows_the_others() {
    let s = memory_server("sender,fast,stalled");
    let grown_kib = stalled_reader(&s).await;
    // The memory store itself holds the log (~100 MiB); a session that
    // buffered for the stalled reader would add as much again.
    assert!(grown_kib < 150 * 1024, "server grew by {grown_kib} KiB");
}

#[tokio::test]
async fn a_stalled_reader_costs_a_bounded_buffer_with_the_log_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&[
        "--client-ids",
        "sender,fast,stalled",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--sync",
        "none",
    ]);
    let grown_kib = stalled_reader(&s).await;
    // 100 MiB flowed; the server holds the 16 MiB tail, bounded session
    // buffers and SQLite's cache, nothing that grows with the stream.
    assert!(grown_kib < 64 * 1024, "server grew by {grown_kib} KiB");
}

#[tokio::test]
async fn sigterm_says_bye_and_exits_zero() {
    let mut s = memory_server("1,2");
    let (mut c1, _) = s.login("1").await;
    c1.send("SEND before stop").await;
    assert_eq!(c1.line().await, "SENT 1");
    s.signal("TERM");
    assert_eq!(c1.line().await, "BYE shutdown");
    c1.expect_eof().await;
    assert_eq!(s.wait_exit(), Some(0));
}
