//! The broker's counters, gauges and histograms, and their text exposition.
//!
//! One [`Metrics`] per running broker (no global: brokers started side by
//! side in one process keep their own counts), shared by `Arc` with the
//! registry, the sessions and the store actor, which update it, and the
//! admin listener, which encodes it for `GET /metrics`.
//!
//! Updates are atomic adds and stores on metrics created up front: every
//! label value (each transport, each refusal reason) gets its series when
//! the struct is built, so no update takes a lock or allocates. The two
//! histograms take a short lock per observation; they are observed once per
//! store commit (a batch), never per message. See docs/metrics.md.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::net::transport::TransportKind;
use crate::net::ByeReason;

/// Every transport, in the order of the per-transport arrays.
const TRANSPORTS: [TransportKind; 4] = [
    TransportKind::Tcp,
    TransportKind::Tls,
    TransportKind::Ws,
    TransportKind::Wss,
];

/// Every reason a login is refused for, in the order of the refusal
/// counters: the `BYE` reasons a refused login can get.
const REFUSALS: [ByeReason; 4] = [
    ByeReason::UnknownClient,
    ByeReason::AuthFailed,
    ByeReason::Limit,
    ByeReason::Shutdown,
];

/// The `reason` label of a refusal: its `BYE` reason with `_` for `-`.
fn refusal_label(reason: ByeReason) -> &'static str {
    match reason {
        ByeReason::UnknownClient => "unknown_client",
        ByeReason::AuthFailed => "auth_failed",
        ByeReason::Limit => "limit",
        ByeReason::Shutdown => "shutdown",
        ByeReason::Quit => "quit",
        ByeReason::Replaced => "replaced",
        ByeReason::Idle => "idle",
    }
}

fn transport_index(kind: TransportKind) -> usize {
    match kind {
        TransportKind::Tcp => 0,
        TransportKind::Tls => 1,
        TransportKind::Ws => 2,
        TransportKind::Wss => 3,
    }
}

/// A label set of one pair.
type Label = [(&'static str, &'static str); 1];

/// The content type of [`Metrics::encode_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`Metrics::encode_prometheus_text`].
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The broker's metrics; see docs/metrics.md for each one's meaning.
pub struct Metrics {
    registry: Registry,
    connections_open: [Gauge; 4],
    connections_accepted: [Counter; 4],
    login_refusals: [Counter; 4],
    /// Logins welcomed (`WELCOME` written).
    pub logins: Counter,
    /// Secret checks that failed.
    pub auth_failures: Counter,
    /// Messages stored by this node's commits.
    pub messages_stored: Counter,
    /// `MSG` frames written to connections.
    pub deliveries: Counter,
    /// Bytes read from connections (inside TLS or WebSocket framing).
    pub received_bytes: Counter,
    /// Bytes written to connections (inside TLS or WebSocket framing).
    pub sent_bytes: Counter,
    /// How long each store commit took, in seconds.
    pub commit_duration: Histogram,
    /// Messages per store commit.
    pub commit_batch: Histogram,
    /// Sessions whose reading is paused because their client outpaces them.
    pub sessions_paused: Gauge,
    /// Sessions still replaying the backlog they logged in with.
    pub sessions_replaying: Gauge,
    /// The highest committed seq this node knows.
    pub head_seq: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers a family with one label and returns a series per value.
fn labelled<M, const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    key: &'static str,
    values: [&'static str; N],
) -> [M; N]
where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
{
    let family = Family::<Label, M>::default();
    registry.register(name, help, family.clone());
    values.map(|v| family.get_or_create(&[(key, v)]).clone())
}

impl Metrics {
    /// Every metric at zero, each label value with its series.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("herald");
        let transports = TRANSPORTS.map(TransportKind::label);
        let connections_open = labelled(
            &mut registry,
            "connections_open",
            "Connections open now, by transport",
            "transport",
            transports,
        );
        let connections_accepted = labelled(
            &mut registry,
            "connections_accepted",
            "Connections accepted and given a session, by transport",
            "transport",
            transports,
        );
        let login_refusals = labelled(
            &mut registry,
            "login_refusals",
            "Logins refused, by the BYE reason they got",
            "reason",
            REFUSALS.map(refusal_label),
        );
        let m = Metrics {
            connections_open,
            connections_accepted,
            login_refusals,
            logins: Counter::default(),
            auth_failures: Counter::default(),
            messages_stored: Counter::default(),
            deliveries: Counter::default(),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            // 0.1 ms to about 1.6 s, doubling.
            commit_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            // 1 to 4096 messages (the largest batch by default), doubling.
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            sessions_paused: Gauge::default(),
            sessions_replaying: Gauge::default(),
            head_seq: Gauge::default(),
            registry,
        };
        m.register_unlabelled()
    }

    fn register_unlabelled(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register("logins", "Logins welcomed", self.logins.clone());
        r.register(
            "auth_failures",
            "Secret checks that failed (wrong or missing secret, or an unknown id with a secrets file)",
            self.auth_failures.clone(),
        );
        r.register(
            "messages_stored",
            "Messages stored by this node's commits (resends of a stored message id not counted)",
            self.messages_stored.clone(),
        );
        r.register(
            "deliveries",
            "MSG frames written to connections",
            self.deliveries.clone(),
        );
        r.register_with_unit(
            "received",
            "Bytes read from connections, inside TLS or WebSocket framing",
            Unit::Bytes,
            self.received_bytes.clone(),
        );
        r.register_with_unit(
            "sent",
            "Bytes written to connections, inside TLS or WebSocket framing",
            Unit::Bytes,
            self.sent_bytes.clone(),
        );
        r.register_with_unit(
            "commit_duration",
            "Time of one store commit (one batch), successful or not",
            Unit::Seconds,
            self.commit_duration.clone(),
        );
        r.register(
            "commit_batch_messages",
            "Messages in one store commit",
            self.commit_batch.clone(),
        );
        r.register(
            "sessions_paused",
            "Sessions whose reading is paused until their replies are written or their SENDs answered",
            self.sessions_paused.clone(),
        );
        r.register(
            "sessions_replaying",
            "Logged-in sessions not yet pushed every message that was committed when they logged in",
            self.sessions_replaying.clone(),
        );
        r.register(
            "head_seq",
            "Highest committed seq this node knows",
            self.head_seq.clone(),
        );
        self
    }

    /// A connection over `kind` got a session.
    pub fn connection_opened(&self, kind: TransportKind) {
        self.connections_accepted[transport_index(kind)].inc();
        self.connections_open[transport_index(kind)].inc();
    }

    /// A connection over `kind` that [`Metrics::connection_opened`] counted
    /// has closed.
    pub fn connection_closed(&self, kind: TransportKind) {
        self.connections_open[transport_index(kind)].dec();
    }

    /// A login was refused with `BYE reason`.
    pub fn login_refused(&self, reason: ByeReason) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.login_refusals[i].inc();
        }
    }

    /// Connections open now over `kind`.
    pub fn connections_open(&self, kind: TransportKind) -> i64 {
        self.connections_open[transport_index(kind)].get()
    }

    /// Logins refused with `BYE reason` so far.
    pub fn login_refusals(&self, reason: ByeReason) -> u64 {
        REFUSALS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.login_refusals[i].get())
    }

    /// Counts a session in the replaying gauge until the guard is dropped.
    pub fn replaying(&self) -> GaugeGuard {
        self.sessions_replaying.inc();
        GaugeGuard(self.sessions_replaying.clone())
    }

    /// A store commit of `messages` took `seconds`.
    pub fn commit_done(&self, messages: usize, seconds: f64) {
        self.commit_duration.observe(seconds);
        self.commit_batch.observe(messages as f64);
    }

    /// Every metric in the OpenMetrics text format (what Prometheus asks
    /// for first), ending with `# EOF`.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail; metrics are all well formed.
        if let Err(e) = encode(&mut out, &self.registry) {
            log::error!("cannot encode the metrics: {e}");
        }
        out
    }

    /// Every metric in the Prometheus text format 0.0.4, for scrapers that
    /// do not ask for OpenMetrics: the same samples, with each counter's
    /// `HELP` and `TYPE` naming its `_total` series, and no `UNIT` or `EOF`.
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode_openmetrics())
    }
}

/// One unit of a gauge, given back when dropped: whatever ends the thing
/// counted (a state change, or the removal of what holds the guard) cannot
/// forget to count it out.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4 (see
/// [`Metrics::encode_prometheus_text`]).
fn openmetrics_to_prometheus_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series` (name with labels) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_series_is_there_at_zero_from_the_start() {
        let m = Metrics::new();
        let text = m.encode_openmetrics();
        for t in ["tcp", "tls", "ws", "wss"] {
            let open = format!("herald_connections_open{{transport=\"{t}\"}}");
            assert_eq!(sample(&text, &open), Some(0.0), "{open} in\n{text}");
            let accepted = format!("herald_connections_accepted_total{{transport=\"{t}\"}}");
            assert_eq!(sample(&text, &accepted), Some(0.0), "{accepted}");
        }
        for r in ["unknown_client", "auth_failed", "limit", "shutdown"] {
            let s = format!("herald_login_refusals_total{{reason=\"{r}\"}}");
            assert_eq!(sample(&text, &s), Some(0.0), "{s}");
        }
        for s in [
            "herald_logins_total",
            "herald_auth_failures_total",
            "herald_messages_stored_total",
            "herald_deliveries_total",
            "herald_received_bytes_total",
            "herald_sent_bytes_total",
            "herald_commit_duration_seconds_count",
            "herald_commit_batch_messages_count",
            "herald_sessions_paused",
            "herald_sessions_replaying",
            "herald_head_seq",
        ] {
            assert_eq!(sample(&text, s), Some(0.0), "{s} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn updates_show_in_their_own_series_only() {
        let m = Metrics::new();
        m.connection_opened(TransportKind::Tls);
        m.connection_opened(TransportKind::Tls);
        m.connection_opened(TransportKind::Tcp);
        m.connection_closed(TransportKind::Tls);
        m.login_refused(ByeReason::AuthFailed);
        m.login_refused(ByeReason::Quit); // not a refusal reason: ignored
        m.deliveries.inc_by(7);
        m.head_seq.set(42);
        m.commit_done(3, 0.0015);
        let text = m.encode_openmetrics();
        let open = |t: &str| {
            sample(
                &text,
                &format!("herald_connections_open{{transport=\"{t}\"}}"),
            )
        };
        assert_eq!(open("tls"), Some(1.0));
        assert_eq!(open("tcp"), Some(1.0));
        assert_eq!(open("ws"), Some(0.0));
        assert_eq!(
            sample(
                &text,
                "herald_connections_accepted_total{transport=\"tls\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "herald_login_refusals_total{reason=\"auth_failed\"}"),
            Some(1.0)
        );
        assert_eq!(m.login_refusals(ByeReason::AuthFailed), 1);
        assert_eq!(m.connections_open(TransportKind::Tls), 1);
        assert_eq!(sample(&text, "herald_deliveries_total"), Some(7.0));
        assert_eq!(sample(&text, "herald_head_seq"), Some(42.0));
        assert_eq!(sample(&text, "herald_commit_batch_messages_sum"), Some(3.0));
        // 1.5 ms is above the 0.8 ms bucket and within the 1.6 ms one.
        assert_eq!(
            sample(
                &text,
                "herald_commit_duration_seconds_bucket{le=\"0.0008\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "herald_commit_duration_seconds_bucket{le=\"0.0016\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn a_gauge_guard_counts_until_dropped() {
        let m = Metrics::new();
        let a = m.replaying();
        let b = m.replaying();
        assert_eq!(m.sessions_replaying.get(), 2);
        drop(a);
        assert_eq!(m.sessions_replaying.get(), 1);
        drop(b);
        assert_eq!(m.sessions_replaying.get(), 0);
    }

    #[test]
    fn two_instances_keep_their_own_counts() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.logins.inc();
        assert_eq!(a.logins.get(), 1);
        assert_eq!(b.logins.get(), 0);
    }

    #[test]
    fn prometheus_text_names_counters_by_their_total_series() {
        let m = Metrics::new();
        m.logins.inc_by(2);
        let text = m.encode_prometheus_text();
        assert!(
            text.contains("# TYPE herald_logins_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP herald_logins_total Logins welcomed"),
            "{text}"
        );
        assert!(text.contains("\nherald_logins_total 2\n"), "{text}");
        assert!(text.contains("# TYPE herald_head_seq gauge\n"));
        assert!(text.contains("# TYPE herald_commit_duration_seconds histogram\n"));
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("# UNIT"));
        // Every sample's name has a TYPE line naming it (or, for a
        // histogram, its family).
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                typed.contains(&name) || typed.contains(&family),
                "{line} has no TYPE"
            );
        }
    }
}
