//! A small seeded pseudo-random generator for election timeouts.
//!
//! The core must be reproducible from its configuration, so it never touches
//! a global or OS-seeded generator. [`SplitMix64`] is tiny, fast, passes the
//! usual statistical batteries for this purpose, and every seed (zero
//! included) yields a full-period sequence.
//!
//! Invariant: the sequence of values depends only on the seed.

/// SplitMix64: a 64-bit state advanced by a fixed odd constant and mixed
/// through two multiply-xorshift rounds.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value drawn uniformly from `lo..hi`; returns `lo` when the range is
    /// empty. Uses a widening multiply, whose bias is below 2^-32 for the
    /// small ranges used here.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return lo;
        }
        let span = u64::from(hi - lo);
        let pick = (u128::from(self.next_u64()) * u128::from(span)) >> 64;
        lo + pick as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let mut c = SplitMix64::new(8);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn range_stays_in_bounds_and_covers_it() {
        let mut rng = SplitMix64::new(0);
        let mut seen = [false; 10];
        for _ in 0..10_000 {
            let v = rng.range(10, 20);
            assert!((10..20).contains(&v), "{v} out of range");
            seen[(v - 10) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "some values never drawn: {seen:?}");
        assert_eq!(rng.range(5, 5), 5);
        assert_eq!(rng.range(6, 5), 6);
    }
}
