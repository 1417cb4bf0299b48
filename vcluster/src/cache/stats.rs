//! Counters of what the cache does, and their two renderings: JSON (for
//! `vcluster cache stats` and scripts) and the OpenMetrics text of `/_cache/metrics`.
//!
//! Counters are plain atomics bumped where things happen; this module never decides
//! anything and never blocks. Gauges that belong to other parts (objects stored, bytes
//! stored, downloads in flight) are read from them when a snapshot is taken.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

/// Monotonic counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    /// Served from the store without asking the upstream.
    pub hits: AtomicU64,
    /// ... of which answered on the sendfile path, ahead of hyper (`sendfile.rs`).
    pub sendfile_hits: AtomicU64,
    /// Started a download (nothing stored, or a revalidation found it changed).
    pub misses: AtomicU64,
    /// Joined a download another request had started.
    pub coalesced: AtomicU64,
    /// Conditional requests sent upstream for stored objects.
    pub revalidations: AtomicU64,
    /// ... of which the upstream answered 304.
    pub revalidated_unchanged: AtomicU64,
    /// Requests relayed without storing (policy `pass`, upstream errors, CONNECT).
    pub passed: AtomicU64,
    pub upstream_requests: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// Requests sent upstream for the rest of a body that was cut (or the whole again).
    pub upstream_resumes: AtomicU64,
    pub bytes_from_upstream: AtomicU64,
    pub bytes_served: AtomicU64,
    pub client_errors: AtomicU64,
    pub evictions: AtomicU64,
    pub corrupt_dropped: AtomicU64,
    /// Complete downloads that were not stored (too large for the limit, hash mismatch).
    pub not_stored: AtomicU64,
}

/// Point-in-time gauges supplied by the store and the single-flight table.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub objects: u64,
    pub stored_bytes: u64,
    pub max_bytes: u64,
    pub in_flight: u64,
}

/// What `/_cache/stats` returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub hits: u64,
    pub sendfile_hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub revalidations: u64,
    pub revalidated_unchanged: u64,
    pub passed: u64,
    pub upstream_requests: u64,
    pub upstream_errors: u64,
    pub upstream_resumes: u64,
    pub bytes_from_upstream: u64,
    pub bytes_served: u64,
    pub client_errors: u64,
    pub evictions: u64,
    pub corrupt_dropped: u64,
    pub not_stored: u64,
    pub objects: u64,
    pub stored_bytes: u64,
    pub max_bytes: u64,
    pub in_flight: u64,
}

macro_rules! fields {
    ($m:ident) => {
        $m!(
            requests,
            hits,
            sendfile_hits,
            misses,
            coalesced,
            revalidations,
            revalidated_unchanged,
            passed,
            upstream_requests,
            upstream_errors,
            upstream_resumes,
            bytes_from_upstream,
            bytes_served,
            client_errors,
            evictions,
            corrupt_dropped,
            not_stored
        )
    };
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self, g: Gauges) -> StatsSnapshot {
        macro_rules! snap {
            ($($f:ident),*) => {
                StatsSnapshot {
                    $($f: self.$f.load(Ordering::Relaxed),)*
                    objects: g.objects,
                    stored_bytes: g.stored_bytes,
                    max_bytes: g.max_bytes,
                    in_flight: g.in_flight,
                }
            };
        }
        fields!(snap)
    }
}

impl StatsSnapshot {
    /// The OpenMetrics text, encoded by `prometheus-client` like every `/metrics` of the
    /// project (`docs/metrics.md`). No labels: the cache's series are these twenty-one.
    pub fn to_prometheus(&self) -> String {
        let counters = [
            ("requests", "Client requests", self.requests),
            (
                "hits",
                "Requests served from the store without asking the upstream",
                self.hits,
            ),
            (
                "sendfile_hits",
                "Hits sent from the file to the socket by sendfile(2)",
                self.sendfile_hits,
            ),
            (
                "misses",
                "Requests that started an upstream download",
                self.misses,
            ),
            (
                "coalesced",
                "Requests that joined a download already in flight",
                self.coalesced,
            ),
            (
                "revalidations",
                "Conditional requests sent upstream",
                self.revalidations,
            ),
            (
                "revalidated_unchanged",
                "Revalidations answered 304 Not Modified",
                self.revalidated_unchanged,
            ),
            ("passed", "Requests relayed without storing", self.passed),
            (
                "upstream_requests",
                "Requests sent to upstreams",
                self.upstream_requests,
            ),
            (
                "upstream_errors",
                "Upstream requests that failed (connect, timeout, cut)",
                self.upstream_errors,
            ),
            (
                "upstream_resumes",
                "Requests for the rest of a body the upstream cut",
                self.upstream_resumes,
            ),
            (
                "upstream_bytes",
                "Body bytes received from upstreams",
                self.bytes_from_upstream,
            ),
            (
                "served_bytes",
                "Body bytes sent to clients",
                self.bytes_served,
            ),
            (
                "client_errors",
                "Requests refused with a 4xx status",
                self.client_errors,
            ),
            (
                "evictions",
                "Objects evicted to stay under the size limit",
                self.evictions,
            ),
            (
                "corrupt_dropped",
                "Stored objects found broken and deleted",
                self.corrupt_dropped,
            ),
            (
                "not_stored",
                "Complete downloads not stored (too large)",
                self.not_stored,
            ),
        ];
        let gauges = [
            ("objects", "Objects in the store", self.objects),
            (
                "stored_bytes",
                "Bytes of the store's objects on disk",
                self.stored_bytes,
            ),
            ("max_bytes", "The store's size limit", self.max_bytes),
            (
                "in_flight",
                "Upstream downloads in progress",
                self.in_flight,
            ),
        ];
        let mut registry = Registry::with_prefix("vcluster_cache");
        for (name, help, value) in counters {
            let counter = Counter::<u64>::default();
            counter.inc_by(value);
            registry.register(name, help, counter);
        }
        for (name, help, value) in gauges {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            registry.register(name, help, gauge);
        }
        let mut out = String::new();
        encode(&mut out, &registry).expect("writing to a String");
        out
    }

    /// A two-column table for humans.
    pub fn to_table(&self) -> String {
        let v = serde_json::to_value(self).expect("plain struct");
        let mut out = String::new();
        if let Some(map) = v.as_object() {
            for (k, v) in map {
                let _ = writeln!(out, "{k:<24} {v}");
            }
        }
        let served = self.hits + self.coalesced + self.misses;
        if served > 0 {
            let _ = writeln!(
                out,
                "{:<24} {:.1}%",
                "hit_ratio",
                100.0 * (self.hits + self.coalesced) as f64 / served as f64
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_help_type_and_value_lines() {
        let s = Stats::default();
        Stats::add(&s.hits, 3);
        let text = s
            .snapshot(Gauges {
                objects: 2,
                ..Default::default()
            })
            .to_prometheus();
        assert!(
            text.contains("# TYPE vcluster_cache_hits counter\nvcluster_cache_hits_total 3\n"),
            "{text}"
        );
        assert!(text.contains("vcluster_cache_objects 2\n"));
        assert!(text.ends_with("# EOF\n"));
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples.len(),
            21,
            "one series per counter and gauge: {text}"
        );
        for line in samples {
            let mut parts = line.split(' ');
            assert!(parts.next().unwrap().starts_with("vcluster_cache_"));
            parts.next().unwrap().parse::<u64>().unwrap();
        }
    }
}
