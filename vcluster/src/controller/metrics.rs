//! Prometheus metrics at `GET /metrics` (OpenMetrics text). Counters for requests and
//! task outcomes live for the process; per-site capacity, use and reservations, and node
//! counts by state, are read from the store at scrape time so they can never drift from it.
//! Nothing here changes state.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::App;
use super::store::{self, now_ms};
use super::view::CapacityView;
use crate::model::{NodeState, TaskKind, TaskState};

/// Every label value comes from a closed set: a request cannot make up a new series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// One of [`method_label`]'s.
    method: &'static str,
    /// A route template of the router (`/v1/clusters/{cluster}`) or `unmatched`.
    route: String,
    /// A status the controller itself answered.
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The label of an HTTP method: the standard ones by name, anything else `other`.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    tasks: Family<TaskLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let tasks = Family::<TaskLabels, Counter>::default();
        registry.register(
            "vcluster_http_requests",
            "API requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "vcluster_tasks",
            "Finished tasks by kind and outcome",
            tasks.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            tasks,
        }
    }

    /// Counts one answered request. `route` must be a route template of the router or
    /// `unmatched`, never the request's own path.
    pub fn request(&self, method: &http::Method, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method_label(method),
                route: route.to_string(),
                status,
            })
            .inc();
    }

    pub fn task_finished(&self, kind: TaskKind, outcome: TaskState) {
        self.tasks
            .get_or_create(&TaskLabels {
                kind: kind.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The whole exposition: process counters, then gauges read from the store now.
    pub async fn render(&self, app: &App) -> Result<String, store::StoreError> {
        let mut out = String::new();
        {
            let registry = self.registry.lock().expect("metrics registry");
            encode_registry(&mut out, &registry).expect("writing to a String");
        }
        let mut rx = app.store.read().await?;
        let view = CapacityView::load(
            rx.conn(),
            now_ms(),
            app.config.overcommit,
            app.host_timeout_ms(),
        )
        .await?;
        let nodes = store::all_nodes(rx.conn()).await?;
        rx.finish().await?;

        let mut live = Registry::default();
        let gauges = [
            (
                "vcluster_site_capacity_cpus",
                "CPUs at the site, overcommit included",
            ),
            (
                "vcluster_site_capacity_memory_mib",
                "Memory at the site in MiB, overcommit included",
            ),
            ("vcluster_site_in_use_cpus", "CPUs held by live nodes"),
            (
                "vcluster_site_in_use_memory_mib",
                "Memory held by live nodes in MiB",
            ),
            (
                "vcluster_site_reserved_cpus",
                "CPUs held by reservations now",
            ),
            (
                "vcluster_site_reserved_memory_mib",
                "Memory held by reservations now in MiB",
            ),
            ("vcluster_site_hosts_online", "Enabled hosts heartbeating"),
        ];
        let families: Vec<Family<SiteLabels, Gauge>> =
            gauges.iter().map(|_| Family::default()).collect();
        for s in &view.sites {
            let m = view.site_model(s);
            let label = SiteLabels {
                site: s.name.clone(),
            };
            let values = [
                m.capacity.cpus,
                m.capacity.memory_mib,
                m.in_use.cpus,
                m.in_use.memory_mib,
                m.reserved.cpus,
                m.reserved.memory_mib,
                m.hosts_online,
            ];
            for (f, v) in families.iter().zip(values) {
                f.get_or_create(&label).set(v);
            }
        }
        for ((name, help), f) in gauges.iter().zip(families) {
            live.register(*name, *help, f);
        }
        let by_state = Family::<StateLabels, Gauge>::default();
        for state in NodeState::ALL {
            // Every state is exported, at zero when no node is in it.
            by_state
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(0);
        }
        for n in &nodes {
            by_state
                .get_or_create(&StateLabels {
                    state: n.state.as_str(),
                })
                .inc();
        }
        live.register("vcluster_nodes", "Nodes by state", by_state);
        let by_health = Family::<HealthLabels, Gauge>::default();
        let counts = app.monitor.counts();
        for h in crate::model::Health::ALL {
            by_health
                .get_or_create(&HealthLabels { health: h.as_str() })
                .set(counts.get(h).copied().unwrap_or(0));
        }
        live.register(
            "vcluster_nodes_health",
            "Running nodes by health (their agents' heartbeats)",
            by_health,
        );
        encode_registry(&mut out, &live).expect("writing to a String");
        encode_eof(&mut out).expect("writing to a String");
        Ok(out)
    }
}
