//! Seeded, portable randomness for the synthetic phone: a keyed hash for independent decisions
//! and a small xoshiro256** generator for sequences. Integer-only, so every machine agrees.

/// SplitMix64's finaliser: a bijective mix of 64 bits.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A keyed hash of a few words. Order matters; used wherever a decision must not depend on
/// the order in which other decisions were taken (per-page versions, per-day events).
pub(crate) fn hash(parts: &[u64]) -> u64 {
    let mut h = 0x6A09_E667_F3BC_C908u64;
    for &p in parts {
        h = mix64(h ^ mix64(p));
    }
    h
}

/// xoshiro256** seeded through SplitMix64. Its output is fixed by its definition, unlike
/// `rand::rngs::StdRng`, whose algorithm may change between releases.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut s = [0u64; 4];
        for w in &mut s {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            *w = mix64(z);
        }
        Rng { s }
    }

    pub(crate) fn from_parts(parts: &[u64]) -> Rng {
        Rng::new(hash(parts))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (`n` > 0; 0 gives 0). Multiply-shift: no modulo bias worth noting.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `pct`/100.
    pub(crate) fn percent(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    /// Roughly log-uniform in `lo..=hi` (both ≥ 1): a power-of-two band picked uniformly,
    /// then a uniform value inside it. Gives the long-tailed sizes real file systems have.
    pub(crate) fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let lo = lo.max(1);
        let hi = hi.max(lo);
        let (a, b) = (63 - lo.leading_zeros(), 63 - hi.leading_zeros());
        let band = self.range(u64::from(a), u64::from(b)) as u32;
        let band_lo = (1u64 << band).max(lo);
        let band_hi = if band >= 63 {
            hi
        } else {
            ((1u64 << (band + 1)) - 1).min(hi)
        };
        self.range(band_lo, band_hi)
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let w = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&w[..rest.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_outputs() {
        // Pinned values: a change here changes every synthetic phone.
        let mut r = Rng::new(1);
        assert_eq!(r.next_u64(), 0xf9d2_0113_ec80_c6d5);
        assert_eq!(r.next_u64(), 0xd16e_236e_5cdc_6563);
        assert_eq!(hash(&[1, 2]), 0xd6e8_8f93_60ad_a23c);
        assert_ne!(hash(&[1, 2]), hash(&[2, 1]));
    }

    #[test]
    fn ranges_hold() {
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            let v = r.range(3, 9);
            assert!((3..=9).contains(&v));
            let l = r.log_uniform(40, 70_000);
            assert!((40..=70_000).contains(&l), "{l}");
        }
        assert_eq!(r.below(0), 0);
    }
}
