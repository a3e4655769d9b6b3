//! One shard's place in a node: its lifecycle state (`lifecycle.rs` decides every change;
//! this applies them atomically), its request gate, and its write stripes.
//!
//! Requests reach a store only through [`ShardSlot::enter`], so nothing is served from a
//! database in any state but `Open`; a request that finds its shard `Reopening` waits for it
//! (bounded by [`REOPEN_WAIT`]). A request holds the slot's gate shared from start to finish;
//! a planned release takes it exclusively before closing the database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, OwnedRwLockReadGuard, RwLock};

use crate::cluster::placement::Holding;
use crate::error::{Error, Result};
use crate::node::lifecycle::{self, Action, Event};
use crate::reads::cache::HotCache;
use crate::shard::ShardId;
use crate::storage::store::ShardStore;

/// Longest a request waits for its shard to finish reopening before it gets 503.
pub const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// Write locks per shard. Keys hash onto stripes; a batch takes its stripes in ascending order.
const STRIPES: usize = 64;

pub(crate) type SlotState = lifecycle::SlotState<ShardStore>;

/// One shard's place in the node.
pub(crate) struct ShardSlot {
    pub(crate) id: ShardId,
    state: watch::Sender<SlotState>,
    /// Per stripe: held by a write from its precondition check until it is applied or has
    /// failed, so a precondition always sees every earlier write of its keys.
    pub(crate) stripes: Vec<Arc<Mutex<()>>>,
    /// Per stripe: writes made durable and recorded in the cache (see `cache.rs`, rule 3).
    pub(crate) stripe_writes: Vec<AtomicU64>,
    /// Per stripe: writes handed to SlateDB whose outcome the cache has not recorded yet
    /// (`cache.rs`, rule 4). While non-zero, strong reads of the stripe skip the cache.
    pub(crate) stripe_pending: Vec<AtomicU64>,
    /// Where the entries of this slot's open store are cached.
    pub(crate) hot: Arc<HotCache>,
    /// Held shared by every request for its whole duration; a release takes it exclusively
    /// before closing the database.
    gate: Arc<RwLock<()>>,
}

/// A request's pass into an open shard: the store, its claim's epoch, and a share of the
/// slot's gate.
pub(crate) struct Entered {
    pub(crate) store: Arc<ShardStore>,
    pub(crate) epoch: i64,
    _gate: OwnedRwLockReadGuard<()>,
}

impl ShardSlot {
    pub(crate) fn new(id: ShardId, hot: Arc<HotCache>) -> Self {
        ShardSlot {
            id,
            state: watch::Sender::new(SlotState::NotOwned),
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
            stripe_writes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            stripe_pending: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hot,
            gate: Arc::new(RwLock::new(())),
        }
    }

    /// Applies `event` (see [`lifecycle::transition`]) atomically and returns the actions the
    /// caller must carry out. Cache scopes of stores no longer served are dropped here.
    pub(crate) fn apply(&self, event: Event<ShardStore>, places: bool) -> Vec<Action<ShardStore>> {
        let mut actions = Vec::new();
        self.state.send_if_modified(|state| {
            let (next, todo) = lifecycle::transition(state, event, places);
            actions = todo;
            next.map(|next| *state = next).is_some()
        });
        actions.retain(|action| match action {
            Action::Forget(store) => {
                self.hot.drop_scope(store.incarnation());
                false
            }
            _ => true,
        });
        actions
    }

    /// The epoch of the claim this slot serves, if it is open.
    pub(crate) fn open_epoch(&self) -> Option<i64> {
        match &*self.state.borrow() {
            SlotState::Open { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }

    /// What the slot holds, for placement: an open shard is held, a free one can be claimed,
    /// one on the move is left alone.
    pub(crate) fn holding(&self) -> Holding {
        match &*self.state.borrow() {
            SlotState::Open { epoch, .. } => Holding::Held(*epoch),
            SlotState::NotOwned | SlotState::Fenced => Holding::Free,
            SlotState::Draining { .. } | SlotState::Reopening { .. } | SlotState::Closed => {
                Holding::Busy
            }
        }
    }

    /// True if requests for the shard are served here (a reopening shard still is: its
    /// requests wait for the reopen).
    pub(crate) fn is_served(&self) -> bool {
        matches!(
            &*self.state.borrow(),
            SlotState::Open { .. } | SlotState::Reopening { .. }
        )
    }

    /// True while the slot is reopening the database of claim `epoch`.
    pub(crate) fn is_reopening(&self, epoch: i64) -> bool {
        matches!(&*self.state.borrow(), SlotState::Reopening { epoch: e } if *e == epoch)
    }

    /// True while the slot serves `store`.
    pub(crate) fn serves(&self, store: &Arc<ShardStore>) -> bool {
        matches!(&*self.state.borrow(), SlotState::Open { store: s, .. } if Arc::ptr_eq(s, store))
    }

    /// Resolves once the slot no longer serves `store`.
    pub(crate) async fn stopped_serving(&self, store: &Arc<ShardStore>) {
        let mut state = self.state.subscribe();
        let _ = state
            .wait_for(|st| !matches!(st, SlotState::Open { store: s, .. } if Arc::ptr_eq(s, store)))
            .await;
    }

    /// Waits until no request holds the gate (a release's drain). New requests are refused
    /// meanwhile: they find the slot no longer `Open`.
    pub(crate) async fn drained(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    /// Enters the slot for one request: the open store (waiting up to [`REOPEN_WAIT`] if it
    /// is reopening) and a share of its gate. The caller checks the lease.
    pub(crate) async fn enter(&self) -> Result<Entered> {
        let (store, epoch) = self.store().await?;
        let gate = Arc::clone(&self.gate)
            .try_read_owned()
            .map_err(|_| Error::NotOwner { shard: self.id })?;
        // The slot may have changed between the two steps: re-check under the gate.
        if !self.serves(&store) {
            return Err(Error::NotOwner { shard: self.id });
        }
        Ok(Entered {
            store,
            epoch,
            _gate: gate,
        })
    }

    /// Returns the open store and its epoch, waiting up to [`REOPEN_WAIT`] if it is
    /// reopening, or why the shard cannot be served now.
    async fn store(&self) -> Result<(Arc<ShardStore>, i64)> {
        let mut rx = self.state.subscribe();
        let settled = tokio::time::timeout(
            REOPEN_WAIT,
            rx.wait_for(|s| !matches!(s, SlotState::Reopening { .. })),
        )
        .await;
        if let Ok(Ok(state)) = settled {
            if let SlotState::Open { store, epoch } = &*state {
                return Ok((Arc::clone(store), *epoch));
            }
        }
        match &*self.state.borrow() {
            SlotState::Open { store, epoch } => Ok((Arc::clone(store), *epoch)),
            SlotState::Reopening { .. } => Err(Error::ShardUnavailable {
                shard: self.id,
                reason: "reopening after an object-store failure".into(),
            }),
            SlotState::Fenced => Err(Error::Fenced { shard: self.id }),
            SlotState::NotOwned | SlotState::Draining { .. } => {
                Err(Error::NotOwner { shard: self.id })
            }
            SlotState::Closed => Err(Error::ShuttingDown),
        }
    }

    /// The stripe of `key`.
    pub(crate) fn stripe(key: &[u8]) -> usize {
        (xxhash_rust::xxh3::xxh3_64_with_seed(key, 1) % STRIPES as u64) as usize
    }

    /// True if no write of `stripe` awaits its cache record (cache rule 4).
    pub(crate) fn stripe_settled(&self, stripe: usize) -> bool {
        self.stripe_pending[stripe].load(Ordering::SeqCst) == 0
    }
}
