//! The data path: operating-system threads that move frames between TAP queues and UDP
//! sockets through the networks' `vpn-core` state machines.
//!
//! - One TAP reader per queue of each running network: it reads a batch of frames
//!   (TCP super-frames included) without holding any lock, cuts them into wire frames
//!   ([`crate::offload::Segmenter`]), takes the network's lock once for the batch to
//!   switch and seal them, releases it, and sends the datagrams with one GSO/`sendmmsg`
//!   call.
//! - One UDP reader per socket (sockets share their port with `SO_REUSEPORT`, one per
//!   worker): `recvmmsg` takes a batch, each datagram is opened in place under its
//!   network's lock, and the frames go to the TAP, coalesced into super-frames where
//!   possible ([`crate::offload::Coalescer`]) and otherwise written straight from the
//!   receive buffer (the spent data header in front of a frame becomes its virtio
//!   header: no copy).
//!
//! Threads block in the kernel (poll, recvmmsg), not in an event loop: a frame is
//! handled the moment it arrives. Timers, handshakes on start and the control plane stay
//! in tokio ([`crate::daemon`]); a data-path thread wakes the timer task only when it
//! moved the network's next deadline earlier.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::{debug, warn};
use vpn_core::Network;
use vpn_core::wire::{DATA_HEADER_LEN, MAX_FRAME_LEN, Route};

use crate::offload::{Coalescer, Segmenter, VNET_HDR_LEN, Verdict, VnetHdr};
use crate::tap::Tap;
use crate::udp::{RecvBatch, SendBatch, Udp, Waker, wait_readable};

/// Frames read from a TAP per batch (each up to a 64 KiB super-frame).
const TAP_BATCH: usize = 16;
const TAP_SLOT: usize = VNET_HDR_LEN + 65536;

/// What the data path needs of a running network.
pub struct NetPath {
    pub id: u32,
    pub state: Mutex<Network>,
    pub tap: Tap,
    /// Wakes the timer task when its deadline must move earlier.
    pub timer: tokio::sync::Notify,
    /// The deadline the timer task sleeps until, in nanoseconds since `epoch`.
    pub timer_deadline: AtomicU64,
    pub epoch: Instant,
    pub counters: PathCounters,
}

#[derive(Default)]
pub struct PathCounters {
    pub frames_to_tap: AtomicU64,
    pub tap_write_errors: AtomicU64,
    pub send_errors: AtomicU64,
    pub offload_errors: AtomicU64,
    pub coalesced: AtomicU64,
}

impl NetPath {
    /// After input: wake the timer task if the network's next deadline is now earlier
    /// than the one it sleeps until.
    pub fn after_input(&self, net: &Network) {
        if net.has_events() {
            // The timer task logs them.
            self.timer.notify_one();
            return;
        }
        if let Some(at) = net.poll_timeout() {
            let at = at.saturating_duration_since(self.epoch).as_nanos() as u64;
            if at < self.timer_deadline.load(Ordering::Relaxed) {
                self.timer_deadline.store(at, Ordering::Relaxed);
                self.timer.notify_one();
            }
        }
    }

    fn write_tap(&self, queue: usize, buf: &[u8]) {
        match self.tap.write(queue, buf) {
            Ok(_) => {
                self.counters.frames_to_tap.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters
                    .tap_write_errors
                    .fetch_add(1, Ordering::Relaxed);
                debug!(tap = self.tap.name(), "write failed: {e}");
            }
        }
    }
}

/// The daemon's sockets, by family; data-path threads send on the one of their index.
pub struct Sockets {
    pub all: Vec<Arc<Udp>>,
}

impl Sockets {
    /// A socket for `dest`'s family, preferring the `worker`-th of that family.
    pub fn for_dest(&self, dest: SocketAddr, worker: usize) -> Option<&Udp> {
        let n = self
            .all
            .iter()
            .filter(|s| s.local_addr().is_ipv4() == dest.is_ipv4())
            .count();
        if n == 0 {
            return None;
        }
        self.all
            .iter()
            .filter(|s| s.local_addr().is_ipv4() == dest.is_ipv4())
            .nth(worker % n)
            .map(|s| s.as_ref())
    }
}

/// Sends what a batch collected, each datagram on a socket of its family.
fn send_all(out: &mut SendBatch, sockets: &Sockets, worker: usize, counters: &PathCounters) {
    if out.is_empty() {
        return;
    }
    let failed = out.send(|dest| sockets.for_dest(dest, worker));
    if failed > 0 {
        counters
            .send_errors
            .fetch_add(failed as u64, Ordering::Relaxed);
    }
}

/// Drains a network's pending datagrams (sealing them) into `out`, and its frames for
/// the local port into `frames`. Returns whether the network has more than fitted.
fn collect(net: &mut Network, now: Instant, out: &mut SendBatch, frames: &mut FrameBatch) -> bool {
    let max = net.max_datagram_len();
    let mut more = false;
    loop {
        let Some(space) = out.space(max) else {
            more = true;
            break;
        };
        match net.poll_transmit(now, space) {
            Some(t) => out.push(t.destination, t.len),
            None => break,
        }
    }
    while let Some(slot) = frames.space() {
        match net.poll_deliver(&mut slot[VNET_HDR_LEN..]) {
            Some(n) => frames.push(n),
            None => break,
        }
    }
    more || frames.space().is_none()
}

/// Frames for the local port, each with room for its virtio header.
struct FrameBatch {
    buf: Vec<u8>,
    lens: Vec<usize>,
}

const FRAME_SLOT: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
const FRAME_BATCH: usize = 64;

impl FrameBatch {
    fn new() -> FrameBatch {
        FrameBatch {
            buf: vec![0u8; FRAME_BATCH * FRAME_SLOT],
            lens: Vec::with_capacity(FRAME_BATCH),
        }
    }

    fn space(&mut self) -> Option<&mut [u8]> {
        let i = self.lens.len();
        (i < FRAME_BATCH).then(|| &mut self.buf[i * FRAME_SLOT..(i + 1) * FRAME_SLOT])
    }

    fn push(&mut self, len: usize) {
        self.lens.push(len);
    }

    /// Writes every frame to the TAP (with an empty virtio header) and empties.
    fn write_all(&mut self, net: &NetPath, queue: usize) {
        for (i, len) in self.lens.iter().enumerate() {
            let slot = &mut self.buf[i * FRAME_SLOT..i * FRAME_SLOT + VNET_HDR_LEN + len];
            VnetHdr::default().write(slot);
            net.write_tap(queue, slot);
        }
        self.lens.clear();
    }
}

/// Stops and joins a set of threads when dropped.
pub struct Threads {
    stop: Arc<Waker>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    pub fn stop_signal(&self) -> Arc<Waker> {
        Arc::clone(&self.stop)
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop.wake();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Starts one TAP reader per queue of `net`.
pub fn spawn_tap_readers(net: &Arc<NetPath>, sockets: &Arc<Sockets>) -> io::Result<Threads> {
    let stop = Arc::new(Waker::new()?);
    let mut handles = Vec::new();
    for queue in 0..net.tap.queues() {
        let net = Arc::clone(net);
        let sockets = Arc::clone(sockets);
        let stop = Arc::clone(&stop);
        handles.push(
            std::thread::Builder::new()
                .name(format!("vpnd-tap{}-{queue}", net.id))
                .spawn(move || tap_reader(&net, queue, &sockets, &stop))?,
        );
    }
    Ok(Threads { stop, handles })
}

fn tap_reader(net: &NetPath, queue: usize, sockets: &Sockets, stop: &Waker) {
    let mut slots = vec![0u8; TAP_BATCH * TAP_SLOT];
    let mut lens = [0usize; TAP_BATCH];
    let mut segmenter = Segmenter::new();
    let mut out = SendBatch::new(crate::udp::BATCH * 4 * 1600);
    let mut frames = FrameBatch::new();
    loop {
        // A batch: whatever is queued, without waiting.
        let mut count = 0;
        while count < TAP_BATCH {
            match net
                .tap
                .read(queue, &mut slots[count * TAP_SLOT..(count + 1) * TAP_SLOT])
            {
                Ok(n) if n > VNET_HDR_LEN => {
                    lens[count] = n;
                    count += 1;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(tap = net.tap.name(), "reading the TAP failed: {e}");
                    break;
                }
            }
        }
        if count == 0 {
            if !wait_readable(net.tap.fd(queue), stop) {
                return;
            }
            continue;
        }
        let now = Instant::now();
        let mut more = {
            let mut state = net.state.lock().expect("network lock");
            for (i, &len) in lens.iter().enumerate().take(count) {
                let slot = &mut slots[i * TAP_SLOT..i * TAP_SLOT + len];
                let (hdr, frame) = slot.split_at_mut(VNET_HDR_LEN);
                let hdr = VnetHdr::parse(hdr);
                let result = segmenter.split(&hdr, frame, |f| state.handle_local_frame(now, f));
                if let Err(e) = result {
                    net.counters.offload_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(tap = net.tap.name(), "dropped a frame: {e}");
                }
            }
            let more = collect(&mut state, now, &mut out, &mut frames);
            net.after_input(&state);
            more
        };
        loop {
            send_all(&mut out, sockets, queue, &net.counters);
            frames.write_all(net, queue);
            if !more {
                break;
            }
            let mut state = net.state.lock().expect("network lock");
            more = collect(&mut state, Instant::now(), &mut out, &mut frames);
        }
    }
}

/// How a data-path thread finds the network a datagram belongs to.
pub trait Router: Send + Sync {
    fn route(&self, route: Route) -> Option<Arc<NetPath>>;
    fn unroutable(&self);
}

/// Starts the reader thread of one socket; it runs as long as the process.
pub fn spawn_udp_reader(
    udp: Arc<Udp>,
    worker: usize,
    sockets: Arc<Sockets>,
    router: Arc<dyn Router>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vpnd-udp{worker}"))
        .spawn(move || udp_reader(&udp, worker, &sockets, router.as_ref()))
}

/// A frame decrypted in place: message `msg` of the batch, bytes `range`.
struct Delivery {
    net: usize,
    msg: usize,
    range: Range<usize>,
}

fn udp_reader(udp: &Udp, worker: usize, sockets: &Sockets, router: &dyn Router) {
    let mut batch = RecvBatch::new();
    let mut out = SendBatch::new(crate::udp::BATCH * 1600);
    let mut frames = FrameBatch::new();
    let mut deliveries: Vec<Delivery> = Vec::with_capacity(crate::udp::BATCH * 8);
    let mut nets: Vec<Arc<NetPath>> = Vec::with_capacity(4);
    let mut coalescer = Coalescer::new();
    loop {
        let n = match batch.recv(udp) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // ICMP errors from earlier sends surface here; they are not fatal.
                debug!("receive: {e}");
                continue;
            }
        };
        let now = Instant::now();
        deliveries.clear();
        nets.clear();
        for m in 0..n {
            let received = batch.received[m];
            if received.len == 0 {
                continue;
            }
            let segment = received.segment;
            let message = batch.message_mut(m);
            let mut start = 0;
            // A GRO message holds several datagrams of `segment` bytes.
            while start < message.len() {
                let end = (start + segment).min(message.len());
                let datagram = &mut message[start..end];
                let net = match vpn_core::wire::route(datagram) {
                    Ok(r) => router.route(r),
                    Err(_) => None,
                };
                let Some(net) = net else {
                    router.unroutable();
                    start = end;
                    continue;
                };
                let k = match nets.iter().position(|x| Arc::ptr_eq(x, &net)) {
                    Some(k) => k,
                    None => {
                        nets.push(net);
                        nets.len() - 1
                    }
                };
                let base = datagram.as_ptr() as usize;
                let mut state = nets[k].state.lock().expect("network lock");
                match state.handle_datagram(now, received.source, datagram) {
                    Ok(Some(frame)) => {
                        let at = frame.as_ptr() as usize - base + start;
                        deliveries.push(Delivery {
                            net: k,
                            msg: m,
                            range: at..at + frame.len(),
                        });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        debug!(network = nets[k].id, from = %received.source, "dropped datagram: {e}")
                    }
                }
                drop(state);
                start = end;
            }
        }
        // Everything the batch produced besides frames (responses, keepalives, ARP
        // replies), then the frames.
        for net in &nets {
            let mut more = true;
            while more {
                {
                    let mut state = net.state.lock().expect("network lock");
                    more = collect(&mut state, now, &mut out, &mut frames);
                    net.after_input(&state);
                }
                send_all(&mut out, sockets, worker, &net.counters);
                frames.write_all(net, worker);
            }
        }
        for (i, d) in deliveries.iter().enumerate() {
            let net = &nets[d.net];
            let queue = worker;
            let msg = batch.message_mut(d.msg);
            let frame = &msg[d.range.clone()];
            let mut write = |w: &[u8]| net.write_tap(queue, w);
            if coalescer.push(frame, &mut write) == Verdict::Passthrough {
                // The 10 bytes before the frame held the now-spent data header.
                debug_assert!(d.range.start >= VNET_HDR_LEN && DATA_HEADER_LEN >= VNET_HDR_LEN);
                let with_hdr = &mut msg[d.range.start - VNET_HDR_LEN..d.range.end];
                VnetHdr::default().write(with_hdr);
                net.write_tap(queue, with_hdr);
            }
            // Frames of different networks go to different TAPs: flush at a change.
            if deliveries.get(i + 1).is_none_or(|next| next.net != d.net) {
                let merged = coalescer.merged;
                coalescer.flush(&mut write);
                net.counters.coalesced.fetch_add(merged, Ordering::Relaxed);
                coalescer.merged = 0;
            }
        }
    }
}
