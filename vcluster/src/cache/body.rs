//! Response bodies: small fixed ones, and the stream of an object's bytes from a stored
//! file or from a download in progress.
//!
//! An object stream reads the file with `pread` on a shared descriptor (so many clients
//! read one file independently, and a rename or eviction of the path does not disturb
//! them). For a download in progress it sends what is on disk, then waits for more; it
//! holds back the last byte until the download is `Complete`, and on `Failed` it ends
//! with an error, which makes hyper abort the connection: the client sees a transfer cut
//! short of its Content-Length (or a chunked body without its last chunk), never a short
//! body that looks whole. This module never touches the upstream or the store's index.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::{mpsc, watch};

use super::flight::Progress;
use super::stats::Stats;
use super::store::StoredObject;

pub type ResponseBody = BoxBody<Bytes, io::Error>;

const CHUNK: u64 = 256 * 1024;

pub fn full(b: impl Into<Bytes>) -> ResponseBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

pub fn empty() -> ResponseBody {
    Empty::new().map_err(|n| match n {}).boxed()
}

/// Where an object's bytes are read from.
pub struct ObjectSource {
    pub file: Arc<File>,
    /// `None` for a stored object (all bytes present).
    pub progress: Option<watch::Receiver<Progress>>,
    /// Keeps a stored object from being evicted while it is read.
    pub lease: Option<StoredObject>,
}

/// Streams bytes `start..end` of an object (`end: None`: to the end, length unknown yet).
pub fn object_body(
    src: ObjectSource,
    start: u64,
    end: Option<u64>,
    stats: Arc<Stats>,
) -> ResponseBody {
    let (tx, rx) = mpsc::channel(4);
    let exact = end.map(|e| e - start);
    tokio::spawn(produce(src, start, end, tx, stats));
    ChanBody {
        rx,
        remaining: exact,
    }
    .boxed()
}

async fn produce(
    mut src: ObjectSource,
    mut pos: u64,
    mut end: Option<u64>,
    tx: mpsc::Sender<io::Result<Bytes>>,
    stats: Arc<Stats>,
) {
    loop {
        // How many bytes may be read now.
        let avail = match &src.progress {
            None => end.expect("stored objects have a known length"),
            Some(rx) => {
                let now = *rx.borrow();
                match now {
                    Progress::Writing(n) => n.saturating_sub(1),
                    Progress::Complete(n) => {
                        end.get_or_insert(n);
                        n
                    }
                    Progress::Failed => {
                        let _ = tx
                            .send(Err(io::Error::other("upstream download failed")))
                            .await;
                        return;
                    }
                }
            }
        };
        let stop = end.map_or(avail, |e| avail.min(e));
        if end.is_some_and(|e| pos >= e) {
            return;
        }
        if pos < stop {
            let len = (stop - pos).min(CHUNK) as usize;
            let file = src.file.clone();
            let at = pos;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            let failed = read.is_err();
            if let Ok(b) = &read {
                Stats::add(&stats.bytes_served, b.len() as u64);
                pos += b.len() as u64;
            }
            if tx.send(read).await.is_err() || failed {
                return; // client gone, or read error sent
            }
            continue;
        }
        match &mut src.progress {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // The fetch vanished without saying Complete: not the whole object.
                    let last = *rx.borrow();
                    if !matches!(last, Progress::Complete(_)) {
                        let _ = tx.send(Err(io::Error::other("download abandoned"))).await;
                        return;
                    }
                }
            }
            None => return,
        }
    }
}

/// A body fed by a channel, with an exact size when known.
struct ChanBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: Option<u64>,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(r) = self.remaining.as_mut() {
                    *r = r.saturating_sub(b.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                if self.remaining.is_some_and(|r| r > 0) {
                    // The producer stopped early: never let that pass as a complete body.
                    Poll::Ready(Some(Err(io::Error::other("object stream ended early"))))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
