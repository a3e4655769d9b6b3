//! A shard slot's lifecycle, as a pure state machine: [`transition`] maps a state and an event
//! to the next state and the actions that must follow. No I/O, no time, no locks: `slot.rs`
//! applies transitions atomically and carries out the actions; this module decides.
//!
//! ```text
//!              Opened                  Release              Released
//!  NotOwned ───────────▶ Open ─────────────────▶ Draining ───────────▶ NotOwned
//!     ▲                  │ │ Stopped (not fenced)
//!     │ Lost, fenced     │ └──────────────────▶ Reopening ──Reopened──▶ Open
//!     └──────────────────┘                          │ Lost, ReopenAbandoned
//!                                                   ▼
//!                                                NotOwned
//!  Open ── Stopped (fenced, embedded) ──▶ Fenced        any ── Shutdown ──▶ Closed
//! ```
//!
//! Invariants, each checked by a test below:
//! - only `Open` serves, and only the store it was opened with (a store is compared by
//!   identity, so a late event about an old store never touches a newer one);
//! - a store leaving `Open` has its cache scope dropped ([`Action::Forget`]) and is closed;
//! - `Fenced` (embedded mode: another process opened our data) and `Closed` are final: only
//!   a new claim (`Opened`) leaves `Fenced`, and nothing leaves `Closed`;
//! - a store opened for a slot that can no longer use it is closed, never leaked;
//! - a planned release deletes the claim only after the store is closed (`Drain`, then the
//!   session deletes the key), so the next owner never fences us mid-flush.

use std::sync::Arc;

/// Where a slot is. `S` is the store type (`ShardStore`; anything in tests).
#[derive(Debug)]
pub(crate) enum SlotState<S> {
    /// Not ours.
    NotOwned,
    /// Served from `store` under the claim `epoch`.
    Open { store: Arc<S>, epoch: i64 },
    /// A planned release waits for in-flight requests, then closes the store.
    Draining { epoch: i64 },
    /// The database stopped on its own (a memtable flush exhausted its retries, or the log
    /// it was recovered into was sealed); a task reopens it while the claim holds. Requests
    /// wait for it (bounded).
    Reopening { epoch: i64 },
    /// Another process opened the database while we held it for good (embedded mode): never
    /// served again.
    Fenced,
    /// Shut down.
    Closed,
}

// Not derived: that would require `S: Clone`, and a store is shared, not copied.
impl<S> Clone for SlotState<S> {
    fn clone(&self) -> Self {
        match self {
            SlotState::NotOwned => SlotState::NotOwned,
            SlotState::Open { store, epoch } => SlotState::Open {
                store: Arc::clone(store),
                epoch: *epoch,
            },
            SlotState::Draining { epoch } => SlotState::Draining { epoch: *epoch },
            SlotState::Reopening { epoch } => SlotState::Reopening { epoch: *epoch },
            SlotState::Fenced => SlotState::Fenced,
            SlotState::Closed => SlotState::Closed,
        }
    }
}

/// What happened to a slot.
#[derive(Debug)]
pub(crate) enum Event<S> {
    /// The database of a freshly claimed shard opened (which fenced any previous writer).
    Opened { store: Arc<S>, epoch: i64 },
    /// Planned release of the claim `epoch`.
    Release { epoch: i64 },
    /// The drain of a release finished: the store is closed.
    Released,
    /// The claim is gone (its key was deleted or taken, or the lease was lost).
    Lost,
    /// `store` stopped on its own; `fenced` if another writer opened the database.
    Stopped { store: Arc<S>, fenced: bool },
    /// The reopen task opened `store` for the claim `epoch`.
    Reopened { store: Arc<S>, epoch: i64 },
    /// The reopen task gave up: the claim `epoch` no longer holds.
    ReopenAbandoned { epoch: i64 },
    /// The process shuts down.
    Shutdown,
}

/// What must follow a transition, in order.
#[derive(Debug)]
pub(crate) enum Action<S> {
    /// Drop the hot-key cache entries of a store no longer served.
    Forget(Arc<S>),
    /// Watch the store; report [`Event::Stopped`] when it stops on its own.
    Supervise(Arc<S>),
    /// Wait for in-flight requests, checkpoint the store (clean: the next owner replays
    /// nothing) under the claim `epoch`, close it, then report [`Event::Released`].
    Drain(Arc<S>, i64),
    /// Close the store in the background: nothing waits for it, and nothing in it is
    /// acknowledged that is not durable already.
    Close(Arc<S>),
    /// Checkpoint the store (clean) under the claim `epoch`, close it and wait, reporting
    /// failure (shutdown: the next owner then replays nothing).
    CloseAndWait(Arc<S>, i64),
    /// Delete the claim `epoch` (a newer owner fenced us: the shard is theirs).
    ReleaseClaim(i64),
    /// Reopen the database for the claim `epoch`, with backoff, while the claim holds.
    Reopen(i64),
}

/// The transition for `event` in `state`: the next state (`None`: unchanged) and the actions
/// to carry out. `places`: lost shards can come back through placement (cluster mode); false
/// when the process holds every shard once and for all (embedded mode).
pub(crate) fn transition<S>(
    state: &SlotState<S>,
    event: Event<S>,
    places: bool,
) -> (Option<SlotState<S>>, Vec<Action<S>>) {
    use Action as A;
    use SlotState as St;
    let same = |a: &Arc<S>, b: &Arc<S>| Arc::ptr_eq(a, b);
    match (state, event) {
        (St::NotOwned | St::Fenced, Event::Opened { store, epoch }) => (
            Some(St::Open {
                store: Arc::clone(&store),
                epoch,
            }),
            vec![A::Supervise(store)],
        ),
        // Opened for a slot that cannot use it (shut down meanwhile): close it.
        (_, Event::Opened { store, .. }) => (None, vec![A::Close(store)]),
        (St::Open { store, epoch }, Event::Release { epoch: e }) if *epoch == e => (
            Some(St::Draining { epoch: e }),
            vec![A::Forget(Arc::clone(store)), A::Drain(Arc::clone(store), e)],
        ),
        (_, Event::Release { .. }) => (None, vec![]),
        (St::Draining { .. }, Event::Released) => (Some(St::NotOwned), vec![]),
        (_, Event::Released) => (None, vec![]),
        (St::Open { store, .. }, Event::Lost) => (
            Some(St::NotOwned),
            vec![A::Forget(Arc::clone(store)), A::Close(Arc::clone(store))],
        ),
        // The reopen task sees the change and stops.
        (St::Reopening { .. }, Event::Lost) => (Some(St::NotOwned), vec![]),
        // A draining slot finishes its drain; deleting a key that is gone is a no-op.
        (_, Event::Lost) => (None, vec![]),
        (St::Open { store, epoch }, Event::Stopped { store: s, fenced }) if same(store, &s) => {
            let forget = A::Forget(s);
            match (fenced, places) {
                // A newer owner opened the database: the shard is theirs.
                (true, true) => (Some(St::NotOwned), vec![forget, A::ReleaseClaim(*epoch)]),
                (true, false) => (Some(St::Fenced), vec![forget]),
                (false, _) => (
                    Some(St::Reopening { epoch: *epoch }),
                    vec![forget, A::Reopen(*epoch)],
                ),
            }
        }
        // About a store this slot no longer serves.
        (_, Event::Stopped { .. }) => (None, vec![]),
        (St::Reopening { epoch }, Event::Reopened { store, epoch: e }) if *epoch == e => (
            Some(St::Open {
                store: Arc::clone(&store),
                epoch: e,
            }),
            vec![A::Supervise(store)],
        ),
        (_, Event::Reopened { store, .. }) => (None, vec![A::Close(store)]),
        (St::Reopening { epoch }, Event::ReopenAbandoned { epoch: e }) if *epoch == e => {
            (Some(St::NotOwned), vec![])
        }
        (_, Event::ReopenAbandoned { .. }) => (None, vec![]),
        (St::Open { store, epoch }, Event::Shutdown) => (
            Some(St::Closed),
            vec![
                A::Forget(Arc::clone(store)),
                A::CloseAndWait(Arc::clone(store), *epoch),
            ],
        ),
        (St::Closed, Event::Shutdown) => (None, vec![]),
        (_, Event::Shutdown) => (Some(St::Closed), vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type State = SlotState<String>;

    fn store(name: &str) -> Arc<String> {
        Arc::new(name.to_string())
    }

    fn open(s: &Arc<String>, epoch: i64) -> State {
        SlotState::Open {
            store: Arc::clone(s),
            epoch,
        }
    }

    /// Renders a transition for comparison: the next state's name and the actions' names.
    fn run(state: &State, event: Event<String>, places: bool) -> (String, Vec<String>) {
        let (next, actions) = transition(state, event, places);
        let name = |s: &State| match s {
            SlotState::NotOwned => "NotOwned".to_string(),
            SlotState::Open { store, epoch } => format!("Open({store},{epoch})"),
            SlotState::Draining { epoch } => format!("Draining({epoch})"),
            SlotState::Reopening { epoch } => format!("Reopening({epoch})"),
            SlotState::Fenced => "Fenced".to_string(),
            SlotState::Closed => "Closed".to_string(),
        };
        let next = next.as_ref().map_or("unchanged".to_string(), name);
        let actions = actions
            .iter()
            .map(|a| match a {
                Action::Forget(s) => format!("Forget({s})"),
                Action::Supervise(s) => format!("Supervise({s})"),
                Action::Drain(s, _) => format!("Drain({s})"),
                Action::Close(s) => format!("Close({s})"),
                Action::CloseAndWait(s, _) => format!("CloseAndWait({s})"),
                Action::ReleaseClaim(e) => format!("ReleaseClaim({e})"),
                Action::Reopen(e) => format!("Reopen({e})"),
            })
            .collect();
        (next, actions)
    }

    fn check(got: (String, Vec<String>), next: &str, actions: &[&str]) {
        assert_eq!(got.0, next);
        assert_eq!(got.1, actions);
    }

    #[test]
    fn a_claim_opens_and_a_planned_release_drains_before_the_key_goes() {
        let a = store("a");
        let opened = Event::Opened {
            store: Arc::clone(&a),
            epoch: 7,
        };
        check(
            run(&SlotState::NotOwned, opened, true),
            "Open(a,7)",
            &["Supervise(a)"],
        );
        check(
            run(&open(&a, 7), Event::Release { epoch: 7 }, true),
            "Draining(7)",
            &["Forget(a)", "Drain(a)"],
        );
        // A release of another (older) claim changes nothing.
        check(
            run(&open(&a, 7), Event::Release { epoch: 6 }, true),
            "unchanged",
            &[],
        );
        check(
            run(&SlotState::Draining { epoch: 7 }, Event::Released, true),
            "NotOwned",
            &[],
        );
        // A lost claim while draining: the drain finishes.
        check(
            run(&SlotState::Draining { epoch: 7 }, Event::Lost, true),
            "unchanged",
            &[],
        );
    }

    #[test]
    fn a_lost_claim_stops_serving_at_once() {
        let a = store("a");
        check(
            run(&open(&a, 7), Event::Lost, true),
            "NotOwned",
            &["Forget(a)", "Close(a)"],
        );
        check(
            run(&SlotState::Reopening { epoch: 7 }, Event::Lost, true),
            "NotOwned",
            &[],
        );
        check(
            run(&SlotState::NotOwned, Event::Lost, true),
            "unchanged",
            &[],
        );
    }

    #[test]
    fn a_fenced_store_is_given_up_in_a_cluster_and_final_when_embedded() {
        let a = store("a");
        let fenced = || Event::Stopped {
            store: Arc::clone(&a),
            fenced: true,
        };
        check(
            run(&open(&a, 7), fenced(), true),
            "NotOwned",
            &["Forget(a)", "ReleaseClaim(7)"],
        );
        check(run(&open(&a, 0), fenced(), false), "Fenced", &["Forget(a)"]);
        // Only a new claim leaves Fenced.
        check(
            run(&SlotState::Fenced, Event::Lost, false),
            "unchanged",
            &[],
        );
        check(
            run(
                &SlotState::Fenced,
                Event::Reopened {
                    store: store("b"),
                    epoch: 0,
                },
                false,
            ),
            "unchanged",
            &["Close(b)"],
        );
    }

    #[test]
    fn a_stopped_store_reopens_under_the_same_claim() {
        let (a, b) = (store("a"), store("b"));
        let stopped = Event::Stopped {
            store: Arc::clone(&a),
            fenced: false,
        };
        check(
            run(&open(&a, 7), stopped, true),
            "Reopening(7)",
            &["Forget(a)", "Reopen(7)"],
        );
        let reopened = |epoch| Event::Reopened {
            store: Arc::clone(&b),
            epoch,
        };
        let reopening = SlotState::Reopening { epoch: 7 };
        check(
            run(&reopening, reopened(7), true),
            "Open(b,7)",
            &["Supervise(b)"],
        );
        // A reopen for an older claim, or after the slot moved on, closes what it opened.
        check(
            run(&reopening, reopened(6), true),
            "unchanged",
            &["Close(b)"],
        );
        check(
            run(&SlotState::NotOwned, reopened(7), true),
            "unchanged",
            &["Close(b)"],
        );
        check(
            run(&reopening, Event::ReopenAbandoned { epoch: 7 }, true),
            "NotOwned",
            &[],
        );
    }

    #[test]
    fn events_about_an_old_store_never_touch_a_newer_one() {
        let (a, b) = (store("a"), store("b"));
        for fenced in [false, true] {
            let stale = Event::Stopped {
                store: Arc::clone(&a),
                fenced,
            };
            check(run(&open(&b, 8), stale, true), "unchanged", &[]);
        }
        // An open racing with shutdown is closed, not served.
        let late = Event::Opened {
            store: Arc::clone(&a),
            epoch: 8,
        };
        check(
            run(&SlotState::Closed, late, true),
            "unchanged",
            &["Close(a)"],
        );
    }

    #[test]
    fn shutdown_is_final_and_waits_for_the_open_store() {
        let a = store("a");
        check(
            run(&open(&a, 7), Event::Shutdown, true),
            "Closed",
            &["Forget(a)", "CloseAndWait(a)"],
        );
        for state in [
            SlotState::NotOwned,
            SlotState::Draining { epoch: 7 },
            SlotState::Reopening { epoch: 7 },
            SlotState::Fenced,
        ] {
            check(run(&state, Event::Shutdown, true), "Closed", &[]);
        }
        check(
            run(&SlotState::Closed, Event::Shutdown, true),
            "unchanged",
            &[],
        );
        check(run(&SlotState::Closed, Event::Lost, true), "unchanged", &[]);
    }
}
