//! The web chat page in a real browser: a headless Chromium (Debian's
//! `chromium`, installed by scripts/ensure-chromium.sh) against the real
//! `server` binary with `--http-bind`, next to TCP `client`s. Each step
//! leaves a screenshot in the test's temporary directory (printed).

mod common;
mod web;

use std::io::Write;
use std::process::Child;
use std::sync::mpsc::Receiver;

use web::server::{secrets_file, WebServer};
use web::{shown, Chrome, DEADLINE};

/// A TCP `client` process and its stdout lines.
struct TcpClient {
    child: Child,
    out: Receiver<String>,
}

impl TcpClient {
    fn start(server: &WebServer, id: &str) -> TcpClient {
        let mut child = common::client_command(server.tcp_port, id, &[])
            .spawn()
            .expect("spawn client");
        let out = common::lines_of(child.stdout.take().expect("piped stdout"));
        TcpClient { child, out }
    }

    /// A client for `id` that logs in with `secret` (given through
    /// `HERALD_SECRET`, never on the command line).
    fn start_with_secret(server: &WebServer, id: &str, secret: &str) -> TcpClient {
        let mut child = common::client_command(server.tcp_port, id, &[])
            .env("HERALD_SECRET", secret)
            .spawn()
            .expect("spawn client");
        let out = common::lines_of(child.stdout.take().expect("piped stdout"));
        TcpClient { child, out }
    }

    fn say(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{text}").expect("write to the client");
    }

    /// Waits (bounded) for the client to print exactly `line`, failing on
    /// any other line first.
    fn expect(&self, line: &str) {
        let got = common::wait_for(&self.out, DEADLINE, |_| true);
        assert_eq!(got, line, "the TCP client printed something else first");
    }
}

impl Drop for TcpClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_pages_and_a_tcp_client_chat() {
    let Some(chrome) = Chrome::start("chat") else {
        return;
    };
    let server = WebServer::start(&["--memory", "--client-ids", "ann,bob,cy"]);
    let ann = chrome.person("ann");
    let bob = chrome.person("bob");
    ann.open(&server.url()).shot("sign-in-form");
    ann.join("ann").shot("online");
    bob.open(&server.url()).join("bob");
    let mut cy = TcpClient::start(&server, "cy");

    ann.say("hello from the browser");
    cy.expect("ann: hello from the browser");
    bob.wait_lines(&shown(&[("ann", "hello from the browser")]));
    bob.say("hi ann, bob here");
    cy.expect("bob: hi ann, bob here");
    cy.say("and cy on the terminal");
    // Markup in a message is text, never HTML.
    bob.say("<b>bold?</b> & \"quotes\" <img src=x onerror=alert(1)>");
    cy.expect("bob: <b>bold?</b> & \"quotes\" <img src=x onerror=alert(1)>");

    let all = shown(&[
        ("ann", "hello from the browser"),
        ("bob", "hi ann, bob here"),
        ("cy", "and cy on the terminal"),
        (
            "bob",
            "<b>bold?</b> & \"quotes\" <img src=x onerror=alert(1)>",
        ),
    ]);
    ann.wait_lines(&all);
    // The cy and bob lines may meet the broker in either order; both pages
    // show the broker's one order.
    let order = |page: &web::Page<'_>| {
        page.line_details()
            .iter()
            .map(|l| (l.seq, l.shown.clone()))
            .collect::<Vec<_>>()
    };
    bob.wait_until("bob's lines confirmed", CONFIRMED);
    let (ann_order, bob_order) = (order(&ann), order(&bob));
    assert_eq!(ann_order, bob_order, "both pages show the broker's order");
    assert!(
        ann_order.windows(2).all(|w| w[0].0 < w[1].0),
        "{ann_order:?}"
    );
    assert_eq!(
        ann.eval("document.querySelector('#log b, #log img') === null"),
        true
    );

    let mine: Vec<bool> = ann.line_details().iter().map(|l| l.mine).collect();
    assert_eq!(mine, [true, false, false, false]);
    ann.shot("conversation");
    bob.shot("conversation");
    server.stop();
}

/// Every line of this page's own has its `SENT`.
const CONFIRMED: &str =
    "[...document.querySelectorAll('#log li.mine')].every(li => li.dataset.state === 'sent')";

#[test]
fn a_reloaded_page_shows_its_history_once_then_live_messages() {
    let Some(chrome) = Chrome::start("reload") else {
        return;
    };
    let server = WebServer::start(&["--memory", "--client-ids", "ann,bob"]);
    let ann = chrome.person("ann");
    ann.open(&server.url()).join("ann");
    let mut bob = TcpClient::start(&server, "bob");
    // As if every ACK were lost with the connection: the server sends all
    // of bob's lines again after the reload, and the page must not show
    // them twice.
    ann.eval(
        "(() => { const send = WebSocket.prototype.send; \
         WebSocket.prototype.send = function (f) { \
           if (!String(f).startsWith('ACK ')) send.call(this, f); }; return true; })()",
    );
    for i in 1..=3 {
        bob.say(&format!("line {i} from bob"));
        ann.say(&format!("answer {i} from ann"));
        bob.expect(&format!("ann: answer {i} from ann"));
    }
    ann.wait_until("ann's lines confirmed", CONFIRMED);
    let before = ann.lines();
    assert_eq!(before.len(), 6, "{before:?}");
    ann.shot("before-reload");

    ann.reload();
    ann.wait_online();
    ann.shot("after-reload");
    assert_eq!(
        ann.eval("document.getElementById('status').dataset.backlog"),
        "3",
        "the server sent bob's lines again"
    );
    assert_eq!(ann.lines(), before, "the history once, in order");

    bob.say("live after the reload");
    let mut after = before.clone();
    after.push("bob: live after the reload".into());
    // Exactly this: the resent lines came before the live one, and none
    // of them was shown again.
    ann.wait_lines(&after);
    ann.say("still here");
    bob.expect("ann: still here");
    ann.shot("live-after-reload");
    server.stop();
}

#[test]
fn a_page_closed_while_others_chat_shows_what_it_missed() {
    let Some(chrome) = Chrome::start("missed") else {
        return;
    };
    let server = WebServer::start(&["--memory", "--client-ids", "ann,bob,cy"]);
    let ann = chrome.person("ann");
    let bob = chrome.person("bob");
    ann.open(&server.url()).join("ann");
    bob.open(&server.url()).join("bob");
    let mut cy = TcpClient::start(&server, "cy");
    ann.say("before bob leaves");
    bob.wait_lines(&shown(&[("ann", "before bob leaves")]));
    cy.expect("ann: before bob leaves");
    bob.shot("before-closing");
    bob.close();

    ann.say("bob, are you there?");
    cy.expect("ann: bob, are you there?");
    cy.say("he closed the tab");
    ann.wait_lines(&shown(&[
        ("ann", "before bob leaves"),
        ("ann", "bob, are you there?"),
        ("cy", "he closed the tab"),
    ]));
    ann.say("we will tell him later");
    cy.expect("ann: we will tell him later");
    ann.wait_until("ann's lines confirmed", CONFIRMED);
    ann.shot("while-bob-is-away");

    // The same browser profile, a new tab: the history it had, then what
    // it missed (its backlog), then live messages; each line once.
    let again = chrome.reopen(&bob, "bob-again");
    again.open(&server.url());
    again.wait_until(
        "the form, with the id this profile used last",
        "!document.getElementById('login-view').hidden \
         && document.getElementById('login-id').value === 'bob'",
    );
    again.join("bob");
    let missed = shown(&[
        ("ann", "before bob leaves"),
        ("ann", "bob, are you there?"),
        ("cy", "he closed the tab"),
        ("ann", "we will tell him later"),
    ]);
    again.wait_lines(&missed);
    again.shot("reopened");
    cy.say("welcome back");
    let mut live = missed.clone();
    live.push("cy: welcome back".into());
    again.wait_lines(&live);
    again.shot("live-again");
    server.stop();
}

#[test]
fn a_wrong_secret_is_refused_in_words() {
    let Some(chrome) = Chrome::start("secret") else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let secrets = secrets_file(dir.path(), &[("ann", "ann-s3cret"), ("bob", "bob-s3cret")]);
    let server = WebServer::start(&["--memory", "--secrets-file", &secrets]);
    let ann = chrome.person("ann");
    ann.open(&server.url());
    ann.sign_in("ann", "not-her-secret");
    ann.wait_until(
        "the refusal",
        "!document.getElementById('login-error').hidden",
    );
    ann.shot("wrong-secret");
    assert_eq!(
        ann.eval("document.getElementById('login-error').dataset.code"),
        "AUTH_FAILED"
    );
    assert_eq!(
        ann.text_of("login-error"),
        "Wrong or missing secret for “ann”."
    );
    assert_eq!(
        ann.eval("document.activeElement.id"),
        "login-secret",
        "focus goes back to the secret"
    );

    ann.sign_in("mallory", "whatever");
    ann.wait_until(
        "the refusal of an unknown id",
        "document.getElementById('login-error').dataset.code === 'UNKNOWN_CLIENT'",
    );
    assert_eq!(
        ann.text_of("login-error"),
        "The id “mallory” is not allowed on this server."
    );
    ann.shot("unknown-id");

    ann.sign_in("ann", "ann-s3cret");
    ann.wait_online();
    let mut bob = TcpClient::start_with_secret(&server, "bob", "bob-s3cret");
    ann.say("the right secret works");
    bob.expect("ann: the right secret works");
    bob.say("welcome");
    ann.wait_lines(&shown(&[
        ("ann", "the right secret works"),
        ("bob", "welcome"),
    ]));
    ann.shot("signed-in");
    server.stop();
}

#[test]
fn a_page_taken_over_elsewhere_says_so() {
    let Some(chrome) = Chrome::start("takeover") else {
        return;
    };
    let server = WebServer::start(&["--memory", "--client-ids", "ann,bob"]);
    let laptop = chrome.person("laptop");
    let phone = chrome.person("phone");
    laptop.open(&server.url()).join("ann");
    let mut bob = TcpClient::start(&server, "bob");
    bob.say("first, to the laptop");
    laptop.wait_lines(&shown(&[("bob", "first, to the laptop")]));

    phone.open(&server.url()).join("ann");
    laptop.wait_until(
        "the laptop's notice",
        "document.getElementById('notice').dataset.code === 'replaced' \
         && !document.getElementById('notice').hidden",
    );
    laptop.shot("replaced");
    assert_eq!(
        laptop.text_of("notice-text"),
        "This id logged in elsewhere, so this page was disconnected."
    );
    assert_eq!(
        laptop.eval("document.getElementById('status').dataset.state"),
        "offline"
    );

    // The phone has the id now, and the laptop does not fight for it.
    bob.say("second, to the phone");
    phone.wait_lines(&shown(&[("bob", "second, to the phone")]));
    phone.say("on my phone now");
    bob.expect("ann: on my phone now");
    phone.shot("took-over");
    assert_eq!(
        laptop.eval("document.getElementById('status').dataset.state"),
        "offline"
    );
    assert_eq!(laptop.lines(), shown(&[("bob", "first, to the laptop")]));

    // "Reconnect here", from the keyboard, takes the id back.
    laptop
        .tab
        .find_element("#notice-action")
        .expect("the notice's button")
        .focus()
        .expect("focus");
    laptop.tab.press_key("Enter").expect("press Enter");
    laptop.wait_online();
    phone.wait_until(
        "the phone's notice",
        "document.getElementById('notice').dataset.code === 'replaced'",
    );
    laptop.say("back on the laptop");
    bob.expect("ann: back on the laptop");
    laptop.shot("took-back");
    server.stop();
}

#[test]
fn a_full_server_is_said_in_words_and_the_page_gets_in_once_there_is_room() {
    let Some(chrome) = Chrome::start("full") else {
        return;
    };
    let server = WebServer::start(&[
        "--memory",
        "--client-ids",
        "ann,bob",
        "--max-connections",
        "1",
    ]);
    let mut bob = TcpClient::start(&server, "bob");
    bob.say("I hold the only place");
    wait_until_full(server.tcp_port);
    let ann = chrome.person("ann");
    ann.open(&server.url()).sign_in("ann", "");
    ann.wait_until(
        "the page says the server is full",
        "document.getElementById('notice').dataset.code === 'reconnecting' \
         && document.getElementById('notice-text').textContent.startsWith('The server is full')",
    );
    ann.shot("server-full");
    drop(bob);
    ann.wait_online();
    ann.wait_lines(&shown(&[("bob", "I hold the only place")]));
    ann.shot("got-in");
    server.stop();
}

/// Waits (bounded) until the server at `port` refuses a new connection
/// with `ERR LIMIT`: a server that has room says nothing before `LOGIN`.
fn wait_until_full(port: u16) {
    use std::io::{BufRead, BufReader};
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .expect("a read timeout");
        let mut line = String::new();
        if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("ERR LIMIT") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never became full"
        );
    }
}

#[test]
fn lines_typed_while_the_server_is_away_are_sent_once_it_is_back() {
    let Some(chrome) = Chrome::start("reconnect") else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let args = ["--data-dir", data, "--client-ids", "ann,bob"];
    let server = WebServer::start(&args);
    let (tcp_port, http_port) = (server.tcp_port, server.http_port);
    let ann = chrome.person("ann");
    ann.open(&server.url()).join("ann");
    ann.say("before the restart");
    ann.wait_until("ann's line confirmed", CONFIRMED);

    server.stop();
    // The first cause of the outage stays in the notice while the page
    // tries again and again.
    ann.wait_until(
        "the page says why it is offline and that it reconnects",
        "document.getElementById('status').dataset.state === 'reconnecting' \
         && document.getElementById('notice').dataset.code === 'reconnecting' \
         && document.getElementById('notice-text').textContent \
              .startsWith('The server is shutting down. Reconnecting')",
    );
    ann.say("typed while the server was away");
    ann.wait_until(
        "the line shown as pending",
        "[...document.querySelectorAll('#log li.mine')].pop().dataset.state === 'pending'",
    );
    ann.shot("offline-pending");

    let server = WebServer::start_on(tcp_port, http_port, &args);
    ann.wait_online();
    ann.wait_until("ann's lines confirmed", CONFIRMED);
    ann.shot("back-online");
    let mut bob = TcpClient::start(&server, "bob");
    bob.expect("ann: before the restart");
    bob.expect("ann: typed while the server was away");
    bob.say("got both");
    ann.wait_lines(&shown(&[
        ("ann", "before the restart"),
        ("ann", "typed while the server was away"),
        ("bob", "got both"),
    ]));
    server.stop();
}

/// The README's pictures of the page (`docs/img/web-chat.png`, desktop,
/// and `docs/img/web-chat-phone.png`), from a conversation between two
/// pages and a terminal client: run by scripts/web-screenshots.sh, not by
/// `cargo test`. `HERALD_SCREENSHOT_DIR` puts them elsewhere.
#[test]
#[ignore = "writes docs/img; run by scripts/web-screenshots.sh"]
fn readme_screenshots() {
    let Some(chrome) = Chrome::start("readme") else {
        panic!("the README's screenshots need Chromium: scripts/ensure-chromium.sh");
    };
    let dir = std::env::var("HERALD_SCREENSHOT_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/docs/img").to_owned());
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    let server = WebServer::start(&["--memory", "--client-ids", "maya,tom,priya"]);
    let maya = chrome.person("maya");
    let tom = chrome.person("tom");
    maya.emulate(1200, 720, 1.0, false);
    tom.emulate(390, 760, 2.0, true);
    maya.open(&server.url()).join("maya");
    tom.open(&server.url()).join("tom");
    let mut priya = TcpClient::start(&server, "priya");

    let script = [
        ("maya", "Morning! Is the 2.4 release still on for today?"),
        (
            "tom",
            "Yes, the build is green. I'm writing the release notes now.",
        ),
        ("priya", "I can run the smoke tests on staging after lunch."),
        ("maya", "Great, thanks both."),
        (
            "tom",
            "Draft is in the wiki under Releases / 2.4, comments welcome.",
        ),
        ("priya", "Smoke tests passed on staging. Ship it!"),
        ("maya", "Shipping 2.4 now. Nice work, everyone."),
    ];
    let mut said = Vec::new();
    for (from, text) in script {
        match from {
            "maya" => maya.say(text),
            "tom" => tom.say(text),
            _ => priya.say(text),
        }
        said.push(format!("{from}: {text}"));
        maya.wait_lines(&said);
        tom.wait_lines(&said);
    }
    maya.wait_until("maya's lines confirmed", CONFIRMED);
    tom.wait_until("tom's lines confirmed", CONFIRMED);

    maya.shot_to(&std::path::Path::new(&dir).join("web-chat.png"));
    tom.shot_to(&std::path::Path::new(&dir).join("web-chat-phone.png"));
    server.stop();
}
