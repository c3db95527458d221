//! Wake-ups from the other nodes: a thread of its own, with a connection
//! of its own, that `LISTEN`s on `herald_log` (a batch was committed) and
//! `herald_sessions` (a login claimed a session) and tells the registry,
//! one [`Wake`] per burst and kind rather than one per `NOTIFY`.
//!
//! Notifications sent while the connection is down are gone for good, so
//! after every (re)connect the registry gets [`Wake::Reconnected`] and
//! looks at both. A lost wake-up only delays: the registry also looks every
//! 250 ms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::prelude::*;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Notification};

use super::conn::{self, one_line, Backoff};
use crate::store::{StoreError, Wake};

/// How long the thread waits for a notification before it looks at its
/// stop flag again: the longest a stop waits for it while connected.
const POLL: Duration = Duration::from_millis(200);

/// How long one connection attempt may take: a stop waits at most this
/// long for an attempt under way.
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The channel committed batches are announced on.
pub(super) const LOG_CHANNEL: &str = "herald_log";
/// The channel session claims are announced on.
pub(super) const SESSIONS_CHANNEL: &str = "herald_sessions";

/// The running listener thread; stopping it (or dropping this) ends the
/// thread and waits for it.
#[derive(Debug)]
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Starts listening on the database at `url` for `wake`. Connecting
    /// happens on the new thread, with backoff: the database may be away
    /// now and come back later.
    pub fn start(url: &str, wake: Recipient<Wake>) -> Result<Listener, StoreError> {
        let mut config = conn::config(url)?;
        config.connect_timeout(LISTEN_CONNECT_TIMEOUT);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("herald-listen".into())
            .spawn(move || run(&config, &wake, &flag))?;
        Ok(Listener {
            stop,
            thread: Some(thread),
        })
    }

    /// Ends the thread and waits for it: about [`POLL`] while connected, at
    /// most one connection attempt otherwise.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the database listener thread failed");
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Why serving one connection ended.
enum Ended {
    /// Told to stop, or nobody takes wake-ups any more.
    Stopped,
    /// The connection broke.
    Broken(String),
}

/// The thread: connect, listen, reconnect with backoff, until stopped.
fn run(config: &postgres::Config, wake: &Recipient<Wake>, stop: &AtomicBool) {
    let mut backoff = Backoff::new();
    // The database is known to be away (said once, until it is back).
    let mut away = false;
    while !stop.load(Ordering::Relaxed) {
        match listen(config) {
            Ok(mut client) => {
                backoff.reset();
                if away {
                    // Said once; `away` is set again when this one breaks.
                    log::info!("the wake-up connection to the database is back");
                }
                if !tell(wake, Wake::Reconnected) {
                    return;
                }
                match serve(&mut client, wake, stop) {
                    Ended::Stopped => return,
                    Ended::Broken(why) => {
                        log::warn!(
                            "lost the wake-up connection to the database ({why}); reconnecting with backoff"
                        );
                        away = true;
                    }
                }
            }
            Err(e) => {
                if !away {
                    log::warn!(
                        "cannot open the wake-up connection to the database ({}); retrying with backoff",
                        one_line(&e)
                    );
                    away = true;
                }
                pause(backoff.failed(), stop);
            }
        }
    }
}

/// A connection that listens on both channels.
fn listen(config: &postgres::Config) -> Result<Client, postgres::Error> {
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {LOG_CHANNEL}; LISTEN {SESSIONS_CHANNEL}"))?;
    Ok(client)
}

/// Sleeps `wait`, looking at the stop flag every [`POLL`].
fn pause(wait: Duration, stop: &AtomicBool) {
    let until = Instant::now() + wait;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(POLL));
    }
}

/// The kinds of wake-up one burst of notifications asks for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Burst {
    log: bool,
    sessions: bool,
}

impl Burst {
    fn add(&mut self, n: &Notification) {
        match n.channel() {
            LOG_CHANNEL => self.log = true,
            SESSIONS_CHANNEL => self.sessions = true,
            _ => {}
        }
    }

    fn wakes(self) -> impl Iterator<Item = Wake> {
        [(self.log, Wake::Log), (self.sessions, Wake::Sessions)]
            .into_iter()
            .filter_map(|(on, w)| on.then_some(w))
    }
}

/// Waits for notifications and passes each burst on, until stopped or the
/// connection breaks.
fn serve(client: &mut Client, wake: &Recipient<Wake>, stop: &AtomicBool) -> Ended {
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ended::Stopped;
        }
        let burst = match next_burst(client) {
            Ok(b) => b,
            Err(e) => return Ended::Broken(one_line(&e)),
        };
        if burst == Burst::default() && client.is_closed() {
            return Ended::Broken("the connection closed".into());
        }
        for w in burst.wakes() {
            if !tell(wake, w) {
                return Ended::Stopped;
            }
        }
    }
}

/// Waits up to [`POLL`] for a notification, then takes every one already
/// received too.
fn next_burst(client: &mut Client) -> Result<Burst, postgres::Error> {
    let mut burst = Burst::default();
    let mut notifications = client.notifications();
    let first = notifications.timeout_iter(POLL).next()?;
    if let Some(n) = first {
        burst.add(&n);
        let mut pending = notifications.iter();
        while let Some(n) = pending.next()? {
            burst.add(&n);
        }
    }
    Ok(burst)
}

/// Sends `w`; false when the registry is gone.
fn tell(wake: &Recipient<Wake>, w: Wake) -> bool {
    match wake.try_send(w) {
        Ok(()) => true,
        // A full mailbox still takes it: a wake-up must not be dropped.
        Err(SendError::Full(w)) => {
            wake.do_send(w);
            true
        }
        Err(SendError::Closed(_)) => false,
    }
}
