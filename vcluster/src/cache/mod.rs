//! `vcluster cache`: the per-site HTTP caching proxy for package repositories.
//!
//! Reinstalling N nodes at a site should pull each package across the WAN once, not N
//! times. Nodes reach this cache at a site-local address, either as their HTTP proxy
//! (`Acquire::http::Proxy`, dnf's `proxy=`) or through mirror prefixes (`/debian/...`).
//!
//! How the parts fit, outside in:
//!
//! * `server` accepts connections (HTTP/1.1, keep-alive), shuts down cleanly, and writes
//!   the access log; `proxy` turns one request into one response: it validates the target
//!   (`target`), applies client conditionals and ranges, and answers errors with a 4xx/5xx
//!   status and a JSON body.
//! * [`Cache::get`] decides hit, revalidate or miss (`policy`), and joins or leads a
//!   download in the single-flight table (`flight`). `fetch` runs one download: the
//!   upstream request, the temporary file, the checks, the commit to the `store`.
//! * `body` streams an object to a client from the store or from a download in progress;
//!   `sendfile` serves hits of stored objects on plain HTTP/1.1 connections straight from
//!   the file to the socket, ahead of hyper, and hands every other request to hyper.
//! * `stats` counts; `config` reads the TOML file; `cli` is the `vcluster cache` command;
//!   `warm` fills a cache with a package list's closure before installs.
//!
//! Nothing here knows about the rest of vcluster, and nothing outside this module needs
//! to know more than [`CacheServer`] and [`CacheConfig`].

pub mod body;
pub mod cli;
pub mod config;
pub mod fetch;
pub mod flight;
pub mod policy;
pub mod proxy;
pub mod resume;
pub mod sendfile;
pub mod server;
pub mod stats;
pub mod store;
pub mod target;
pub mod warm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use config::CacheConfig;
pub use server::CacheServer;

use flight::{Download, FlightState, Flights, Relayed};
use policy::{Class, Policy};
use stats::{Gauges, Stats, StatsSnapshot};
use store::{Store, StoredObject};
use target::Target;

/// The HTTP client used for every upstream request (pooled, keep-alive).
pub type UpstreamClient = Client<HttpConnector, Empty<Bytes>>;

/// Where a response's body comes from.
pub enum Source {
    /// A stored object; `revalidated` if the upstream just confirmed it (304).
    Stored {
        object: StoredObject,
        revalidated: bool,
    },
    /// A download in progress; `leader` if this request started it.
    Live {
        download: Arc<Download>,
        leader: bool,
    },
    Relay(Arc<Relayed>),
    Failed(Arc<str>),
}

impl Source {
    /// The cache status for the access log and the `X-Cache` header.
    pub fn label(&self) -> &'static str {
        match self {
            Source::Stored {
                revalidated: false, ..
            } => "HIT",
            Source::Stored {
                revalidated: true, ..
            } => "REVALIDATED",
            Source::Live { leader: true, .. } => "MISS",
            Source::Live { leader: false, .. } => "COALESCED",
            Source::Relay(_) => "RELAY",
            Source::Failed(_) => "ERROR",
        }
    }
}

/// What `Cache::get` found in the single-flight table and the store.
enum Step {
    Hit,
    Join(Arc<flight::Flight>),
    Lead(Arc<flight::Flight>, Option<store::Peek>),
}

/// The shared state of a running cache.
pub struct Cache {
    pub config: CacheConfig,
    pub mirrors: Vec<config::Mirror>,
    pub policy: Policy,
    pub store: Arc<Store>,
    pub flights: Arc<Flights>,
    pub stats: Arc<Stats>,
    pub client: UpstreamClient,
}

impl Cache {
    /// Opens the store (blocking: call from `spawn_blocking` or before the runtime runs).
    pub fn open(config: CacheConfig) -> Result<Cache, store::StoreError> {
        let stats = Arc::new(Stats::default());
        let store = Arc::new(Store::open(
            &config.store,
            config.max_size.0,
            stats.clone(),
        )?);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(
            config.upstream_connect_timeout_secs,
        )));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Cache {
            mirrors: config.mirror_table(),
            policy: Policy::new(&config.policy, Duration::from_secs(config.fresh_secs)),
            store,
            flights: Arc::new(Flights::default()),
            stats,
            client,
            config,
        })
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let (objects, stored_bytes) = self.store.usage();
        self.stats.snapshot(Gauges {
            objects,
            stored_bytes,
            max_bytes: self.store.max_bytes(),
            in_flight: self.flights.len() as u64,
        })
    }

    /// A fresh stored copy of `target`, opened and counted as a hit, if there is one and
    /// no download of it is in flight; `None` (nothing counted) leaves the request to
    /// [`Cache::get`]. The sendfile path serves what this returns.
    pub async fn stored_hit(
        self: &Arc<Self>,
        target: &Target,
        class: Class,
    ) -> Option<StoredObject> {
        let key = target.key.as_str();
        let fresh = {
            let table = self.flights.lock();
            table.get(key).is_none()
                && self.store.peek(key).is_some_and(|p| {
                    self.policy
                        .is_fresh(class, &p.validity, p.group_gen, Instant::now())
                })
        };
        if !fresh {
            return None;
        }
        let object = self.open_stored(key).await?;
        Stats::add(&self.stats.hits, 1);
        Some(object)
    }

    /// Opens a stored object (blocking file I/O, so on the blocking pool).
    async fn open_stored(&self, key: &str) -> Option<StoredObject> {
        let store = self.store.clone();
        let k = key.to_owned();
        tokio::task::spawn_blocking(move || store.open_object(&k))
            .await
            .ok()
            .flatten()
    }

    /// Finds the object for `target`: a fresh stored copy, or the download that fetches or
    /// revalidates it (joining one in flight, or starting one). Exactly one download per
    /// key is in flight at any time.
    pub async fn get(self: &Arc<Self>, target: &Target, class: Class) -> Source {
        let key = target.key.as_str();
        // A stored object can vanish between peek and open (evicted, found corrupt); then
        // the loop goes round once more and fetches it.
        for _ in 0..4 {
            let step = {
                let mut table = self.flights.lock();
                match table.get(key) {
                    Some(f) => Step::Join(f),
                    None => {
                        let peek = self.store.peek(key);
                        let fresh = peek.as_ref().is_some_and(|p| {
                            self.policy
                                .is_fresh(class, &p.validity, p.group_gen, Instant::now())
                        });
                        if fresh {
                            Step::Hit
                        } else {
                            Step::Lead(table.start(key), peek)
                        }
                    }
                }
            };
            let (flight, leader) = match step {
                Step::Hit => {
                    if let Some(object) = self.open_stored(key).await {
                        Stats::add(&self.stats.hits, 1);
                        return Source::Stored {
                            object,
                            revalidated: false,
                        };
                    }
                    continue;
                }
                Step::Join(f) => (f, false),
                Step::Lead(f, peek) => {
                    if peek.is_some() {
                        Stats::add(&self.stats.revalidations, 1);
                    }
                    fetch::spawn(self.clone(), f.clone(), target.clone(), peek);
                    (f, true)
                }
            };
            if !leader {
                Stats::add(&self.stats.coalesced, 1);
            }
            match flight.settled().await {
                FlightState::Pending => unreachable!("settled() waits past Pending"),
                FlightState::NotModified => {
                    if let Some(object) = self.open_stored(key).await {
                        return Source::Stored {
                            object,
                            revalidated: true,
                        };
                    }
                }
                FlightState::Streaming(download) => {
                    if leader {
                        Stats::add(&self.stats.misses, 1);
                    }
                    return Source::Live { download, leader };
                }
                FlightState::Relay(r) => return Source::Relay(r),
                FlightState::Failed(e) => return Source::Failed(e),
            }
        }
        Source::Failed(Arc::from("object kept disappearing from the store"))
    }
}
