//! The part of a follower its log's tail writes to: the follower's state (overlay, base,
//! position) and the progress reads wait on.

use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use crate::reads::overlay::Overlay;
use crate::reads::tail::{Sink, Subscription};
use crate::shard::ShardId;
use crate::storage::log::checkpoint::Marker;
use crate::storage::log::format::Segment;
use crate::storage::store::now_ms;

/// The last advance of a follower: writes with versions in `(from, to]` became visible at
/// `at_ms` (Unix milliseconds).
#[derive(Clone, Copy, Default)]
pub(super) struct Advance {
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) at_ms: i64,
}

/// What reads waiting on a follower look at.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Progress {
    /// See "Position" in the module doc of `follower`.
    pub(super) position: u64,
    /// The tail has read its log up to an object that did not exist yet (or to its end).
    pub(super) caught_up: bool,
    /// The follower stopped: a read of the object store failed, or it could not anchor.
    pub(super) closed: bool,
}

/// The part of a follower its log's tail writes to.
pub(super) struct View {
    pub(super) shard: ShardId,
    pub(super) state: Mutex<State>,
    pub(super) progress: watch::Sender<Progress>,
    /// Wakes the follower's task: its tail ended, lost an object or met another owner.
    pub(super) wake: Notify,
    /// The last advance of the overlay, for lag samples.
    pub(super) advance: Mutex<Advance>,
}

pub(super) struct State {
    pub(super) overlay: Overlay,
    /// The checkpoint the tail started after.
    pub(super) base: Option<Marker>,
    /// See "Position" in the module doc of `follower`.
    pub(super) anchored: bool,
    /// The tail subscription, while its log is being read.
    pub(super) sub: Option<Arc<Subscription>>,
    /// The base's log ended in a fence.
    pub(super) ended: bool,
    /// The highest version of the shard under the base's epoch read from the log (or the
    /// base's `max_version`).
    pub(super) seen: u64,
    /// The reader's view `D` last looked at.
    pub(super) installed: u64,
    pub(super) position: u64,
    pub(super) caught_up: bool,
    /// Look for a newer checkpoint: the owner changed or the tail lost its way.
    pub(super) rebase: bool,
    pub(super) closed: Option<String>,
    /// The highest version put in the overlay.
    pub(super) top: u64,
}

impl State {
    pub(super) fn new(base: Option<Marker>, installed: u64) -> Self {
        let seen = base.as_ref().map_or(0, |b| b.max_version);
        let mut state = State {
            overlay: Overlay::default(),
            caught_up: base.is_none(),
            base,
            anchored: true,
            sub: None,
            ended: false,
            seen,
            installed,
            position: 0,
            rebase: false,
            closed: None,
            top: 0,
        };
        state.reposition();
        state
    }

    pub(super) fn reposition(&mut self) {
        let tailed = if self.anchored { self.seen } else { 0 };
        self.position = self.position.max(self.installed).max(tailed);
    }

    pub(super) fn progress(&self) -> Progress {
        Progress {
            position: self.position,
            caught_up: self.caught_up,
            closed: self.closed.is_some(),
        }
    }

    fn is_current(&self, sub: &Subscription) -> bool {
        self.sub.as_deref().is_some_and(|s| std::ptr::eq(s, sub))
    }

    /// Anchors the tail if the view or the overlay holds every write up to the base's
    /// `max_version`: `P` reaches the version before it (the marker's own version is not a
    /// write). Returns whether the tail is anchored.
    pub(super) fn maybe_anchor(&mut self) -> bool {
        if !self.anchored
            && self
                .base
                .as_ref()
                .is_some_and(|b| self.position >= b.max_version.saturating_sub(1))
        {
            self.anchored = true;
            self.reposition();
        }
        self.anchored
    }
}

impl View {
    pub(super) fn publish(&self, state: &State) {
        let progress = state.progress();
        self.progress.send_if_modified(|p| {
            let changed = p.position != progress.position
                || p.caught_up != progress.caught_up
                || p.closed != progress.closed;
            *p = progress;
            changed
        });
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn close(&self, why: String) {
        let mut state = self.lock();
        if state.closed.is_none() {
            tracing::debug!(shard = %self.shard, why, "follower closed");
            state.closed = Some(why);
        }
        if let Some(sub) = state.sub.take() {
            sub.cancel();
        }
        self.publish(&state);
    }
}

impl Sink for View {
    fn deliver(&self, sub: &Subscription, _seq: u64, segment: &Segment) {
        let Segment::Records { shards, groups, .. } = segment else {
            return;
        };
        if !shards.contains(&self.shard) {
            return;
        }
        let mut state = self.lock();
        if !state.is_current(sub) {
            return;
        }
        let epoch = state.base.as_ref().map(|b| b.epoch);
        let before = state.top;
        for r in groups.iter().flatten().filter(|r| r.shard == self.shard) {
            state.overlay.apply(r);
            state.top = state.top.max(r.version);
            if Some(r.epoch) == epoch {
                state.seen = state.seen.max(r.version);
            } else {
                // Another claim on the shard wrote to this log: it changed owners since
                // the base, and the versions between may be in a log not tailed here.
                state.rebase = true;
                self.wake.notify_one();
            }
        }
        if state.top > before && state.caught_up {
            *self.advance.lock().unwrap_or_else(|e| e.into_inner()) = Advance {
                from: before,
                to: state.top,
                at_ms: now_ms(),
            };
        }
        state.reposition();
        self.publish(&state);
    }

    fn polled(&self, sub: &Subscription, _frontier: u64) {
        let mut state = self.lock();
        if state.is_current(sub) && !state.caught_up {
            state.caught_up = true;
            let top = state.top;
            *self.advance.lock().unwrap_or_else(|e| e.into_inner()) = Advance {
                from: top,
                to: top,
                at_ms: 0,
            };
            self.publish(&state);
        }
    }

    fn missing(&self, sub: &Subscription, seq: u64) {
        let mut state = self.lock();
        if state.is_current(sub) {
            tracing::debug!(
                shard = %self.shard,
                log = sub.log(),
                seq,
                "tailed object gone; looking for a newer checkpoint"
            );
            state.sub = None;
            state.rebase = true;
            // Nothing more to wait for in this log: the checkpoint past it is newer.
            state.caught_up = true;
            self.publish(&state);
            self.wake.notify_one();
        }
    }

    fn ended(&self, sub: &Subscription, fence: u64) {
        let mut state = self.lock();
        if state.is_current(sub) {
            tracing::debug!(
                shard = %self.shard,
                log = sub.log(),
                fence,
                "tailed log sealed; looking for the new owner's"
            );
            state.sub = None;
            state.ended = true;
            state.caught_up = true;
            state.rebase = true;
            self.publish(&state);
            self.wake.notify_one();
        }
    }

    fn failed(&self, sub: &Subscription, error: &str) {
        if self.lock().is_current(sub) {
            self.close(format!("reading log {} failed: {error}", sub.log()));
        }
    }
}
