//! TAP offloads: segmentation of TCP super-frames read from the TAP, and coalescing of
//! TCP segments written to it (the Ethernet counterpart of wireguard-go's TUN GSO/GRO).
//!
//! With `IFF_VNET_HDR` every frame crossing the TAP carries a 10-byte `virtio_net_hdr`.
//! Reading, the kernel may hand over a TCP "super-frame" of up to 64 KiB (TSO) or a frame
//! whose checksum is left for us to fill (`NEEDS_CSUM`): [`Segmenter`] turns either into
//! ordinary wire-sized frames with correct IP and TCP headers and checksums, the frames
//! the overlay carries. Writing, [`Coalescer`] joins consecutive in-order segments of one
//! TCP flow (verifying each one's checksum) back into one super-frame the kernel accepts
//! as GSO, so one system call and one pass through the bridge and TCP stack carry dozens
//! of segments. It does the same for runs of equal-sized UDP datagrams of one flow (UDP
//! segmentation offload, `GSO_UDP_L4`): the kernel cuts them apart again exactly as they
//! were, so a flood of small datagrams costs one write per run, not one per datagram.
//!
//! Pure functions over bytes: nothing here does I/O. Frames that are not TCP over
//! untagged IPv4/IPv6, or look in any way unusual, pass through untouched.
//!
//! # Reading and writing headers
//!
//! Headers are read with etherparse's zero-copy slices ([`Ethernet2Slice`],
//! [`SingleVlanSlice`], [`Ipv4HeaderSlice`], [`Ipv6HeaderSlice`], [`TcpHeaderSlice`],
//! [`UdpHeaderSlice`]), which check the version and the lengths before a field is read.
//! Four things stay hand-written, by offset:
//! - rewriting headers in place: each segment's IP length, IPv4 id and checksum, TCP
//!   sequence number, flags and checksum; a super-frame's lengths and pseudo-header sums.
//!   etherparse 0.21 has no mutable header slices, and its header structs would have to
//!   be decoded, changed and encoded again whole, TCP options included, for every segment;
//! - whether a segment continues its flow (`Flow::continues`), or shares a held flow's
//!   addresses and ports (`Coalescer::flush_matching`): the headers must equal the flow's
//!   but for the fields that change, which is a few byte ranges compared in one go,
//!   shorter and cheaper than a dozen fields compared one by one;
//! - the TCP flags test of a coalescible segment: one mask on the flags byte instead of
//!   seven of etherparse's flag reads;
//! - checksums (`sum`), which cover payloads as much as headers and are tuned on their
//!   own.
//!
//! What that cost, measured against the hand-written parsing it replaced on 2026-12-06
//! (CPU ns per segment, medians of 10 alternated runs of
//! `OFFLOAD_REPS=201 cargo bench -p vpn-daemon --bench offload`, hand -> etherparse):
//! cutting a TSO super-frame, 92.8 -> 91.8 (IPv4) and 83.1 -> 82.3 (IPv6); coalescing
//! TCP/IPv6 97.1 -> 97.0, UDP/IPv4 73.5 -> 74.2, TCP/IPv4 101.0 -> 102.5. The last is the
//! only difference that showed in every comparison (with disjoint spreads in an earlier
//! one of 8 runs, 99.2 -> 100.8): 1.5 ns, about 0.2% of the microsecond a
//! receiving vpnd spends on a 1448-byte segment (730-830 CPU ms per GB), and
//! `bench/overlay/cpu-ab` saw no difference inside its noise (new ÷ base 0.92-0.96 over 8
//! and 6 rounds, each binary's runs spreading over ±15%). So etherparse stays everywhere
//! it reads. Figures: `bench/results/etherparse-2026-12-06.md`.

use etherparse::{
    EtherType, Ethernet2Header, Ethernet2Slice, IpNumber, Ipv4Header, Ipv4HeaderSlice, Ipv6Header,
    Ipv6HeaderSlice, SingleVlanSlice, TcpHeaderSlice, UdpHeaderSlice,
};

pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

/// Largest frame a coalesced write carries (virtio's limit for one GSO frame).
pub const MAX_SUPER_FRAME: usize = 65535;
const ETH: usize = Ethernet2Header::LEN;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
const IPPROTO_TCP: u8 = IpNumber::TCP.0;
const IPPROTO_UDP: u8 = IpNumber::UDP.0;
/// Most datagrams one `GSO_UDP_L4` frame may carry (the kernel's `UDP_MAX_SEGMENTS`, 64
/// on older kernels, which refuse more).
const UDP_MAX_SEGMENTS: u16 = 64;

/// The virtio-net header (little-endian on the hosts this runs on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> VnetHdr {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Why a frame from the TAP could not be turned into wire frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("frame too short for its headers")]
    Truncated,
    #[error("checksum offsets point outside the frame")]
    BadChecksumOffsets,
    #[error("unsupported GSO type {0}")]
    UnsupportedGso(u8),
    #[error("GSO frame is not TCP over IPv4/IPv6")]
    NotTcp,
    #[error("GSO frame's IPv4 header is malformed or does not end where TCP starts")]
    BadIpv4Header,
}

// ----- checksums ----------------------------------------------------------------------

/// Adds `data` (starting at an even offset of the summed region) to a ones'-complement
/// accumulator of big-endian 16-bit words.
///
/// The ones'-complement sum does not depend on byte order (RFC 1071 §2(B)): the words
/// are summed as they lie in memory, 32 bits at a time into a 64-bit total (a loop the
/// compiler vectorises), and the folded result is swapped to network order once: about
/// three times faster than converting every word to big-endian first, and the data path
/// sums every TCP segment twice (when cutting super-frames, when merging them).
fn sum(data: &[u8], acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    let mut total: u64 = 0;
    for w in &mut words {
        total += u64::from(u32::from_ne_bytes(w.try_into().expect("4 bytes")));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    total += u64::from(u32::from_ne_bytes(tail));
    let native = fold(total);
    acc + u64::from(if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    })
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum of TCP/UDP over IPv4 (`ip` is the IPv4 header) or IPv6.
fn pseudo_header(frame: &[u8], ip_off: usize, v6: bool, l4_len: usize) -> u64 {
    pseudo_header_proto(frame, ip_off, v6, l4_len, IPPROTO_TCP)
}

/// [`pseudo_header`] for another transport protocol.
fn pseudo_header_proto(frame: &[u8], ip_off: usize, v6: bool, l4_len: usize, proto: u8) -> u64 {
    let addrs = if v6 {
        &frame[ip_off + 8..ip_off + 40]
    } else {
        &frame[ip_off + 12..ip_off + 20]
    };
    sum(addrs, 0) + (l4_len as u64) + u64::from(proto)
}

fn ipv4_header_checksum(header: &mut [u8]) {
    header[10] = 0;
    header[11] = 0;
    let c = !fold(sum(header, 0));
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Where the IP header starts and which version it is, for untagged and single-tagged
/// Ethernet, if the frame is long enough for that version's fixed header.
fn ip_of(frame: &[u8]) -> Option<(usize, bool)> {
    let eth = Ethernet2Slice::from_slice_without_fcs(frame).ok()?;
    let (ether_type, ip) = match eth.ether_type() {
        EtherType::VLAN_TAGGED_FRAME => {
            let vlan = SingleVlanSlice::from_slice(eth.payload_slice()).ok()?;
            (vlan.ether_type(), vlan.payload_slice())
        }
        other => (other, eth.payload_slice()),
    };
    let off = frame.len() - ip.len();
    match ether_type {
        EtherType::IPV4 if ip.len() >= Ipv4Header::MIN_LEN => Some((off, false)),
        EtherType::IPV6 if ip.len() >= Ipv6Header::LEN => Some((off, true)),
        _ => None,
    }
}

// ----- segmentation (TAP -> overlay) --------------------------------------------------

/// Where the segmenter builds wire frames: it asks for room for one, fills it, and says
/// when it is complete. The data path hands out room inside the datagram the frame will
/// be sealed in, so a frame is built exactly once.
pub trait SegmentSink {
    /// Room for a frame of `len` bytes (at least `len` long).
    fn room(&mut self, len: usize) -> &mut [u8];
    /// The first `len` bytes of the room are a complete frame.
    fn done(&mut self, len: usize);
}

/// A sink that builds frames in its own buffer and hands each to a closure.
pub struct Collect<F: FnMut(&[u8])> {
    buf: Vec<u8>,
    emit: F,
}

impl<F: FnMut(&[u8])> Collect<F> {
    pub fn new(emit: F) -> Collect<F> {
        Collect {
            buf: vec![0u8; MAX_SUPER_FRAME],
            emit,
        }
    }
}

impl<F: FnMut(&[u8])> SegmentSink for Collect<F> {
    fn room(&mut self, len: usize) -> &mut [u8] {
        &mut self.buf[..len]
    }
    fn done(&mut self, len: usize) {
        (self.emit)(&self.buf[..len]);
    }
}

/// Cuts frames read from the TAP into wire frames.
#[derive(Default)]
pub struct Segmenter;

impl Segmenter {
    pub fn new() -> Segmenter {
        Segmenter
    }

    /// Builds every wire frame made from `frame` (read with header `hdr`) in `sink`.
    /// Returns how many frames were made. `frame` itself is left unchanged.
    pub fn split(
        &mut self,
        hdr: &VnetHdr,
        frame: &[u8],
        sink: &mut impl SegmentSink,
    ) -> Result<usize, OffloadError> {
        let gso = hdr.gso_type & !GSO_ECN;
        if gso == GSO_NONE {
            let needs_csum = hdr.flags & F_NEEDS_CSUM != 0;
            if needs_csum {
                check_checksum_offsets(hdr, frame.len())?;
            }
            let room = sink.room(frame.len());
            room[..frame.len()].copy_from_slice(frame);
            if needs_csum {
                complete_checksum(hdr, &mut room[..frame.len()]);
            }
            sink.done(frame.len());
            return Ok(1);
        }
        if gso != GSO_TCPV4 && gso != GSO_TCPV6 {
            return Err(OffloadError::UnsupportedGso(hdr.gso_type));
        }
        let (ip_off, v6) = ip_of(frame).ok_or(OffloadError::NotTcp)?;
        if v6 != (gso == GSO_TCPV6) {
            return Err(OffloadError::NotTcp);
        }
        // The TCP header starts at `csum_start`. Over IPv6 extension headers may come
        // between; over IPv4 the header's own length must end there, since every
        // segment's IPv4 checksum is computed over that length.
        let l4_off = usize::from(hdr.csum_start);
        let id = if v6 {
            if l4_off < ip_off + Ipv6Header::LEN {
                return Err(OffloadError::Truncated);
            }
            0
        } else {
            let ip = Ipv4HeaderSlice::from_slice(&frame[ip_off..])
                .map_err(|_| OffloadError::BadIpv4Header)?;
            if ip_off + ip.slice().len() != l4_off {
                return Err(OffloadError::BadIpv4Header);
            }
            if ip.protocol() != IpNumber::TCP {
                return Err(OffloadError::NotTcp);
            }
            ip.identification()
        };
        let tcp = frame
            .get(l4_off..)
            .and_then(|l4| TcpHeaderSlice::from_slice(l4).ok())
            .ok_or(OffloadError::Truncated)?;
        let hdr_len = l4_off + tcp.slice().len();
        let payload = frame.len() - hdr_len;
        let mss = usize::from(hdr.gso_size).max(1);
        let count = payload.div_ceil(mss).max(1);
        let seq = tcp.sequence_number();
        // The flags byte as a whole: each segment gets it back, less FIN/PSH/CWR.
        let flags = tcp.slice()[13];
        for i in 0..count {
            let start = hdr_len + i * mss;
            let end = (start + mss).min(frame.len());
            let seg_len = hdr_len + (end - start);
            let s = &mut sink.room(seg_len)[..seg_len];
            s[..hdr_len].copy_from_slice(&frame[..hdr_len]);
            s[hdr_len..].copy_from_slice(&frame[start..end]);
            let l4_len = seg_len - l4_off;
            if v6 {
                let len = (seg_len - ip_off - 40) as u16;
                s[ip_off + 4..ip_off + 6].copy_from_slice(&len.to_be_bytes());
            } else {
                let ihl = usize::from(s[ip_off] & 0x0f) * 4;
                let total = (seg_len - ip_off) as u16;
                s[ip_off + 2..ip_off + 4].copy_from_slice(&total.to_be_bytes());
                s[ip_off + 4..ip_off + 6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
                ipv4_header_checksum(&mut s[ip_off..ip_off + ihl]);
            }
            let seg_seq = seq.wrapping_add((i * mss) as u32);
            s[l4_off + 4..l4_off + 8].copy_from_slice(&seg_seq.to_be_bytes());
            let mut f = flags;
            if i + 1 < count {
                f &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                f &= !TCP_CWR;
            }
            s[l4_off + 13] = f;
            s[l4_off + 16] = 0;
            s[l4_off + 17] = 0;
            let c = !fold(sum(&s[l4_off..], pseudo_header(s, ip_off, v6, l4_len)));
            s[l4_off + 16..l4_off + 18].copy_from_slice(&c.to_be_bytes());
            sink.done(seg_len);
        }
        Ok(count)
    }

    /// [`Segmenter::split`] handing each wire frame to `emit`.
    pub fn split_with(
        &mut self,
        hdr: &VnetHdr,
        frame: &[u8],
        emit: impl FnMut(&[u8]),
    ) -> Result<usize, OffloadError> {
        self.split(hdr, frame, &mut Collect::new(emit))
    }
}

fn check_checksum_offsets(hdr: &VnetHdr, len: usize) -> Result<(), OffloadError> {
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > len || start > len {
        return Err(OffloadError::BadChecksumOffsets);
    }
    Ok(())
}

/// Fills a checksum the kernel left partial (offsets checked by the caller): the field
/// holds the pseudo-header sum; the checksum covers everything from `csum_start` on.
fn complete_checksum(hdr: &VnetHdr, frame: &mut [u8]) {
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    let c = !fold(sum(&frame[start..], 0));
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

// ----- coalescing (overlay -> TAP) ----------------------------------------------------

/// What the caller does with a frame offered to [`Coalescer::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Held for coalescing; it will be written by a later flush.
    Held,
    /// Not coalescible: write it yourself, now (the coalescer has already written any
    /// held segments of its flow, so order is kept).
    Passthrough,
}

/// A TCP segment's (or UDP datagram's) place in its flow.
struct Segment {
    ip_off: usize,
    l4_off: usize,
    hdr_len: usize,
    v6: bool,
    udp: bool,
    seq: u32,
    payload: usize,
    psh: bool,
}

/// Parses a frame as a coalescible TCP segment or UDP datagram: untagged IPv4 (no
/// options, not a fragment) or IPv6 (no extension headers); for TCP, ACK with optional
/// PSH and no other flag; some payload; a checksum that verifies.
fn segment_of(frame: &[u8]) -> Option<Segment> {
    let eth = Ethernet2Slice::from_slice_without_fcs(frame).ok()?;
    let ip_off = ETH;
    let (v6, l4_off, ip_len, proto) = match eth.ether_type() {
        EtherType::IPV4 => {
            let ip = Ipv4HeaderSlice::from_slice(eth.payload_slice()).ok()?;
            if ip.ihl() != 5 || ip.is_fragmenting_payload() {
                return None;
            }
            let ip_len = usize::from(ip.total_len());
            (false, ip_off + Ipv4Header::MIN_LEN, ip_len, ip.protocol())
        }
        EtherType::IPV6 => {
            let ip = Ipv6HeaderSlice::from_slice(eth.payload_slice()).ok()?;
            let ip_len = Ipv6Header::LEN + usize::from(ip.payload_length());
            (true, ip_off + Ipv6Header::LEN, ip_len, ip.next_header())
        }
        _ => return None,
    };
    // The IP length must account for the frame exactly (no Ethernet padding games).
    if ip_off + ip_len != frame.len() {
        return None;
    }
    match proto {
        IpNumber::TCP => {}
        IpNumber::UDP => return udp_datagram_of(frame, ip_off, l4_off, v6),
        _ => return None,
    }
    let tcp = TcpHeaderSlice::from_slice(&frame[l4_off..]).ok()?;
    let hdr_len = l4_off + tcp.slice().len();
    if hdr_len >= frame.len() {
        return None;
    }
    // ACK, optionally PSH, nothing else (NS aside): one test of the flags byte.
    if tcp.slice()[13] & !TCP_PSH != TCP_ACK {
        return None;
    }
    if !v6 && fold(sum(&frame[ip_off..l4_off], 0)) != 0xffff {
        return None;
    }
    let l4_len = frame.len() - l4_off;
    if fold(sum(
        &frame[l4_off..],
        pseudo_header(frame, ip_off, v6, l4_len),
    )) != 0xffff
    {
        return None;
    }
    Some(Segment {
        ip_off,
        l4_off,
        hdr_len,
        v6,
        udp: false,
        seq: tcp.sequence_number(),
        payload: frame.len() - hdr_len,
        psh: tcp.psh(),
    })
}

/// The UDP half of [`segment_of`]: a length field that matches the frame, some payload,
/// and a checksum that verifies (over IPv4 a datagram sent without one, checksum 0, is
/// not coalesced: its segments would come out with one).
fn udp_datagram_of(frame: &[u8], ip_off: usize, l4_off: usize, v6: bool) -> Option<Segment> {
    let udp = UdpHeaderSlice::from_slice(&frame[l4_off..]).ok()?;
    let hdr_len = l4_off + udp.slice().len();
    let l4_len = frame.len() - l4_off;
    if hdr_len >= frame.len() || usize::from(udp.length()) != l4_len || udp.checksum() == 0 {
        return None;
    }
    if !v6 && fold(sum(&frame[ip_off..l4_off], 0)) != 0xffff {
        return None;
    }
    let pseudo = pseudo_header_proto(frame, ip_off, v6, l4_len, IPPROTO_UDP);
    if fold(sum(&frame[l4_off..], pseudo)) != 0xffff {
        return None;
    }
    Some(Segment {
        ip_off,
        l4_off,
        hdr_len,
        v6,
        udp: true,
        seq: 0,
        payload: frame.len() - hdr_len,
        psh: false,
    })
}

/// One flow being coalesced: a buffer with room for the virtio header in front.
struct Flow {
    buf: Vec<u8>,
    /// Bytes of frame in `buf` after the virtio header.
    len: usize,
    ip_off: usize,
    l4_off: usize,
    hdr_len: usize,
    v6: bool,
    udp: bool,
    mss: usize,
    next_seq: u32,
    segments: u16,
    psh: bool,
    /// A shorter (last) segment or PSH closed it to appends.
    closed: bool,
    /// Order of creation, to evict the oldest.
    age: u64,
}

impl Flow {
    fn frame(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.len]
    }

    /// Whether `frame` (segment `s`) continues this flow: same Ethernet, IP and TCP
    /// headers but for the length, id, checksums, sequence number and PSH; for UDP, same
    /// headers but for the length, id and checksums, and never more than the kernel
    /// takes in one frame.
    fn continues(&self, frame: &[u8], s: &Segment) -> bool {
        if self.closed
            || s.v6 != self.v6
            || s.udp != self.udp
            || s.hdr_len != self.hdr_len
            || s.payload > self.mss
        {
            return false;
        }
        if self.udp {
            if self.segments >= UDP_MAX_SEGMENTS || self.len + s.payload > MAX_SUPER_FRAME {
                return false;
            }
            let ours = self.frame();
            let same = |a: std::ops::Range<usize>| ours[a.clone()] == frame[a];
            let (ip, l4) = (self.ip_off, self.l4_off);
            let ip_same = if self.v6 {
                same(0..ip + 4) && same(ip + 6..l4)
            } else {
                same(0..ip + 2) && same(ip + 6..ip + 10) && same(ip + 12..l4)
            };
            return ip_same && same(l4..l4 + 4);
        }
        if s.seq != self.next_seq {
            return false;
        }
        if self.len + s.payload > MAX_SUPER_FRAME {
            return false;
        }
        let ours = self.frame();
        let same = |a: std::ops::Range<usize>| ours[a.clone()] == frame[a];
        let ip = self.ip_off;
        let l4 = self.l4_off;
        let ip_same = if self.v6 {
            same(0..ip + 4) && same(ip + 6..l4)
        } else {
            // Version/IHL, TOS; flags and TTL, protocol; addresses.
            same(0..ip + 2) && same(ip + 6..ip + 10) && same(ip + 12..l4)
        };
        ip_same
            && same(l4..l4 + 4)
            && same(l4 + 8..l4 + 13)
            && (ours[l4 + 13] & !TCP_PSH) == (frame[l4 + 13] & !TCP_PSH)
            && same(l4 + 14..l4 + 16)
            && same(l4 + 18..self.hdr_len)
    }
}

/// Joins in-order TCP segments into super-frames for the TAP, for a few flows at once.
pub struct Coalescer {
    flows: Vec<Flow>,
    active: usize,
    next_age: u64,
    /// Segments merged into an earlier one (for counters).
    pub merged: u64,
}

/// Flows coalesced at once; a new one evicts (flushes) the oldest.
const FLOWS: usize = 8;

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer {
            flows: Vec::with_capacity(FLOWS),
            active: 0,
            next_age: 0,
            merged: 0,
        }
    }

    /// Offers a frame. `write` receives finished super-frames (virtio header first), in
    /// an order that keeps every flow's segments in order.
    pub fn push(&mut self, frame: &[u8], write: &mut impl FnMut(&[u8])) -> Verdict {
        let Some(seg) = segment_of(frame) else {
            self.flush_matching(frame, write);
            return Verdict::Passthrough;
        };
        if let Some(i) = (0..self.active).find(|&i| self.flows[i].continues(frame, &seg)) {
            let f = &mut self.flows[i];
            let at = VNET_HDR_LEN + f.len;
            f.buf[at..at + seg.payload].copy_from_slice(&frame[seg.hdr_len..]);
            f.len += seg.payload;
            f.next_seq = f.next_seq.wrapping_add(seg.payload as u32);
            f.segments += 1;
            f.psh |= seg.psh;
            f.closed = seg.psh || seg.payload < f.mss;
            self.merged += 1;
            return Verdict::Held;
        }
        // A segment of a held flow that does not continue it: that flow ends here.
        self.flush_matching(frame, write);
        if self.active == FLOWS {
            let oldest = (0..self.active)
                .min_by_key(|&i| self.flows[i].age)
                .expect("full");
            self.flush_one(oldest, write);
        }
        if self.flows.len() == self.active {
            self.flows.push(Flow {
                buf: vec![0u8; VNET_HDR_LEN + MAX_SUPER_FRAME],
                len: 0,
                ip_off: 0,
                l4_off: 0,
                hdr_len: 0,
                v6: false,
                udp: false,
                mss: 0,
                next_seq: 0,
                segments: 0,
                psh: false,
                closed: false,
                age: 0,
            });
        }
        let f = &mut self.flows[self.active];
        f.buf[VNET_HDR_LEN..VNET_HDR_LEN + frame.len()].copy_from_slice(frame);
        f.len = frame.len();
        f.ip_off = seg.ip_off;
        f.l4_off = seg.l4_off;
        f.hdr_len = seg.hdr_len;
        f.v6 = seg.v6;
        f.udp = seg.udp;
        f.mss = seg.payload;
        f.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        f.segments = 1;
        f.psh = seg.psh;
        f.closed = seg.psh;
        f.age = self.next_age;
        self.next_age += 1;
        self.active += 1;
        Verdict::Held
    }

    /// Writes every held flow.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8])) {
        while self.active > 0 {
            self.flush_one(0, write);
        }
    }

    /// Flushes a held flow with the same addresses and ports as `frame`, so a segment
    /// that cannot join it is never written before it.
    fn flush_matching(&mut self, frame: &[u8], write: &mut impl FnMut(&[u8])) {
        let Some((ip_off, v6)) = ip_of(frame) else {
            return;
        };
        let (addrs, l4) = if v6 {
            (ip_off + 8..ip_off + 40, ip_off + 40)
        } else {
            (ip_off + 12..ip_off + 20, ip_off + 20)
        };
        if frame.len() < l4 + 4 {
            return;
        }
        let mut i = 0;
        while i < self.active {
            let f = &self.flows[i];
            let ours = f.frame();
            if f.v6 == v6
                && ours[addrs.clone()] == frame[addrs.clone()]
                && ours[f.l4_off..f.l4_off + 4] == frame[l4..l4 + 4]
            {
                self.flush_one(i, write);
            } else {
                i += 1;
            }
        }
    }

    fn flush_one(&mut self, i: usize, write: &mut impl FnMut(&[u8])) {
        {
            let f = &mut self.flows[i];
            let total = VNET_HDR_LEN + f.len;
            let (ip, l4) = (VNET_HDR_LEN + f.ip_off, VNET_HDR_LEN + f.l4_off);
            let hdr = if f.segments == 1 {
                // Its checksum was verified: the kernel need not check it again.
                VnetHdr {
                    flags: F_DATA_VALID,
                    ..VnetHdr::default()
                }
            } else {
                let b = &mut f.buf[..total];
                if f.v6 {
                    let len = (f.len - f.ip_off - 40) as u16;
                    b[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes());
                } else {
                    let len = (f.len - f.ip_off) as u16;
                    b[ip + 2..ip + 4].copy_from_slice(&len.to_be_bytes());
                    ipv4_header_checksum(&mut b[ip..l4]);
                }
                // For a GSO frame the checksum field holds the pseudo-header sum; the
                // kernel completes it per segment.
                let l4_len = f.len - f.l4_off;
                let proto = if f.udp { IPPROTO_UDP } else { IPPROTO_TCP };
                let pseudo = fold(pseudo_header_proto(
                    &b[VNET_HDR_LEN..],
                    f.ip_off,
                    f.v6,
                    l4_len,
                    proto,
                ));
                let csum_offset = if f.udp {
                    // The kernel derives each datagram's length from this one's.
                    b[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                    6
                } else {
                    if f.psh {
                        b[l4 + 13] |= TCP_PSH;
                    }
                    16
                };
                b[l4 + csum_offset..l4 + csum_offset + 2].copy_from_slice(&pseudo.to_be_bytes());
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: match (f.udp, f.v6) {
                        (true, _) => GSO_UDP_L4,
                        (false, true) => GSO_TCPV6,
                        (false, false) => GSO_TCPV4,
                    },
                    hdr_len: f.hdr_len as u16,
                    gso_size: f.mss as u16,
                    csum_start: f.l4_off as u16,
                    csum_offset: csum_offset as u16,
                }
            };
            hdr.write(&mut f.buf[..VNET_HDR_LEN]);
            write(&f.buf[..total]);
        }
        // Keep the active flows at the front (their buffers are reused, not freed).
        self.active -= 1;
        self.flows.swap(i, self.active);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TCP_SYN: u8 = 0x02;

    /// A TCP/IPv4 or IPv6 frame with `payload`, valid checksums.
    fn tcp_frame(v6: bool, seq: u32, flags: u8, payload: &[u8], options: &[u8]) -> Vec<u8> {
        let mut f = vec![0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2];
        let tcp_hlen = 20 + options.len();
        if v6 {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&((tcp_hlen + payload.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&[0xfd; 16]);
            f.extend_from_slice(&[0xfe; 16]);
        } else {
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&((20 + tcp_hlen + payload.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        }
        let l4 = f.len();
        f.extend_from_slice(&[0x13, 0x88, 0xc0, 0x01]);
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&7u32.to_be_bytes());
        f.push(((tcp_hlen / 4) as u8) << 4);
        f.push(flags);
        f.extend_from_slice(&[0x01, 0x00, 0, 0, 0, 0]);
        f.extend_from_slice(options);
        f.extend_from_slice(payload);
        if !v6 {
            ipv4_header_checksum(&mut f[ETH..ETH + 20]);
        }
        let l4_len = f.len() - l4;
        let c = !fold(sum(&f[l4..], pseudo_header(&f, ETH, v6, l4_len)));
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn checksums_valid(frame: &[u8]) -> bool {
        segment_of(frame).is_some()
            || (frame.len() > 54 && {
                // segment_of rejects some valid frames (FIN...); check directly.
                let (ip, v6) = ip_of(frame).unwrap();
                let l4 = ip + if v6 { 40 } else { 20 };
                fold(sum(
                    &frame[l4..],
                    pseudo_header(frame, ip, v6, frame.len() - l4),
                )) == 0xffff
            })
    }

    /// A UDP/IPv4 or IPv6 frame with `payload`, valid checksums (`ip_id` for IPv4).
    fn udp_frame(v6: bool, ip_id: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2];
        if v6 {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[IPPROTO_UDP, 64]);
            f.extend_from_slice(&[0xfd; 16]);
            f.extend_from_slice(&[0xfe; 16]);
        } else {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
            f.extend_from_slice(&ip_id.to_be_bytes());
            f.extend_from_slice(&[0x40, 0, 64, IPPROTO_UDP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            ipv4_header_checksum(&mut f[ETH..ETH + 20]);
        }
        let l4 = f.len();
        f.extend_from_slice(&[0x14, 0x51, 0x14, 0x52]);
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        let l4_len = f.len() - l4;
        let c = !fold(sum(
            &f[l4..],
            pseudo_header_proto(&f, ETH, v6, l4_len, IPPROTO_UDP),
        ));
        f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// What Linux does with a `GSO_UDP_L4` frame (`__udp_gso_segment`): cut the payload
    /// into `gso_size` pieces, each with the headers, its own lengths and full checksums.
    /// Checks the super-frame's checksum field holds the pseudo-header sum first.
    fn kernel_udp_segment(hdr: &VnetHdr, frame: &[u8]) -> Vec<Vec<u8>> {
        assert_eq!(hdr.gso_type, GSO_UDP_L4);
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        assert_eq!(hdr.csum_offset, 6);
        let (ip, v6) = ip_of(frame).unwrap();
        let l4 = usize::from(hdr.csum_start);
        let hlen = usize::from(hdr.hdr_len);
        assert_eq!(hlen, l4 + 8);
        let l4_len = frame.len() - l4;
        assert_eq!(
            usize::from(u16::from_be_bytes([frame[l4 + 4], frame[l4 + 5]])),
            l4_len,
            "the UDP length covers the super-frame"
        );
        let pseudo = fold(pseudo_header_proto(frame, ip, v6, l4_len, IPPROTO_UDP));
        assert_eq!(frame[l4 + 6..l4 + 8], pseudo.to_be_bytes());
        frame[hlen..]
            .chunks(usize::from(hdr.gso_size))
            .map(|chunk| {
                let mut s = frame[..hlen].to_vec();
                s.extend_from_slice(chunk);
                if v6 {
                    s[ip + 4..ip + 6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
                } else {
                    let total = (s.len() - ip) as u16;
                    s[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
                    ipv4_header_checksum(&mut s[ip..l4]);
                }
                s[l4 + 4..l4 + 6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
                s[l4 + 6..l4 + 8].fill(0);
                let c = !fold(sum(
                    &s[l4..],
                    pseudo_header_proto(&s, ip, v6, 8 + chunk.len(), IPPROTO_UDP),
                ));
                s[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
                s
            })
            .collect()
    }

    /// Pushes `frames` through a coalescer, each of which must be held, and flushes it:
    /// what it wrote, and how many frames it merged.
    fn coalesce_all_held(frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, u64) {
        let mut c = Coalescer::new();
        let mut written = Vec::new();
        for f in frames {
            assert_eq!(
                c.push(f, &mut |w: &[u8]| written.push(w.to_vec())),
                Verdict::Held
            );
        }
        c.flush(&mut |w: &[u8]| written.push(w.to_vec()));
        (written, c.merged)
    }

    /// What the worker writes to the TAP for `frames`: the coalescer's super-frames, and
    /// the frames it passes through behind an empty virtio header, in order.
    fn coalesce_like_the_worker(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut c = Coalescer::new();
        let mut out: Vec<Vec<u8>> = Vec::new();
        for f in frames {
            let mut w = |x: &[u8]| out.push(x.to_vec());
            if c.push(f, &mut w) == Verdict::Passthrough {
                out.push([&[0u8; VNET_HDR_LEN][..], f].concat());
            }
        }
        c.flush(&mut |x: &[u8]| out.push(x.to_vec()));
        out
    }

    #[test]
    fn equal_udp_datagrams_coalesce_into_one_uso_frame_the_kernel_cuts_back() {
        for v6 in [false, true] {
            // Five full datagrams and a shorter last one: one frame.
            let mut dgrams: Vec<Vec<u8>> = (0..5u8).map(|i| udp_frame(v6, 7, &[i; 64])).collect();
            dgrams.push(udp_frame(v6, 7, &[9; 20]));
            let (written, merged) = coalesce_all_held(&dgrams);
            assert_eq!(written.len(), 1, "v6={v6}: one super-frame");
            assert_eq!(merged, 5);
            let hdr = VnetHdr::parse(&written[0]);
            assert_eq!((hdr.gso_type, hdr.gso_size), (GSO_UDP_L4, 64));
            let again = kernel_udp_segment(&hdr, &written[0][VNET_HDR_LEN..]);
            assert_eq!(
                again, dgrams,
                "v6={v6}: the kernel's cut gives back every datagram"
            );
        }
    }

    #[test]
    fn udp_runs_end_at_a_larger_datagram_a_lone_one_and_the_kernels_segment_limit() {
        let mut c = Coalescer::new();
        let mut written = Vec::new();
        let mut w = |f: &[u8]| written.push(f.to_vec());
        // 70 equal datagrams: 64 in one frame (the limit), 6 in the next.
        for _ in 0..70 {
            c.push(&udp_frame(false, 1, &[1; 32]), &mut w);
        }
        // A larger one cannot join (the kernel cuts at gso_size): it starts a new run.
        c.push(&udp_frame(false, 1, &[2; 40]), &mut w);
        c.flush(&mut w);
        let sizes: Vec<(u8, usize)> = written
            .iter()
            .map(|f| {
                let h = VnetHdr::parse(f);
                let n = if h.gso_type == GSO_UDP_L4 {
                    kernel_udp_segment(&h, &f[VNET_HDR_LEN..]).len()
                } else {
                    1
                };
                (h.gso_type, n)
            })
            .collect();
        assert_eq!(
            sizes,
            vec![(GSO_UDP_L4, 64), (GSO_UDP_L4, 6), (GSO_NONE, 1)]
        );
        // A lone datagram goes out as itself, its checksum marked verified.
        let lone = &written[2][VNET_HDR_LEN..];
        assert_eq!(lone, &udp_frame(false, 1, &[2; 40])[..]);
        assert_eq!(VnetHdr::parse(&written[2]).flags, F_DATA_VALID);
    }

    #[test]
    fn udp_without_checksum_or_with_a_bad_one_passes_through_untouched() {
        let mut no_sum = udp_frame(false, 1, &[3; 64]);
        let l4 = ETH + 20;
        no_sum[l4 + 6..l4 + 8].fill(0);
        let mut bad = udp_frame(false, 1, &[3; 64]);
        bad[l4 + 8] ^= 0xff;
        for f in [no_sum, bad] {
            let mut c = Coalescer::new();
            let mut written = Vec::new();
            assert_eq!(
                c.push(&f, &mut |w: &[u8]| written.push(w.to_vec())),
                Verdict::Passthrough
            );
            c.flush(&mut |w: &[u8]| written.push(w.to_vec()));
            assert!(written.is_empty());
        }
    }

    #[test]
    fn checksum_matches_the_rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(
            fold(sum(&data[..7], 0)),
            fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0x00], 0))
        );
    }

    /// RFC 1071's definition, one big-endian word at a time: what `sum` must equal.
    fn sum_word_by_word(data: &[u8], mut acc: u64) -> u64 {
        for pair in data.chunks(2) {
            acc += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        acc
    }

    proptest! {
        #[test]
        fn the_fast_sum_equals_the_word_by_word_definition(data in proptest::collection::vec(any::<u8>(), 0..2000), acc in any::<u32>(), all_ones in any::<bool>()) {
            let data = if all_ones { vec![0xff; data.len()] } else { data };
            let acc = u64::from(acc);
            prop_assert_eq!(fold(sum(&data, acc)), fold(sum_word_by_word(&data, acc)));
        }
    }

    #[test]
    fn a_tso_super_frame_is_cut_into_valid_segments() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
            let sup = tcp_frame(
                v6,
                1000,
                TCP_ACK | TCP_PSH,
                &payload,
                &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            );
            let l4 = ETH + if v6 { 40 } else { 20 };
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: (l4 + 32) as u16,
                gso_size: 1348,
                csum_start: l4 as u16,
                csum_offset: 16,
            };
            let mut segs = Vec::new();
            let n = Segmenter::new()
                .split_with(&hdr, &sup, |s| segs.push(s.to_vec()))
                .unwrap();
            assert_eq!(n, 8);
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert!(
                    checksums_valid(s),
                    "segment {i} (v6 {v6}) has a bad checksum"
                );
                let seq = u32::from_be_bytes(s[l4 + 4..l4 + 8].try_into().unwrap());
                assert_eq!(seq, 1000 + (i * 1348) as u32);
                let psh = s[l4 + 13] & TCP_PSH != 0;
                assert_eq!(psh, i == 7, "PSH only on the last");
                joined.extend_from_slice(&s[l4 + 32..]);
                if !v6 {
                    let id = u16::from_be_bytes([s[ETH + 4], s[ETH + 5]]);
                    assert_eq!(id, 0x1234 + i as u16);
                }
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn a_tso_frame_whose_ipv4_header_length_is_not_its_own_is_refused_not_a_panic() {
        // The headers of a TSO frame are the sender's (a guest's, through the bridge): an
        // IHL that disagrees with where the TCP header starts must not be trusted to cut.
        for ihl in [0u8, 2, 4, 6, 15] {
            let mut sup = tcp_frame(false, 1, TCP_ACK, &[7; 3000], &[]);
            sup[ETH] = 0x40 | ihl;
            let l4 = ETH + 20;
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: (l4 + 20) as u16,
                gso_size: 1000,
                csum_start: l4 as u16,
                csum_offset: 16,
            };
            assert_eq!(
                Segmenter::new().split_with(&hdr, &sup, |_| {}),
                Err(OffloadError::BadIpv4Header),
                "IHL {ihl}"
            );
        }
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        let mut f = tcp_frame(false, 1, TCP_ACK, b"hello world!", &[]);
        let good = f.clone();
        let l4 = ETH + 20;
        // What the kernel leaves: the pseudo-header sum, not the checksum.
        let pseudo = fold(pseudo_header(&f, ETH, false, f.len() - l4));
        f[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: l4 as u16,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let mut out = Vec::new();
        Segmenter::new()
            .split_with(&hdr, &f, |s| out.push(s.to_vec()))
            .unwrap();
        assert_eq!(out, vec![good]);
        let bad = VnetHdr {
            csum_offset: 60000,
            ..hdr
        };
        assert_eq!(
            Segmenter::new().split_with(&bad, &f, |_| {}),
            Err(OffloadError::BadChecksumOffsets)
        );
    }

    #[test]
    fn in_order_segments_coalesce_into_one_gso_frame_that_the_segmenter_reverses() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
            let opts = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3];
            let segs: Vec<Vec<u8>> = payload
                .chunks(1000)
                .enumerate()
                .map(|(i, c)| {
                    tcp_frame(
                        v6,
                        500 + (i * 1000) as u32,
                        TCP_ACK | if i == 4 { TCP_PSH } else { 0 },
                        c,
                        &opts,
                    )
                })
                .collect();
            let (written, _) = coalesce_all_held(&segs);
            assert_eq!(written.len(), 1, "one super-frame");
            let hdr = VnetHdr::parse(&written[0]);
            assert_eq!(
                (hdr.gso_type, hdr.gso_size, hdr.flags),
                (if v6 { GSO_TCPV6 } else { GSO_TCPV4 }, 1000, F_NEEDS_CSUM)
            );
            // What the kernel would do with it: segment again.
            let frame = written[0][VNET_HDR_LEN..].to_vec();
            let mut again = Vec::new();
            Segmenter::new()
                .split_with(&hdr, &frame, |s| again.push(s.to_vec()))
                .unwrap();
            assert_eq!(again.len(), 5);
            for (a, b) in again.iter().zip(&segs) {
                let l4 = ETH + if v6 { 40 } else { 20 };
                assert_eq!(a[l4..], b[l4..], "TCP part of a resegmented frame");
            }
        }
    }

    #[test]
    fn gaps_other_flows_and_odd_frames_are_not_merged_and_order_is_kept() {
        let a0 = tcp_frame(false, 100, TCP_ACK, &[1; 100], &[]);
        let a2 = tcp_frame(false, 300, TCP_ACK, &[2; 100], &[]);
        let mut syn = tcp_frame(false, 400, TCP_SYN, &[], &[]);
        let mut c = Coalescer::new();
        let written = std::cell::RefCell::new(Vec::<Vec<u8>>::new());
        let mut w = |f: &[u8]| written.borrow_mut().push(f.to_vec());
        assert_eq!(c.push(&a0, &mut w), Verdict::Held);
        // A gap: a new "flow" state starts, the first is written first.
        assert_eq!(c.push(&a2, &mut w), Verdict::Held);
        assert_eq!(written.borrow().len(), 1);
        assert_eq!(VnetHdr::parse(&written.borrow()[0]).flags, F_DATA_VALID);
        // A SYN of the same flow: the held segment goes first, then the SYN passes.
        assert_eq!(c.push(&syn, &mut w), Verdict::Passthrough);
        assert_eq!(written.borrow().len(), 2);
        // A corrupted checksum is never merged.
        let mut bad = tcp_frame(false, 400, TCP_ACK, &[3; 100], &[]);
        bad[60] ^= 0xff;
        assert_eq!(c.push(&bad, &mut w), Verdict::Passthrough);
        syn.truncate(20);
        assert_eq!(c.push(&syn, &mut w), Verdict::Passthrough);
    }

    proptest! {
        /// Any run of segments, pushed in any interleaving of two flows, comes out with
        /// every flow's payload intact and in order.
        #[test]
        fn coalescing_preserves_every_flows_bytes(lens in proptest::collection::vec(1usize..1400, 1..40), order in proptest::collection::vec(any::<bool>(), 1..40)) {
            let mut flows: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
            let mut seqs = [1000u32, 9000u32];
            for (i, len) in lens.iter().enumerate() {
                let k = usize::from(order[i % order.len()]);
                let payload: Vec<u8> = (0..*len).map(|j| (j + i) as u8).collect();
                let mut f = tcp_frame(false, seqs[k], TCP_ACK, &payload, &[]);
                if k == 1 {
                    f[ETH + 19] = 3; // another destination address
                    ipv4_header_checksum(&mut f[ETH..ETH + 20]);
                    let l4 = ETH + 20;
                    f[l4 + 16] = 0; f[l4 + 17] = 0;
                    let c = !fold(sum(&f[l4..], pseudo_header(&f, ETH, false, f.len() - l4)));
                    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
                }
                seqs[k] = seqs[k].wrapping_add(*len as u32);
                flows[k].push(f);
            }
            let mut input = Vec::new();
            let (mut a, mut b) = (flows[0].iter(), flows[1].iter());
            for i in 0..(flows[0].len() + flows[1].len()) {
                let next = if order[i % order.len()] { b.next().or_else(|| a.next()) } else { a.next().or_else(|| b.next()) };
                input.push(next.unwrap().clone());
            }
            let out = coalesce_like_the_worker(&input);
            // Resegment everything and compare each flow's byte stream.
            let mut streams: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
            let mut bad_checksums = 0;
            for w in out {
                let hdr = VnetHdr::parse(&w);
                let frame = w[VNET_HDR_LEN..].to_vec();
                let mut seg = Segmenter::new();
                seg.split_with(&hdr, &frame, |s| {
                    if !checksums_valid(s) {
                        bad_checksums += 1;
                    }
                    let k = usize::from(s[ETH + 19] == 3);
                    streams[k].extend_from_slice(&s[ETH + 40..]);
                }).unwrap();
            }
            prop_assert_eq!(bad_checksums, 0);
            for k in 0..2 {
                let want: Vec<u8> = flows[k].iter().flat_map(|f| f[ETH + 40..].to_vec()).collect();
                prop_assert_eq!(&streams[k], &want);
            }
        }

        /// Any run of UDP datagrams of two flows (sizes drawn from a few, so runs of equal
        /// ones happen) comes out, after the kernel cuts the super-frames, as exactly the
        /// datagrams that went in, each flow in its order.
        #[test]
        fn udp_coalescing_gives_back_every_datagram_in_order(picks in proptest::collection::vec((0usize..4, any::<bool>(), any::<bool>()), 1..200)) {
            let sizes = [1usize, 64, 64, 1200];
            let input: Vec<Vec<u8>> = picks.iter().enumerate().map(|(i, &(s, flow, v6))| {
                let mut f = udp_frame(v6, i as u16, &vec![i as u8; sizes[s]]);
                if flow {
                    // The other flow: another source port.
                    let l4 = ETH + if v6 { 40 } else { 20 };
                    f[l4 + 1] ^= 1;
                    f[l4 + 6..l4 + 8].fill(0);
                    let c = !fold(sum(&f[l4..], pseudo_header_proto(&f, ETH, v6, f.len() - l4, IPPROTO_UDP)));
                    f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
                }
                f
            }).collect();
            let out = coalesce_like_the_worker(&input);
            let mut got: Vec<Vec<u8>> = Vec::new();
            for w in &out {
                let hdr = VnetHdr::parse(w);
                if hdr.gso_type == GSO_UDP_L4 {
                    got.extend(kernel_udp_segment(&hdr, &w[VNET_HDR_LEN..]));
                } else {
                    got.push(w[VNET_HDR_LEN..].to_vec());
                }
            }
            // IPv4 ids of merged datagrams are the first one's (the kernel numbers them
            // itself); compare the rest, per flow and in order.
            let key = |f: &Vec<u8>| {
                let mut f = f.clone();
                if f[12] == 0x08 { f[ETH + 4] = 0; f[ETH + 5] = 0; f[ETH + 10] = 0; f[ETH + 11] = 0; }
                f
            };
            let flow_of = |f: &Vec<u8>| (f[12], f[ETH + if f[12] == 0x86 { 41 } else { 21 }]);
            let mut want = input.clone();
            want.sort_by_key(flow_of);
            got.sort_by_key(flow_of);
            prop_assert_eq!(got.iter().map(key).collect::<Vec<_>>(), want.iter().map(key).collect::<Vec<_>>());
        }

        #[test]
        fn arbitrary_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..2000), flags: u8, gso: u8, start: u16, off: u16, size: u16) {
            let hdr = VnetHdr { flags, gso_type: gso, hdr_len: 0, gso_size: size, csum_start: start, csum_offset: off };
            let f = frame.clone();
            let _ = Segmenter::new().split_with(&hdr, &f, |_| {});
            let mut c = Coalescer::new();
            let _ = c.push(&frame, &mut |_: &[u8]| {});
            c.flush(&mut |_: &[u8]| {});
        }
    }
}
