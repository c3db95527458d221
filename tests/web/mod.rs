//! A headless Chromium driven over the DevTools protocol, and the web chat
//! page as the tests see it: sign in, type, read the lines, wait for a
//! condition (bounded polling), and a screenshot of each step.

pub mod server;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Emulation;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};

/// How long any single expectation may wait before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// Time between two looks at the page while waiting for a condition.
const POLL: Duration = Duration::from_millis(50);

/// One browser test at a time: each starts its own Chromium, and several
/// at once on a small machine only make each of them slow.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A headless Chromium for one test, and where its screenshots go.
pub struct Chrome {
    browser: Browser,
    shots: PathBuf,
    count: AtomicUsize,
    _turn: MutexGuard<'static, ()>,
}

impl Chrome {
    /// Starts Chromium (headless, `--no-sandbox` when root, nothing beyond
    /// loopback) for the test `name`, or `None` when no browser is installed
    /// and this is not CI (`CI=true` makes a missing browser a failure).
    pub fn start(name: &str) -> Option<Chrome> {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let path = match headless_chrome::browser::default_executable() {
            Ok(path) => path,
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipped: no Chromium ({e}); scripts/ensure-chromium.sh installs it");
                return None;
            }
            Err(e) => panic!("no Chromium under CI=true ({e}): run scripts/ensure-chromium.sh"),
        };
        let shots = tempfile::Builder::new()
            .prefix(&format!("herald-browser-{name}-"))
            .tempdir()
            .expect("a temporary directory")
            .keep();
        println!("{name}: screenshots in {}", shots.display());
        // SAFETY: getuid has no preconditions and cannot fail.
        let root = unsafe { libc::getuid() } == 0;
        let args = [
            "--disable-component-update",
            "--disable-domain-reliability",
            "--no-default-browser-check",
            "--no-proxy-server",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--lang=en-GB",
            "--hide-scrollbars",
        ];
        let options = LaunchOptions {
            headless: true,
            sandbox: !root,
            path: Some(path),
            window_size: Some((1280, 800)),
            idle_browser_timeout: Duration::from_secs(300),
            args: args.iter().map(OsStr::new).collect(),
            ..LaunchOptions::default()
        };
        let browser = Browser::new(options).expect("start Chromium");
        Some(Chrome {
            browser,
            shots,
            count: AtomicUsize::new(0),
            _turn: turn,
        })
    }

    /// A new tab in a browser profile of its own (own storage): another
    /// person, or the same person on another device.
    pub fn person(&self, name: &str) -> Page<'_> {
        let context = self.browser.new_context().expect("a browser context");
        let tab = context.new_tab().expect("a tab");
        Page {
            chrome: self,
            tab,
            context: Some(context.get_id().to_owned()),
            name: name.to_owned(),
        }
    }

    /// A new tab in the same profile as `page` (same storage), as when a
    /// closed tab is opened again.
    pub fn reopen(&self, page: &Page<'_>, name: &str) -> Page<'_> {
        let context = page.context.clone().expect("a page with a context");
        let tab = headless_chrome::browser::context::Context::new(&self.browser, context.clone())
            .new_tab()
            .expect("a tab");
        Page {
            chrome: self,
            tab,
            context: Some(context),
            name: name.to_owned(),
        }
    }

    /// Where the next screenshot goes.
    fn shot_path(&self, label: &str) -> PathBuf {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.shots.join(format!("{n:02}-{label}.png"))
    }
}

/// One tab showing the chat page.
pub struct Page<'a> {
    chrome: &'a Chrome,
    /// The DevTools handle of the tab.
    pub tab: Arc<Tab>,
    context: Option<String>,
    name: String,
}

impl Page<'_> {
    /// Loads `url` and waits for the page's script to have run.
    pub fn open(&self, url: &str) -> &Self {
        self.tab.navigate_to(url).expect("navigate");
        self.tab.wait_until_navigated().expect("page load");
        self.wait_until(
            "the page is ready",
            "!!document.getElementById('login-view')",
        );
        self
    }

    /// Signs in from the keyboard: the id, Tab, the secret, Enter.
    pub fn sign_in(&self, id: &str, secret: &str) -> &Self {
        self.wait_until(
            "the sign-in form",
            "!document.getElementById('login-view').hidden",
        );
        self.tab
            .find_element("#login-id")
            .expect("id field")
            .focus()
            .expect("focus");
        self.eval("document.getElementById('login-id').select(); true");
        self.tab.type_str(id).expect("type the id");
        self.tab.press_key("Tab").expect("tab to the secret");
        self.wait_until(
            "focus on the secret field",
            "document.activeElement.id === 'login-secret'",
        );
        self.tab.type_str(secret).expect("type the secret");
        self.tab.press_key("Enter").expect("press Enter");
        self
    }

    /// Signs in and waits until the page says it is online.
    pub fn join(&self, id: &str) -> &Self {
        self.sign_in(id, "");
        self.wait_online();
        self
    }

    /// Waits until the status indicator says online.
    pub fn wait_online(&self) {
        self.wait_until(
            "status online",
            "document.getElementById('status').dataset.state === 'online'",
        );
    }

    /// Types `text` into the message box and presses Enter.
    pub fn say(&self, text: &str) {
        let focused = "document.activeElement.id === 'message-input'";
        if !self.eval(focused).as_bool().unwrap_or(false) {
            self.tab
                .find_element("#message-input")
                .expect("message box")
                .focus()
                .expect("focus");
        }
        self.tab.type_str(text).expect("type");
        self.tab.press_key("Enter").expect("press Enter");
    }

    /// The lines shown, top to bottom, as `from: text`.
    pub fn lines(&self) -> Vec<String> {
        self.line_details().into_iter().map(|l| l.shown).collect()
    }

    /// The lines shown, top to bottom, with their attributes.
    pub fn line_details(&self) -> Vec<Line> {
        let js =
            "JSON.stringify([...document.querySelectorAll('#log li[data-kind=msg]')].map(li => \
                  [li.querySelector('.body').textContent, li.dataset.state, li.dataset.mine, \
                  li.dataset.seq || '', li.querySelector('time').textContent]))";
        let json = self.eval(js);
        let rows: Vec<[String; 5]> =
            serde_json::from_str(json.as_str().expect("a JSON string")).expect("lines as JSON");
        rows.into_iter()
            .map(|[shown, state, mine, seq, time]| Line {
                shown,
                state,
                mine: mine == "true",
                seq: seq.parse().ok(),
                time,
            })
            .collect()
    }

    /// Waits until exactly `want` is shown (bounded), and returns it.
    pub fn wait_lines(&self, want: &[String]) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.lines();
            if got == want {
                return;
            }
            if Instant::now() >= deadline {
                self.shot("timeout");
                panic!("{}: expected lines {want:#?}\ngot {got:#?}", self.name);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Evaluates a JavaScript expression in the page.
    pub fn eval(&self, js: &str) -> serde_json::Value {
        let result = self.tab.evaluate(js, false).expect("evaluate");
        result.value.unwrap_or(serde_json::Value::Null)
    }

    /// Waits (bounded) until the JavaScript expression `js` is true.
    pub fn wait_until(&self, what: &str, js: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.eval(js).as_bool() == Some(true) {
                return;
            }
            if Instant::now() >= deadline {
                self.shot("timeout");
                panic!("{}: timed out waiting for {what} ({js})", self.name);
            }
            std::thread::sleep(POLL);
        }
    }

    /// The text of the element with this id.
    pub fn text_of(&self, id: &str) -> String {
        let js = format!("document.getElementById('{id}').textContent");
        self.eval(&js).as_str().unwrap_or_default().to_owned()
    }

    /// Saves a screenshot of the tab as the next step, and says where.
    pub fn shot(&self, label: &str) -> PathBuf {
        let path = self.chrome.shot_path(&format!("{}-{label}", self.name));
        self.shot_to(&path);
        path
    }

    /// Makes the tab's viewport `width` × `height` CSS pixels at `scale`
    /// device pixels each, as a phone (`mobile`) or a desktop window.
    pub fn emulate(&self, width: u32, height: u32, scale: f64, mobile: bool) -> &Self {
        self.tab
            .call_method(Emulation::SetDeviceMetricsOverride {
                width,
                height,
                device_scale_factor: scale,
                mobile,
                scale: None,
                screen_width: None,
                screen_height: None,
                position_x: None,
                position_y: None,
                dont_set_visible_size: None,
                screen_orientation: None,
                viewport: None,
                display_feature: None,
                device_posture: None,
            })
            .expect("set the viewport");
        self
    }

    /// Saves a screenshot of the tab at `path`.
    pub fn shot_to(&self, path: &std::path::Path) {
        let png = self
            .tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .expect("screenshot");
        std::fs::write(path, png).expect("write the screenshot");
        println!("screenshot: {}", path.display());
    }

    /// Reloads the tab (as the user pressing F5).
    pub fn reload(&self) {
        self.tab.reload(false, None).expect("reload");
        self.tab.wait_until_navigated().expect("page load");
    }

    /// Closes the tab, running its `pagehide` handlers; the page's browser
    /// profile stays, for [`Chrome::reopen`].
    pub fn close(&self) {
        self.tab.close(true).expect("close the tab");
    }
}

/// One shown line, as the tests read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// What a person reads: `from: text`.
    pub shown: String,
    /// `received`, `pending`, `sent` or `failed`.
    pub state: String,
    /// Whether this page's own id wrote it.
    pub mine: bool,
    /// The broker's seq, once known.
    pub seq: Option<u64>,
    /// The time shown next to it.
    pub time: String,
}

/// `from: text` for each pair, as the page and the `client` show lines.
pub fn shown(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs.iter().map(|(f, t)| format!("{f}: {t}")).collect()
}
