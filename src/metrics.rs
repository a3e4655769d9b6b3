//! The metrics every Tessera binary exports the same way (feature `metrics`): the standard
//! `process_*` metrics and `tessera_build_info`. Each binary keeps its own registry of prefixed
//! metrics (`tessera_`, `tessera_compactor_`) and appends this one, unprefixed, when it renders.
//!
//! Invariant: these names and labels are identical in every binary, so one query
//! (`rate(process_cpu_seconds_total[5m])`, `tessera_build_info`) covers gateways and
//! compactors alike; the scrape's own labels (`instance`, `job`) tell them apart.

use prometheus::{IntGauge, Opts, Registry};

/// A registry of the metrics named without a binary's prefix: the standard `process_*`
/// metrics (CPU, memory, file descriptors, threads, start time; Linux only, read from
/// `/proc`), and `tessera_build_info`, always 1 with `version` as a label so that dashboards
/// can count and join on it.
///
/// `version` is the calling binary's version (its `CARGO_PKG_VERSION`, not this crate's).
pub fn process_registry(version: &str) -> Registry {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("a new registry holds no process_* metrics yet");
    let info = IntGauge::with_opts(
        Opts::new(
            "tessera_build_info",
            "Always 1; label version: the version of this binary",
        )
        .const_label("version", version),
    )
    .expect("valid metric");
    r.register(Box::new(info.clone()))
        .expect("a new registry holds no tessera_build_info yet");
    info.set(1);
    r
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn build_info_carries_the_given_version() {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&super::process_registry("9.8.7").gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("tessera_build_info{version=\"9.8.7\"} 1\n"),
            "{text}"
        );
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }
}
