//! The recurrent state: everything a model carries from one token to the next.
//!
//! A `State` is a value: clone it to branch a conversation, save it to resume later. Its
//! tensors are batch-first; the official (per-sequence) names and layouts are produced by
//! [`State::to_official`] and accepted by [`State::from_official`].

use crate::config::{RwkvConfig, Version};
use crate::safetensors_io::{self, NamedTensor};
use crate::wkv::Wkv4State;
use burn::tensor::{Device, Tensor, TensorData};
use std::path::Path;

/// Value the official package puts in a fresh RWKV-4 `att_pp`: "minus infinity" that stays
/// finite in f32 arithmetic.
pub const V4_EMPTY_MAX: f32 = -1e30;

/// Per-layer recurrent state of a batch of sequences.
#[derive(Debug, Clone)]
pub struct State {
    /// One entry per block.
    pub layers: Vec<LayerState>,
}

/// The state of one block.
#[derive(Debug, Clone)]
pub struct LayerState {
    /// Previous token's ln1 output `[B, C]` (time-mix token shift).
    pub att_x: Tensor<2>,
    /// Previous token's ln2 output `[B, C]` (channel-mix token shift).
    pub ffn_x: Tensor<2>,
    /// The WKV memory.
    pub wkv: WkvState,
}

/// The WKV memory of one block, per version.
#[derive(Debug, Clone)]
pub enum WkvState {
    /// RWKV-4 numerator, denominator and running maximum, each `[B, A]`.
    V4(Wkv4State),
}

/// Why a state could not be built from named tensors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A state tensor the model needs is absent.
    #[error("state tensor '{0}' is missing")]
    Missing(String),
    /// A state tensor does not fit the model.
    #[error(
        "state tensor '{name}' has shape {got:?}, expected {expected:?} (or with a leading batch dimension)"
    )]
    Shape {
        /// Tensor name.
        name: String,
        /// Shape found.
        got: Vec<usize>,
        /// Per-sequence shape expected.
        expected: Vec<usize>,
    },
    /// Tensors disagree on the batch size.
    #[error("state tensors disagree on the batch size ({0} vs {1})")]
    Batch(usize, usize),
    /// The version has no state layout in this build.
    #[error("{0} state is not supported by this build")]
    Unsupported(Version),
    /// Reading or writing the state file failed.
    #[error(transparent)]
    Io(#[from] safetensors_io::IoError),
}

impl State {
    /// The state of a fresh sequence (what the official package starts from), for `batch`
    /// sequences.
    ///
    /// # Panics
    /// For a version this build does not support (loading refuses those first).
    pub fn zeros(config: &RwkvConfig, batch: usize, device: &Device) -> Self {
        let (c, a) = (config.n_embd, config.dim_att);
        let layers = (0..config.n_layer)
            .map(|_| LayerState {
                att_x: Tensor::zeros([batch, c], device),
                ffn_x: Tensor::zeros([batch, c], device),
                wkv: match config.version {
                    Version::V4 => WkvState::V4(Wkv4State {
                        aa: Tensor::zeros([batch, a], device),
                        bb: Tensor::zeros([batch, a], device),
                        pp: Tensor::full([batch, a], V4_EMPTY_MAX, device),
                    }),
                    other => panic!("{other} state is not supported by this build"),
                },
            })
            .collect();
        Self { layers }
    }

    /// Number of sequences.
    pub fn batch_size(&self) -> usize {
        self.layers.first().map_or(0, |l| l.att_x.dims()[0])
    }

    /// The state in the official names (`state.{i}.att_x`, ...), as tensors `[B, ...]`:
    /// batch first, then the official per-sequence layout.
    pub fn to_official(&self) -> Vec<(String, Tensor<2>)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            out.push((format!("state.{i}.att_x"), layer.att_x.clone()));
            match &layer.wkv {
                WkvState::V4(s) => {
                    out.push((format!("state.{i}.att_aa"), s.aa.clone()));
                    out.push((format!("state.{i}.att_bb"), s.bb.clone()));
                    out.push((format!("state.{i}.att_pp"), s.pp.clone()));
                }
            }
            out.push((format!("state.{i}.ffn_x"), layer.ffn_x.clone()));
        }
        out
    }

    /// The official state of sequence `index`, exactly as the official package holds it
    /// (no batch dimension).
    pub fn sequence_official(&self, index: usize) -> Vec<NamedTensor> {
        self.to_official()
            .into_iter()
            .map(|(name, t)| {
                let [batch, width] = t.dims();
                assert!(index < batch, "sequence {index} of a batch of {batch}");
                let row = t.slice([index..index + 1, 0..width]).reshape([width]);
                NamedTensor::new(name, row.into_data())
            })
            .collect()
    }

    /// Builds a state from official names. Each tensor is either the per-sequence layout
    /// (batch 1) or that layout with a leading batch dimension.
    pub fn from_official(
        config: &RwkvConfig,
        tensors: &[NamedTensor],
        device: &Device,
    ) -> Result<Self, StateError> {
        if !config.version.is_supported() {
            return Err(StateError::Unsupported(config.version));
        }
        let mut batch = None;
        let mut get = |name: String, width: usize| -> Result<Tensor<2>, StateError> {
            let t = tensors
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| StateError::Missing(name.clone()))?;
            let shape = t.data.shape().to_vec();
            let rows = match shape.as_slice() {
                [w] if *w == width => 1,
                [b, w] if *w == width => *b,
                _ => {
                    return Err(StateError::Shape {
                        name,
                        got: shape,
                        expected: vec![width],
                    });
                }
            };
            match batch {
                Some(b) if b != rows => return Err(StateError::Batch(b, rows)),
                _ => batch = Some(rows),
            }
            let values = t
                .data
                .clone()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|_| StateError::Shape {
                    name: t.name.clone(),
                    got: shape.clone(),
                    expected: vec![width],
                })?;
            let data = TensorData::new(values, [rows, width]);
            Ok(Tensor::from_data(data, device))
        };
        let (c, a) = (config.n_embd, config.dim_att);
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let att_x = get(format!("state.{i}.att_x"), c)?;
            let wkv = WkvState::V4(Wkv4State {
                aa: get(format!("state.{i}.att_aa"), a)?,
                bb: get(format!("state.{i}.att_bb"), a)?,
                pp: get(format!("state.{i}.att_pp"), a)?,
            });
            let ffn_x = get(format!("state.{i}.ffn_x"), c)?;
            layers.push(LayerState { att_x, ffn_x, wkv });
        }
        Ok(Self { layers })
    }

    /// Writes the state to a safetensors file under the official names. A batch of one is
    /// saved in exactly the official layout; larger batches keep a leading batch dimension.
    /// The file is written atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), StateError> {
        let tensors: Vec<NamedTensor> = if self.batch_size() == 1 {
            self.sequence_official(0)
        } else {
            self.to_official()
                .into_iter()
                .map(|(name, t)| NamedTensor::new(name, t.into_data()))
                .collect()
        };
        safetensors_io::write(path.as_ref(), &tensors)?;
        Ok(())
    }

    /// Reads a state written by [`State::save`] (or any file with the official state names).
    pub fn load(
        path: impl AsRef<Path>,
        config: &RwkvConfig,
        device: &Device,
    ) -> Result<Self, StateError> {
        let tensors = safetensors_io::read(path.as_ref())?;
        Self::from_official(config, &tensors, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::test_devices;

    fn config() -> RwkvConfig {
        RwkvConfig {
            version: Version::V4,
            n_layer: 2,
            n_embd: 4,
            dim_att: 3,
            dim_ffn: 8,
            vocab_size: 10,
        }
    }

    #[test]
    fn zero_state_matches_the_official_start() {
        for device in test_devices() {
            let state = State::zeros(&config(), 2, &device);
            let named = state.sequence_official(1);
            assert_eq!(named.len(), 10);
            for t in named {
                let v = t.data.try_to_vec::<f32>().unwrap();
                let want = if t.name.ends_with("att_pp") {
                    V4_EMPTY_MAX
                } else {
                    0.0
                };
                assert!(v.iter().all(|x| *x == want), "{}", t.name);
            }
        }
    }

    #[test]
    fn save_and_load_round_trip_for_batches() {
        let dir = tempfile::tempdir().unwrap();
        for device in test_devices() {
            for batch in [1, 3] {
                let mut state = State::zeros(&config(), batch, &device);
                state.layers[1].att_x =
                    Tensor::<2>::ones([batch, 4], &device).mul_scalar(batch as f32);
                let path = dir.path().join(format!("s{batch}.safetensors"));
                state.save(&path).unwrap();
                let back = State::load(&path, &config(), &device).unwrap();
                assert_eq!(back.batch_size(), batch);
                let a: Vec<_> = state
                    .to_official()
                    .into_iter()
                    .map(|(n, t)| (n, t.into_data()))
                    .collect();
                let b: Vec<_> = back
                    .to_official()
                    .into_iter()
                    .map(|(n, t)| (n, t.into_data()))
                    .collect();
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn rejects_wrong_shapes_and_missing_tensors() {
        let device = test_devices().remove(0);
        let good = State::zeros(&config(), 1, &device).sequence_official(0);
        let missing: Vec<_> = good.iter().skip(1).cloned().collect();
        assert!(matches!(
            State::from_official(&config(), &missing, &device),
            Err(StateError::Missing(name)) if name == "state.0.att_x"
        ));
        let mut wrong = good.clone();
        wrong[2] = NamedTensor::new(wrong[2].name.clone(), TensorData::new(vec![0f32; 5], [5]));
        assert!(matches!(
            State::from_official(&config(), &wrong, &device),
            Err(StateError::Shape { .. })
        ));
    }
}
