//! Shared helpers for the fixture tests.
#![allow(dead_code)]

use burn::tensor::{Device, Int, Tensor, TensorData};
use rwkv_burn::DeviceSpec;
use rwkv_burn::safetensors_io::{NamedTensor, read};
use std::path::PathBuf;

/// `../shared/fixtures` beside the checkout, or `$RWKV_FIXTURES`.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    assert!(
        dir.join("README.md").is_file(),
        "fixtures not found at {} (set RWKV_FIXTURES)",
        dir.display()
    );
    dir
}

/// Every CPU device compiled into this build.
pub fn devices() -> Vec<(DeviceSpec, Device)> {
    DeviceSpec::available()
        .into_iter()
        .map(|d| (d, d.device().unwrap()))
        .collect()
}

/// The tensors of an `expected.safetensors`.
pub struct Expected(Vec<NamedTensor>);

impl Expected {
    pub fn open(path: PathBuf) -> Self {
        Self(read(&path).unwrap())
    }

    pub fn get(&self, name: &str) -> &TensorData {
        &self
            .0
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("expected tensor {name}"))
            .data
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.get(name).clone().try_to_vec::<f32>().unwrap()
    }

    pub fn tokens(&self, name: &str) -> Vec<i64> {
        self.get(name).clone().try_to_vec::<i64>().unwrap()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|t| t.name.as_str())
    }
}

/// Token ids as a `[batch, len]` tensor.
pub fn token_tensor(ids: &[i64], batch: usize, device: &Device) -> Tensor<2, Int> {
    let len = ids.len() / batch;
    Tensor::from_data(TensorData::new(ids.to_vec(), [batch, len]), device)
}

/// The fixtures' tolerance: `|got - exp| <= 1e-4 + 1e-4 |exp|`.
pub fn assert_matches(got: &[f32], exp: &[f32], what: &str) {
    if let Some(m) = rwkv_burn::parity::compare(got, exp, 1e-4, 1e-4, what) {
        panic!(
            "{what}: element {} is {} but should be {}",
            m.index, m.got, m.expected
        );
    }
}
