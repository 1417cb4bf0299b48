//! Single-flight: the table of downloads in progress, so that concurrent requests for one
//! object make exactly one upstream request.
//!
//! The first request for an object that is missing or stale becomes the *leader*: it
//! registers a [`Flight`] under the object's key and spawns the fetch (`fetch.rs`). Every
//! request that finds the key in the table joins that flight instead and waits for its
//! state to leave `Pending`. From then on every waiter reads the same temporary file
//! through its own `pread`s while the fetch appends to it, so nobody waits for the whole
//! file, and a late joiner gets what is already on disk and then follows the download.
//!
//! There is no lock timeout: a flight ends only when its fetch ends (complete, failed, or
//! timed out by the upstream idle timeout), and a flight is removed from the table
//! *before* a failure is announced, so the next request starts a fresh download rather than
//! joining a dead one. This module never talks to the upstream or the store.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

/// Headers of an object, from the store's metadata or the upstream's response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectHead {
    /// Body length, if known (the upstream may not send Content-Length).
    pub length: Option<u64>,
    pub content_type: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// How far a download has got. Bytes below the count are on disk and readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Writing(u64),
    /// All bytes are written and checked (length, and hash where the path gives one).
    Complete(u64),
    /// The download failed; the bytes written are not the object.
    Failed,
}

/// A download in progress (or just finished) that waiters read from.
pub struct Download {
    pub head: ObjectHead,
    pub file: Arc<File>,
    pub progress: watch::Receiver<Progress>,
}

/// A non-200 upstream answer, relayed to every waiter and never stored.
#[derive(Debug)]
pub struct Relayed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub enum FlightState {
    /// Waiting for the upstream's response head.
    Pending,
    /// A revalidation got 304: the stored object is current.
    NotModified,
    Streaming(Arc<Download>),
    Relay(Arc<Relayed>),
    /// No usable response (connect error, timeout, oversized error body).
    Failed(Arc<str>),
}

/// One download in progress, shared by its leader and its waiters.
pub struct Flight {
    state: watch::Sender<FlightState>,
}

impl Flight {
    fn new() -> Flight {
        Flight {
            state: watch::channel(FlightState::Pending).0,
        }
    }

    pub fn set(&self, s: FlightState) {
        self.state.send_replace(s);
    }

    /// Ends a flight that never got a response head.
    pub fn fail_if_pending(&self, msg: &str) {
        self.state.send_if_modified(|s| {
            if matches!(s, FlightState::Pending) {
                *s = FlightState::Failed(Arc::from(msg));
                true
            } else {
                false
            }
        });
    }

    /// Waits until the response head is known.
    pub async fn settled(&self) -> FlightState {
        let mut rx = self.state.subscribe();
        let res = rx
            .wait_for(|s| !matches!(s, FlightState::Pending))
            .await
            .map(|s| s.clone());
        // The sender lives as long as `self`, so the channel cannot close under us.
        res.unwrap_or_else(|_| FlightState::Failed(Arc::from("download abandoned")))
    }
}

/// The table of flights, keyed by object key.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<String, Arc<Flight>>>,
}

/// Guard of the table's lock: lookups and inserts under one lock make join-or-lead atomic.
pub struct FlightTable<'a>(MutexGuard<'a, HashMap<String, Arc<Flight>>>);

impl FlightTable<'_> {
    pub fn get(&self, key: &str) -> Option<Arc<Flight>> {
        self.0.get(key).cloned()
    }

    /// Registers a new flight for `key`; the caller is its leader.
    pub fn start(&mut self, key: &str) -> Arc<Flight> {
        let f = Arc::new(Flight::new());
        self.0.insert(key.to_owned(), f.clone());
        f
    }
}

impl Flights {
    pub fn lock(&self) -> FlightTable<'_> {
        FlightTable(self.map.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Removes `flight` from the table if it is still the one registered for `key`.
    pub fn finish(&self, key: &str, flight: &Arc<Flight>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn joiners_see_the_leaders_outcome_and_finish_removes_only_that_flight() {
        let flights = Flights::default();
        let leader = flights.lock().start("k");
        let joined = flights.lock().get("k").unwrap();
        assert!(Arc::ptr_eq(&leader, &joined));
        let waiter = tokio::spawn(async move { joined.settled().await });
        tokio::task::yield_now().await;
        leader.set(FlightState::NotModified);
        assert!(matches!(waiter.await.unwrap(), FlightState::NotModified));
        let newer = flights.lock().start("k");
        flights.finish("k", &leader); // stale handle: must not remove the newer flight
        assert!(
            flights
                .lock()
                .get("k")
                .is_some_and(|f| Arc::ptr_eq(&f, &newer))
        );
        flights.finish("k", &newer);
        assert!(flights.is_empty());
    }
}
