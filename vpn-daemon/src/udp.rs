//! UDP sockets for the data path: many datagrams per system call.
//!
//! Receiving uses `recvmmsg` with `UDP_GRO` on, so one call returns up to a batch of
//! messages, each of which may be several same-size datagrams the kernel coalesced
//! (reported by a `UDP_GRO` control message). Sending uses `sendmmsg`, and UDP GSO
//! (`UDP_SEGMENT`) where consecutive datagrams go to one destination with one size: the
//! kernel then cuts one buffer into many datagrams. The socket itself is blocking, so a
//! full send buffer makes the sender wait rather than drop; receiving and the control
//! plane's sends use `MSG_DONTWAIT`.
//!
//! This module only moves bytes; it never looks inside a datagram.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Messages per `recvmmsg`/`sendmmsg`.
pub const BATCH: usize = 64;
/// Receive buffer per message: a whole GRO super-datagram.
pub const RECV_BUF: usize = 65536;
/// At most this many datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS is 64 or
/// 128 depending on its version).
pub const MAX_GSO_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65000;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

pub struct Udp {
    fd: OwnedFd,
    local: SocketAddr,
    gso: bool,
}

impl Udp {
    /// Binds `addr` (with `SO_REUSEPORT`, so several sockets can share the port) with
    /// large buffers, GRO on and GSO probed.
    pub fn bind(addr: SocketAddr) -> io::Result<Udp> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            // Separate IPv4 and IPv6 sockets share a port.
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_port(true)?;
        // Bursts of full-size datagrams must not overflow the default 208 KiB: as root,
        // force larger buffers past net.core.rmem_max.
        for (opt, size) in [
            (libc::SO_RCVBUFFORCE, 8 << 20),
            (libc::SO_SNDBUFFORCE, 8 << 20),
        ] {
            if setsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, opt, size).is_err() {
                let _ = if opt == libc::SO_RCVBUFFORCE {
                    socket.set_recv_buffer_size(size as usize)
                } else {
                    socket.set_send_buffer_size(size as usize)
                };
            }
        }
        socket.bind(&addr.into())?;
        let _ = setsockopt(socket.as_raw_fd(), SOL_UDP, UDP_GRO, 1);
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an inet socket"))?;
        let fd: OwnedFd = socket.into();
        // GSO works if the kernel accepts the option.
        let gso = setsockopt(fd.as_raw_fd(), SOL_UDP, UDP_SEGMENT, 0).is_ok();
        Ok(Udp { fd, local, gso })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Sends one datagram without blocking (control traffic; dropped if the buffer is
    /// full, like any datagram).
    pub fn try_send(&self, buf: &[u8], dest: SocketAddr) -> io::Result<usize> {
        let (addr, len) = sockaddr(dest);
        // SAFETY: valid buffer and address for the call's duration.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&raw const addr).cast(),
                len,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn setsockopt(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let addr = SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            ));
            // IPv4-mapped IPv6 sources are IPv4 peers.
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, u16::from_be(sin6.sin6_port))),
                None => addr,
            })
        }
        _ => None,
    }
}

/// One received message: `len` bytes from `source`, made of datagrams of `segment`
/// bytes (the last may be shorter) when the kernel coalesced them.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub source: SocketAddr,
    pub len: usize,
    pub segment: usize,
}

/// Reusable buffers for `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    controls: Vec<[u8; 64]>,
    msgs: Vec<libc::mmsghdr>,
    pub received: Vec<Received>,
}

// SAFETY: the raw pointers inside point into the struct's own heap buffers, which move
// with it; they are rebuilt before every use.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![0u8; BATCH * RECV_BUF],
            // SAFETY: plain data, all-zero valid.
            names: vec![unsafe { zeroed() }; BATCH],
            iovs: Vec::with_capacity(BATCH),
            controls: vec![[0u8; 64]; BATCH],
            msgs: Vec::with_capacity(BATCH),
            received: Vec::with_capacity(BATCH),
        }
    }

    /// The bytes of message `i` of the last receive.
    pub fn message_mut(&mut self, i: usize) -> &mut [u8] {
        let len = self.received[i].len;
        &mut self.bufs[i * RECV_BUF..i * RECV_BUF + len]
    }

    /// Takes every message already queued (up to a batch); `WouldBlock` if none is.
    pub fn try_recv(&mut self, udp: &Udp) -> io::Result<usize> {
        self.iovs.clear();
        self.msgs.clear();
        self.received.clear();
        for i in 0..BATCH {
            self.iovs.push(libc::iovec {
                iov_base: self.bufs[i * RECV_BUF..].as_mut_ptr().cast(),
                iov_len: RECV_BUF,
            });
        }
        for i in 0..BATCH {
            // SAFETY: plain data, all-zero valid.
            let mut hdr: libc::msghdr = unsafe { zeroed() };
            hdr.msg_name = (&raw mut self.names[i]).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &raw mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            hdr.msg_controllen = self.controls[i].len();
            self.msgs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        // SAFETY: every pointer refers to this struct's buffers, alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                udp.fd.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for i in 0..n as usize {
            let m = &self.msgs[i];
            let len = m.msg_len as usize;
            let segment = gro_segment(&m.msg_hdr).unwrap_or(len);
            if let Some(source) = from_sockaddr(&self.names[i]) {
                self.received.push(Received {
                    source,
                    len,
                    segment: segment.max(1),
                });
            } else {
                // Keep indices aligned with buffers; an unknown family is skipped.
                self.received.push(Received {
                    source: SocketAddr::from(([0, 0, 0, 0], 0)),
                    len: 0,
                    segment: 1,
                });
            }
        }
        Ok(n as usize)
    }
}

fn gro_segment(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: walking the control buffer the kernel filled, with the libc macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let mut v: libc::c_int = 0;
                std::ptr::copy_nonoverlapping(
                    libc::CMSG_DATA(cmsg),
                    (&raw mut v).cast::<u8>(),
                    size_of::<libc::c_int>(),
                );
                return usize::try_from(v).ok().filter(|v| *v > 0);
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// Datagrams waiting to be sent, laid out so consecutive ones to one destination with
/// one size go out as one GSO send.
pub struct SendBatch {
    buf: Vec<u8>,
    /// (destination, offset, length) of each datagram, in order.
    datagrams: Vec<(SocketAddr, usize, usize)>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    controls: Vec<[u8; 32]>,
    msgs: Vec<libc::mmsghdr>,
    /// Per message of one sendmmsg: how many datagrams it carries.
    counts: Vec<usize>,
}

// SAFETY: as for RecvBatch.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new(BATCH * 2048)
    }
}

impl SendBatch {
    pub fn new(bytes: usize) -> SendBatch {
        SendBatch {
            buf: vec![0u8; bytes],
            datagrams: Vec::with_capacity(BATCH * 4),
            // SAFETY: plain data, all-zero valid.
            names: vec![unsafe { zeroed() }; BATCH],
            iovs: Vec::with_capacity(BATCH),
            controls: vec![[0u8; 32]; BATCH],
            msgs: Vec::with_capacity(BATCH),
            counts: Vec::with_capacity(BATCH),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Free space at the end of the buffer for the next datagram, or `None` when fewer
    /// than `need` bytes are left.
    pub fn space(&mut self, need: usize) -> Option<&mut [u8]> {
        let used = self
            .datagrams
            .last()
            .map(|&(_, off, len)| off + len)
            .unwrap_or(0);
        (self.buf.len() - used >= need).then(|| &mut self.buf[used..])
    }

    /// Records `len` bytes just written into [`SendBatch::space`] as a datagram.
    pub fn push(&mut self, dest: SocketAddr, len: usize) {
        let off = self
            .datagrams
            .last()
            .map(|&(_, off, l)| off + l)
            .unwrap_or(0);
        self.datagrams.push((dest, off, len));
    }

    pub fn clear(&mut self) {
        self.datagrams.clear();
    }

    /// Sends everything (blocking while a socket buffer is full) on the socket `pick`
    /// gives for each destination's family; returns how many datagrams could not be
    /// sent.
    pub fn send<'a>(&mut self, pick: impl Fn(SocketAddr) -> Option<&'a Udp>) -> usize {
        let mut failed = 0;
        let mut next = 0;
        while next < self.datagrams.len() {
            let family_v4 = self.datagrams[next].0.is_ipv4();
            let Some(udp) = pick(self.datagrams[next].0) else {
                // No socket of this family: every datagram of the run fails.
                let run = self.datagrams[next..]
                    .iter()
                    .take_while(|d| d.0.is_ipv4() == family_v4)
                    .count();
                failed += run;
                next += run;
                continue;
            };
            self.iovs.clear();
            self.msgs.clear();
            self.counts.clear();
            // Group runs: same destination, same length (the last of a run may be
            // shorter), contiguous in the buffer; stop at a change of family.
            let mut i = next;
            while i < self.datagrams.len()
                && self.msgs.len() < BATCH
                && self.datagrams[i].0.is_ipv4() == family_v4
            {
                let (dest, off, len) = self.datagrams[i];
                let mut count = 1;
                let mut total = len;
                if udp.gso {
                    while i + count < self.datagrams.len()
                        && count < MAX_GSO_SEGMENTS
                        && total + len <= GSO_MAX_BYTES
                    {
                        let (d2, off2, len2) = self.datagrams[i + count];
                        if d2 != dest || off2 != off + total || len2 > len {
                            break;
                        }
                        total += len2;
                        count += 1;
                        if len2 < len {
                            break;
                        }
                    }
                }
                let k = self.msgs.len();
                let (name, name_len) = sockaddr(dest);
                self.names[k] = name;
                self.iovs.push(libc::iovec {
                    iov_base: self.buf[off..].as_mut_ptr().cast(),
                    iov_len: total,
                });
                // SAFETY: plain data, all-zero valid.
                let mut hdr: libc::msghdr = unsafe { zeroed() };
                hdr.msg_name = (&raw mut self.names[k]).cast();
                hdr.msg_namelen = name_len;
                hdr.msg_iovlen = 1;
                if count > 1 {
                    let control = &mut self.controls[k];
                    hdr.msg_control = control.as_mut_ptr().cast();
                    // SAFETY: CMSG_SPACE of a u16 fits the 32-byte control buffer.
                    unsafe {
                        hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
                        (*cmsg).cmsg_level = SOL_UDP;
                        (*cmsg).cmsg_type = UDP_SEGMENT;
                        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                        let seg = len as u16;
                        std::ptr::copy_nonoverlapping(
                            (&raw const seg).cast::<u8>(),
                            libc::CMSG_DATA(cmsg),
                            size_of::<u16>(),
                        );
                    }
                }
                self.msgs.push(libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                });
                self.counts.push(count);
                i += count;
            }
            for (k, m) in self.msgs.iter_mut().enumerate() {
                m.msg_hdr.msg_iov = &raw mut self.iovs[k];
            }
            let mut sent = 0;
            while sent < self.msgs.len() {
                // SAFETY: headers point into this struct's buffers, alive for the call.
                let n = unsafe {
                    libc::sendmmsg(
                        udp.fd.as_raw_fd(),
                        self.msgs[sent..].as_mut_ptr(),
                        (self.msgs.len() - sent) as libc::c_uint,
                        0,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // This message cannot go (unreachable, too big...): skip it.
                    failed += self.counts[sent];
                    sent += 1;
                    continue;
                }
                sent += n as usize;
            }
            next = i;
        }
        self.datagrams.clear();
        failed
    }
}
