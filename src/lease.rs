//! The local lease deadline: until when this process may serve its shards.
//!
//! Safety argument (see also `docs/architecture.md`):
//!
//! - etcd expires a lease no earlier than `TTL` after it *received* the last keep-alive, and a
//!   keep-alive is received after it was *sent*. So etcd keeps our owner keys at least until
//!   `sent + TTL`, and no other gateway can acquire one of our shards before then (acquisition
//!   requires the owner key to be absent).
//! - We serve until `deadline = sent + TTL - margin`, measured on our monotonic clock from the
//!   moment we sent the last keep-alive that etcd acknowledged. The margin absorbs clock-rate
//!   drift between us and etcd. After the deadline we stop serving at once, even if etcd is
//!   silent (a partition, a paused process).
//! - A strong read checks the deadline *after* reading: at that instant nobody else could have
//!   opened the shard, so the value read was the latest. A write is acknowledged only once it is
//!   durable; SlateDB's fencing makes a write that raced with a new owner's open fail instead.
//!
//! The clock is injected (`Instant`s are passed in), so the rule is unit-tested without etcd.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The serving deadline of one etcd lease.
#[derive(Debug, Default)]
pub struct LeaseClock {
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    deadline: Option<Instant>,
    lost: bool,
}

impl LeaseClock {
    /// A clock that is valid forever (the embedded single-node mode has no lease).
    pub fn forever() -> Self {
        let clock = LeaseClock::default();
        clock.lock().deadline = Some(Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
        clock
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
    }

    /// Marks the lease as gone (etcd answered TTL 0, or revoked): invalid from now on.
    pub fn lose(&self) {
        let mut s = self.lock();
        s.lost = true;
        s.deadline = None;
    }

    /// True while the lease may be relied on at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        let s = *self.lock();
        !s.lost && s.deadline.is_some_and(|d| now < d)
    }

    /// True while the lease may be relied on now.
    pub fn valid(&self) -> bool {
        self.valid_at(Instant::now())
    }

    /// True once the lease was lost for good.
    pub fn is_lost(&self) -> bool {
        self.lock().lost
    }
}

/// Round trips of acknowledged keep-alives (for metrics).
#[derive(Debug, Default)]
pub struct KeepAliveStats {
    count: AtomicU64,
    sum_micros: AtomicU64,
    last_micros: AtomicU64,
}

impl KeepAliveStats {
    /// Records one acknowledged keep-alive that took `rtt`.
    pub fn record(&self, rtt: Duration) {
        let micros = rtt.as_micros() as u64;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.last_micros.store(micros, Ordering::Relaxed);
    }

    /// (acknowledged keep-alives, total round-trip time, last round-trip time).
    pub fn snapshot(&self) -> (u64, Duration, Duration) {
        (
            self.count.load(Ordering::Relaxed),
            Duration::from_micros(self.sum_micros.load(Ordering::Relaxed)),
            Duration::from_micros(self.last_micros.load(Ordering::Relaxed)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_send_time_plus_ttl_minus_margin() {
        let c = LeaseClock::default();
        let t0 = Instant::now();
        assert!(!c.valid_at(t0), "no ack yet");
        c.acked(t0, Duration::from_secs(3), Duration::from_secs(1));
        assert!(c.valid_at(t0 + Duration::from_millis(1999)));
        assert!(
            !c.valid_at(t0 + Duration::from_secs(2)),
            "stops at sent + ttl - margin"
        );
        // A late ack of an older keep-alive never moves the deadline back.
        c.acked(
            t0 + Duration::from_secs(1),
            Duration::from_secs(3),
            Duration::from_secs(1),
        );
        c.acked(t0, Duration::from_secs(3), Duration::from_secs(1));
        assert!(c.valid_at(t0 + Duration::from_millis(2999)));
        assert!(!c.valid_at(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn lost_is_final() {
        let c = LeaseClock::default();
        let t0 = Instant::now();
        c.acked(t0, Duration::from_secs(3), Duration::ZERO);
        c.lose();
        assert!(!c.valid_at(t0));
        c.acked(
            t0 + Duration::from_secs(1),
            Duration::from_secs(3),
            Duration::ZERO,
        );
        assert!(
            !c.valid_at(t0 + Duration::from_secs(2)),
            "a lost lease stays lost"
        );
        assert!(LeaseClock::forever().valid());
    }
}
