//! Progress of `--once`: a progress bar on a terminal, one plain line per shard otherwise
//! (CronJob logs). Both on stdout; logs go to stderr.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::once::ShardReport;

/// Where progress goes.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A progress bar if `terminal`, plain lines otherwise.
    pub fn new(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed}] {bar:30} {pos}/{len} shards {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Progress { bar }
    }

    /// Sets the number of shards.
    pub fn start(&self, shards: u64) {
        match &self.bar {
            Some(bar) => bar.set_length(shards),
            None => println!("maintaining {shards} shards"),
        }
    }

    /// Records a finished shard.
    pub fn shard_done(&self, report: &ShardReport) {
        match &self.bar {
            Some(bar) => {
                bar.println(report.to_string());
                bar.inc(1);
            }
            None => println!("{report}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
