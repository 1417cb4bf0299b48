//! The data path: one worker thread per core, each moving frames between its queue of
//! every network's TAP and its own UDP socket(s), through the networks' `vpn-core`
//! state machines.
//!
//! A worker waits on one epoll set holding its sockets (one per listen address, all
//! workers' sockets sharing the port with `SO_REUSEPORT`) and its queue of each running
//! network's multi-queue TAP. When a source is ready:
//! - TAP queue: it reads a batch of frames (TCP super-frames included) without holding
//!   any lock, cuts them into wire frames ([`crate::offload::Segmenter`]), takes the
//!   network's lock once to switch and seal them, releases it, and sends the datagrams
//!   with one GSO/`sendmmsg` call;
//! - socket: `recvmmsg` takes a batch; each datagram is opened in place under its
//!   network's lock; frames go to the TAP coalesced into super-frames where possible
//!   ([`crate::offload::Coalescer`]), otherwise written straight from the receive buffer
//!   (the spent data header in front of a frame becomes its virtio header: no copy).
//!
//! After handling input a worker keeps polling without sleeping for a short while
//! (`busy_poll`): the answer to what it just sent (an ACK, a ping reply) usually comes
//! back within it, and is then handled without the cost of waking a sleeping CPU, which
//! on a virtual machine is tens of microseconds. Because one thread handles both
//! directions of a flow, a round trip needs no hand-over between threads either.
//!
//! Timers, handshakes at start and the control plane stay in tokio ([`crate::daemon`]);
//! a worker wakes a network's timer task only when it moved the next deadline earlier or
//! left events to log. Workers live as long as the process.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use vpn_core::Network;
use vpn_core::wire::{DATA_HEADER_LEN, DATA_OVERHEAD, MAX_FRAME_LEN, Route};

use crate::offload::{Coalescer, SegmentSink, Segmenter, VNET_HDR_LEN, Verdict, VnetHdr};
use crate::tap::Tap;
use crate::udp::{RecvBatch, SendBatch, Udp};

/// Frames read from a TAP per batch (each up to a 64 KiB super-frame).
const TAP_BATCH: usize = 16;
const TAP_SLOT: usize = VNET_HDR_LEN + 65536;
/// Epoll tokens: sockets are `SOCKET | index`, TAP queues `TAP | network tag`.
const SOCKET: u64 = 1 << 32;
const TAP: u64 = 2 << 32;

/// What the data path needs of a running network.
pub struct NetPath {
    pub id: u32,
    /// The network's index tag, its key in the workers' epoll sets.
    pub tag: u16,
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
    /// After input: wake the timer task if events wait to be logged or the network's
    /// next deadline is now earlier than the one it sleeps until.
    pub fn after_input(&self, net: &Network) {
        if net.has_events() {
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

/// The daemon's sockets: for each worker, one per listen address.
pub struct Sockets {
    pub all: Vec<Arc<Udp>>,
    pub workers: usize,
}

impl Sockets {
    /// Worker `w`'s sockets.
    fn of_worker(&self, w: usize) -> impl Iterator<Item = (usize, &Arc<Udp>)> {
        self.all
            .iter()
            .enumerate()
            .filter(move |(i, _)| i % self.workers == w)
    }

    /// A socket for `dest`'s family, preferring worker `w`'s.
    pub fn for_dest(&self, dest: SocketAddr, w: usize) -> Option<&Udp> {
        let family = |s: &&Arc<Udp>| s.local_addr().is_ipv4() == dest.is_ipv4();
        self.of_worker(w)
            .map(|(_, s)| s)
            .find(family)
            .or_else(|| self.all.iter().find(family))
            .map(|s| s.as_ref())
    }
}

/// How a worker finds the network a datagram or a TAP event belongs to.
pub trait Router: Send + Sync {
    fn route(&self, route: Route) -> Option<Arc<NetPath>>;
    fn by_tag(&self, tag: u16) -> Option<Arc<NetPath>>;
    fn unroutable(&self);
}

/// The workers' epoll sets, through which networks' TAP queues join and leave.
pub struct Workers {
    epolls: Vec<OwnedFd>,
}

impl Workers {
    /// Starts `sockets.workers` workers; they run as long as the process.
    pub fn start(
        sockets: &Arc<Sockets>,
        router: Arc<dyn Router>,
        busy_poll: Duration,
    ) -> io::Result<Workers> {
        let mut epolls = Vec::with_capacity(sockets.workers);
        for w in 0..sockets.workers {
            // SAFETY: epoll_create1 with a constant flag; checked.
            let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor we own.
            let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
            for (i, udp) in sockets.of_worker(w) {
                epoll_add(epoll.as_raw_fd(), udp.raw_fd(), SOCKET | i as u64)?;
            }
            let epfd = epoll.as_raw_fd();
            let sockets = Arc::clone(sockets);
            let router = Arc::clone(&router);
            std::thread::Builder::new()
                .name(format!("vpnd-worker{w}"))
                .spawn(move || Worker::new(w, epfd, sockets, router, busy_poll).run())?;
            epolls.push(epoll);
        }
        Ok(Workers { epolls })
    }

    /// Adds a network's TAP queues: queue `w` to worker `w`.
    pub fn add(&self, net: &NetPath) -> io::Result<()> {
        for (w, epoll) in self.epolls.iter().enumerate() {
            epoll_add(epoll.as_raw_fd(), net.tap.fd(w), TAP | u64::from(net.tag))?;
        }
        Ok(())
    }

    /// Takes a network's TAP queues out of every worker's set.
    pub fn remove(&self, net: &NetPath) {
        for (w, epoll) in self.epolls.iter().enumerate() {
            // SAFETY: EPOLL_CTL_DEL ignores the event argument.
            unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    net.tap.fd(w),
                    std::ptr::null_mut(),
                );
            }
        }
    }
}

fn epoll_add(epfd: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: a valid event for a valid descriptor.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &raw mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// A frame decrypted in place: message `msg` of the receive batch, bytes `range`.
struct Delivery {
    net: usize,
    msg: usize,
    range: Range<usize>,
}

/// Builds wire frames where they will be sealed: in the next datagram slot of the send
/// batch, after room for the data header. A frame the fast path cannot seal at once (a
/// flood, no session yet, one that needs fragments) goes to the network's queue.
struct SealSink<'a> {
    net: &'a mut Network,
    out: &'a mut SendBatch,
    scratch: &'a mut [u8],
    now: Instant,
    /// Whether the room handed out is in `out` (else in `scratch`).
    in_out: bool,
}

impl SegmentSink for SealSink<'_> {
    fn room(&mut self, len: usize) -> &mut [u8] {
        self.in_out = self.out.space(DATA_OVERHEAD + len).is_some();
        if self.in_out {
            let space = self.out.space(DATA_OVERHEAD + len).expect("checked");
            &mut space[DATA_HEADER_LEN..]
        } else {
            &mut self.scratch[..]
        }
    }

    fn done(&mut self, len: usize) {
        if self.in_out {
            let space = self.out.space(DATA_OVERHEAD + len).expect("room was given");
            if let Some(t) = self.net.handle_local_frame_in_place(self.now, space, len) {
                self.out.push(t.destination, t.len);
            }
        } else {
            self.net.handle_local_frame(self.now, &self.scratch[..len]);
        }
    }
}

struct Worker {
    index: usize,
    epfd: RawFd,
    sockets: Arc<Sockets>,
    router: Arc<dyn Router>,
    busy_poll: Duration,
    tap_slots: Vec<u8>,
    scratch: Vec<u8>,
    recv: RecvBatch,
    out: SendBatch,
    frames: FrameBatch,
    segmenter: Segmenter,
    coalescer: Coalescer,
    deliveries: Vec<Delivery>,
    nets: Vec<Arc<NetPath>>,
}

impl Worker {
    fn new(
        index: usize,
        epfd: RawFd,
        sockets: Arc<Sockets>,
        router: Arc<dyn Router>,
        busy_poll: Duration,
    ) -> Worker {
        Worker {
            index,
            epfd,
            sockets,
            router,
            busy_poll,
            tap_slots: vec![0u8; TAP_BATCH * TAP_SLOT],
            scratch: vec![0u8; 65536],
            recv: RecvBatch::new(),
            // A whole TAP batch of super-frames, sealed, fits: the fast path rarely has to
            // fall back to the network's queue for want of room.
            out: SendBatch::new(TAP_BATCH * 48 * 1600),
            frames: FrameBatch::new(),
            segmenter: Segmenter::new(),
            coalescer: Coalescer::new(),
            deliveries: Vec::with_capacity(crate::udp::BATCH * 8),
            nets: Vec::with_capacity(4),
        }
    }

    fn run(mut self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut spin_until: Option<Instant> = None;
        loop {
            let timeout = match spin_until {
                Some(t) if Instant::now() < t => 0,
                _ => -1,
            };
            // SAFETY: a valid epoll descriptor and event buffer.
            let n = unsafe {
                libc::epoll_wait(self.epfd, events.as_mut_ptr(), events.len() as i32, timeout)
            };
            if n < 0 {
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    warn!("epoll_wait: {}", io::Error::last_os_error());
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            if n == 0 {
                if timeout == -1 {
                    continue;
                }
                // Still polling: let any other runnable thread on this CPU go first (on a
                // shared CPU it may be the one producing what we wait for).
                std::thread::yield_now();
                continue;
            }
            for ev in &events[..n as usize] {
                let token = ev.u64;
                if token & SOCKET != 0 {
                    self.socket_ready((token & 0xffff_ffff) as usize);
                } else if token & TAP != 0
                    && let Some(net) = self.router.by_tag((token & 0xffff) as u16)
                {
                    self.tap_ready(&net);
                }
            }
            spin_until = (!self.busy_poll.is_zero()).then(|| Instant::now() + self.busy_poll);
        }
    }

    /// Reads a batch from this worker's queue of `net`'s TAP and sends it sealed.
    fn tap_ready(&mut self, net: &NetPath) {
        let queue = self.index;
        let mut lens = [0usize; TAP_BATCH];
        let mut count = 0;
        while count < TAP_BATCH {
            match net.tap.read(
                queue,
                &mut self.tap_slots[count * TAP_SLOT..(count + 1) * TAP_SLOT],
            ) {
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
            return;
        }
        let now = Instant::now();
        let mut more = {
            let mut state = net.state.lock().expect("network lock");
            for (i, &len) in lens.iter().enumerate().take(count) {
                let slot = &self.tap_slots[i * TAP_SLOT..i * TAP_SLOT + len];
                let (hdr, frame) = slot.split_at(VNET_HDR_LEN);
                let hdr = VnetHdr::parse(hdr);
                let mut sink = SealSink {
                    net: &mut state,
                    out: &mut self.out,
                    scratch: &mut self.scratch,
                    now,
                    in_out: false,
                };
                let result = self.segmenter.split(&hdr, frame, &mut sink);
                if let Err(e) = result {
                    net.counters.offload_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(tap = net.tap.name(), "dropped a frame: {e}");
                }
            }
            let more = collect(&mut state, now, &mut self.out, &mut self.frames);
            net.after_input(&state);
            more
        };
        loop {
            self.flush(net);
            if !more {
                break;
            }
            let mut state = net.state.lock().expect("network lock");
            more = collect(&mut state, Instant::now(), &mut self.out, &mut self.frames);
        }
    }

    /// Sends what was collected and writes the frames for the local port.
    fn flush(&mut self, net: &NetPath) {
        if !self.out.is_empty() {
            let sockets = &self.sockets;
            let w = self.index;
            let failed = self.out.send(|dest| sockets.for_dest(dest, w));
            if failed > 0 {
                net.counters
                    .send_errors
                    .fetch_add(failed as u64, Ordering::Relaxed);
            }
        }
        self.frames.write_all(net, self.index);
    }

    /// Receives a batch from socket `i` and delivers what it carries.
    fn socket_ready(&mut self, i: usize) {
        let udp = Arc::clone(&self.sockets.all[i]);
        let n = match self.recv.try_recv(&udp) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    // ICMP errors from earlier sends surface here; they are not fatal.
                    debug!("receive: {e}");
                }
                return;
            }
        };
        let now = Instant::now();
        self.deliveries.clear();
        self.nets.clear();
        for m in 0..n {
            let received = self.recv.received[m];
            if received.len == 0 {
                // An empty datagram names no network: dropped and counted like any
                // other datagram too short to route.
                self.router.unroutable();
                continue;
            }
            let segment = received.segment;
            let message = self.recv.message_mut(m);
            let mut start = 0;
            // A GRO message holds several datagrams of `segment` bytes.
            while start < message.len() {
                let end = (start + segment).min(message.len());
                let datagram = &mut message[start..end];
                let net = match vpn_core::wire::route(datagram) {
                    Ok(r) => self.router.route(r),
                    Err(_) => None,
                };
                let Some(net) = net else {
                    self.router.unroutable();
                    start = end;
                    continue;
                };
                let k = match self.nets.iter().position(|x| Arc::ptr_eq(x, &net)) {
                    Some(k) => k,
                    None => {
                        self.nets.push(net);
                        self.nets.len() - 1
                    }
                };
                let base = datagram.as_ptr() as usize;
                let mut state = self.nets[k].state.lock().expect("network lock");
                match state.handle_datagram(now, received.source, datagram) {
                    Ok(Some(frame)) => {
                        let at = frame.as_ptr() as usize - base + start;
                        self.deliveries.push(Delivery {
                            net: k,
                            msg: m,
                            range: at..at + frame.len(),
                        });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        debug!(network = self.nets[k].id, from = %received.source, "dropped datagram: {e}")
                    }
                }
                drop(state);
                start = end;
            }
        }
        // Everything the batch produced besides frames (responses, keepalives, ARP
        // replies, reassembled frames) goes first; then the frames.
        for k in 0..self.nets.len() {
            let net = Arc::clone(&self.nets[k]);
            let mut more = true;
            while more {
                {
                    let mut state = net.state.lock().expect("network lock");
                    more = collect(&mut state, now, &mut self.out, &mut self.frames);
                    net.after_input(&state);
                }
                self.flush(&net);
            }
        }
        let queue = self.index;
        for i in 0..self.deliveries.len() {
            let d = &self.deliveries[i];
            let net = &self.nets[d.net];
            let msg = self.recv.message_mut(d.msg);
            let mut write = |w: &[u8]| net.write_tap(queue, w);
            if self.coalescer.push(&msg[d.range.clone()], &mut write) == Verdict::Passthrough {
                // The 10 bytes before the frame held the now-spent data header.
                let with_hdr = &mut msg[d.range.start - VNET_HDR_LEN..d.range.end];
                VnetHdr::default().write(with_hdr);
                net.write_tap(queue, with_hdr);
            }
            // Frames of different networks go to different TAPs: flush at a change.
            if self
                .deliveries
                .get(i + 1)
                .is_none_or(|next| next.net != d.net)
            {
                self.coalescer.flush(&mut write);
                net.counters
                    .coalesced
                    .fetch_add(self.coalescer.merged, Ordering::Relaxed);
                self.coalescer.merged = 0;
            }
        }
        // Hold no network between batches: a stopped network's TAP must close now, not
        // at this worker's next datagram.
        self.nets.clear();
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
            Some(n) => frames.lens.push(n),
            None => break,
        }
    }
    more || frames.space().is_none()
}
