//! Measurements the core records for the binaries' metrics exporters (which own the
//! Prometheus types): counters are atomics read when the exporter renders, and durations are
//! [`Samples`] it drains into its histograms.

use std::sync::Mutex;

/// Samples in seconds (latencies, lags), drained by the metrics exporter.
#[derive(Debug, Default)]
pub struct Samples(Mutex<Vec<f64>>);

impl Samples {
    /// Most samples kept between two drains (more are dropped: a gateway nobody scrapes
    /// keeps bounded memory).
    const MAX: usize = 10_000;

    /// Records one sample.
    pub fn push(&self, seconds: f64) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < Self::MAX {
            v.push(seconds);
        }
    }

    /// Takes the samples recorded since the last call.
    pub fn drain(&self) -> Vec<f64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
