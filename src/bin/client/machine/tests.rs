//! Unit tests of the client's rules, driven with a fake clock.
use super::*;

fn settings() -> Settings {
    Settings {
        id: ClientId::new("1").unwrap(),
        secret: None,
        exit_when_idle: None,
        reconnect: true,
        show_seq: false,
        mid_prefix: "p".into(),
        servers: 1,
    }
}

fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

fn welcome() -> Result<ServerFrame, FrameError> {
    Ok(ServerFrame::Welcome {
        id: id("1"),
        pending: 0,
    })
}

fn msg(seq: u64, text: &str) -> Result<ServerFrame, FrameError> {
    Ok(ServerFrame::Msg {
        seq: Seq(seq),
        unix_ms: 0,
        from: id("2"),
        text: Bytes::copy_from_slice(text.as_bytes()),
    })
}

fn sent(seq: u64) -> Result<ServerFrame, FrameError> {
    Ok(ServerFrame::Sent { seq: Seq(seq) })
}

fn err(code: ErrorCode) -> Result<ServerFrame, FrameError> {
    Ok(ServerFrame::Err(FrameError::new(code, "because")))
}

fn bye(reason: ByeReason) -> Result<ServerFrame, FrameError> {
    Ok(ServerFrame::Bye { reason })
}

fn line(s: &str) -> StdinEvent {
    StdinEvent::Line(s.as_bytes().to_vec())
}

/// The texts and mids of the SENDs among `actions`.
fn sends(actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(ClientFrame::Send { text, tags }) => Some((
                String::from_utf8(text.to_vec()).unwrap(),
                tags.mid.clone().unwrap(),
            )),
            _ => None,
        })
        .collect()
}

fn acks(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(ClientFrame::Ack { seq }) => Some(seq.0),
            _ => None,
        })
        .collect()
}

fn printed(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Print(l) => Some(String::from_utf8(l.clone()).unwrap()),
            _ => None,
        })
        .collect()
}

fn notes(actions: &[Action]) -> String {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Note(n) => Some(n.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn reconnects(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Reconnect(_)))
}

fn exit(actions: &[Action]) -> Option<&Outcome> {
    actions.iter().find_map(|a| match a {
        Action::Exit(o) => Some(o),
        _ => None,
    })
}

/// A machine that is online, at `t0`.
fn online(settings: Settings) -> (Machine, Instant) {
    let t0 = Instant::now();
    let mut m = Machine::new(settings, t0);
    let a = m.on_connected(t0);
    assert!(matches!(a[..], [Action::Send(ClientFrame::Login { .. })]));
    m.on_frame(t0, welcome());
    (m, t0)
}

#[test]
fn lines_are_kept_until_sent_and_resent_in_order_with_their_mids() {
    let (mut m, t) = online(settings());
    let mut first = Vec::new();
    for l in ["a", "b", "c"] {
        first.extend(sends(&m.on_stdin(t, line(l))));
    }
    assert_eq!(first.len(), 3);
    m.on_frame(t, sent(1));
    assert_eq!(m.unconfirmed(), 2);
    // The connection drops; a line typed meanwhile waits.
    assert!(reconnects(&m.on_lost("gone")));
    assert!(sends(&m.on_stdin(t, line("d"))).is_empty());
    let a = m.on_connected(t);
    assert!(sends(&a).is_empty(), "nothing before WELCOME");
    let again = sends(&m.on_frame(t, welcome()));
    assert_eq!(
        again,
        [
            first[1].clone(),
            first[2].clone(),
            ("d".into(), "p.3".into())
        ]
    );
    for s in 2..=4 {
        m.on_frame(t, sent(s));
    }
    assert_eq!(m.unconfirmed(), 0);
}

#[test]
fn only_refusals_that_can_never_succeed_drop_a_line() {
    for code in [
        ErrorCode::EmptyMessage,
        ErrorCode::FrameTooLong,
        ErrorCode::BadFrame,
    ] {
        let (mut m, t) = online(settings());
        m.on_stdin(t, line("x"));
        m.on_stdin(t, line("y"));
        let a = m.on_frame(t, err(code));
        assert!(notes(&a).contains(code.as_str()), "{a:?}");
        assert!(notes(&a).contains("dropped"), "{a:?}");
        assert!(!reconnects(&a) && exit(&a).is_none());
        assert_eq!(m.unconfirmed(), 1);
    }
}

#[test]
fn err_limit_for_a_send_keeps_the_line_and_reconnects() {
    let (mut m, t) = online(settings());
    m.on_stdin(t, line("x"));
    m.on_stdin(t, line("y"));
    let a = m.on_frame(t, err(ErrorCode::Limit));
    assert!(reconnects(&a), "{a:?}");
    // The rest of that connection's frames are ignored: a SENT that
    // follows does not confirm the refused line.
    assert!(m.on_frame(t, sent(9)).is_empty());
    assert_eq!(m.unconfirmed(), 2);
    m.on_connected(t);
    let again = sends(&m.on_frame(t, welcome()));
    assert_eq!(
        again.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["x", "y"]
    );
}

#[test]
fn limit_and_shutdown_before_welcome_are_retried_even_on_the_first_connection() {
    for refusal in [
        vec![err(ErrorCode::Limit), bye(ByeReason::Limit)],
        vec![err(ErrorCode::Limit), bye(ByeReason::Shutdown)],
        vec![bye(ByeReason::Limit)],
        vec![bye(ByeReason::Shutdown)],
    ] {
        let t = Instant::now();
        let mut m = Machine::new(settings(), t);
        m.on_connected(t);
        let mut a = Vec::new();
        for f in refusal {
            a.extend(m.on_frame(t, f));
        }
        assert!(reconnects(&a), "{a:?}");
        assert!(exit(&a).is_none(), "{a:?}");
        // The connection then closes: nothing more happens.
        assert!(m.on_lost("eof").is_empty());
        m.on_connected(t);
        assert!(notes(&m.on_frame(t, welcome())).contains("logged in"));
    }
    // Also after a login, and the backoff grows while attempts fail.
    let (mut m, t) = online(settings());
    let delays: Vec<Duration> = (0..3)
        .map(|_| {
            let a = m.on_frame(t, bye(ByeReason::Shutdown));
            m.on_connected(t);
            a.iter()
                .find_map(|a| match a {
                    Action::Reconnect(d) => Some(*d),
                    _ => None,
                })
                .unwrap()
        })
        .collect();
    assert!(delays[0] < delays[1] && delays[1] < delays[2], "{delays:?}");
}

#[test]
fn no_reconnect_exits_on_a_lost_connection() {
    let mut s = settings();
    s.reconnect = false;
    let (mut m, _) = online(s);
    let a = m.on_frame(Instant::now(), bye(ByeReason::Shutdown));
    assert!(matches!(exit(&a), Some(Outcome::Closed(_))), "{a:?}");
    let (mut m, _) = online(Settings {
        reconnect: false,
        ..settings()
    });
    assert!(matches!(exit(&m.on_lost("eof")), Some(Outcome::Closed(_))));
}

#[test]
fn final_refusals_end_the_run() {
    let t = Instant::now();
    let mut m = Machine::new(settings(), t);
    m.on_connected(t);
    let a = m.on_frame(t, err(ErrorCode::UnknownClient));
    assert!(matches!(exit(&a), Some(Outcome::Refused(r)) if r.contains("UNKNOWN_CLIENT")));

    let mut m = Machine::new(settings(), t);
    m.on_connected(t);
    let a = m.on_frame(t, err(ErrorCode::AuthFailed));
    match exit(&a) {
        Some(Outcome::Refused(r)) => {
            assert!(r.contains("AUTH_FAILED") && r.contains("--secret-file"));
            assert!(r.contains("HERALD_SECRET"));
        }
        other => panic!("{other:?}"),
    }

    let (mut m, t) = online(settings());
    let a = m.on_frame(t, bye(ByeReason::Replaced));
    assert!(matches!(exit(&a), Some(Outcome::Closed(r)) if r.contains("replaced")));
}

#[test]
fn an_undecodable_frame_ends_the_connection_unacknowledged() {
    let (mut m, t) = online(settings());
    assert_eq!(printed(&m.on_frame(t, msg(1, "fine"))), ["2: fine\n"]);
    let bad = Err(FrameError::new(ErrorCode::FrameTooLong, "frame too long"));
    let a = m.on_frame(t, bad);
    // What was printed is acknowledged, and nothing after it.
    assert_eq!(acks(&a), [1]);
    assert!(reconnects(&a));
    assert!(notes(&a).contains("cannot decode"), "{a:?}");
    // Frames still buffered from that connection are not handled.
    assert!(m.on_frame(t, msg(3, "later")).is_empty());
    assert!(acks(&m.on_tick(t + Duration::from_secs(1))).is_empty());
}

#[test]
fn a_printed_seq_is_never_printed_again_and_acks_cover_this_connection_only() {
    let (mut m, t) = online(settings());
    let mut a = m.on_frame(t, msg(1, "one"));
    a.extend(m.on_frame(t, msg(2, "two")));
    assert_eq!(printed(&a), ["2: one\n", "2: two\n"]);
    // Acks are batched.
    assert!(acks(&a).is_empty());
    assert_eq!(acks(&m.on_tick(t + ACK_DELAY)), [2]);
    m.on_frame(t, msg(3, "three"));
    // Lost before 3 was acknowledged: the server sends it again.
    m.on_lost("eof");
    m.on_connected(t);
    m.on_frame(t, welcome());
    // Nothing received on this connection yet: nothing to acknowledge.
    assert!(acks(&m.on_tick(t + Duration::from_secs(1))).is_empty());
    let a = m.on_frame(t, msg(3, "three"));
    assert!(printed(&a).is_empty());
    let a = m.on_frame(t, msg(4, "four"));
    assert_eq!(printed(&a), ["2: four\n"]);
    assert_eq!(acks(&m.on_tick(t + Duration::from_secs(2))), [4]);
}

#[test]
fn many_messages_are_acknowledged_without_waiting() {
    let (mut m, t) = online(settings());
    let mut all = Vec::new();
    for seq in 1..=ACK_EVERY {
        all.extend(m.on_frame(t, msg(seq, "x")));
    }
    assert_eq!(acks(&all), [ACK_EVERY]);
}

#[test]
fn exit_when_idle_of_90_s_fires_through_pings_and_pongs() {
    let mut s = settings();
    s.exit_when_idle = Some(Duration::from_secs(90));
    let (mut m, t0) = online(s);
    m.on_stdin(t0, line("bye"));
    m.on_frame(t0, sent(1));
    m.on_stdin(t0, StdinEvent::End(None));
    let mut t = t0;
    let mut pings = 0;
    let quit_at = loop {
        let next = m.next_deadline().unwrap();
        assert!(next > t, "time must move on");
        t = next;
        assert!(t < t0 + Duration::from_secs(200), "idle exit never fired");
        let a = m.on_tick(t);
        if a.contains(&Action::Send(ClientFrame::Ping { token: None })) {
            pings += 1;
            // The answer does not count as activity.
            m.on_frame(t, Ok(ServerFrame::Pong { token: None }));
        }
        if a.contains(&Action::Send(ClientFrame::Quit)) {
            break t;
        }
    };
    assert_eq!(pings, 2, "pings at 30 s and 60 s");
    assert_eq!(quit_at, t0 + Duration::from_secs(90));
    assert_eq!(
        exit(&m.on_frame(quit_at, bye(ByeReason::Quit))),
        Some(&Outcome::Quit)
    );
}

#[test]
fn exit_when_idle_waits_for_stdin_to_end_and_every_line_to_be_confirmed() {
    let mut s = settings();
    s.exit_when_idle = Some(Duration::from_millis(100));
    let (mut m, t) = online(s);
    m.on_stdin(t, line("x"));
    let later = t + Duration::from_secs(10);
    assert!(!m.on_tick(later).contains(&Action::Send(ClientFrame::Quit)));
    m.on_stdin(later, StdinEvent::End(None));
    let much_later = later + Duration::from_secs(10);
    assert!(!m
        .on_tick(much_later)
        .contains(&Action::Send(ClientFrame::Quit)));
    m.on_frame(much_later, sent(1));
    // A MSG resets the clock, a PONG does not.
    m.on_frame(much_later, msg(5, "hi"));
    m.on_frame(
        much_later + Duration::from_millis(50),
        Ok(ServerFrame::Pong { token: None }),
    );
    assert_eq!(
        m.next_deadline(),
        Some(much_later + Duration::from_millis(20)),
        "the ack first"
    );
    m.on_tick(much_later + Duration::from_millis(20));
    assert_eq!(
        m.next_deadline(),
        Some(much_later + Duration::from_millis(100))
    );
    let a = m.on_tick(much_later + Duration::from_millis(100));
    assert_eq!(a, [Action::Send(ClientFrame::Quit)]);
}

#[test]
fn quitting_acknowledges_what_was_printed_and_prints_nothing_more() {
    let (mut m, t) = online(settings());
    m.on_frame(t, msg(7, "x"));
    let a = m.on_signal(t);
    assert_eq!(
        a,
        [
            Action::Send(ClientFrame::Ack { seq: Seq(7) }),
            Action::Send(ClientFrame::Quit)
        ]
    );
    assert!(m.on_frame(t, msg(8, "late")).is_empty());
    let a = m.on_tick(t + QUIT_GRACE);
    assert_eq!(exit(&a), Some(&Outcome::Quit));
}

#[test]
fn a_silent_server_is_given_up_after_the_login_wait() {
    let t = Instant::now();
    let mut m = Machine::new(settings(), t);
    m.on_connected(t);
    assert_eq!(m.next_deadline(), Some(t + LOGIN_WAIT));
    // Before any login this is final (probably not a Herald server).
    let a = m.on_tick(t + LOGIN_WAIT);
    assert!(matches!(exit(&a), Some(Outcome::Closed(r)) if r.contains("did not answer LOGIN")));
    // After a login, it is a lost connection like any other.
    let (mut m, t) = online(settings());
    m.on_lost("eof");
    m.on_connected(t);
    assert!(reconnects(&m.on_tick(t + LOGIN_WAIT)));
}

#[test]
fn pings_every_30_s_while_online() {
    let (mut m, t) = online(settings());
    assert!(m.on_tick(t + Duration::from_secs(29)).is_empty());
    let a = m.on_tick(t + PING_EVERY);
    assert_eq!(a, [Action::Send(ClientFrame::Ping { token: None })]);
    assert_eq!(m.next_deadline(), Some(t + PING_EVERY * 2));
}

#[test]
fn unconfirmed_lines_are_bounded_in_count_and_bytes() {
    let (mut m, t) = online(settings());
    for _ in 0..MAX_UNCONFIRMED_LINES {
        assert!(m.wants_line());
        m.on_stdin(t, line("x"));
    }
    assert!(!m.wants_line());
    m.on_frame(t, sent(1));
    assert!(m.wants_line());

    let (mut m, t) = online(settings());
    let big = "y".repeat(MAX_UNCONFIRMED_BYTES / 2);
    m.on_stdin(t, line(&big));
    assert!(m.wants_line());
    m.on_stdin(t, line(&big));
    assert!(!m.wants_line());
    m.on_frame(t, sent(1));
    assert!(m.wants_line());
}

#[test]
fn bad_stdin_lines_are_skipped_with_a_note() {
    let (mut m, t) = online(settings());
    assert!(m.on_stdin(t, line("")).is_empty());
    assert!(m.on_stdin(t, line("\r")).is_empty());
    let a = m.on_stdin(t, StdinEvent::Line(vec![0xff, 0xfe]));
    assert!(notes(&a).contains("UTF-8"));
    let a = m.on_stdin(t, line("a\rb"));
    assert!(notes(&a).contains("carriage return"));
    let a = m.on_stdin(t, StdinEvent::TooLong);
    assert!(notes(&a).contains("--max-frame-bytes"));
    assert_eq!(
        sends(&m.on_stdin(t, line("ok\r"))),
        [("ok".into(), "p.0".into())]
    );
    assert_eq!(m.unconfirmed(), 1);
}

#[test]
fn no_server_at_all_is_final_after_a_few_tries_but_a_server_that_went_away_is_waited_for() {
    let t = Instant::now();
    let mut m = Machine::new(settings(), t);
    for _ in 1..FIRST_LOGIN_TRIES {
        assert!(reconnects(
            &m.on_connect_failed("cannot connect to x: refused")
        ));
    }
    let a = m.on_connect_failed("cannot connect to x: refused");
    assert!(matches!(exit(&a), Some(Outcome::Closed(r)) if r.contains("cannot connect")));
    // A server killed while it let us in, before the first WELCOME.
    let mut m = Machine::new(settings(), t);
    m.on_connected(t);
    assert!(reconnects(&m.on_lost("eof")));
    let (mut m, _) = online(settings());
    m.on_lost("eof");
    assert!(reconnects(&m.on_connect_failed("refused")));
}

#[test]
fn with_a_list_the_first_login_tries_each_server_at_least_once() {
    let t = Instant::now();
    // A short list: the usual tries.
    let m = Machine::new(
        Settings {
            servers: 3,
            ..settings()
        },
        t,
    );
    assert_eq!(m.first_login_tries(), FIRST_LOGIN_TRIES);
    // A long one: once around it.
    let mut m = Machine::new(
        Settings {
            servers: 9,
            ..settings()
        },
        t,
    );
    assert_eq!(m.first_login_tries(), 9);
    for _ in 1..9 {
        assert!(reconnects(&m.on_connect_failed("refused")));
    }
    assert!(exit(&m.on_connect_failed("refused")).is_some());
    // A silent server is one failed try when others are left.
    let mut m = Machine::new(
        Settings {
            servers: 2,
            ..settings()
        },
        t,
    );
    m.on_connected(t);
    assert!(reconnects(&m.on_tick(t + LOGIN_WAIT)));
}

#[test]
fn the_backoff_grows_per_failed_try_and_resets_after_a_login() {
    let (mut m, t) = online(Settings {
        servers: 2,
        ..settings()
    });
    let waits = |a: &[Action]| -> Vec<Duration> {
        a.iter()
            .filter_map(|a| match a {
                Action::Reconnect(w) => Some(*w),
                _ => None,
            })
            .collect()
    };
    assert_eq!(waits(&m.on_lost("eof")), [backoff(0)]);
    assert_eq!(waits(&m.on_connect_failed("refused")), [backoff(1)]);
    assert_eq!(waits(&m.on_connect_failed("refused")), [backoff(2)]);
    m.on_connected(t);
    m.on_frame(t, welcome());
    assert_eq!(waits(&m.on_lost("eof")), [backoff(0)]);
}

#[test]
fn a_quit_still_takes_confirmations_and_says_what_was_left_unconfirmed() {
    let (mut m, t) = online(settings());
    m.on_stdin(t, line("a"));
    m.on_stdin(t, line("b"));
    m.on_signal(t);
    m.on_frame(t, sent(1));
    assert_eq!(m.unconfirmed(), 1);
    let a = m.on_frame(t, bye(ByeReason::Quit));
    assert!(notes(&a).contains("1 line(s) were not confirmed"), "{a:?}");
    assert_eq!(exit(&a), Some(&Outcome::Quit));
}

#[test]
fn after_quit_any_bye_or_bad_frame_ends_the_run() {
    for last in [
        bye(ByeReason::Shutdown),
        Err(FrameError::new(ErrorCode::BadFrame, "garbage")),
    ] {
        let (mut m, t) = online(settings());
        m.on_signal(t);
        assert_eq!(exit(&m.on_frame(t, last)), Some(&Outcome::Quit));
    }
}

#[test]
fn an_untrusted_certificate_ends_the_first_login_once_every_server_was_tried() {
    let t = Instant::now();
    let mut m = Machine::new(settings(), t);
    let a = m.on_untrusted("not trusted");
    assert!(
        matches!(exit(&a), Some(Outcome::Closed(r)) if r == "not trusted"),
        "{a:?}"
    );
    let mut m = Machine::new(
        Settings {
            servers: 2,
            ..settings()
        },
        t,
    );
    assert!(reconnects(&m.on_untrusted("not trusted")));
    assert!(exit(&m.on_untrusted("not trusted")).is_some());
    // After a login it is retried: the server may be fixed.
    let (mut m, _) = online(settings());
    m.on_lost("eof");
    assert!(reconnects(&m.on_untrusted("not trusted")));
}
