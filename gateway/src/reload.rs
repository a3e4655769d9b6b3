//! Files the gateway reloads without a restart (the token file, the TLS certificate and key):
//! on SIGHUP, and when one of their modification times changes (checked every
//! [`POLL_INTERVAL`]).
//!
//! Invariant: a file that fails to load never replaces what was loaded before; the error is
//! logged with the file's path only (never its contents, which are secrets) and the gateway
//! keeps serving with the previous version.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// How often the files' modification times are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

type Loader<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// A value loaded from files, replaced when they change.
pub struct Reloadable<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T>,
    current: RwLock<(Arc<T>, Vec<Option<SystemTime>>)>,
}

fn mtimes(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    /// Loads `what` from `paths` with `load` (which reads them); fails if the first load does.
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let stamps = mtimes(&paths);
        let value = load()?;
        Ok(Reloadable {
            what,
            paths,
            load: Box::new(load),
            current: RwLock::new((Arc::new(value), stamps)),
        })
    }

    /// The value loaded last.
    pub fn get(&self) -> Arc<T> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()).0)
    }
}

/// Something [`watch`] reloads.
pub trait Reload: Send + Sync {
    /// Reloads if `force` or if the files changed.
    fn reload(&self, force: bool);
}

impl<T: Send + Sync + 'static> Reload for Reloadable<T> {
    fn reload(&self, force: bool) {
        let stamps = mtimes(&self.paths);
        if !force && self.current.read().unwrap_or_else(|e| e.into_inner()).1 == stamps {
            return;
        }
        match (self.load)() {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                    (Arc::new(value), stamps);
                tracing::info!(what = self.what, "reloaded");
            }
            Err(error) => {
                // Remember the stamps so a broken file is reported once, not every poll.
                self.current.write().unwrap_or_else(|e| e.into_inner()).1 = stamps;
                tracing::error!(what = self.what, %error, "reload failed; keeping the previous version");
            }
        }
    }
}

/// Reloads `items` on SIGHUP (all of them) and when their files change, until `stop`.
pub fn watch(items: Vec<Arc<dyn Reload>>, stop: CancellationToken) -> std::io::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        loop {
            let force = tokio::select! {
                _ = stop.cancelled() => return,
                _ = hangup.recv() => true,
                _ = poll.tick() => false,
            };
            for item in &items {
                item.reload(force);
            }
        }
    });
    Ok(())
}
