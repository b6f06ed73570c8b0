//! Weights for a configuration without a checkpoint, built through the same code path as
//! loaded checkpoints: [`RandomWeights`] (plausible values for tests and benchmarks) and
//! [`TrainingInit`] (the RWKV-LM initialisation, to train from scratch).

use crate::config::{RwkvConfig, Version};
use crate::model::{Rwkv, build, build_named};
use crate::random::{SplitMix64, fnv1a};
use crate::weights::{
    InitParam, LoadError, ParamNames, Role, StoredData, StoredTensor, WeightSource,
};
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
    ) -> Result<StoredTensor<'_>, LoadError> {
        let count: usize = expected.iter().product();
        let fan_in = *expected.last().unwrap_or(&1) as f32;
        let (low, high) = match role {
            Role::Embedding => (-0.5, 0.5),
            Role::Matrix | Role::Output | Role::Head => {
                let bound = (3.0 / fan_in).sqrt();
                (-bound, bound)
            }
            Role::LoraDown | Role::LoraUp => (-0.1, 0.1),
            Role::Mix => (0.0, 1.0),
            Role::Decay => (-2.0, 1.0),
            Role::Bonus | Role::Bias => (-1.0, 1.0),
            Role::NormScale | Role::HeadNormScale => (0.9, 1.1),
            Role::NormShift => (-0.1, 0.1),
        };
        let mut rng = SplitMix64::new(self.seed ^ fnv1a(name.as_bytes()));
        let values = (0..count)
            .map(|_| low + (high - low) * rng.next_f32())
            .collect();
        Ok(fresh(values, expected))
    }
}

/// Values a source invented, in the model's shape.
fn fresh(values: Vec<f32>, shape: &[usize]) -> StoredTensor<'static> {
    StoredTensor {
        shape: shape.to_vec(),
        data: StoredData::F32(values),
    }
}

/// The initialisation of BlinkDL's RWKV-LM trainers (RWKV-4 and RWKV-7; RWKV-5/6 use the
/// RWKV-4 style mixes and decays): token-shift mixes and decays that vary smoothly across
/// channels and layers (each version's rule is on its page in `model/`), a tiny embedding,
/// zero output projections so every block starts as the identity, and zero (or small)
/// low-rank adapters. Plain uniform draws stand in for the orthogonal matrices of the
/// original.
pub struct TrainingInit {
    seed: u64,
    version: Version,
    n_layer: usize,
    label: PathBuf,
}

impl TrainingInit {
    /// An initialiser for `config`, seeded by `seed`.
    pub fn new(config: &RwkvConfig, seed: u64) -> Self {
        Self {
            seed,
            version: config.version,
            n_layer: config.n_layer.max(1),
            label: PathBuf::from(format!("<RWKV-LM initialisation, seed {seed}>")),
        }
    }

    fn uniform(&self, name: &str, count: usize, bound: f32) -> Vec<f32> {
        let mut rng = SplitMix64::new(self.seed ^ fnv1a(name.as_bytes()));
        (0..count)
            .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
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
    ) -> Result<StoredTensor<'_>, LoadError> {
        let count: usize = expected.iter().product();
        let layer = name
            .strip_prefix("blocks.")
            .and_then(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .unwrap_or(0) as f32;
        let n_layer = self.n_layer as f32;
        let param = InitParam {
            name,
            leaf: name.rsplit('.').next().unwrap_or(name),
            role,
            count,
            r01: if self.n_layer > 1 {
                layer / (n_layer - 1.0)
            } else {
                0.0
            },
            r1a0: 1.0 - layer / n_layer,
        };
        let own = crate::model::spec(self.version).and_then(|spec| (spec.init)(&param));
        let values = own.unwrap_or_else(|| match role {
            Role::HeadNormScale => vec![((1.0 + layer) / n_layer).powf(0.7); count],
            Role::NormScale => vec![1.0; count],
            Role::NormShift | Role::Bias | Role::Output | Role::LoraDown => vec![0.0; count],
            Role::Embedding => self.uniform(name, count, 1e-4),
            Role::Matrix | Role::Head => {
                let fan_in = *expected.last().unwrap_or(&1) as f32;
                let gain = if role == Role::Head { 0.5 } else { 1.0 };
                self.uniform(name, count, gain * (3.0 / fan_in).sqrt() * 0.5)
            }
            Role::LoraUp => self.uniform(name, count, 0.1),
            // Versions give every mix, decay and bonus a rule of their own.
            Role::Mix | Role::Decay | Role::Bonus => vec![0.0; count],
        });
        Ok(fresh(values, expected))
    }
}

/// A model of `config`'s shape initialised for training from scratch.
pub fn training_model(
    config: &RwkvConfig,
    seed: u64,
    device: &Device,
) -> Result<(Rwkv, ParamNames), LoadError> {
    build_named(&TrainingInit::new(config, seed), config, device)
}

/// A model of `config`'s shape with random weights.
pub fn random_model(config: &RwkvConfig, seed: u64, device: &Device) -> Result<Rwkv, LoadError> {
    build(&RandomWeights::new(seed), config, device)
}
