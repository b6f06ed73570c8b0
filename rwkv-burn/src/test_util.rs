//! Helpers shared by unit tests.

use burn::tensor::Device;

/// Every CPU device compiled into this build.
pub fn test_devices() -> Vec<Device> {
    crate::DeviceSpec::available()
        .into_iter()
        .map(|d| d.device().expect("available device"))
        .collect()
}

pub use crate::random::Lcg;

/// `|got - want| <= tol + tol * |want|` element-wise.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    if let Some(m) = crate::parity::compare(got, want, tol, tol, what) {
        panic!("{what}[{}]: got {}, want {}", m.index, m.got, m.expected);
    }
}
