//! Weights for a configuration without a checkpoint, built through the same code path as
//! loaded checkpoints: [`RandomWeights`] (plausible values for tests and benchmarks) and
//! [`TrainingInit`] (the RWKV-LM initialisation, to train from scratch).

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

    fn stores_shapes(&self) -> bool {
        false
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

/// The initialisation of BlinkDL's RWKV-LM trainers (RWKV-4 and RWKV-7; RWKV-5/6 use the
/// RWKV-4 style mixes and decays): token-shift mixes and decays that vary smoothly across
/// channels and layers, a tiny embedding, zero output projections so every block starts as the
/// identity, and zero (or small) low-rank adapters. Plain uniform draws stand in for the
/// orthogonal matrices of the original.
pub struct TrainingInit {
    seed: u64,
    n_layer: usize,
    label: PathBuf,
}

impl TrainingInit {
    /// An initialiser for `config`, seeded by `seed`.
    pub fn new(config: &RwkvConfig, seed: u64) -> Self {
        Self {
            seed,
            n_layer: config.n_layer.max(1),
            label: PathBuf::from(format!("<RWKV-LM initialisation, seed {seed}>")),
        }
    }

    fn uniform(&self, name: &str, count: usize, bound: f32) -> Vec<f32> {
        let mut state = self.seed ^ fnv1a(name.as_bytes());
        (0..count)
            .map(|_| (unit(&mut state) * 2.0 - 1.0) * bound)
            .collect()
    }
}

impl WeightSource for TrainingInit {
    fn path(&self) -> &Path {
        &self.label
    }

    fn contains(&self, _: &str) -> bool {
        true
    }

    fn stores_shapes(&self) -> bool {
        false
    }

    fn read(
        &self,
        name: &str,
        expected: &[usize],
        role: Role,
    ) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let count: usize = expected.iter().product();
        let layer = name
            .strip_prefix("blocks.")
            .and_then(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .unwrap_or(0) as f32;
        let n_layer = self.n_layer as f32;
        let r01 = if self.n_layer > 1 {
            layer / (n_layer - 1.0)
        } else {
            0.0
        };
        let r1a0 = 1.0 - layer / n_layer;
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let channel = |i: usize| i as f32 / count.max(1) as f32;
        let ramp = |f: &dyn Fn(f32) -> f32| (0..count).map(|i| f(channel(i))).collect::<Vec<f32>>();
        let values = match (role, leaf) {
            // v7 mixes: 1 - ddd^p; v4/v5/v6 mixes: ddd^p (the other side of the same lerp).
            (Role::Mix, "x_r" | "x_g") => ramp(&|d| 1.0 - d.powf(0.2 * r1a0)),
            (Role::Mix, "x_w" | "x_a") => ramp(&|d| 1.0 - d.powf(0.9 * r1a0)),
            (Role::Mix, "x_k") if name.contains(".ffn.") => ramp(&|d| 1.0 - d.powf(r1a0.powi(4))),
            (Role::Mix, "x_k" | "x_v") => ramp(&|d| 1.0 - d.powf(0.7 * r1a0)),
            (Role::Mix, "time_mix_v") => ramp(&|d| d.powf(r1a0) + 0.3 * r01),
            (Role::Mix, "time_mix_r" | "time_mix_g") => ramp(&|d| d.powf(0.5 * r1a0)),
            (Role::Mix, _) if leaf.starts_with("time_maa") => ramp(&|d| 1.0 - d.powf(0.5 * r1a0)),
            (Role::Mix, _) => ramp(&|d| d.powf(r1a0)),
            (Role::Decay, "w0") => {
                let n = count.max(2) as f32 - 1.0;
                (0..count)
                    .map(|i| -7.0 + 5.0 * (i as f32 / n).powf(0.85 + r01.sqrt()) + 0.5)
                    .collect()
            }
            (Role::Decay, _) => {
                let n = count.max(2) as f32 - 1.0;
                (0..count)
                    .map(|i| -5.0 + 8.0 * (i as f32 / n).powf(0.7 + 1.3 * r01))
                    .collect()
            }
            (Role::Bonus, "r_k") => vec![0.0; count],
            (Role::Bonus, _) => (0..count)
                .map(|i| 0.3f32.ln() + 0.5 * (((i + 1) % 3) as f32 - 1.0))
                .collect(),
            (Role::Bias, "k_k") => vec![0.85; count],
            (Role::Bias, "k_a" | "v0") => vec![1.0; count],
            (Role::Bias, _) => vec![0.0; count],
            (Role::NormScale, "weight") if name.contains("ln_x") => {
                vec![((1.0 + layer) / n_layer).powf(0.7); count]
            }
            (Role::NormScale, _) => vec![1.0; count],
            (Role::NormShift, _) => vec![0.0; count],
            (Role::Embedding, _) => self.uniform(name, count, 1e-4),
            // Output projections start at zero: each block begins as the identity.
            (Role::Matrix, _)
                if name.ends_with("att.output.weight")
                    || name.ends_with("ffn.value.weight")
                    || (name.ends_with("ffn.receptance.weight")) =>
            {
                vec![0.0; count]
            }
            (Role::Matrix, _) => {
                let fan_in = *expected.last().unwrap_or(&1) as f32;
                let gain = if name == "head.weight" { 0.5 } else { 1.0 };
                self.uniform(name, count, gain * (3.0 / fan_in).sqrt() * 0.5)
            }
            // Down-projections start at zero, up-projections small (RWKV-7).
            (Role::Lora, _) if leaf.ends_with('1') => vec![0.0; count],
            (Role::Lora, _) => self.uniform(name, count, 0.1),
        };
        Ok((values, expected.to_vec()))
    }
}

/// A model of `config`'s shape initialised for training from scratch.
pub fn training_model(
    config: &RwkvConfig,
    seed: u64,
    device: &Device,
) -> Result<(Rwkv, crate::load::ParamNames), LoadError> {
    crate::load::build_named(&TrainingInit::new(config, seed), config, device)
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
