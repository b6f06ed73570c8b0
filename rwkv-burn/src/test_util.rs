//! Helpers shared by unit tests.

use burn::tensor::Device;

/// Every CPU device compiled into this build.
pub fn test_devices() -> Vec<Device> {
    crate::DeviceSpec::available()
        .into_iter()
        .map(|d| d.device().expect("available device"))
        .collect()
}

/// A small deterministic generator so tests need no RNG crate.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    /// Uniform in [-scale, scale).
    pub fn next(&mut self, scale: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let unit = (self.0 >> 40) as f32 / (1u64 << 24) as f32;
        (unit * 2.0 - 1.0) * scale
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next(scale)).collect()
    }
}

/// `|got - want| <= tol + tol * |want|` element-wise.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    if let Some(m) = crate::parity::first_mismatch(got, want, tol, tol) {
        panic!("{what}[{}]: got {}, want {}", m.index, m.got, m.expected);
    }
}
