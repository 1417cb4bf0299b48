//! The anti-replay window of one session: RFC 6479's ring of bitmap blocks.
//!
//! A counter is accepted once, and only if it is within `WINDOW` of the highest counter
//! seen. Checking is split from marking so that a packet is marked only after it has been
//! authenticated: a forged packet can never move the window.

/// Bits per bitmap block.
const BLOCK_BITS: u64 = 64;
/// Blocks in the ring; one block is always the one being cleared, so the usable window is
/// one block less.
const BLOCKS: usize = 128;
/// How far behind the highest counter seen a packet may arrive (8128 packets).
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

#[derive(Clone)]
pub struct ReplayWindow {
    highest: u64,
    bitmap: [u64; BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            highest: 0,
            bitmap: [0; BLOCKS],
        }
    }
}

/// Why a counter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Already received.
    Duplicate,
    /// Older than the window.
    TooOld,
}

impl ReplayWindow {
    /// Would `counter` be accepted? Changes nothing.
    #[inline]
    pub fn check(&self, counter: u64) -> Result<(), Replay> {
        if counter > self.highest {
            return Ok(());
        }
        if self.highest - counter > WINDOW {
            return Err(Replay::TooOld);
        }
        let (block, bit) = Self::position(counter);
        if self.bitmap[block] & bit != 0 {
            Err(Replay::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Marks `counter` as received; call only for an authenticated packet.
    #[inline]
    pub fn mark(&mut self, counter: u64) -> Result<(), Replay> {
        self.check(counter)?;
        if counter > self.highest {
            let current = self.highest / BLOCK_BITS;
            let target = counter / BLOCK_BITS;
            let clear = (target - current).min(BLOCKS as u64);
            for i in 1..=clear {
                self.bitmap[((current + i) % BLOCKS as u64) as usize] = 0;
            }
            self.highest = counter;
        }
        let (block, bit) = Self::position(counter);
        self.bitmap[block] |= bit;
        Ok(())
    }

    fn position(counter: u64) -> (usize, u64) {
        let block = ((counter / BLOCK_BITS) % BLOCKS as u64) as usize;
        (block, 1u64 << (counter % BLOCK_BITS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_counter_is_accepted_once() {
        let mut w = ReplayWindow::default();
        for c in [0, 1, 5, 3, 2, 4] {
            assert_eq!(w.mark(c), Ok(()), "{c}");
        }
        for c in 0..=5 {
            assert_eq!(w.mark(c), Err(Replay::Duplicate), "{c}");
        }
    }

    #[test]
    fn window_is_at_least_2048_and_old_counters_are_refused() {
        let mut w = ReplayWindow::default();
        w.mark(10_000).unwrap();
        assert_eq!(w.check(10_000 - 2048), Ok(()));
        assert_eq!(w.check(10_000 - WINDOW), Ok(()));
        assert_eq!(w.check(10_000 - WINDOW - 1), Err(Replay::TooOld));
    }

    #[test]
    fn check_alone_does_not_mark() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(7), Ok(()));
        assert_eq!(w.check(7), Ok(()));
        w.mark(7).unwrap();
        assert_eq!(w.check(7), Err(Replay::Duplicate));
    }

    #[test]
    fn a_jump_clears_stale_bits() {
        let mut w = ReplayWindow::default();
        for c in 0..200 {
            w.mark(c).unwrap();
        }
        // Far ahead: every block is reused, and counters in the new window are fresh.
        let far = 200 + 3 * WINDOW;
        w.mark(far).unwrap();
        for c in far - 100..far {
            assert_eq!(w.mark(c), Ok(()), "{c}");
        }
    }

    proptest! {
        /// Against a model (a set of seen counters), the window never accepts a duplicate
        /// and never refuses a fresh counter inside the window.
        #[test]
        fn agrees_with_a_set_model(counters in proptest::collection::vec(0u64..30_000, 1..2000)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut highest = 0u64;
            for c in counters {
                let fresh_in_window = !seen.contains(&c) && (c > highest || highest - c <= WINDOW);
                let accepted = w.mark(c).is_ok();
                if seen.contains(&c) {
                    prop_assert!(!accepted, "duplicate {} accepted", c);
                }
                prop_assert_eq!(accepted, fresh_in_window, "counter {}", c);
                if accepted {
                    seen.insert(c);
                    highest = highest.max(c);
                }
            }
        }
    }
}
