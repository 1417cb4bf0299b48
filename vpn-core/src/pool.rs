//! A bounded pool of frame buffers shared by the transmit, per-peer wait and delivery
//! queues. A frame flooded to several peers is stored once and reference-counted. Buffers
//! are allocated as the pool first grows and reused afterwards, so the steady state
//! allocates nothing; the pool never holds more than its capacity.

use crate::wire::MAX_FRAME_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameRef(u32);

pub(crate) struct FramePool {
    bufs: Vec<Box<[u8]>>,
    lens: Vec<u16>,
    refs: Vec<u16>,
    free: Vec<u32>,
    capacity: usize,
}

impl FramePool {
    pub(crate) fn new(capacity: usize) -> FramePool {
        FramePool {
            bufs: Vec::new(),
            lens: Vec::new(),
            refs: Vec::new(),
            free: Vec::new(),
            capacity,
        }
    }

    /// Stores a copy of `frame` with one reference, or `None` when the pool is full.
    #[inline]
    pub(crate) fn insert(&mut self, frame: &[u8]) -> Option<FrameRef> {
        debug_assert!(frame.len() <= MAX_FRAME_LEN);
        let at = match self.free.pop() {
            Some(at) => at as usize,
            None if self.bufs.len() < self.capacity => {
                self.bufs.push(vec![0u8; MAX_FRAME_LEN].into_boxed_slice());
                self.lens.push(0);
                self.refs.push(0);
                if self.free.capacity() < self.capacity {
                    self.free
                        .reserve_exact(self.capacity - self.free.capacity());
                }
                self.bufs.len() - 1
            }
            None => return None,
        };
        self.bufs[at][..frame.len()].copy_from_slice(frame);
        self.lens[at] = frame.len() as u16;
        self.refs[at] = 1;
        Some(FrameRef(at as u32))
    }

    #[inline]
    pub(crate) fn get(&self, r: FrameRef) -> &[u8] {
        let at = r.0 as usize;
        &self.bufs[at][..usize::from(self.lens[at])]
    }

    pub(crate) fn retain(&mut self, r: FrameRef) {
        self.refs[r.0 as usize] += 1;
    }

    #[inline]
    pub(crate) fn release(&mut self, r: FrameRef) {
        let at = r.0 as usize;
        debug_assert!(self.refs[at] > 0, "double release of frame {at}");
        self.refs[at] -= 1;
        if self.refs[at] == 0 {
            self.free.push(r.0);
        }
    }

    /// Frames currently referenced.
    pub(crate) fn in_use(&self) -> usize {
        self.bufs.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_shared_until_the_last_release() {
        let mut pool = FramePool::new(2);
        let a = pool.insert(b"frame a").unwrap();
        pool.retain(a);
        pool.release(a);
        assert_eq!(pool.get(a), b"frame a");
        assert_eq!(pool.in_use(), 1);
        pool.release(a);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn the_pool_never_exceeds_its_capacity() {
        let mut pool = FramePool::new(2);
        let a = pool.insert(b"a").unwrap();
        let _b = pool.insert(b"b").unwrap();
        assert!(pool.insert(b"c").is_none());
        pool.release(a);
        let c = pool.insert(b"c").unwrap();
        assert_eq!(pool.get(c), b"c");
        assert_eq!(pool.bufs.len(), 2);
    }
}
