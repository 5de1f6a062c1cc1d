//! A tiny seeded PRNG for random test weights.
//!
//! Why built in: generated models must be byte-identical for a given seed on every machine and
//! every version of this crate (tests compare checksums and cache files by seed), which a
//! `rand` version bump could silently break. Statistical quality barely matters for weights.

/// xorshift64* (Vigna): 64-bit state, full period, a few instructions per value.
#[derive(Debug, Clone)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// Seeds the generator. Seeds are scrambled (splitmix64) so that 0, 1, 2, ... give unrelated
    /// streams, and a zero state, which xorshift cannot leave, is impossible.
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self {
            state: if z == 0 { 0x2545_f491_4f6c_dd1d } else { z },
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)` with 24 bits of precision.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[-scale, scale)`.
    pub fn uniform(&mut self, scale: f32) -> f32 {
        (self.next_f32() * 2.0 - 1.0) * scale
    }

    /// Approximately normal with mean 0 and standard deviation `std`: the sum of four uniform
    /// 16-bit pieces of one draw (Irwin–Hall), rescaled. One PRNG step per value and no
    /// transcendental functions, so hundreds of millions of weights are generated quickly even
    /// in debug builds; the tails are cut at ±3.46 std, which random test weights do not miss.
    pub fn normal(&mut self, std: f32) -> f32 {
        let r = self.next_u64();
        let sum: u32 = (0..4).map(|i| ((r >> (16 * i)) & 0xffff) as u32).sum();
        // Each piece is uniform on [0, 65535]: mean 2 * 65535, variance 4 * (65536^2 - 1) / 12.
        const MEAN: f32 = 2.0 * 65535.0;
        const INV_STD: f32 = 1.0 / 37_837.227; // 1 / sqrt(4 * (65536^2 - 1) / 12)
        (sum as f32 - MEAN) * INV_STD * std
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let a: Vec<u64> = (0..8).scan(XorShift64::new(7), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..8).scan(XorShift64::new(7), |r, _| Some(r.next_u64())).collect();
        let c: Vec<u64> = (0..8).scan(XorShift64::new(8), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(XorShift64::new(0).next_u64(), 0);
    }

    #[test]
    fn normal_has_requested_moments_and_uniform_its_range() {
        let mut r = XorShift64::new(1);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| f64::from(r.normal(0.02))).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 2e-4, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 4e-4, "std {}", var.sqrt());
        for _ in 0..10_000 {
            let u = r.uniform(0.05);
            assert!((-0.05..0.05).contains(&u));
        }
    }
}
