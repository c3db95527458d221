//! The wire protocol over WebSocket (`--http-bind`, `GET /ws`) against the
//! real server binary: every frame and error as over TCP, WebSocket and TCP
//! clients talking to each other, origins, WSS, limits and keepalive.

mod common;
#[path = "common/ws.rs"]
mod ws;

use common::{parse_msg, Server};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use ws::End;

fn http_server(ids: &str, extra: &[&str]) -> (Server, u16) {
    let mut args = vec!["--memory", "--client-ids", ids];
    args.extend_from_slice(extra);
    Server::start_http(&args)
}

#[tokio::test]
async fn the_http_line_follows_the_listening_line_and_the_page_is_served() {
    let (_s, port) = http_server("1", &[]);
    let body = http_get(port, "/").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8"),
        "{body}"
    );
    assert!(body.contains("<html"), "{body}");
}

/// A bare HTTP/1.1 GET; the whole response as text.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(ws::WS_DEADLINE, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn websocket_and_tcp_clients_chat_both_ways() {
    let (s, port) = http_server("w,t", &[]);
    let mut w = ws::connect(port).await;
    assert_eq!(w.login("w").await, 0);
    let (mut t, _) = s.login("t").await;
    w.send("SEND from the browser side").await;
    assert_eq!(w.line().await, "SENT 1");
    let (seq, from, text) = parse_msg(&t.line().await).unwrap();
    assert_eq!(
        (seq, from.as_str(), text.as_str()),
        (1, "w", "from the browser side")
    );
    t.send("SEND from tcp").await;
    assert_eq!(t.line().await, "SENT 2");
    let (seq, from, text) = parse_msg(&w.line().await).unwrap();
    assert_eq!((seq, from.as_str(), text.as_str()), (2, "t", "from tcp"));
    w.send("ACK 2").await;
    w.send("ACK 3").await;
    assert!(w.line().await.starts_with("ERR BAD_ACK "));
    w.send("PING tok").await;
    assert_eq!(w.line().await, "PONG tok");
    w.send("PING").await;
    assert_eq!(w.line().await, "PONG");
    // A `\r` at the end is dropped, as on TCP.
    w.send("PING x\r").await;
    assert_eq!(w.line().await, "PONG x");
    w.send("QUIT").await;
    assert_eq!(w.line().await, "BYE quit");
    assert_eq!(w.expect_end().await, End::Close(Some(CloseCode::Normal)));
    // Acked: nothing is pending at the next login.
    let mut again = ws::connect(port).await;
    assert_eq!(again.login("w").await, 0);
}

#[tokio::test]
async fn the_backlog_is_counted_in_welcome_and_mids_are_idempotent() {
    let (s, port) = http_server("w,t", &[]);
    let (mut t, _) = s.login("t").await;
    for i in 1..=3 {
        t.send(&format!("SEND m{i}")).await;
        assert_eq!(t.line().await, format!("SENT {i}"));
    }
    let mut w = ws::connect(port).await;
    assert_eq!(w.login("w").await, 3);
    for i in 1..=3 {
        let (seq, _, text) = parse_msg(&w.line().await).unwrap();
        assert_eq!((seq, text), (i, format!("m{i}")));
    }
    w.send("@mid=a-1 SEND once").await;
    assert_eq!(w.line().await, "SENT 4");
    w.send("@mid=a-1 SEND once").await;
    assert_eq!(w.line().await, "SENT 4");
    let (seq, _, _) = parse_msg(&t.line().await).unwrap();
    assert_eq!(seq, 4);
    t.send("PING").await;
    assert_eq!(t.line().await, "PONG", "the resend was delivered again");
}

#[tokio::test]
async fn refused_frames_get_the_same_errors_and_the_connection_stays_usable() {
    let (_s, port) = http_server("w,v", &["--max-frame-bytes", "100"]);
    let mut w = ws::connect(port).await;
    w.send("SEND too early").await;
    assert!(w.line().await.starts_with("ERR NOT_LOGGED_IN "));
    w.send("HELLO").await;
    assert!(w.line().await.starts_with("ERR BAD_FRAME "));
    w.send_binary(b"PING").await;
    assert!(w.line().await.starts_with("ERR BAD_FRAME "));
    w.send("PING a\nPING b").await;
    assert!(w.line().await.starts_with("ERR BAD_FRAME "));
    assert_eq!(w.login("w").await, 0);
    w.send("LOGIN v").await;
    assert!(w.line().await.starts_with("ERR ALREADY_LOGGED_IN "));
    w.send("SEND ").await;
    assert!(w.line().await.starts_with("ERR EMPTY_MESSAGE "));
    // The limit is inclusive: 100 bytes pass, 101 do not; a `\r` is extra.
    let at_limit = format!("SEND {}", "x".repeat(95));
    w.send(&at_limit).await;
    assert_eq!(w.line().await, "SENT 1");
    w.send(&format!("{at_limit}\r")).await;
    assert_eq!(w.line().await, "SENT 2");
    w.send(&format!("{at_limit}x")).await;
    assert!(w.line().await.starts_with("ERR FRAME_TOO_LONG "));
    w.send_binary(&[0xff, 0x00]).await;
    assert!(w.line().await.starts_with("ERR BAD_FRAME "));
    // Answers keep the order of the frames they answer.
    w.send("PING 1").await;
    w.send(&"y".repeat(150)).await;
    w.send("PING 2").await;
    assert_eq!(w.line().await, "PONG 1");
    assert!(w.line().await.starts_with("ERR FRAME_TOO_LONG "));
    assert_eq!(w.line().await, "PONG 2");
}

#[tokio::test]
async fn a_message_past_the_hard_cap_closes_with_1009() {
    let (_s, port) = http_server("w", &["--max-frame-bytes", "100"]);
    let mut w = ws::connect(port).await;
    assert_eq!(w.login("w").await, 0);
    // Far over the limit but under the hard cap (100 bytes + 1 MiB): an
    // error, and the connection goes on.
    w.send(&format!("SEND {}", "z".repeat(100_000))).await;
    assert!(w.line().await.starts_with("ERR FRAME_TOO_LONG"));
    w.send("PING past").await;
    assert_eq!(w.line().await, "PONG past");
    w.send(&format!("SEND {}", "z".repeat(1024 * 1024 + 200)))
        .await;
    assert_eq!(w.expect_end().await, End::Close(Some(CloseCode::Size)));
}

#[tokio::test]
async fn a_text_message_that_is_not_utf8_closes_with_1007() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message;
    let (_s, port) = http_server("w", &[]);
    let mut w = ws::connect(port).await;
    assert_eq!(w.login("w").await, 0);
    let bad = Frame::message(b"SEND \xff\xfe".to_vec(), OpCode::Data(Data::Text), true);
    w.ws.send(Message::Frame(bad)).await.unwrap();
    assert_eq!(w.expect_end().await, End::Close(Some(CloseCode::Invalid)));
}

#[tokio::test]
async fn unknown_clients_and_wrong_secrets_are_told_bye() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, common::hash_line("1", "right") + "\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (_s, port) = Server::start_http(&["--memory", "--secrets-file", secrets.to_str().unwrap()]);
    let mut w = ws::connect(port).await;
    w.send("LOGIN 2 whatever").await;
    assert!(w.line().await.starts_with("ERR UNKNOWN_CLIENT "));
    assert_eq!(w.line().await, "BYE unknown-client");
    w.expect_end().await;
    let mut w = ws::connect(port).await;
    w.send("LOGIN 1 wrong").await;
    assert!(w.line().await.starts_with("ERR AUTH_FAILED "));
    assert_eq!(w.line().await, "BYE auth-failed");
    w.expect_end().await;
    let mut w = ws::connect(port).await;
    w.send("LOGIN 1 right").await;
    assert_eq!(w.line().await, "WELCOME 1 0");
}

#[tokio::test]
async fn takeover_works_between_websocket_and_tcp() {
    let (s, port) = http_server("a", &[]);
    let mut w = ws::connect(port).await;
    assert_eq!(w.login("a").await, 0);
    let (mut t, _) = s.login("a").await;
    assert_eq!(w.line().await, "BYE replaced");
    w.expect_end().await;
    let mut w2 = ws::connect(port).await;
    assert_eq!(w2.login("a").await, 0);
    assert_eq!(t.line().await, "BYE replaced");
    t.expect_eof().await;
}

#[tokio::test]
async fn origins_other_than_the_servers_own_or_listed_are_refused() {
    let (s, port) = http_server("a", &["--http-allowed-origins", "https://chat.example"]);
    let own = format!("http://127.0.0.1:{port}");
    for ok in [
        own.as_str(),
        "https://chat.example",
        "https://CHAT.example:443",
    ] {
        let mut w = ws::try_connect(port, Some(ok)).await.unwrap();
        w.send("PING").await;
        assert_eq!(w.line().await, "PONG", "{ok}");
    }
    for bad in [
        "http://evil.example",
        "https://127.0.0.1:1",
        "http://chat.example",
        "null",
    ] {
        match ws::try_connect(port, Some(bad)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{bad}");
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
                assert!(body.contains("--http-allowed-origins"), "{body}");
            }
            Err(e) => panic!("{bad}: {e}"),
            Ok(_) => panic!("{bad}: upgraded"),
        }
    }
    // One log line per refusal (stderr arrives through a thread: wait).
    let refusals = || {
        let log = s.log.lock().unwrap();
        log.matches("refused a WebSocket from origin").count()
    };
    let deadline = std::time::Instant::now() + ws::WS_DEADLINE;
    while refusals() < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(refusals(), 4, "{}", s.log.lock().unwrap());
}

#[tokio::test]
async fn on_loopback_a_page_under_a_rebound_dns_name_is_refused() {
    // DNS rebinding: a site points its own name at 127.0.0.1, so its page's
    // origin equals the Host the browser sends. Only addresses, localhost
    // and listed names count as the server's own on a loopback listener.
    let (_s, port) = http_server("a", &["--http-allowed-origins", "http://chat.example"]);
    let evil = format!("evil.example:{port}");
    match ws::try_connect_as(port, &evil, Some(&format!("http://{evil}"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a rebound name was upgraded"),
    }
    for (host, origin) in [
        (
            format!("localhost:{port}"),
            format!("http://localhost:{port}"),
        ),
        ("chat.example".to_owned(), "http://chat.example".to_owned()),
    ] {
        let mut w = ws::try_connect_as(port, &host, Some(&origin))
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        w.send("PING").await;
        assert_eq!(w.line().await, "PONG", "{origin}");
    }
}

#[tokio::test]
async fn wss_carries_the_protocol_with_the_servers_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::make_certs_for(dir.path(), "w", &["127.0.0.1"]);
    let (_s, port) = http_server("a,b", &["--tls-cert", &cert, "--tls-key", &key]);
    let origin = format!("https://127.0.0.1:{port}");
    let mut w = ws::connect_tls(port, &ca, Some(&origin)).await;
    assert_eq!(w.login("a").await, 0);
    w.send("SEND over wss").await;
    assert_eq!(w.line().await, "SENT 1");
    // Plain WebSocket to the HTTPS port does not get through.
    assert!(ws::try_connect(port, None).await.is_err());
}

#[tokio::test]
async fn over_the_connection_limit_a_websocket_is_told_limit() {
    let (s, port) = http_server("a,b", &["--max-connections", "1"]);
    let (_t, _) = s.login("a").await;
    let mut w = ws::connect(port).await;
    assert!(w.line().await.starts_with("ERR LIMIT "));
    assert_eq!(w.line().await, "BYE limit");
    w.expect_end().await;
}

#[tokio::test]
async fn a_peer_that_answers_no_ping_is_closed_before_the_idle_bye() {
    use futures_util::StreamExt;
    // Idle timeout 4 s: pinged after 1 s of silence, closed 1 s later.
    let (_s, port) = http_server("a,b", &["--idle-timeout", "4"]);
    let mut silent = ws::connect(port).await;
    assert_eq!(silent.login("a").await, 0);
    let mut answering = ws::connect(port).await;
    assert_eq!(answering.login("b").await, 0);
    // The answering one reads (its library answers pings), sends nothing,
    // and gets the protocol's own `BYE idle`.
    assert_eq!(answering.line().await, "BYE idle");
    // The silent one read nothing meanwhile: its pings went unanswered, so
    // the server closed it, with status 1001, before the idle timeout.
    let mut saw_ping = false;
    loop {
        let msg = tokio::time::timeout(ws::WS_DEADLINE, silent.ws.next())
            .await
            .unwrap();
        use tokio_tungstenite::tungstenite::Message;
        match msg {
            Some(Ok(Message::Ping(_))) => saw_ping = true,
            Some(Ok(Message::Close(c))) => {
                assert_eq!(c.map(|c| c.code), Some(CloseCode::Away));
                break;
            }
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(_)) | None => panic!("closed without a close message"),
        }
    }
    assert!(saw_ping);
}

#[tokio::test]
async fn shutdown_says_bye_to_websocket_sessions() {
    let (mut s, port) = http_server("a", &[]);
    let mut w = ws::connect(port).await;
    assert_eq!(w.login("a").await, 0);
    s.signal("TERM");
    assert_eq!(w.line().await, "BYE shutdown");
    w.expect_end().await;
    assert_eq!(s.wait_exit(), Some(0));
}

#[tokio::test]
async fn a_close_message_ends_input_like_eof_and_loses_nothing_sent_before_it() {
    let (s, port) = http_server("w,t", &[]);
    let (mut t, _) = s.login("t").await;
    let mut w = ws::connect(port).await;
    assert_eq!(w.login("w").await, 0);
    w.send("SEND last words").await;
    w.ws.close(None).await.unwrap();
    // The answer owed still comes, then the server's close.
    assert_eq!(w.line().await, "SENT 1");
    assert_eq!(w.expect_end().await, End::Close(Some(CloseCode::Normal)));
    let (seq, from, text) = parse_msg(&t.line().await).unwrap();
    assert_eq!((seq, from.as_str(), text.as_str()), (1, "w", "last words"));
}

#[tokio::test]
async fn a_websocket_that_does_not_log_in_in_time_is_closed() {
    let (_s, port) = http_server("w", &["--login-timeout", "1"]);
    let mut w = ws::connect(port).await;
    assert!(w.line().await.starts_with("ERR LIMIT "));
    assert_eq!(w.line().await, "BYE limit");
    w.expect_end().await;
}
