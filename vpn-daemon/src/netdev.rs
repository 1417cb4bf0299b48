//! The local port of a network: a TAP device, optionally enslaved to an existing Linux
//! bridge, read and written without blocking through tokio's `AsyncFd`.
//!
//! The device is created with `tun-tap` (default features off) and configured with the
//! classic interface ioctls (MTU, up, bridge membership) on a throwaway socket. It is not
//! persistent: closing it (dropping [`Tap`]) removes it from the system.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tun_tap::{Iface, Mode};

pub struct Tap {
    fd: AsyncFd<Iface>,
    name: String,
}

impl Tap {
    /// Creates the TAP device `name`, sets its MTU, brings it up and, if asked, adds it to
    /// `bridge` (which must exist).
    pub fn create(name: &str, mtu: u16, bridge: Option<&str>) -> io::Result<Tap> {
        let iface = Iface::without_packet_info(name, Mode::Tap)
            .map_err(|e| io::Error::new(e.kind(), format!("creating TAP {name}: {e}")))?;
        iface.set_non_blocking()?;
        let name = iface.name().to_string();
        let ctl = ControlSocket::new()?;
        ctl.set_mtu(&name, mtu)
            .map_err(|e| io::Error::new(e.kind(), format!("setting MTU {mtu} on {name}: {e}")))?;
        if let Some(bridge) = bridge {
            ctl.add_to_bridge(bridge, &name).map_err(|e| {
                io::Error::new(e.kind(), format!("adding {name} to bridge {bridge}: {e}"))
            })?;
        }
        ctl.set_up(&name)
            .map_err(|e| io::Error::new(e.kind(), format!("bringing {name} up: {e}")))?;
        // SAFETY: the Iface owns its descriptor and keeps it open, unchanged, for as long
        // as the AsyncFd that owns the Iface lives.
        let fd = unsafe { AsyncFd::register(iface) }.map_err(|e| e.into_parts().1)?;
        Ok(Tap { fd, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd
            .async_io(Interest::READABLE, |iface| iface.recv(buf))
            .await
    }

    /// Reads one frame if one is waiting, without waiting.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd.get_ref().recv(buf)
    }

    /// Writes one frame.
    pub async fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.fd
            .async_io(Interest::WRITABLE, |iface| iface.send(frame))
            .await
    }
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
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENODEV) => io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no bridge named {bridge} exists"),
                ),
                _ => e,
            })
    }
}
