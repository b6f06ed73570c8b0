//! The few deterministic hash and random-number helpers the library and its tools share:
//! the same inputs give the same numbers on every platform and in every build, which parameter
//! ids, invented weights, sampling seeds and resumable data order all rely on.

/// 64-bit FNV-1a of `bytes`: a stable hash of names (parameter ids, per-tensor seeds).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The top 24 bits of `bits` as a float in [0, 1): every value exactly representable in f32.
fn unit_f32(bits: u64) -> f32 {
    (bits >> 40) as f32 / (1u64 << 24) as f32
}

/// splitmix64: small, fast, and identical on every platform; a good stream from any seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The stream seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        unit_f32(self.next_u64())
    }
}

/// A 64-bit linear congruential generator (Knuth's MMIX constants). Its whole state is one
/// number, so a position in the stream can be saved and resumed ([`Lcg::state`]).
#[derive(Debug, Clone)]
pub struct Lcg(u64);

impl Lcg {
    const MUL: u64 = 6_364_136_223_846_793_005;
    const ADD: u64 = 1_442_695_040_888_963_407;

    /// The stream seeded by `seed` (one step is taken first, so nearby seeds start apart).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(Self::MUL).wrapping_add(Self::ADD))
    }

    /// The stream continuing from a saved [`Lcg::state`].
    pub fn from_state(state: u64) -> Self {
        Self(state)
    }

    /// The position in the stream.
    pub fn state(&self) -> u64 {
        self.0
    }

    /// The next state.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(Self::MUL).wrapping_add(Self::ADD);
        self.0
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * unit_f32(self.next_u64())
    }

    /// Uniform in [-scale, scale).
    pub fn next(&mut self, scale: f32) -> f32 {
        (unit_f32(self.next_u64()) * 2.0 - 1.0) * scale
    }

    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next(scale)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published values: FNV-1a of "a", splitmix64's first output from seed 0.
    #[test]
    fn match_the_published_algorithms() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        let mut lcg = Lcg::from_state(1);
        assert_eq!(lcg.next_u64(), Lcg::MUL.wrapping_add(Lcg::ADD));
    }

    #[test]
    fn floats_stay_in_range_and_streams_resume() {
        let mut rng = Lcg::new(3);
        for _ in 0..1000 {
            let x = rng.uniform(-2.0, 5.0);
            assert!((-2.0..5.0).contains(&x));
            assert!((0.0..1.0).contains(&SplitMix64::new(rng.next_u64()).next_f32()));
        }
        let mut resumed = Lcg::from_state(rng.state());
        assert_eq!(resumed.next_u64(), rng.next_u64());
    }
}
