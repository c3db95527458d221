//! A private PostgreSQL 15 server for one test binary: `initdb` in a
//! temporary directory, `postgres` on a free loopback port (as the
//! `postgres` user when the tests run as root, since PostgreSQL refuses
//! root), one database per test, and a stop on drop.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's PostgreSQL 15 keeps its programs.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long the server may take to start or stop.
const PG_DEADLINE: Duration = Duration::from_secs(30);

/// A running private PostgreSQL server.
pub struct PgServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    next_db: std::sync::atomic::AtomicU32,
}

/// The uid and gid of the `postgres` user, when this process is root.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: plain libc calls; getpwnam's result is read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "tests run as root but there is no `postgres` user to run PostgreSQL as"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn command(program: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(Path::new(BIN).join(program));
    cmd.current_dir(dir).stdin(Stdio::null());
    if let Some((uid, gid)) = run_as() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl PgServer {
    /// Initialises and starts a server; fails the test with a clear message
    /// when PostgreSQL 15 is not installed.
    pub fn start() -> PgServer {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "PostgreSQL 15 is not installed ({BIN}/initdb is missing); \
             run scripts/ensure-postgres.sh (apt-get install postgresql-15)"
        );
        let dir = tempfile::tempdir().unwrap();
        if let Some((uid, gid)) = run_as() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        if let Some((uid, gid)) = run_as() {
            std::os::unix::fs::chown(dir.path().join("sock"), Some(uid), Some(gid)).unwrap();
        }
        let out = command("initdb", dir.path())
            .args(["-D", "data", "-A", "trust", "-U", "postgres", "-E", "UTF8"])
            .arg("--no-sync")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PgServer {
            port: free_port(),
            dir,
            child: None,
            next_db: std::sync::atomic::AtomicU32::new(0),
        };
        pg.run();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the postmaster and waits until it accepts connections; after a
    /// kill -9 its old backends may hold its shared memory for a moment, so
    /// a start that exits at once is tried again, within the deadline.
    pub fn run(&mut self) {
        let deadline = Instant::now() + PG_DEADLINE;
        loop {
            let port = self.port.to_string();
            let sock = self.dir.path().join("sock");
            let mut child = command("postgres", self.dir.path())
                .args([
                    "-D",
                    "data",
                    "-p",
                    &port,
                    "-k",
                    sock.to_str().unwrap(),
                    "-h",
                    "127.0.0.1",
                ])
                // A kill -9 of a process keeps the page cache: fsync would
                // only slow the tests down.
                .args(["-c", "fsync=off", "-c", "max_connections=50"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if self.ready() {
                    self.child = Some(child);
                    return;
                }
                assert!(Instant::now() < deadline, "PostgreSQL did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ready(&self) -> bool {
        Command::new(Path::new(BIN).join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` in database `db`, on a thread of its own (the blocking
    /// client must not run inside a test's async runtime).
    pub fn execute(&self, db: &str, sql: &str) {
        let (url, sql) = (self.url(db), sql.to_owned());
        std::thread::spawn(move || {
            postgres::Client::connect(&url, postgres::NoTls)
                .unwrap()
                .batch_execute(&sql)
                .unwrap();
        })
        .join()
        .unwrap();
    }

    /// Creates a new, empty database and returns its URL.
    pub fn new_database(&self) -> String {
        let n = self
            .next_db
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("t{n}");
        self.execute("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Kills the postmaster with SIGKILL and waits for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGINT);
            }
            let deadline = Instant::now() + PG_DEADLINE;
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
