//! A follower's upkeep, its task of its own (owner changes, anchoring, trimming the
//! overlay), and what followers need to open readers and tails.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::config::ObjectStoreConfig;
use crate::error::Result;
use crate::reads::tail::{LogTails, Sink, Subscription};
use crate::shard::ShardId;
use crate::storage::log::checkpoint::{self, Marker};
use crate::storage::objstore::ClusterStore;
use crate::storage::store::{BlockCache, ShardReader};
use crate::tasks::Tasks;

use super::view::View;
use super::{Follower, OwnerEpochs};

/// A follower's reader re-reads the shard's manifest every this many poll intervals.
const READER_POLLS: u32 = 10;

/// How long a follower's replaced reader stays open for the reads and scans begun on it.
const REPLACED_READER_GRACE: Duration = Duration::from_secs(30);

/// Every this many poll intervals a follower reads the published checkpoint even without a
/// reason to: a safety net for an owner change it was not told of.
const PUBLISHED_EVERY_POLLS: u32 = 30;

/// What followers need to open readers and tails, and their upkeep.
pub(super) struct Env {
    pub(super) store: ClusterStore,
    pub(super) tasks: Tasks,
    pub(super) object_store: ObjectStoreConfig,
    pub(super) blocks: BlockCache,
    pub(super) tails: LogTails,
    pub(super) poll_interval: Duration,
    pub(super) owner_epochs: OwnerEpochs,
}

impl Env {
    /// Starts tailing `base`'s log after it.
    pub(super) fn subscribe(&self, view: &Arc<View>, base: &Marker) -> Arc<Subscription> {
        let sink: Weak<View> = Arc::downgrade(view);
        let sink: Weak<dyn Sink> = sink;
        self.tails.subscribe(&base.log, base.through_seq + 1, sink)
    }

    /// Opens a reader of `shard`'s checkpoints. It re-reads the manifest only every
    /// [`READER_POLLS`] poll intervals: freshness comes from the log, and the reader's new
    /// views only let the overlay shrink.
    pub(super) async fn open_reader(&self, shard: ShardId) -> Result<ShardReader> {
        ShardReader::open(
            shard,
            &self.store,
            &self.object_store,
            self.poll_interval * READER_POLLS,
            &self.blocks,
        )
        .await
    }
}

/// The follower's own upkeep, every poll interval and whenever its reader's view or its
/// tail changes.
pub(super) struct Upkeep {
    pub(super) follower: Arc<Follower>,
    pub(super) env: Arc<Env>,
    pub(super) last_published: Option<Instant>,
}

impl Upkeep {
    pub(super) async fn run(mut self) {
        let mut reader = self.follower.reader();
        let mut status = reader.subscribe();
        let mut ticks = tokio::time::interval(self.env.poll_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let view = Arc::clone(&self.follower.view);
        let stop = self.follower.stop.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                changed = status.changed() => if changed.is_err() { return },
                _ = view.wake.notified() => {}
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.step().await {
                view.close(e.to_string());
            }
            if self.follower.is_closed() {
                view.close("its reader closed".into());
                return;
            }
            if !self.follower.is_reader(&reader) {
                reader = self.follower.reader();
                status = reader.subscribe();
            }
        }
    }

    async fn step(&mut self) -> Result<()> {
        let view = &self.follower.view;
        self.trim();
        // A newer owner in this gateway's view: its checkpoint names its log.
        if let Some(epoch) = (self.env.owner_epochs)(view.shard) {
            let mut state = view.lock();
            if state.base.as_ref().is_none_or(|b| epoch > b.epoch) {
                state.rebase = true;
            }
        }
        let rebase = view.lock().rebase;
        let since = self.last_published.map(|t| t.elapsed());
        let poll = self.env.poll_interval;
        // Looking for a new owner's checkpoint: once per poll interval. Otherwise, rarely.
        let due = since.is_none_or(|t| t >= poll * if rebase { 1 } else { PUBLISHED_EVERY_POLLS });
        if due {
            self.last_published = Some(Instant::now());
            if let Some(m) = checkpoint::published(&self.env.store, view.shard).await? {
                self.consider(m);
            }
        }
        let anchored = view.lock().maybe_anchor();
        if !anchored {
            self.reanchor().await?;
        }
        view.publish(&view.lock());
        Ok(())
    }

    /// Drops from the overlay what the reader's view now holds.
    fn trim(&self) {
        let installed = self.follower.reader().installed_seq();
        let view = &self.follower.view;
        let mut state = view.lock();
        if installed > state.installed {
            state.installed = installed;
            state.overlay.trim(installed);
            state.reposition();
            view.publish(&state);
        }
    }

    /// Anchors the tail on its new base by replacing the reader with one opened now. The
    /// base was read (published) before this open, and was published once the database
    /// held every write up to its `max_version`: the new reader's first view holds them.
    async fn reanchor(&self) -> Result<()> {
        let (follower, view) = (&self.follower, &self.follower.view);
        let fresh = Arc::new(self.env.open_reader(view.shard).await?);
        let old = std::mem::replace(
            &mut *follower.reader.write().unwrap_or_else(|e| e.into_inner()),
            fresh,
        );
        tracing::debug!(
            shard = %view.shard,
            "follower reopened its reader to anchor on a new owner's checkpoint"
        );
        {
            let mut state = view.lock();
            state.anchored = true;
            state.reposition();
            view.publish(&state);
        }
        self.trim();
        // Reads and scans begun on the old reader finish on it first.
        self.env
            .tasks
            .spawn("close a replaced follower reader", async move {
                tokio::time::sleep(REPLACED_READER_GRACE).await;
                if let Err(e) = old.close().await {
                    tracing::debug!(error = %e, "closing a replaced follower reader failed");
                }
            });
        Ok(())
    }

    /// Moves the tail to `marker` if it is newer than the base (see "Which log, from
    /// where" in the module doc of `follower`).
    fn consider(&self, marker: Marker) {
        let view = &self.follower.view;
        let mut state = view.lock();
        if state.closed.is_some()
            || state
                .base
                .as_ref()
                .is_some_and(|b| marker.order() <= b.order())
        {
            return;
        }
        let same_owner = state
            .base
            .as_ref()
            .is_some_and(|b| b.log == marker.log && b.epoch == marker.epoch);
        let read_past = state
            .sub
            .as_ref()
            .is_some_and(|s| s.next() > marker.through_seq);
        if same_owner && (read_past || state.ended) && state.anchored {
            // A later checkpoint of the owner and log being tailed (or sealed), which the
            // tail has read past: every write before it is in objects already read, and
            // versions up to its own are spoken for.
            state.seen = state.seen.max(marker.max_version);
            state.base = Some(marker);
            state.reposition();
            view.publish(&state);
            return;
        }
        tracing::debug!(
            shard = %view.shard,
            log = marker.log,
            through_seq = marker.through_seq,
            "follower moves to a newer checkpoint"
        );
        if let Some(old) = state.sub.take() {
            old.cancel();
        }
        state.sub = Some(self.env.subscribe(view, &marker));
        state.seen = marker.max_version;
        state.base = Some(marker);
        state.anchored = false;
        state.ended = false;
        state.caught_up = false;
        state.rebase = false;
        // Anchored at once if the position already covers the base (the tail read the old
        // owner's log to its end); else `step` replaces the reader.
        state.maybe_anchor();
        view.publish(&state);
    }
}
