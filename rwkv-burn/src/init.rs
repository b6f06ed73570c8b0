//! Random weights for a configuration: models of real shapes for tests and benchmarks, built
//! through the same code path as loaded checkpoints.
//!
//! The values are plausible (mixes in [0, 1], unit-variance projections, moderate decays), not
//! the RWKV-LM training initialisation.

use crate::config::RwkvConfig;
use crate::load::{LoadError, Role, WeightSource, build};
use crate::model::Rwkv;
use burn::tensor::Device;
use std::path::{Path, PathBuf};

/// A [`WeightSource`] that invents every tensor from its name, shape and role. The same seed
/// and name always give the same values, whatever order tensors are read in.
pub struct RandomWeights {
    seed: u64,
    label: PathBuf,
}

impl RandomWeights {
    /// A source seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            label: PathBuf::from(format!("<random weights, seed {seed}>")),
        }
    }
}

impl WeightSource for RandomWeights {
    fn path(&self) -> &Path {
        &self.label
    }

    fn contains(&self, _: &str) -> bool {
        true
    }

    fn read(
        &self,
        name: &str,
        expected: &[usize],
        role: Role,
    ) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let count: usize = expected.iter().product();
        let fan_in = *expected.last().unwrap_or(&1) as f32;
        let (low, high) = match role {
            Role::Embedding => (-0.5, 0.5),
            Role::Matrix => {
                let bound = (3.0 / fan_in).sqrt();
                (-bound, bound)
            }
            Role::Lora => (-0.1, 0.1),
            Role::Mix => (0.0, 1.0),
            Role::Decay => (-2.0, 1.0),
            Role::Bonus | Role::Bias => (-1.0, 1.0),
            Role::NormScale => (0.9, 1.1),
            Role::NormShift => (-0.1, 0.1),
        };
        let mut state = self.seed ^ fnv1a(name.as_bytes());
        let values = (0..count)
            .map(|_| low + (high - low) * unit(&mut state))
            .collect();
        Ok((values, expected.to_vec()))
    }
}

/// A model of `config`'s shape with random weights.
pub fn random_model(config: &RwkvConfig, seed: u64, device: &Device) -> Result<Rwkv, LoadError> {
    build(&RandomWeights::new(seed), config, device)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// splitmix64, mapped to [0, 1).
fn unit(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9e3779b97f4a7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}
