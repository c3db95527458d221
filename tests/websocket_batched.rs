//! WebSocket messages that reach the server in one write (so they are
//! handed to the session together): answered in order, refusals in their
//! place, nothing lost past the byte budget or before a close.

mod common;
#[path = "common/ws.rs"]
mod ws;

use common::{parse_msg, Server};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use ws::End;

fn http_server(ids: &str, extra: &[&str]) -> (Server, u16) {
    let mut args = vec!["--memory", "--client-ids", ids];
    args.extend_from_slice(extra);
    Server::start_http(&args)
}

/// Queues `messages` without sending, then sends them in one write.
async fn send_at_once(w: &mut ws::Ws, messages: Vec<Message>) {
    for m in messages {
        w.ws.feed(m).await.unwrap();
    }
    w.ws.flush().await.unwrap();
}

#[tokio::test]
async fn refusals_among_messages_sent_at_once_keep_their_place() {
    let (_s, port) = http_server("w", &["--max-frame-bytes", "100"]);
    let mut w = ws::connect(port).await;
    assert_eq!(w.login("w").await, 0);
    send_at_once(
        &mut w,
        vec![
            Message::text("PING 1"),
            Message::text("PING 2"),
            Message::binary(b"PING".to_vec()),
            Message::text("PING 3"),
            Message::text("y".repeat(150)),
            Message::text("PING 4"),
            Message::text("PING a\nPING b"),
            Message::text("PING 5\r"),
        ],
    )
    .await;
    assert_eq!(w.line().await, "PONG 1");
    assert_eq!(w.line().await, "PONG 2");
    assert!(w.line().await.starts_with("ERR BAD_FRAME "));
    assert_eq!(w.line().await, "PONG 3");
    assert!(w.line().await.starts_with("ERR FRAME_TOO_LONG "));
    assert_eq!(w.line().await, "PONG 4");
    assert!(w.line().await.starts_with("ERR BAD_FRAME "));
    assert_eq!(w.line().await, "PONG 5");
}

#[tokio::test]
async fn more_messages_at_once_than_the_input_budget_all_arrive_in_order() {
    let (s, port) = http_server("w,t", &[]);
    let (mut t, _) = s.login("t").await;
    let mut w = ws::connect(port).await;
    assert_eq!(w.login("w").await, 0);
    // 3,000 frames of 100 bytes: several times the 64 KiB input budget.
    const N: u64 = 3_000;
    let frames = (1..=N)
        .map(|k| Message::text(format!("SEND {k:05} {}", "z".repeat(89))))
        .collect();
    send_at_once(&mut w, frames).await;
    for k in 1..=N {
        assert_eq!(w.line().await, format!("SENT {k}"));
        let (seq, from, text) = parse_msg(&t.line().await).unwrap();
        assert_eq!((seq, from.as_str()), (k, "w"));
        assert!(text.starts_with(&format!("{k:05} ")), "message {k}: {text}");
    }
}

#[tokio::test]
async fn messages_sent_with_the_close_are_all_answered_before_it() {
    let (s, port) = http_server("w,t", &[]);
    let (mut t, _) = s.login("t").await;
    let mut w = ws::connect(port).await;
    assert_eq!(w.login("w").await, 0);
    send_at_once(
        &mut w,
        vec![
            Message::text("SEND one"),
            Message::text("SEND two"),
            Message::Close(None),
        ],
    )
    .await;
    assert_eq!(w.line().await, "SENT 1");
    assert_eq!(w.line().await, "SENT 2");
    assert_eq!(w.expect_end().await, End::Close(Some(CloseCode::Normal)));
    for (k, want) in [(1, "one"), (2, "two")] {
        let (seq, from, text) = parse_msg(&t.line().await).unwrap();
        assert_eq!((seq, from.as_str(), text.as_str()), (k, "w", want));
    }
}
