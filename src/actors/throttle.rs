//! Brute-force throttling of secret checks: which waiting login may have its
//! secret checked now, and how long each failure makes the next one wait.
//!
//! Pure bookkeeping over `Instant`s handed in by the caller (so it is tested
//! with made-up clocks); the registry wires it to the verifier threads.
//!
//! Rules:
//! - Failures are counted per origin (an IPv4 address or an IPv6 /64) and,
//!   separately, per client id. After the n-th failure in a row of a key,
//!   no check for that key starts before `failure_delay(n)` has passed, and
//!   while a key has failures at most one check for it runs at a time.
//! - A right secret for id X from origin A clears X's count, and A's count
//!   only if every failure in it was against X (someone mistyping their own
//!   secret); logging in as one id never clears failures against another.
//! - Counts older than [`FAILURE_MEMORY`] are forgotten ([`Throttle::sweep`]
//!   removes them) and each map holds at most [`MAX_TRACKED`] keys.
//! - At most [`MAX_IN_PROGRESS_PER_ORIGIN`] checks wait or run per origin.
//! - Checks never run more at once than there are verifier threads, so a
//!   check is only handed out when a thread is free, and one whose
//!   connection is gone is [`Throttle::cancel`]led before it costs anything.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::messages::SessionId;
use crate::types::ClientId;

/// The wait after the first failure in a row.
pub const FIRST_FAILURE_DELAY: Duration = Duration::from_millis(100);
/// The longest wait, however many failures.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(10);
/// Failures older than this no longer count.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(600);
/// Most checks waiting or running for one origin; more logins are refused.
pub const MAX_IN_PROGRESS_PER_ORIGIN: usize = 4;
/// Most origins, and most client ids, whose failures are remembered.
pub const MAX_TRACKED: usize = 10_000;

/// The wait after the `n`th failure in a row: 100 ms × 2ⁿ⁻¹, at most 10 s.
pub fn failure_delay(n: u32) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    FIRST_FAILURE_DELAY
        .saturating_mul(1 << (n - 1).min(16))
        .min(MAX_FAILURE_DELAY)
}

/// Where a login comes from, as throttling sees it. An IPv6 host usually has
/// a whole /64 to pick addresses from, so that is one origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// An IPv4 address (also one mapped into IPv6).
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Net(u64),
    /// No address known (all such logins share one origin).
    Unknown,
}

impl Origin {
    /// The origin of a peer address.
    pub fn of(ip: Option<IpAddr>) -> Origin {
        match ip {
            Some(IpAddr::V4(v4)) => Origin::V4(v4),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Origin::V4(v4),
                None => Origin::V6Net((u128::from(v6) >> 64) as u64),
            },
            None => Origin::Unknown,
        }
    }
}

/// Failures in a row of one key.
#[derive(Clone, Debug)]
struct Record {
    failures: u32,
    last: Instant,
}

impl Record {
    fn live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) <= FAILURE_MEMORY
    }

    fn not_before(&self) -> Instant {
        self.last + failure_delay(self.failures)
    }

    /// Counts one more failure at `now`, starting over if the last is
    /// forgotten; returns the count.
    fn fail(&mut self, now: Instant) -> u32 {
        if !self.live(now) {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.last = now;
        self.failures
    }
}

/// An origin's failures, and the one id they were all against, if so.
#[derive(Clone, Debug)]
struct OriginRecord {
    record: Record,
    only_id: Option<ClientId>,
}

/// A login waiting for its check.
struct Waiting<T> {
    session: SessionId,
    origin: Origin,
    id: ClientId,
    item: T,
}

/// A check that may start now; the caller runs it and reports
/// [`Throttle::finished`].
#[derive(Debug)]
pub struct Ready<T> {
    /// The session that asked.
    pub session: SessionId,
    /// The id it asked for.
    pub id: ClientId,
    /// What the caller queued with it.
    pub item: T,
}

/// What a finished check leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The larger of the origin's and the id's failures in a row (0 after
    /// a success).
    pub failures: u32,
    /// How long to hold the refusal back, so it comes no sooner than the
    /// next check from that origin or for that id may start.
    pub delay: Duration,
}

/// The throttle: failure counts, waiting checks and running ones.
pub struct Throttle<T> {
    /// Most checks running at once (the verifier's threads).
    workers: usize,
    origins: HashMap<Origin, OriginRecord>,
    ids: HashMap<ClientId, Record>,
    waiting: VecDeque<Waiting<T>>,
    running: HashMap<SessionId, (Origin, ClientId)>,
    /// Waiting plus running checks per origin.
    in_progress: HashMap<Origin, usize>,
}

impl<T> Throttle<T> {
    /// A throttle handing out at most `workers` checks at a time.
    pub fn new(workers: usize) -> Throttle<T> {
        Throttle {
            workers: workers.max(1),
            origins: HashMap::new(),
            ids: HashMap::new(),
            waiting: VecDeque::new(),
            running: HashMap::new(),
            in_progress: HashMap::new(),
        }
    }

    /// Queues a check of `session`'s login as `id`; gives `item` back when
    /// its origin already has [`MAX_IN_PROGRESS_PER_ORIGIN`] in progress.
    pub fn request(
        &mut self,
        session: SessionId,
        origin: Origin,
        id: ClientId,
        item: T,
    ) -> Result<(), T> {
        let n = self.in_progress.entry(origin).or_insert(0);
        if *n >= MAX_IN_PROGRESS_PER_ORIGIN {
            return Err(item);
        }
        *n += 1;
        self.waiting.push_back(Waiting {
            session,
            origin,
            id,
            item,
        });
        Ok(())
    }

    /// Forgets `session`'s waiting check (its connection is gone) and
    /// gives back what was queued with it, if it was waiting; a running
    /// check still ends in `finished`.
    pub fn cancel(&mut self, session: SessionId) -> Option<T> {
        let i = self.waiting.iter().position(|w| w.session == session)?;
        let w = self.waiting.remove(i)?;
        self.release(w.origin);
        Some(w.item)
    }

    /// Takes every waiting check out (the server is stopping); running
    /// ones still end in `finished`.
    pub fn drain_waiting(&mut self) -> Vec<(SessionId, T)> {
        let waiting: Vec<Waiting<T>> = self.waiting.drain(..).collect();
        waiting
            .into_iter()
            .map(|w| {
                self.release(w.origin);
                (w.session, w.item)
            })
            .collect()
    }

    /// The oldest waiting check that may start at `now`, if a worker is free;
    /// it counts as running from here.
    pub fn next(&mut self, now: Instant) -> Option<Ready<T>> {
        if self.running.len() >= self.workers {
            return None;
        }
        let i = self
            .waiting
            .iter()
            .position(|w| self.may_start(w.origin, &w.id, now))?;
        let w = self.waiting.remove(i)?;
        self.running.insert(w.session, (w.origin, w.id.clone()));
        Some(Ready {
            session: w.session,
            id: w.id,
            item: w.item,
        })
    }

    /// The earliest moment after `now` at which a waiting check's wait ends
    /// (checks held only by busy workers or a running check of the same key
    /// are handed out when that ends, so they need no timer).
    pub fn wake_at(&self, now: Instant) -> Option<Instant> {
        self.waiting
            .iter()
            .filter_map(|w| self.not_before(w.origin, &w.id, now))
            .filter(|t| *t > now)
            .min()
    }

    /// Records how `session`'s check ended.
    pub fn finished(&mut self, session: SessionId, ok: bool, now: Instant) -> Verdict {
        let Some((origin, id)) = self.running.remove(&session) else {
            return Verdict {
                failures: 0,
                delay: Duration::ZERO,
            };
        };
        self.release(origin);
        if ok {
            self.ids.remove(&id);
            if self
                .origins
                .get(&origin)
                .is_some_and(|r| r.only_id.as_ref() == Some(&id))
            {
                self.origins.remove(&origin);
            }
            return Verdict {
                failures: 0,
                delay: Duration::ZERO,
            };
        }
        let by_origin = self.fail_origin(origin, &id, now);
        make_room(&mut self.ids, &id, now, |r| r);
        let by_id = self
            .ids
            .entry(id)
            .or_insert(Record {
                failures: 0,
                last: now,
            })
            .fail(now);
        let failures = by_origin.max(by_id);
        Verdict {
            failures,
            delay: failure_delay(failures),
        }
    }

    /// Removes failure counts that are no longer remembered.
    pub fn sweep(&mut self, now: Instant) {
        self.origins.retain(|_, r| r.record.live(now));
        self.ids.retain(|_, r| r.live(now));
    }

    /// How many origins and ids have failures remembered.
    pub fn tracked(&self) -> (usize, usize) {
        (self.origins.len(), self.ids.len())
    }

    fn fail_origin(&mut self, origin: Origin, id: &ClientId, now: Instant) -> u32 {
        make_room(&mut self.origins, &origin, now, |r| &r.record);
        let r = self.origins.entry(origin).or_insert(OriginRecord {
            record: Record {
                failures: 0,
                last: now,
            },
            only_id: Some(id.clone()),
        });
        if !r.record.live(now) {
            r.only_id = Some(id.clone());
        }
        if r.only_id.as_ref() != Some(id) {
            r.only_id = None;
        }
        r.record.fail(now)
    }

    fn release(&mut self, origin: Origin) {
        if let Some(n) = self.in_progress.get_mut(&origin) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_progress.remove(&origin);
            }
        }
    }

    /// When the waits of `origin` and `id` end, if either has one.
    fn not_before(&self, origin: Origin, id: &ClientId, now: Instant) -> Option<Instant> {
        let by_origin = self
            .origins
            .get(&origin)
            .filter(|r| r.record.live(now))
            .map(|r| r.record.not_before());
        let by_id = self
            .ids
            .get(id)
            .filter(|r| r.live(now))
            .map(Record::not_before);
        by_origin.max(by_id)
    }

    fn may_start(&self, origin: Origin, id: &ClientId, now: Instant) -> bool {
        if self.not_before(origin, id, now).is_some_and(|t| t > now) {
            return false;
        }
        let origin_failed = self
            .origins
            .get(&origin)
            .is_some_and(|r| r.record.live(now));
        let id_failed = self.ids.get(id).is_some_and(|r| r.live(now));
        !self
            .running
            .values()
            .any(|(o, i)| (origin_failed && *o == origin) || (id_failed && i == id))
    }
}

/// Makes room for `key` in a full `map`: drops forgotten entries, then, if
/// still full, the one whose last failure is oldest.
fn make_room<K: Eq + Hash + Clone, V>(
    map: &mut HashMap<K, V>,
    key: &K,
    now: Instant,
    record: impl Fn(&V) -> &Record,
) {
    if map.len() < MAX_TRACKED || map.contains_key(key) {
        return;
    }
    map.retain(|_, v| record(v).live(now));
    if map.len() < MAX_TRACKED {
        return;
    }
    let oldest = map
        .iter()
        .min_by_key(|(_, v)| record(v).last)
        .map(|(k, _)| k.clone());
    if let Some(k) = oldest {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const A: Origin = Origin::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: Origin = Origin::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Queues, starts and finishes one check at `now`.
    fn check(t: &mut Throttle<()>, origin: Origin, who: &str, ok: bool, now: Instant) -> Verdict {
        let s = SessionId::next();
        t.request(s, origin, id(who), ()).unwrap();
        let r = t.next(now).expect("a check that may start");
        assert_eq!(r.session, s);
        t.finished(s, ok, now)
    }

    #[test]
    fn the_delay_doubles_from_100_ms_up_to_10_s() {
        assert_eq!(failure_delay(0), Duration::ZERO);
        assert_eq!(failure_delay(1), ms(100));
        assert_eq!(failure_delay(2), ms(200));
        assert_eq!(failure_delay(4), ms(800));
        assert_eq!(failure_delay(7), ms(6400));
        assert_eq!(failure_delay(8), MAX_FAILURE_DELAY);
        assert_eq!(failure_delay(u32::MAX), MAX_FAILURE_DELAY);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_origin_and_mapped_ipv4_is_ipv4() {
        let v6 = |s: &str| Origin::of(Some(IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())));
        assert_eq!(v6("2001:db8::1"), v6("2001:db8::ffff:1234"));
        assert_ne!(v6("2001:db8::1"), v6("2001:db8:0:1::1"));
        assert_eq!(v6("::ffff:10.0.0.1"), A);
        assert_eq!(Origin::of(Some("10.0.0.2".parse().unwrap())), B);
        assert_eq!(Origin::of(None), Origin::Unknown);
    }

    #[test]
    fn after_a_failure_nothing_from_that_origin_starts_before_the_delay() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2);
        assert_eq!(check(&mut t, A, "x", false, t0).delay, ms(100));
        // Another id from the same origin waits, right secret or not.
        let s = SessionId::next();
        t.request(s, A, id("y"), ()).unwrap();
        assert!(t.next(t0 + ms(99)).is_none());
        assert_eq!(t.wake_at(t0 + ms(99)), Some(t0 + ms(100)));
        // Another id from another origin does not.
        assert_eq!(check(&mut t, B, "z", true, t0 + ms(1)).failures, 0);
        let r = t.next(t0 + ms(100)).unwrap();
        assert_eq!(r.session, s);
        t.finished(s, false, t0 + ms(130));
        // The second failure in a row doubles the wait.
        let s = SessionId::next();
        t.request(s, A, id("y"), ()).unwrap();
        assert!(t.next(t0 + ms(329)).is_none());
        assert_eq!(t.next(t0 + ms(330)).unwrap().session, s);
    }

    #[test]
    fn failures_against_an_id_delay_it_from_every_origin() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2);
        check(&mut t, A, "x", false, t0);
        check(&mut t, B, "x", false, t0 + ms(100));
        // B has one failure, x has two: x's 200 ms wait counts, from
        // anywhere, and so the refusal is held that long.
        let c = Origin::V4(Ipv4Addr::new(10, 0, 0, 3));
        let s = SessionId::next();
        t.request(s, c, id("x"), ()).unwrap();
        assert!(t.next(t0 + ms(299)).is_none());
        let r = t.next(t0 + ms(300)).unwrap();
        let v = t.finished(r.session, false, t0 + ms(300));
        assert_eq!(
            v,
            Verdict {
                failures: 3,
                delay: ms(400)
            }
        );
    }

    #[test]
    fn an_origin_with_failures_gets_one_check_at_a_time() {
        let t0 = Instant::now();
        let mut t = Throttle::new(4);
        // A clean origin may use every worker.
        for _ in 0..3 {
            t.request(SessionId::next(), A, id("x"), ()).unwrap();
        }
        let first = t.next(t0).unwrap();
        let second = t.next(t0).unwrap();
        t.finished(first.session, false, t0);
        t.finished(second.session, false, t0);
        // Now it has failures: once its wait is over, one at a time.
        t.request(SessionId::next(), A, id("y"), ()).unwrap();
        let later = t0 + ms(200);
        let running = t.next(later).unwrap();
        assert!(t.next(later).is_none());
        t.finished(running.session, false, later);
        assert!(t.next(later + ms(399)).is_none());
        assert!(t.next(later + ms(400)).is_some());
    }

    #[test]
    fn no_more_checks_run_than_there_are_workers() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2);
        for o in 1..=3 {
            t.request(
                SessionId::next(),
                Origin::V4(Ipv4Addr::new(10, 1, 0, o)),
                id("x"),
                (),
            )
            .unwrap();
        }
        let first = t.next(t0).unwrap();
        assert!(t.next(t0).is_some());
        assert!(t.next(t0).is_none());
        t.finished(first.session, true, t0);
        assert!(t.next(t0).is_some());
    }

    #[test]
    fn an_origin_has_at_most_four_checks_in_progress() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1);
        let sessions: Vec<SessionId> = (0..MAX_IN_PROGRESS_PER_ORIGIN)
            .map(|_| SessionId::next())
            .collect();
        for s in &sessions {
            t.request(*s, A, id("x"), ()).unwrap();
        }
        assert!(t.request(SessionId::next(), A, id("x"), ()).is_err());
        assert!(t.request(SessionId::next(), B, id("x"), ()).is_ok());
        // A cancelled one frees its place, and so does a finished one.
        assert!(t.cancel(sessions[1]).is_some());
        assert!(t.request(SessionId::next(), A, id("x"), ()).is_ok());
        assert!(t.request(SessionId::next(), A, id("x"), ()).is_err());
        let r = t.next(t0).unwrap();
        assert!(t.request(SessionId::next(), A, id("x"), ()).is_err());
        t.finished(r.session, true, t0);
        assert!(t.request(SessionId::next(), A, id("x"), ()).is_ok());
    }

    #[test]
    fn a_cancelled_check_is_never_handed_out() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2);
        let (gone, stays) = (SessionId::next(), SessionId::next());
        t.request(gone, A, id("x"), ()).unwrap();
        t.request(stays, A, id("x"), ()).unwrap();
        assert!(t.cancel(gone).is_some());
        assert!(t.cancel(gone).is_none());
        assert_eq!(t.next(t0).unwrap().session, stays);
        assert!(t.next(t0).is_none());
        assert_eq!(t.wake_at(t0), None);
    }

    #[test]
    fn a_success_clears_its_id_and_an_origin_that_only_failed_on_it() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2);
        // Mistyping one's own secret, then getting it right: all clear.
        check(&mut t, A, "x", false, t0);
        check(&mut t, A, "x", false, t0 + ms(100));
        check(&mut t, A, "x", true, t0 + ms(300));
        assert_eq!(t.tracked(), (0, 0));
        // Guessing x, then logging in as y from the same origin: y's
        // success clears neither the origin nor x.
        check(&mut t, A, "x", false, t0 + ms(300));
        check(&mut t, A, "y", false, t0 + ms(400));
        check(&mut t, A, "y", true, t0 + ms(600));
        assert_eq!(t.tracked(), (1, 1));
        let v = check(&mut t, A, "x", false, t0 + ms(1000));
        assert_eq!(v.failures, 3);
        // A success of x from elsewhere, once its wait is over, clears x but
        // not A.
        check(&mut t, B, "x", true, t0 + ms(1200));
        assert_eq!(t.tracked(), (1, 0));
    }

    #[test]
    fn old_failures_are_forgotten_and_swept() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2);
        check(&mut t, A, "x", false, t0);
        check(&mut t, B, "y", false, t0 + ms(1));
        assert_eq!(t.tracked(), (2, 2));
        t.sweep(t0 + FAILURE_MEMORY);
        assert_eq!(t.tracked(), (2, 2));
        let late = t0 + FAILURE_MEMORY + ms(1);
        // Forgotten counts start over even before the sweep.
        assert_eq!(check(&mut t, A, "x", false, late).failures, 1);
        t.sweep(late + ms(1));
        assert_eq!(t.tracked(), (1, 1));
    }

    #[test]
    fn the_maps_stay_within_their_bound_in_entries_and_bytes() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1);
        for i in 0..=MAX_TRACKED as u32 {
            let o = Origin::V4(Ipv4Addr::from(i));
            let who = format!("{:064}", i);
            check(&mut t, o, &who, false, t0 + ms(u64::from(i)));
        }
        assert_eq!(t.tracked(), (MAX_TRACKED, MAX_TRACKED));
        // The oldest went to make room.
        assert!(!t.origins.contains_key(&Origin::V4(Ipv4Addr::from(0))));
        assert!(t.ids.contains_key(&id(&format!("{:064}", MAX_TRACKED))));
        // Table slots (entry plus one control byte) plus each id's heap
        // block (counts and 64 bytes, allocator overhead included).
        let table = |cap: usize, entry: usize| (cap * 8 / 7).next_power_of_two() * (entry + 1);
        let heap = MAX_TRACKED * 96;
        let bytes = table(
            t.origins.capacity(),
            std::mem::size_of::<(Origin, OriginRecord)>(),
        ) + heap
            + table(t.ids.capacity(), std::mem::size_of::<(ClientId, Record)>())
            + heap;
        assert!(bytes < 4 << 20, "{bytes} bytes");
    }
}
