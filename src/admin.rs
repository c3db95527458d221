//! The admin listener (`--admin-bind`): `GET /metrics`, `GET /healthz` and
//! `GET /readyz` over plain HTTP, for a scraper and a load balancer on a
//! private network. It has no authentication and must never be exposed
//! (see docs/metrics.md).
//!
//! It runs as an actix-web server with one worker thread in the broker's
//! actix System, started and stopped by [`crate::server`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};
use crate::store::{Probe, StoreActor};

/// How long `/readyz` waits for the store's answer: a store stuck in a
/// commit (or a database that does not answer) is "not ready", not a hung
/// probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections the admin listener serves at once (more wait in the
/// kernel's queue).
const MAX_CONNECTIONS: usize = 64;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// The store actor, asked for [`Probe`] by `/readyz`.
    pub store: Addr<StoreActor>,
    /// Whether the broker's listeners accept connections (false before the
    /// accept loop runs and once a shutdown began).
    pub accepting: Arc<AtomicBool>,
}

/// `GET /metrics`: OpenMetrics when the scraper asks for it (Prometheus
/// does), the Prometheus text format 0.0.4 otherwise.
async fn metrics(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    let openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (state.metrics.encode_openmetrics(), OPENMETRICS_CONTENT_TYPE)
    } else {
        (
            state.metrics.encode_prometheus_text(),
            PROMETHEUS_TEXT_CONTENT_TYPE,
        )
    };
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .body(body)
}

/// `GET /healthz`: the process serves HTTP, so it is alive.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok\n")
}

/// Why the broker is not ready, or `None` when it is: its listeners accept
/// connections and the store answers a [`Probe`] within [`PROBE_TIMEOUT`].
pub async fn not_ready(state: &AdminState) -> Option<String> {
    if !state.accepting.load(Ordering::Acquire) {
        return Some("not accepting connections".into());
    }
    match state.store.send(Probe).timeout(PROBE_TIMEOUT).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("the store cannot commit: {e}")),
        Err(actix::MailboxError::Timeout) => Some(format!(
            "the store did not answer within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
        Err(actix::MailboxError::Closed) => Some("the store has stopped".into()),
    }
}

/// `GET /readyz`: 200 `ready`, or 503 with one line saying why not.
async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    match not_ready(&state).await {
        None => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body("ready\n"),
        Some(why) => {
            let line = why.replace(['\r', '\n'], " ");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body(format!("not ready: {line}\n"))
        }
    }
}

/// Starts the admin server on `listener` (bound already); the caller
/// spawns the returned server and stops it through its handle.
pub fn start(
    listener: std::net::TcpListener,
    state: AdminState,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    // A scrape now and then: one thread and a few connections are plenty.
    // Signals are the broker's to handle; it stops this server after its
    // sessions.
    .workers(1)
    .max_connections(MAX_CONNECTIONS)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Message;
    use crate::store::{
        Appended, MemoryStore, MidPolicy, NewMessage, Recovered, Store, StoreError,
    };
    use crate::types::{ClientId, Seq};
    use actix::SyncArbiter;

    /// A memory store whose probe takes `probe_time` and then says `fails`.
    struct Probed {
        inner: MemoryStore,
        probe_time: Duration,
        fails: bool,
    }

    impl Store for Probed {
        fn recover(&mut self) -> Result<Recovered, StoreError> {
            self.inner.recover()
        }
        fn append(&mut self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
            self.inner.append(batch)
        }
        fn forget_mids(&mut self, c: &[(ClientId, Seq)], p: &MidPolicy) -> Result<(), StoreError> {
            self.inner.forget_mids(c, p)
        }
        fn read_after(
            &mut self,
            after: Seq,
            upto: Seq,
            max: usize,
            max_bytes: usize,
        ) -> Result<Vec<Message>, StoreError> {
            self.inner.read_after(after, upto, max, max_bytes)
        }
        fn first_not_from(
            &mut self,
            after: Seq,
            upto: Seq,
            sender: &ClientId,
        ) -> Result<Option<Seq>, StoreError> {
            self.inner.first_not_from(after, upto, sender)
        }
        fn count_from_others(
            &mut self,
            after: Seq,
            upto: Seq,
            reader: &ClientId,
        ) -> Result<u64, StoreError> {
            self.inner.count_from_others(after, upto, reader)
        }
        fn save_acks(&mut self, acks: &[(ClientId, Seq)]) -> Result<(), StoreError> {
            self.inner.save_acks(acks)
        }
        fn prune(&mut self, upto: Seq) -> Result<u64, StoreError> {
            self.inner.prune(upto)
        }
        fn flush(&mut self) -> Result<(), StoreError> {
            self.inner.flush()
        }
        fn probe(&mut self) -> Result<(), StoreError> {
            std::thread::sleep(self.probe_time);
            match self.fails {
                true => Err(StoreError::Unavailable("the database\nis away".into())),
                false => Ok(()),
            }
        }
    }

    fn state(store: Box<dyn Store>, accepting: bool) -> AdminState {
        let slot = std::sync::Mutex::new(Some(store));
        let store = SyncArbiter::start(1, move || {
            StoreActor::new(slot.lock().ok().and_then(|mut s| s.take()))
        });
        AdminState {
            metrics: Arc::new(Metrics::new()),
            store,
            accepting: Arc::new(AtomicBool::new(accepting)),
        }
    }

    fn probed(probe_time: Duration, fails: bool) -> Box<dyn Store> {
        Box::new(Probed {
            inner: MemoryStore::new(),
            probe_time,
            fails,
        })
    }

    #[actix_rt::test]
    async fn a_memory_store_that_accepts_is_ready() {
        let s = state(Box::new(MemoryStore::new()), true);
        assert_eq!(not_ready(&s).await, None);
    }

    #[actix_rt::test]
    async fn not_accepting_is_not_ready() {
        let s = state(Box::new(MemoryStore::new()), false);
        assert_eq!(
            not_ready(&s).await.as_deref(),
            Some("not accepting connections")
        );
        s.accepting.store(true, Ordering::Release);
        assert_eq!(not_ready(&s).await, None);
    }

    #[actix_rt::test]
    async fn a_failing_probe_says_why() {
        let s = state(probed(Duration::ZERO, true), true);
        let why = not_ready(&s).await.unwrap();
        assert!(
            why.starts_with("the store cannot commit: store unavailable"),
            "{why}"
        );
    }

    #[actix_rt::test]
    async fn a_stuck_store_is_not_ready_rather_than_a_hung_probe() {
        let s = state(probed(PROBE_TIMEOUT + Duration::from_secs(1), false), true);
        let why = not_ready(&s).await.unwrap();
        assert!(why.contains("did not answer within 2 s"), "{why}");
    }
}
