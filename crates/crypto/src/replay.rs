//! A sliding anti-replay window over 64-bit counters (RFC 6479, as WireGuard keeps it).

/// Words in the bitmap.
const BLOCKS: usize = 64;
/// Bits per word.
const BITS: u64 = 64;

/// Which counters were seen, for the last [`ReplayWindow::SIZE`] counters below the highest one.
///
/// Only call [`update`](Self::update) for a datagram that authenticated: forged datagrams must
/// not move the window. [`check`](Self::check) is a cheap pre-test that changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    bitmap: [u64; BLOCKS],
    /// Highest counter accepted so far (meaningless until `any`).
    top: u64,
    any: bool,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// How far below the highest accepted counter a counter may still be accepted: a counter
    /// `c` with `top - c < SIZE` that was not seen passes.
    pub const SIZE: u64 = (BLOCKS as u64 - 1) * BITS;

    /// An empty window: every counter passes once.
    pub fn new() -> Self {
        Self {
            bitmap: [0; BLOCKS],
            top: 0,
            any: false,
        }
    }

    /// Whether `counter` would be accepted (not seen, not too old). Changes nothing.
    pub fn check(&self, counter: u64) -> bool {
        if !self.any || counter > self.top {
            return true;
        }
        if self.top - counter >= Self::SIZE {
            return false;
        }
        let (block, bit) = Self::position(counter);
        self.bitmap[block] & (1 << bit) == 0
    }

    /// Accepts `counter`: true if it was new (and is now recorded), false for a replay or a
    /// counter too far behind.
    pub fn update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if !self.any {
            self.bitmap = [0; BLOCKS];
            self.top = counter;
            self.any = true;
        } else if counter > self.top {
            let old = self.top / BITS;
            let new = counter / BITS;
            // Clear the words between the old top's and the new one's (all of them at most).
            let clear = (new - old).min(BLOCKS as u64);
            for i in 1..=clear {
                self.bitmap[((old + i) % BLOCKS as u64) as usize] = 0;
            }
            self.top = counter;
        }
        let (block, bit) = Self::position(counter);
        self.bitmap[block] |= 1 << bit;
        true
    }

    /// The highest counter accepted so far.
    pub fn top(&self) -> Option<u64> {
        self.any.then_some(self.top)
    }

    fn position(counter: u64) -> (usize, u64) {
        (((counter / BITS) % BLOCKS as u64) as usize, counter % BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new();
        assert!(w.update(0));
        assert!(!w.update(0), "replay of the first counter");
        let top = 10_000;
        assert!(w.update(top));
        // The oldest counter still inside the window passes once; one older is refused.
        let oldest = top - (ReplayWindow::SIZE - 1);
        assert!(w.check(oldest));
        assert!(w.update(oldest));
        assert!(!w.update(oldest));
        assert!(!w.check(oldest - 1));
        assert!(!w.update(oldest - 1));
        // 0 was seen, and is now far outside the window anyway.
        assert!(!w.update(0));
        // Out of order inside the window: each once.
        assert!(w.update(top - 1));
        assert!(w.update(top - 63));
        assert!(w.update(top - 64));
        assert!(!w.update(top - 64));
        assert!(!w.update(top));
        // A jump further than the whole window clears every old bit.
        let far = top + 10 * ReplayWindow::SIZE;
        assert!(w.update(far));
        assert!(w.update(far - 1));
        assert!(!w.check(top));
        assert_eq!(w.top(), Some(far));
        // The largest counter works.
        assert!(w.update(u64::MAX));
        assert!(!w.update(u64::MAX));
        assert!(w.update(u64::MAX - 5));
    }

    #[test]
    fn words_crossing_the_bitmap_wrap_are_cleared() {
        let mut w = ReplayWindow::new();
        // Fill every slot of the bitmap, then slide by one word at a time.
        for c in 0..(BLOCKS as u64 * BITS) {
            w.update(c);
        }
        let top = BLOCKS as u64 * BITS - 1;
        // Counters one word-span beyond must be new, even though their slot held old bits.
        for c in top + 1..top + 200 {
            assert!(w.update(c), "{c}");
        }
    }

    proptest! {
        /// Against a model: a counter is accepted iff it is not older than the window and was
        /// never accepted before.
        #[test]
        fn matches_a_model(steps in proptest::collection::vec(0u64..20_000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::HashSet::new();
            let mut top: Option<u64> = None;
            for c in steps {
                let too_old = top.is_some_and(|t| c < t && t - c >= ReplayWindow::SIZE);
                let expect = !too_old && !seen.contains(&c);
                prop_assert_eq!(w.update(c), expect, "counter {}", c);
                if expect {
                    seen.insert(c);
                    top = Some(top.map_or(c, |t| t.max(c)));
                }
            }
        }
    }
}
