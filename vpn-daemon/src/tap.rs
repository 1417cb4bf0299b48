//! The local port of a network: a multi-queue TAP device with virtio-net headers,
//! optionally enslaved to an existing Linux bridge.
//!
//! Why not the `tun-tap` crate the design first named: it can neither ask for
//! `IFF_VNET_HDR` nor `IFF_MULTI_QUEUE`, nor set offloads with `TUNSETOFFLOAD`, and those
//! three are what let the data path read 64 KiB TCP super-frames (TSO) instead of one
//! frame per system call, write coalesced ones back, and give each core its own queue.
//! So this module opens `/dev/net/tun` itself: one descriptor per queue, each
//! non-blocking, every frame preceded by a 10-byte `virtio_net_hdr` (see
//! [`crate::offload`]).
//!
//! It only creates, configures and moves frames; it never looks inside them. The
//! device is not persistent: closing its last queue removes it from the system.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::offload::VNET_HDR_LEN;

const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
const TUNSETOFFLOAD: libc::Ioctl = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::Ioctl = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

pub struct Tap {
    name: String,
    queues: Vec<OwnedFd>,
}

impl Tap {
    /// Creates the TAP device `name` with `queues` queues, sets its MTU, brings it up and,
    /// if asked, adds it to `bridge` (which must exist). With `offload`, the kernel may
    /// hand it TCP super-frames and frames with partial checksums.
    pub fn create(
        name: &str,
        mtu: u16,
        bridge: Option<&str>,
        queues: usize,
        offload: bool,
    ) -> io::Result<Tap> {
        let mut fds = Vec::with_capacity(queues.max(1));
        let mut actual = String::new();
        for _ in 0..queues.max(1) {
            let (fd, n) = open_queue(name, offload)
                .map_err(|e| io::Error::new(e.kind(), format!("creating TAP {name}: {e}")))?;
            actual = n;
            fds.push(fd);
        }
        let ctl = ControlSocket::new()?;
        ctl.set_mtu(&actual, mtu)
            .map_err(|e| io::Error::new(e.kind(), format!("setting MTU {mtu} on {actual}: {e}")))?;
        if let Some(bridge) = bridge {
            ctl.add_to_bridge(bridge, &actual).map_err(|e| {
                io::Error::new(e.kind(), format!("adding {actual} to bridge {bridge}: {e}"))
            })?;
        }
        ctl.set_up(&actual)
            .map_err(|e| io::Error::new(e.kind(), format!("bringing {actual} up: {e}")))?;
        Ok(Tap {
            name: actual,
            queues: fds,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    pub fn fd(&self, queue: usize) -> RawFd {
        self.queues[queue % self.queues.len()].as_raw_fd()
    }

    /// Reads one frame with its virtio header from `queue`; `WouldBlock` when none waits.
    pub fn read(&self, queue: usize, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a valid buffer.
        let n = unsafe { libc::read(self.fd(queue), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame preceded by its virtio header.
    pub fn write(&self, queue: usize, buf: &[u8]) -> io::Result<usize> {
        debug_assert!(buf.len() > VNET_HDR_LEN);
        // SAFETY: writing a valid buffer.
        let n = unsafe { libc::write(self.fd(queue), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn open_queue(name: &str, offload: bool) -> io::Result<(OwnedFd, String)> {
    let path = CString::new("/dev/net/tun").expect("no NUL");
    // SAFETY: open(2) with a valid path; checked.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = ControlSocket::request(name)?;
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    // SAFETY: TUNSETIFF takes an ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let hdr_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ takes a pointer to an int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &raw const hdr_len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags: libc::c_uint = if offload {
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    } else {
        0
    };
    // SAFETY: TUNSETOFFLOAD takes the flags as its argument.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETIFF wrote a NUL-terminated name back.
    let actual = unsafe { std::ffi::CStr::from_ptr(req.ifr_name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok((fd, actual))
}

/// An AF_INET datagram socket used only to issue interface ioctls.
struct ControlSocket(OwnedFd);

impl ControlSocket {
    fn new() -> io::Result<ControlSocket> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, owned descriptor.
        Ok(ControlSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn request(name: &str) -> io::Result<libc::ifreq> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {name:?} is empty or too long"),
            ));
        }
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        Ok(req)
    }

    fn ioctl(&self, op: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: `req` is a valid ifreq for the requests this module issues.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), op, req as *mut libc::ifreq) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn set_mtu(&self, name: &str, mtu: u16) -> io::Result<()> {
        let mut req = Self::request(name)?;
        req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        self.ioctl(libc::SIOCSIFMTU, &mut req)
    }

    fn set_up(&self, name: &str) -> io::Result<()> {
        let mut req = Self::request(name)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        unsafe {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        }
        self.ioctl(libc::SIOCSIFFLAGS, &mut req)
    }

    fn add_to_bridge(&self, bridge: &str, name: &str) -> io::Result<()> {
        let cname = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req = Self::request(bridge)?;
        req.ifr_ifru.ifru_ifindex = index as libc::c_int;
        /// SIOCBRADDIF from linux/sockios.h.
        const SIOCBRADDIF: libc::Ioctl = 0x89a2;
        self.ioctl(SIOCBRADDIF, &mut req)
            .or_else(|e| match e.raw_os_error() {
                Some(libc::ENODEV) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no bridge named {bridge} exists"),
                )),
                // Already a port: of this bridge is fine (a queue opened on a device that
                // still existed), of another is the operator's conflict to resolve.
                Some(libc::EBUSY) => match master_of(name) {
                    Some(m) if m == bridge => Ok(()),
                    Some(m) => Err(io::Error::new(
                        io::ErrorKind::ResourceBusy,
                        format!("{name} is already a port of bridge {m}"),
                    )),
                    None => Err(e),
                },
                _ => Err(e),
            })
    }
}

/// The bridge (or other master) `name` is enslaved to, from sysfs.
fn master_of(name: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/class/net/{name}/master")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}
