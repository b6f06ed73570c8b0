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
// Tensor handles, not tensor data: the size difference is a few handles.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum WkvState {
    /// RWKV-4 numerator, denominator and running maximum, each `[B, A]`.
    V4(Wkv4State),
    /// RWKV-5 and later: one `N x N` matrix per head, `[B, H, N, N]`, in the official layout
    /// of the version (`[key, value]` for 5/6, `[value, key]` for 7).
    Matrix(Tensor<4>),
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
        assert!(
            config.version.is_supported(),
            "{} state is not supported by this build",
            config.version
        );
        let (c, a) = (config.n_embd, config.dim_att);
        let layers = (0..config.n_layer)
            .map(|_| LayerState {
                att_x: Tensor::zeros([batch, c], device),
                ffn_x: Tensor::zeros([batch, c], device),
                wkv: match config.head_size {
                    None => WkvState::V4(Wkv4State {
                        aa: Tensor::zeros([batch, a], device),
                        bb: Tensor::zeros([batch, a], device),
                        pp: Tensor::full([batch, a], V4_EMPTY_MAX, device),
                    }),
                    Some(n) => WkvState::Matrix(Tensor::zeros([batch, a / n, n, n], device)),
                },
            })
            .collect();
        Self { layers }
    }

    /// Joins single-sequence (or smaller batch) states into one batch, in order.
    ///
    /// # Panics
    /// If `states` is empty or the states belong to different model shapes.
    pub fn stack(states: Vec<State>) -> State {
        let n_layer = states[0].layers.len();
        let mut per_layer: Vec<Vec<LayerState>> = (0..n_layer).map(|_| Vec::new()).collect();
        for state in states {
            for (slot, layer) in per_layer.iter_mut().zip(state.layers) {
                slot.push(layer);
            }
        }
        let layers = per_layer
            .into_iter()
            .map(|parts| {
                let att_x = Tensor::cat(parts.iter().map(|p| p.att_x.clone()).collect(), 0);
                let ffn_x = Tensor::cat(parts.iter().map(|p| p.ffn_x.clone()).collect(), 0);
                let wkv = match &parts[0].wkv {
                    WkvState::V4(_) => {
                        let pick = |f: fn(&Wkv4State) -> &Tensor<2>| {
                            Tensor::cat(
                                parts
                                    .iter()
                                    .map(|p| match &p.wkv {
                                        WkvState::V4(s) => f(s).clone(),
                                        WkvState::Matrix(_) => panic!("mixed state versions"),
                                    })
                                    .collect(),
                                0,
                            )
                        };
                        WkvState::V4(Wkv4State {
                            aa: pick(|s| &s.aa),
                            bb: pick(|s| &s.bb),
                            pp: pick(|s| &s.pp),
                        })
                    }
                    WkvState::Matrix(_) => WkvState::Matrix(Tensor::cat(
                        parts
                            .iter()
                            .map(|p| match &p.wkv {
                                WkvState::Matrix(kv) => kv.clone(),
                                WkvState::V4(_) => panic!("mixed state versions"),
                            })
                            .collect(),
                        0,
                    )),
                };
                LayerState { att_x, ffn_x, wkv }
            })
            .collect();
        State { layers }
    }

    /// The state of sequence `index` alone (a batch of one).
    pub fn select(&self, index: usize) -> State {
        let rows2 = |t: &Tensor<2>| {
            let [_, w] = t.dims();
            t.clone().slice([index..index + 1, 0..w])
        };
        let layers = self
            .layers
            .iter()
            .map(|l| LayerState {
                att_x: rows2(&l.att_x),
                ffn_x: rows2(&l.ffn_x),
                wkv: match &l.wkv {
                    WkvState::V4(s) => WkvState::V4(Wkv4State {
                        aa: rows2(&s.aa),
                        bb: rows2(&s.bb),
                        pp: rows2(&s.pp),
                    }),
                    WkvState::Matrix(kv) => {
                        let [_, h, n, m] = kv.dims();
                        WkvState::Matrix(kv.clone().slice([index..index + 1, 0..h, 0..n, 0..m]))
                    }
                },
            })
            .collect();
        State { layers }
    }

    /// Number of sequences.
    pub fn batch_size(&self) -> usize {
        self.layers.first().map_or(0, |l| l.att_x.dims()[0])
    }

    /// The state in the official names (`state.{i}.att_x`, ...), batch first: each tensor is
    /// `[B, ...official per-sequence shape]`.
    pub fn to_official(&self) -> Vec<NamedTensor> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let mut push = |name: &str, data: TensorData| {
                out.push(NamedTensor::new(format!("state.{i}.{name}"), data));
            };
            push("att_x", layer.att_x.to_data());
            match &layer.wkv {
                WkvState::V4(s) => {
                    push("att_aa", s.aa.to_data());
                    push("att_bb", s.bb.to_data());
                    push("att_pp", s.pp.to_data());
                }
                WkvState::Matrix(kv) => push("att_kv", kv.to_data()),
            }
            push("ffn_x", layer.ffn_x.to_data());
        }
        out
    }

    /// The official state of sequence `index`, exactly as the official package holds it
    /// (no batch dimension).
    ///
    /// # Panics
    /// If `index` is not below the batch size.
    pub fn sequence_official(&self, index: usize) -> Vec<NamedTensor> {
        self.to_official()
            .into_iter()
            .map(|t| {
                let shape = t.data.shape().to_vec();
                assert!(
                    index < shape[0],
                    "sequence {index} of a batch of {}",
                    shape[0]
                );
                let per_sequence: usize = shape[1..].iter().product();
                let values = t.data.try_to_vec::<f32>().expect("f32 state");
                let row = values[index * per_sequence..(index + 1) * per_sequence].to_vec();
                NamedTensor::new(t.name, TensorData::new(row, shape[1..].to_vec()))
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
        // Finds a tensor, checks its shape against `per_sequence`, returns it batch-first.
        let mut get = |name: String, per_sequence: &[usize]| -> Result<TensorData, StateError> {
            let t = tensors
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| StateError::Missing(name.clone()))?;
            let shape = t.data.shape().to_vec();
            let rows = if shape == per_sequence {
                1
            } else if shape.len() == per_sequence.len() + 1 && shape[1..] == *per_sequence {
                shape[0]
            } else {
                return Err(StateError::Shape {
                    name,
                    got: shape,
                    expected: per_sequence.to_vec(),
                });
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
                    name: name.clone(),
                    got: shape.clone(),
                    expected: per_sequence.to_vec(),
                })?;
            let mut full = vec![rows];
            full.extend_from_slice(per_sequence);
            Ok(TensorData::new(values, full))
        };
        let (c, a) = (config.n_embd, config.dim_att);
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let att_x = Tensor::from_data(get(format!("state.{i}.att_x"), &[c])?, device);
            let wkv = match config.head_size {
                None => WkvState::V4(Wkv4State {
                    aa: Tensor::from_data(get(format!("state.{i}.att_aa"), &[a])?, device),
                    bb: Tensor::from_data(get(format!("state.{i}.att_bb"), &[a])?, device),
                    pp: Tensor::from_data(get(format!("state.{i}.att_pp"), &[a])?, device),
                }),
                Some(n) => WkvState::Matrix(Tensor::from_data(
                    get(format!("state.{i}.att_kv"), &[a / n, n, n])?,
                    device,
                )),
            };
            let ffn_x = Tensor::from_data(get(format!("state.{i}.ffn_x"), &[c])?, device);
            layers.push(LayerState { att_x, ffn_x, wkv });
        }
        Ok(Self { layers })
    }

    /// Writes the state to a safetensors file under the official names. A batch of one is
    /// saved in exactly the official layout; larger batches keep a leading batch dimension.
    /// The file is written atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), StateError> {
        let tensors = if self.batch_size() == 1 {
            self.sequence_official(0)
        } else {
            self.to_official()
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
            head_size: None,
            lora: Default::default(),
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
        let matrix = RwkvConfig {
            version: Version::V7,
            head_size: Some(2),
            dim_att: 4,
            ..config()
        };
        for device in test_devices() {
            for (config, batch) in [
                (config(), 1),
                (config(), 3),
                (matrix.clone(), 1),
                (matrix.clone(), 2),
            ] {
                let mut state = State::zeros(&config, batch, &device);
                state.layers[1].att_x =
                    Tensor::<2>::ones([batch, 4], &device).mul_scalar(batch as f32);
                let path = dir.path().join(format!("s{batch}.safetensors"));
                state.save(&path).unwrap();
                let back = State::load(&path, &config, &device).unwrap();
                assert_eq!(back.batch_size(), batch);
                assert_eq!(state.to_official(), back.to_official());
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
