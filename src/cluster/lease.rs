//! The local lease deadline: until when this process may serve its shards.
//!
//! Safety argument (see also `docs/architecture.md`):
//!
//! - etcd expires a lease no earlier than `TTL` after it *received* the last keep-alive, and a
//!   keep-alive is received after it was *sent*. So etcd keeps our owner keys at least until
//!   `sent + TTL`, and no other gateway can acquire one of our shards before then (acquisition
//!   requires the owner key to be absent), unless it expels us first (heartbeats, below).
//! - We serve until `deadline = sent + TTL - margin`, measured on our monotonic clock from the
//!   moment we sent the last keep-alive that etcd acknowledged. The margin absorbs clock-rate
//!   drift between us and etcd. After the deadline we stop serving at once, even if etcd is
//!   silent (a partition, a paused process).
//! - A strong read checks the deadline *after* reading: at that instant nobody else could have
//!   opened the shard, so the value read was the latest. A write is acknowledged only once it is
//!   durable; SlateDB's fencing makes a write that raced with a new owner's open fail instead.
//!
//!
//! Recovery rule (a partition, a pause, an expiry): the session with a lease ends, for good,
//! as soon as the lease may be gone at etcd, and every cause ends it the same way
//! ([`LeaseLoss`]): etcd answers that it does not know the lease, a keep-alive is answered with
//! TTL 0, or no keep-alive has been acknowledged for a whole TTL (`now >= sent + TTL`, the
//! earliest etcd could have expired it, whether or not etcd is reachable). The holder then
//! drops everything the lease covered (already unservable since the deadline) and joins again
//! with a new lease as soon as etcd answers. A late answer between the deadline and
//! `sent + TTL` still counts: TTL > 0 proves etcd never expired the lease, so nobody else
//! can have taken what it covers. Nothing ever revives a lost lease.
//!
//! **Heartbeats: taking a dead gateway's shards before etcd expires its lease.** Waiting for
//! the lease costs a whole TTL (3 s by default, 2 s at least on a default etcd) after a crash.
//! So a gateway also proves it is alive every `heartbeat_interval` with a conditional put of
//! its `beats/{id}` key (`if mod_revision == the revision of my last beat`), and serves only
//! while `beat deadline = last acknowledged beat sent + heartbeat_timeout` holds too. A gateway
//! that gets no answer from an owner may *expel* it ([`expel_wait`]):
//!
//! 1. read the owner's beat key every `heartbeat_interval` until one revision `r` has been
//!    seen for `heartbeat_timeout + 1/8` (the owner's timeout, which its beat key carries: the
//!    members' configurations may differ), timed from `t`, the arrival of the first answer
//!    showing `r` (the eighth is slack for clock-rate drift, far more than any real clock
//!    drifts in a second); a moving revision means the owner is alive;
//! 2. in one transaction, if the beat key still has revision `r`, delete it and the owner's
//!    member key; then delete the owner's shard keys (each guarded by its epoch and by the
//!    beat key being absent), and the shards are claimed as after an expiry.
//!
//! Safe because the owner's last acknowledged beat is the one at `r` (a later one would have
//! changed the revision and failed step 2; one arriving after step 2 fails its own compare,
//! the key being gone), and it was sent before `t`: so the owner's beat deadline, `sent +
//! heartbeat_timeout` on its clock, passed before step 2 on ours. From then on it serves
//! nothing (reads check the deadline after reading, as above), and its next beat fails its
//! compare: it has been expelled ([`LeaseLoss::Expelled`]) and joins again like after any lost
//! lease. Writes are fenced at the storage anyway (the log's seal, SlateDB's writer epoch).
//!
//! A new incarnation of a member (a restart under its id) retires an earlier one's beat key
//! by the same two steps before its first beat, then revokes the earlier incarnation's lease:
//! after step 2 that incarnation serves nothing, so its keys may all go. A moving revision
//! means a live process has the id, and the new one does not join ([`BeatWatch`] times both).
//!
//! Time comes from a [`Clock`], so the rule is unit-tested without etcd or real time
//! ([`ManualClock`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Where lease deadlines read the time: monotonic, never the wall clock.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> Instant;
}

/// The process's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to: for tests that drive lease deadlines.
#[derive(Debug)]
pub struct ManualClock(Mutex<Instant>);

impl ManualClock {
    /// Starts at the real now.
    pub fn new() -> Arc<Self> {
        Arc::new(ManualClock(Mutex::new(Instant::now())))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a lease was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLoss {
    /// etcd does not know the lease: it expired or was revoked.
    NotFound,
    /// A keep-alive was answered with TTL 0.
    TtlZero,
    /// No keep-alive was acknowledged for a whole TTL: etcd may have expired the lease.
    Deadline,
    /// Another gateway found our heartbeat stale and took our shards (a beat's compare failed).
    Expelled,
}

impl LeaseLoss {
    /// Every reason, in metric order.
    pub const ALL: [LeaseLoss; 4] = [
        LeaseLoss::NotFound,
        LeaseLoss::TtlZero,
        LeaseLoss::Deadline,
        LeaseLoss::Expelled,
    ];

    /// The name used in logs and in the `reason` label of metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseLoss::NotFound => "not_found",
            LeaseLoss::TtlZero => "ttl_zero",
            LeaseLoss::Deadline => "deadline",
            LeaseLoss::Expelled => "expelled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The serving deadline of one etcd lease.
#[derive(Debug)]
pub struct LeaseClock {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Set once, when the lease is lost (and when).
    lost: watch::Sender<Option<(LeaseLoss, Instant)>>,
}

impl Default for LeaseClock {
    fn default() -> Self {
        LeaseClock::new(Arc::new(SystemClock))
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    /// Serve until then: last acknowledged send + TTL - margin.
    deadline: Option<Instant>,
    /// From then on etcd may have expired the lease: last acknowledged send + TTL.
    expiry: Option<Instant>,
    /// With heartbeats: serve also only until the last acknowledged beat sent + timeout
    /// (`None` until the first beat, which is then not servable).
    beats: Option<Option<Instant>>,
    lost: bool,
}

impl LeaseClock {
    /// A lease not granted yet, timed by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        LeaseClock {
            clock,
            state: Mutex::default(),
            lost: watch::Sender::new(None),
        }
    }

    /// A lease whose holder also heartbeats: not valid until its first beat is acknowledged.
    pub fn with_heartbeats(clock: Arc<dyn Clock>) -> Self {
        let lease = LeaseClock::new(clock);
        lease.lock().beats = Some(None);
        lease
    }

    /// A clock that is valid forever (the embedded single-node mode has no lease).
    pub fn forever() -> Self {
        let clock = LeaseClock::default();
        let far = clock.now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let mut s = clock.lock();
        s.deadline = Some(far);
        s.expiry = Some(far);
        drop(s);
        clock
    }

    /// Now, by this lease's clock: what keep-alive send times are measured with.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an acknowledged keep-alive (or the grant) that was sent at `sent_at`, for a lease
    /// etcd says lives `ttl` more; the deadline only moves forward.
    pub fn acked(&self, sent_at: Instant, ttl: Duration, margin: Duration) {
        let mut s = self.lock();
        if s.lost {
            return;
        }
        let candidate = sent_at + ttl.saturating_sub(margin);
        if s.deadline.is_none_or(|d| candidate > d) {
            s.deadline = Some(candidate);
        }
        let expiry = sent_at + ttl;
        if s.expiry.is_none_or(|e| expiry > e) {
            s.expiry = Some(expiry);
        }
    }

    /// Records an acknowledged heartbeat sent at `sent_at`: serve until `sent_at + timeout` at
    /// most (the deadline only moves forward). A no-op on a lease without heartbeats.
    pub fn beat_acked(&self, sent_at: Instant, timeout: Duration) {
        let mut s = self.lock();
        if let Some(beat) = &mut s.beats {
            let candidate = sent_at + timeout;
            if beat.is_none_or(|d| candidate > d) {
                *beat = Some(candidate);
            }
        }
    }

    /// Marks the lease as gone for `why`: invalid from now on. The first reason is kept.
    pub fn lose(&self, why: LeaseLoss) {
        let mut s = self.lock();
        s.lost = true;
        s.deadline = None;
        drop(s);
        self.lost.send_if_modified(|lost| {
            if lost.is_some() {
                return false;
            }
            *lost = Some((why, self.clock.now()));
            true
        });
    }

    /// True while the lease may be relied on now.
    pub fn valid(&self) -> bool {
        let now = self.clock.now();
        let s = *self.lock();
        let beating = s.beats.is_none_or(|beat| beat.is_some_and(|d| now < d));
        !s.lost && beating && s.deadline.is_some_and(|d| now < d)
    }

    /// True if etcd may have expired the lease by now: a whole TTL without an acknowledged
    /// keep-alive.
    pub fn is_expired(&self) -> bool {
        let now = self.clock.now();
        self.lock().expiry.is_some_and(|e| now >= e)
    }

    /// Resolves once [`LeaseClock::is_expired`] holds (never for a clock with no grant yet).
    pub async fn expired(&self) {
        loop {
            let Some(expiry) = self.lock().expiry else {
                return std::future::pending().await;
            };
            tokio::time::sleep(expiry.saturating_duration_since(self.clock.now())).await;
            if self.is_expired() {
                return;
            }
        }
    }

    /// Why and when the lease was lost, if it was.
    pub fn loss(&self) -> Option<(LeaseLoss, Instant)> {
        *self.lost.borrow()
    }

    /// True once the lease was lost for good.
    pub fn is_lost(&self) -> bool {
        self.loss().is_some()
    }

    /// Resolves once the lease is lost, with why.
    pub async fn lost(&self) -> LeaseLoss {
        let mut rx = self.lost.subscribe();
        let lost = rx.wait_for(Option::is_some).await;
        // The sender lives in `self`, so the wait cannot end without a value.
        lost.ok()
            .and_then(|l| *l)
            .map_or(LeaseLoss::Deadline, |(why, _)| why)
    }
}

/// How long a gateway that found `heartbeat_timeout` in force waits, from reading an owner's
/// beat key, before it may expel the owner if the key has not changed (see the module docs).
pub fn expel_wait(heartbeat_timeout: Duration) -> Duration {
    heartbeat_timeout + heartbeat_timeout / 8
}

/// Step 1 of an expulsion (module docs): successive reads of one member's beat key, each with
/// the time its answer arrived, tell whether the member may be expelled yet.
#[derive(Debug, Default)]
pub struct BeatWatch {
    /// The revision last read and when the first answer showing it arrived.
    seen: Option<(i64, Instant)>,
}

/// What a [`BeatWatch`] concludes from one more read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatSeen {
    /// Read again after a `heartbeat_interval`.
    Wait,
    /// The revision moved since the last read: the member beat, it is alive. The watch goes
    /// on timing from this revision if read again.
    Moved,
    /// Revision `rev` has stood for the wait: expel the member if it still has it.
    Stood(i64),
}

impl BeatWatch {
    /// One more read: revision `rev` of a key whose value names `timeout`, answered at `at`.
    pub fn saw(&mut self, rev: i64, timeout: Duration, at: Instant) -> BeatSeen {
        match self.seen {
            Some((same, since)) if same == rev => {
                if at.saturating_duration_since(since) >= expel_wait(timeout) {
                    BeatSeen::Stood(rev)
                } else {
                    BeatSeen::Wait
                }
            }
            Some(_) => {
                self.seen = Some((rev, at));
                BeatSeen::Moved
            }
            None => {
                self.seen = Some((rev, at));
                BeatSeen::Wait
            }
        }
    }
}

/// Keep-alive round trips, lease losses, rejoins and expulsions (for metrics).
#[derive(Debug, Default)]
pub struct KeepAliveStats {
    rtt_observer: RttObserver,
    losses: [AtomicU64; 4],
    rejoins: AtomicU64,
    expelled: AtomicU64,
    last_rejoin_micros: AtomicU64,
}

/// Where acknowledged keep-alives' round trips go (a metrics histogram); set at most once.
#[derive(Default)]
struct RttObserver(OnceLock<Box<dyn Fn(Duration) + Send + Sync>>);

impl std::fmt::Debug for RttObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "RttObserver(set)"
        } else {
            "RttObserver(unset)"
        })
    }
}

impl KeepAliveStats {
    /// Records one acknowledged keep-alive that took `rtt`.
    pub fn record(&self, rtt: Duration) {
        if let Some(observe) = self.rtt_observer.0.get() {
            observe(rtt);
        }
    }

    /// Sends every acknowledged keep-alive's round trip to `observe` from now on. Only the
    /// first observer is kept: returns false (and drops `observe`) if one was already set.
    pub fn observe_rtt(&self, observe: impl Fn(Duration) + Send + Sync + 'static) -> bool {
        self.rtt_observer.0.set(Box::new(observe)).is_ok()
    }

    /// Records a lease given up for `why`.
    pub fn record_loss(&self, why: LeaseLoss) {
        self.losses[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a new lease granted `after` the previous one was lost.
    pub fn record_rejoin(&self, after: Duration) {
        self.rejoins.fetch_add(1, Ordering::Relaxed);
        self.last_rejoin_micros
            .store(after.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records another member expelled by this one (its heartbeat had stopped).
    pub fn record_expelled(&self) {
        self.expelled.fetch_add(1, Ordering::Relaxed);
    }

    /// Members this one expelled.
    pub fn expelled(&self) -> u64 {
        self.expelled.load(Ordering::Relaxed)
    }

    /// Leases lost, by reason (in [`LeaseLoss::ALL`] order).
    pub fn losses(&self) -> [(LeaseLoss, u64); 4] {
        LeaseLoss::ALL.map(|why| (why, self.losses[why.index()].load(Ordering::Relaxed)))
    }

    /// (rejoins, time from the last loss to its new lease).
    pub fn rejoins(&self) -> (u64, Duration) {
        (
            self.rejoins.load(Ordering::Relaxed),
            Duration::from_micros(self.last_rejoin_micros.load(Ordering::Relaxed)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn manual() -> (Arc<ManualClock>, LeaseClock) {
        let time = ManualClock::new();
        let lease = LeaseClock::new(time.clone());
        (time, lease)
    }

    #[test]
    fn deadline_is_send_time_plus_ttl_minus_margin() {
        let (time, c) = manual();
        let t0 = c.now();
        assert!(!c.valid(), "no ack yet");
        c.acked(t0, 3 * SEC, SEC);
        time.advance(Duration::from_millis(1999));
        assert!(c.valid());
        time.advance(Duration::from_millis(1));
        assert!(!c.valid(), "stops at sent + ttl - margin");
        // A late ack of an older keep-alive never moves the deadline back.
        c.acked(t0 + SEC, 3 * SEC, SEC);
        c.acked(t0, 3 * SEC, SEC);
        time.advance(Duration::from_millis(999));
        assert!(c.valid());
        time.advance(Duration::from_millis(1));
        assert!(!c.valid());
    }

    #[test]
    fn expiry_is_send_time_plus_ttl() {
        let (time, c) = manual();
        time.advance(3600 * SEC);
        assert!(!c.is_expired(), "no grant yet");
        c.acked(c.now(), 3 * SEC, SEC);
        // Between the deadline and the expiry: not servable, but not lost either.
        time.advance(Duration::from_millis(2500));
        assert!(!c.valid() && !c.is_expired());
        // A keep-alive acknowledged meanwhile (TTL > 0: etcd still has it) moves both on.
        c.acked(c.now() - Duration::from_millis(100), 3 * SEC, SEC);
        assert!(c.valid());
        time.advance(2 * SEC);
        assert!(!c.is_expired());
        time.advance(SEC);
        assert!(
            c.is_expired(),
            "expires a TTL after the last acknowledged send"
        );
    }

    #[test]
    fn lost_is_final_and_keeps_its_first_reason() {
        let (time, c) = manual();
        c.acked(c.now(), 3 * SEC, Duration::ZERO);
        c.lose(LeaseLoss::NotFound);
        c.lose(LeaseLoss::Deadline);
        assert!(!c.valid());
        time.advance(SEC);
        c.acked(c.now(), 3 * SEC, Duration::ZERO);
        assert!(!c.valid(), "a lost lease stays lost");
        assert_eq!(c.loss().map(|(why, _)| why), Some(LeaseLoss::NotFound));
        assert!(LeaseClock::forever().valid());
    }

    #[test]
    fn heartbeats_bound_the_deadline_too() {
        let time = ManualClock::new();
        let c = LeaseClock::with_heartbeats(time.clone());
        c.acked(c.now(), 3 * SEC, SEC);
        assert!(!c.valid(), "no beat acknowledged yet");
        let t0 = c.now();
        c.beat_acked(t0, SEC);
        assert!(c.valid());
        time.advance(Duration::from_millis(999));
        assert!(c.valid());
        time.advance(Duration::from_millis(1));
        assert!(
            !c.valid(),
            "stops at the last beat sent + timeout, lease or not"
        );
        // Unlike the lease, a late beat brings service back: its compare succeeded, so nobody
        // expelled us; an older one never moves the deadline back.
        c.beat_acked(c.now() - Duration::from_millis(100), SEC);
        c.beat_acked(t0, SEC);
        assert!(c.valid());
        time.advance(Duration::from_millis(900));
        assert!(!c.valid());
        // The lease deadline still applies.
        c.beat_acked(c.now(), SEC);
        time.advance(Duration::from_millis(200));
        c.beat_acked(c.now(), SEC);
        assert!(!c.valid(), "past the lease deadline (sent + 3s - 1s)");
        c.lose(LeaseLoss::Expelled);
        assert_eq!(c.loss().map(|(why, _)| why), Some(LeaseLoss::Expelled));
        // The wait to expel exceeds the timeout by the drift slack.
        assert_eq!(expel_wait(SEC), Duration::from_millis(1125));
    }

    #[test]
    fn a_beat_must_stand_for_the_whole_wait_from_its_first_sighting() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = BeatWatch::default();
        assert_eq!(w.saw(7, SEC, t0), BeatSeen::Wait);
        assert_eq!(w.saw(7, SEC, t0 + ms(1124)), BeatSeen::Wait);
        assert_eq!(w.saw(7, SEC, t0 + ms(1125)), BeatSeen::Stood(7));
        // A beat restarts the wait from the answer that showed it.
        let mut w = BeatWatch::default();
        assert_eq!(w.saw(7, SEC, t0), BeatSeen::Wait);
        assert_eq!(w.saw(8, SEC, t0 + ms(1000)), BeatSeen::Moved);
        assert_eq!(w.saw(8, SEC, t0 + ms(2000)), BeatSeen::Wait);
        assert_eq!(w.saw(8, SEC, t0 + ms(2125)), BeatSeen::Stood(8));
        // The wait is the member's own timeout, as its beat key states it.
        let mut w = BeatWatch::default();
        assert_eq!(w.saw(3, 2 * SEC, t0), BeatSeen::Wait);
        assert_eq!(w.saw(3, 2 * SEC, t0 + ms(2249)), BeatSeen::Wait);
        assert_eq!(w.saw(3, 2 * SEC, t0 + ms(2250)), BeatSeen::Stood(3));
    }

    #[tokio::test]
    async fn expired_and_lost_resolve() {
        let c = Arc::new(LeaseClock::default());
        let t0 = Instant::now();
        c.acked(t0, Duration::from_millis(200), Duration::ZERO);
        let waiter = {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.lost().await })
        };
        tokio::time::timeout(Duration::from_secs(10), c.expired())
            .await
            .expect("expires after the TTL");
        assert!(t0.elapsed() >= Duration::from_millis(200));
        c.lose(LeaseLoss::Deadline);
        assert_eq!(waiter.await.unwrap(), LeaseLoss::Deadline);
    }
}
