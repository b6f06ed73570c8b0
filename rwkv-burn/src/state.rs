//! The recurrent state: everything a model carries from one token to the next.
//!
//! A `State` is a value: clone it to branch a conversation, save it to resume later. Its
//! tensors are batch-first; the official (per-sequence) names and layouts are produced by
//! [`State::to_official`] and accepted by [`State::from_official`].

use crate::config::{RwkvConfig, Version};
use crate::safetensors_io::{self, NamedTensor};
pub use crate::wkv::V4_EMPTY_MAX;
use crate::wkv::Wkv4State;
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::path::Path;

/// The largest state file [`State::load`] reads: a 13B RWKV-7 state is about 80 MiB per
/// sequence, so this holds batches of dozens while keeping `/dev/zero`-sized inputs out.
pub const MAX_STATE_FILE_BYTES: u64 = 4 << 30;

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
    /// Tensors disagree on the batch size, or it is zero.
    #[error("state tensors disagree on the batch size ({0} vs {1})")]
    Batch(usize, usize),
    /// A tensor that no layer of this model's state has (another model's state, or more
    /// layers than the model).
    #[error(
        "state tensor '{name}' is not part of the state of this model ({layers} layers, {version}); the state is for another model?"
    )]
    Unexpected {
        /// Tensor name.
        name: String,
        /// The model's layer count.
        layers: usize,
        /// The model's version.
        version: Version,
    },
    /// A tensor that is not floating point.
    #[error("state tensor '{name}' holds {dtype:?} values; states are floating point")]
    DType {
        /// Tensor name.
        name: String,
        /// The stored type.
        dtype: burn::tensor::DType,
    },
    /// A NaN or infinite value (a state from a diverged run, or a damaged file).
    #[error("state tensor '{name}' holds {value} at index {index}")]
    NonFinite {
        /// Tensor name.
        name: String,
        /// Flat index of the first such value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A state file's contents do not fit the model; names the file.
    #[error("{path}: {error}")]
    File {
        /// The state file.
        path: std::path::PathBuf,
        /// What is wrong with its contents.
        error: Box<StateError>,
    },
    /// The version has no state layout in this build.
    #[error("{0} state is not supported by this build")]
    Unsupported(Version),
    /// A state-tuning (`time_state`) file for a version whose memory is not a matrix.
    #[error("{0} has no matrix state: state-tuning (time_state) files are for RWKV-5 and later")]
    NoMatrixState(Version),
    /// A `.pth` state file could not be read.
    #[error(transparent)]
    Read(Box<crate::weights::LoadError>),
    /// Reading or writing the state file failed.
    #[error(transparent)]
    Io(#[from] safetensors_io::IoError),
}

/// One state tensor of a layer, batch first: `[B, C]` or `[B, H, N, N]`.
#[derive(Debug, Clone)]
enum Part {
    Rows(Tensor<2>),
    Heads(Tensor<4>),
}

impl Part {
    /// A fresh `[batch, ...per_sequence]` tensor filled with `value`.
    fn full(batch: usize, per_sequence: &[usize], value: f32, device: &Device) -> Self {
        match *per_sequence {
            [c] => Part::Rows(Tensor::full([batch, c], value, device)),
            [h, n, m] => Part::Heads(Tensor::full([batch, h, n, m], value, device)),
            _ => unreachable!("the schema has vectors and per-head matrices only"),
        }
    }

    /// Batch-first values (`[B, ...per_sequence]`).
    fn from_data(data: TensorData, device: &Device) -> Self {
        match data.shape().len() {
            2 => Part::Rows(Tensor::from_data(data, device)),
            4 => Part::Heads(Tensor::from_data(data, device)),
            _ => unreachable!("the schema has vectors and per-head matrices only"),
        }
    }

    fn to_data(&self) -> TensorData {
        match self {
            Part::Rows(t) => t.to_data(),
            Part::Heads(t) => t.to_data(),
        }
    }

    /// The parts' sequences one after another.
    fn cat(parts: Vec<Part>) -> Self {
        match &parts[0] {
            Part::Rows(_) => {
                Part::Rows(Tensor::cat(parts.into_iter().map(Part::rows).collect(), 0))
            }
            Part::Heads(_) => {
                Part::Heads(Tensor::cat(parts.into_iter().map(Part::heads).collect(), 0))
            }
        }
    }

    /// The listed sequences, in that order.
    fn select(&self, indices: &Tensor<1, Int>) -> Self {
        match self {
            Part::Rows(t) => Part::Rows(t.clone().select(0, indices.clone())),
            Part::Heads(t) => Part::Heads(t.clone().select(0, indices.clone())),
        }
    }

    fn rows(self) -> Tensor<2> {
        match self {
            Part::Rows(t) => t,
            Part::Heads(_) => panic!("mixed state versions"),
        }
    }

    fn heads(self) -> Tensor<4> {
        match self {
            Part::Heads(t) => t,
            Part::Rows(_) => panic!("mixed state versions"),
        }
    }
}

/// One tensor of a layer's state as the official package names and shapes it.
struct Field {
    /// The official name is `state.{layer}.{suffix}`.
    suffix: &'static str,
    /// Shape per sequence.
    shape: fn(&RwkvConfig) -> Vec<usize>,
    /// Value in a fresh sequence.
    fresh: f32,
}

/// The state layout of one kind of WKV memory: the official tensors of a layer, in the
/// official order, and how they make up a [`LayerState`]. Every state operation (fresh
/// states, batching, official names, files) is driven by these tables, so the interchange
/// format with the official package cannot drift between them.
struct Schema {
    fields: &'static [Field],
    /// The layer's tensors in `fields` order.
    parts: fn(&LayerState) -> Vec<Part>,
    /// A layer from its tensors in `fields` order.
    assemble: fn(Vec<Part>) -> LayerState,
}

const ATT_X: Field = Field {
    suffix: "att_x",
    shape: |c| vec![c.n_embd],
    fresh: 0.0,
};
const FFN_X: Field = Field {
    suffix: "ffn_x",
    shape: |c| vec![c.n_embd],
    fresh: 0.0,
};

/// RWKV-4: numerator, denominator and running maximum per attention channel.
const V4_SCHEMA: Schema = Schema {
    fields: &[
        ATT_X,
        Field {
            suffix: "att_aa",
            shape: |c| vec![c.dim_att],
            fresh: 0.0,
        },
        Field {
            suffix: "att_bb",
            shape: |c| vec![c.dim_att],
            fresh: 0.0,
        },
        Field {
            suffix: "att_pp",
            shape: |c| vec![c.dim_att],
            fresh: V4_EMPTY_MAX,
        },
        FFN_X,
    ],
    parts: |l| match &l.wkv {
        WkvState::V4(s) => vec![
            Part::Rows(l.att_x.clone()),
            Part::Rows(s.aa.clone()),
            Part::Rows(s.bb.clone()),
            Part::Rows(s.pp.clone()),
            Part::Rows(l.ffn_x.clone()),
        ],
        WkvState::Matrix(_) => panic!("mixed state versions"),
    },
    assemble: |parts| {
        let [att_x, aa, bb, pp, ffn_x] = <[Part; 5]>::try_from(parts)
            .unwrap_or_else(|_| unreachable!("five fields"))
            .map(Part::rows);
        LayerState {
            att_x,
            ffn_x,
            wkv: WkvState::V4(Wkv4State { aa, bb, pp }),
        }
    },
};

/// RWKV-5 and later: one `N x N` matrix per head (`[key, value]` for 5/6, `[value, key]` for
/// 7, as each version's official code holds it).
const MATRIX_SCHEMA: Schema = Schema {
    fields: &[
        ATT_X,
        Field {
            suffix: "att_kv",
            shape: |c| {
                let n = c.head_size.unwrap_or(1);
                vec![c.dim_att / n, n, n]
            },
            fresh: 0.0,
        },
        FFN_X,
    ],
    parts: |l| match &l.wkv {
        WkvState::Matrix(kv) => vec![
            Part::Rows(l.att_x.clone()),
            Part::Heads(kv.clone()),
            Part::Rows(l.ffn_x.clone()),
        ],
        WkvState::V4(_) => panic!("mixed state versions"),
    },
    assemble: |parts| {
        let [att_x, kv, ffn_x] =
            <[Part; 3]>::try_from(parts).unwrap_or_else(|_| unreachable!("three fields"));
        LayerState {
            att_x: att_x.rows(),
            ffn_x: ffn_x.rows(),
            wkv: WkvState::Matrix(kv.heads()),
        }
    },
};

impl Schema {
    /// The layout of `config`'s version.
    fn of(config: &RwkvConfig) -> &'static Schema {
        match config.head_size {
            None => &V4_SCHEMA,
            Some(_) => &MATRIX_SCHEMA,
        }
    }

    /// The layout of a layer's state.
    fn of_layer(layer: &LayerState) -> &'static Schema {
        match layer.wkv {
            WkvState::V4(_) => &V4_SCHEMA,
            WkvState::Matrix(_) => &MATRIX_SCHEMA,
        }
    }
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
        let schema = Schema::of(config);
        let layers = (0..config.n_layer)
            .map(|_| {
                (schema.assemble)(
                    schema
                        .fields
                        .iter()
                        .map(|f| Part::full(batch, &(f.shape)(config), f.fresh, device))
                        .collect(),
                )
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
        let mut per_layer: Vec<Vec<Vec<Part>>> = (0..n_layer).map(|_| Vec::new()).collect();
        let mut schemas = Vec::with_capacity(n_layer);
        for state in &states {
            for (i, layer) in state.layers.iter().enumerate() {
                if schemas.len() <= i {
                    schemas.push(Schema::of_layer(layer));
                }
                per_layer[i].push((schemas[i].parts)(layer));
            }
        }
        let layers = per_layer
            .into_iter()
            .zip(schemas)
            .map(|(states, schema)| {
                let fields = schema.fields.len();
                let mut columns: Vec<Vec<Part>> = (0..fields).map(|_| Vec::new()).collect();
                for parts in states {
                    for (column, part) in columns.iter_mut().zip(parts) {
                        column.push(part);
                    }
                }
                (schema.assemble)(columns.into_iter().map(Part::cat).collect())
            })
            .collect();
        State { layers }
    }

    /// The state of the listed sequences of this batch, in that order (e.g. the sequences of a
    /// batched generation that are still going).
    ///
    /// # Panics
    /// If an index is not below the batch size.
    pub fn select(&self, indices: &[usize]) -> State {
        let batch = self.batch_size();
        assert!(
            indices.iter().all(|&i| i < batch),
            "sequences {indices:?} of a batch of {batch}"
        );
        let Some(device) = self.layers.first().map(|l| l.att_x.device()) else {
            return self.clone();
        };
        let ids: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let indices = Tensor::<1, Int>::from_data(TensorData::new(ids, [indices.len()]), &device);
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                let schema = Schema::of_layer(layer);
                (schema.assemble)(
                    (schema.parts)(layer)
                        .iter()
                        .map(|p| p.select(&indices))
                        .collect(),
                )
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
            let schema = Schema::of_layer(layer);
            for (field, part) in schema.fields.iter().zip((schema.parts)(layer)) {
                out.push(NamedTensor::new(
                    format!("state.{i}.{}", field.suffix),
                    part.to_data(),
                ));
            }
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
            if !t.data.dtype().is_float() {
                return Err(StateError::DType {
                    name,
                    dtype: t.data.dtype(),
                });
            }
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
                _ if rows == 0 => return Err(StateError::Batch(batch.unwrap_or(0), 0)),
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
            if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                return Err(StateError::NonFinite {
                    name,
                    index,
                    value: values[index],
                });
            }
            let mut full = vec![rows];
            full.extend_from_slice(per_sequence);
            Ok(TensorData::new(values, full))
        };
        let schema = Schema::of(config);
        let known = |name: &str| {
            (0..config.n_layer).any(|i| {
                schema
                    .fields
                    .iter()
                    .any(|f| name == format!("state.{i}.{}", f.suffix))
            })
        };
        if let Some(extra) = tensors.iter().find(|t| !known(&t.name)) {
            return Err(StateError::Unexpected {
                name: extra.name.clone(),
                layers: config.n_layer,
                version: config.version,
            });
        }
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let mut parts = Vec::with_capacity(schema.fields.len());
            for field in schema.fields {
                let data = get(
                    format!("state.{i}.{}", field.suffix),
                    &(field.shape)(config),
                )?;
                parts.push(Part::from_data(data, device));
            }
            layers.push((schema.assemble)(parts));
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

    /// Reads a state file: one written by [`State::save`] (or any safetensors file with the
    /// official state names), or a state-tuning file in RWKV-PEFT's layout
    /// (`blocks.{i}.att.time_state`, safetensors or `.pth`; see [`crate::time_state`]):
    /// exactly the tensors of `config`'s state, floating point, finite, of one batch size.
    /// Errors name the file.
    pub fn load(
        path: impl AsRef<Path>,
        config: &RwkvConfig,
        device: &Device,
    ) -> Result<Self, StateError> {
        let path = path.as_ref();
        let tensors = read_state_file(path)?;
        let state = if crate::time_state::holds(&tensors) {
            crate::time_state::from_time_state(config, &tensors, device)
        } else {
            Self::from_official(config, &tensors, device)
        };
        state.map_err(|error| StateError::File {
            path: path.to_path_buf(),
            error: Box::new(error),
        })
    }
}

/// Every tensor of a state file (safetensors, or the `.pth` RWKV-PEFT writes), at most
/// [`MAX_STATE_FILE_BYTES`].
fn read_state_file(path: &Path) -> Result<Vec<NamedTensor>, StateError> {
    use std::io::Read;
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file());
    let mut head = Vec::with_capacity(9);
    // Only a regular file is opened here: opening a fifo would wait for a writer.
    if meta.is_some()
        && let Ok(file) = std::fs::File::open(path)
    {
        let _ = file.take(9).read_to_end(&mut head);
    }
    let len = meta.map(|m| m.len());
    if crate::load::sniff(&head, len) != Some(crate::load::Format::Pth) {
        // Safetensors, and every error (missing, too large, not a file) reported by its reader.
        return Ok(safetensors_io::read_limited(path, MAX_STATE_FILE_BYTES)?);
    }
    if len.is_some_and(|len| len > MAX_STATE_FILE_BYTES) {
        return Err(StateError::Io(safetensors_io::IoError::Format {
            path: path.to_path_buf(),
            message: format!("larger than the {MAX_STATE_FILE_BYTES} bytes a state file may have"),
        }));
    }
    let read = |e| StateError::Read(Box::new(e));
    let checkpoint = crate::load::Checkpoint::open_file(path).map_err(read)?;
    let names: Vec<String> = checkpoint.names().map(str::to_string).collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let (values, shape) = checkpoint.read_f32(&name).map_err(read)?;
        out.push(NamedTensor::new(name, TensorData::new(values, shape)));
    }
    Ok(out)
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

    /// A matrix-state (RWKV-7) config of the same widths.
    fn matrix_config() -> RwkvConfig {
        RwkvConfig {
            version: Version::V7,
            head_size: Some(2),
            dim_att: 4,
            ..config()
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
        let matrix = matrix_config();
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

    /// Selecting sequences of a batch gives exactly their states, in the order asked for.
    #[test]
    fn select_keeps_the_listed_sequences() {
        let matrix = matrix_config();
        for device in test_devices() {
            for config in [config(), matrix.clone()] {
                let single = |value: f32| {
                    let mut state = State::zeros(&config, 1, &device);
                    state.layers[0].att_x = Tensor::<2>::full([1, 4], value, &device);
                    state
                };
                let batch = State::stack(vec![single(1.0), single(2.0), single(3.0)]);
                let picked = batch.select(&[2, 0]);
                assert_eq!(picked.batch_size(), 2);
                assert_eq!(
                    picked.sequence_official(0),
                    single(3.0).sequence_official(0)
                );
                assert_eq!(
                    picked.sequence_official(1),
                    single(1.0).sequence_official(0)
                );
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
