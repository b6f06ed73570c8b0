//! Where weights come from: a [`WeightSource`] hands out tensors by official name, in the
//! element type it stores them in.

use super::error::LoadError;
use super::format::{BLOCK, WeightFormat};
use crate::dtype::SourceDType;
use std::borrow::Cow;
use std::path::Path;

/// What a tensor does in the model; a source that invents weights picks values by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The token embedding.
    Embedding,
    /// A projection stored `[out, in]` like `nn.Linear`.
    Matrix,
    /// A projection RWKV-LM starts at zero so that every block begins as the identity: the
    /// time-mix output, the channel-mix value and (RWKV-4 to 6) the channel-mix receptance.
    Output,
    /// The output head `[V, C]`.
    Head,
    /// The down-projection of a low-rank adapter, stored `[in, out]` (starts at zero).
    LoraDown,
    /// The up-projection of a low-rank adapter, stored `[in, out]`.
    LoraUp,
    /// A token-shift mixing coefficient, in [0, 1] for trained models.
    Mix,
    /// A decay parameter (before the version's `exp(-exp(.))` or sigmoid mapping).
    Decay,
    /// The current-token bonus (`u`).
    Bonus,
    /// A normalisation scale.
    NormScale,
    /// The scale of the per-head GroupNorm after the WKV.
    HeadNormScale,
    /// A normalisation shift.
    NormShift,
    /// An additive bias of a data-dependent gate.
    Bias,
}

/// A tensor as its source holds it: the stored shape, and the values in the stored element
/// type (borrowed from a memory map where the file is mapped). The model computes in f32;
/// keeping the stored type here lets a device keep half-precision or quantized weights as
/// they are.
#[derive(Debug, Clone)]
pub struct StoredTensor<'a> {
    /// The shape the source stores.
    pub shape: Vec<usize>,
    /// The values.
    pub data: StoredData<'a>,
}

/// The values of a [`StoredTensor`].
#[derive(Debug, Clone)]
pub enum StoredData<'a> {
    /// Values a source computed (random or initial weights).
    F32(Vec<f32>),
    /// Little-endian values of a file's element type; the length was checked against the
    /// shape.
    Bytes {
        /// The element type.
        dtype: SourceDType,
        /// `shape.product() * dtype.size()` bytes.
        bytes: Cow<'a, [u8]>,
    },
    /// A `[out, in]` matrix in a block format, as a file stores it (`rwkv quantize` output):
    /// the lengths were checked against the shape.
    Blocks {
        /// The format (q8 or q4).
        format: WeightFormat,
        /// [`WeightFormat::level_bytes`] of the elements.
        levels: Cow<'a, [u8]>,
        /// One little-endian f16 scale per block of 32 values.
        scales: Cow<'a, [u8]>,
    },
}

impl StoredTensor<'_> {
    /// The stored element type; `None` for block formats.
    pub fn dtype(&self) -> Option<SourceDType> {
        match &self.data {
            StoredData::F32(_) => Some(SourceDType::F32),
            StoredData::Bytes { dtype, .. } => Some(*dtype),
            StoredData::Blocks { .. } => None,
        }
    }

    /// The number of elements.
    pub fn elements(&self) -> usize {
        match &self.data {
            StoredData::F32(values) => values.len(),
            StoredData::Bytes { dtype, bytes } => bytes.len() / dtype.size(),
            StoredData::Blocks { scales, .. } => scales.len() / 2 * BLOCK,
        }
    }

    /// The values as f32, row-major.
    pub fn into_f32(self) -> Vec<f32> {
        match self.data {
            StoredData::F32(values) => values,
            StoredData::Bytes { dtype, bytes } => dtype.to_f32(&bytes),
            StoredData::Blocks {
                format,
                levels,
                scales,
            } => {
                let mut values = Vec::with_capacity(scales.len() / 2 * BLOCK);
                let block_bytes = format.level_bytes(BLOCK);
                for (d, bytes) in scales.chunks_exact(2).zip(levels.chunks_exact(block_bytes)) {
                    let d = half::f16::from_le_bytes([d[0], d[1]]).to_f32();
                    let multiples = format.block_multiples(bytes);
                    values.extend(multiples.map(|q| f32::from(q) * d));
                }
                values
            }
        }
    }
}

/// Where a model's weights come from: a checkpoint file, or a generator of random or
/// initial weights.
pub trait WeightSource {
    /// The file the weights come from, for error messages.
    fn path(&self) -> &Path;
    /// Whether a tensor exists (for tensors some checkpoints carry and others do not).
    fn contains(&self, name: &str) -> bool;
    /// Whether [`read`](Self::read) reports shapes a file stored. Sources that make values up
    /// (random and freshly initialised models) say no, and their tensors get the shapes of
    /// official checkpoints, so that exports of them load in every RWKV tool.
    fn stores_shapes(&self) -> bool {
        true
    }
    /// Whether [`Weights`](super::Weights) refuses NaN and infinite values (a damaged file
    /// would otherwise give NaN logits that look like output). Checkpoints say yes unless
    /// opened with the check off.
    fn checks_finite(&self) -> bool {
        true
    }
    /// Every tensor name it holds, when building should refuse the ones the model does not
    /// read ([`LoadError::UnusedTensors`]); `None` (the default) skips that check.
    fn listed(&self) -> Option<Vec<&str>> {
        None
    }
    /// A tensor by official name; `expected` is the shape the model needs (the caller checks
    /// the stored shape against it) and `role` what it does.
    fn read(
        &self,
        name: &str,
        expected: &[usize],
        role: Role,
    ) -> Result<StoredTensor<'_>, LoadError>;
    /// Says that tensor `name` has been read and will not be again (a memory-mapped file can
    /// give its pages back). Nothing by default.
    fn release(&self, name: &str) {
        let _ = name;
    }
}

/// Names and shapes of stored tensors: what detecting a model's version and dimensions reads.
pub trait TensorIndex {
    /// The file, for error messages.
    fn path(&self) -> &Path;
    /// Every tensor name (official naming).
    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_>;
    /// The stored shape of a tensor, if present.
    fn shape(&self, name: &str) -> Option<&[usize]>;
}

/// Shape look-ups with the loader's errors: what each version's dimension detection uses.
pub struct Shapes<'a>(pub &'a dyn TensorIndex);

impl Shapes<'_> {
    /// Whether any tensor name contains `needle`.
    pub fn any(&self, needle: &str) -> bool {
        self.0.names().any(|n| n.contains(needle))
    }

    /// The shape of a tensor that must exist.
    pub fn shape(&self, name: &str) -> Result<&[usize], LoadError> {
        self.0.shape(name).ok_or_else(|| LoadError::MissingTensor {
            path: self.0.path().to_path_buf(),
            name: name.to_string(),
        })
    }

    /// The `[rows, cols]` of a matrix that must exist.
    pub fn matrix(&self, name: &str) -> Result<[usize; 2], LoadError> {
        match self.shape(name)? {
            &[rows, cols] => Ok([rows, cols]),
            other => Err(LoadError::WrongShape {
                path: self.0.path().to_path_buf(),
                name: name.to_string(),
                got: other.to_vec(),
                expected: vec![0, 0],
            }),
        }
    }

    /// Columns of a matrix that must exist.
    pub fn cols(&self, name: &str) -> Result<usize, LoadError> {
        self.matrix(name).map(|[_, cols]| cols)
    }

    /// An error about the layout as a whole.
    pub fn unknown(&self, detail: String) -> LoadError {
        LoadError::UnknownArchitecture {
            path: self.0.path().to_path_buf(),
            detail,
        }
    }
}

/// What a version's initialisation rule (RWKV-LM's recipe, `init::TrainingInit`) knows about
/// one tensor.
#[derive(Debug, Clone, Copy)]
pub struct InitParam<'a> {
    /// The official name.
    pub name: &'a str,
    /// Its last segment (`time_mix_k`, `weight`).
    pub leaf: &'a str,
    /// What it does.
    pub role: Role,
    /// Number of values.
    pub count: usize,
    /// RWKV-LM's `ratio_0_to_1`: layer / (layers - 1), 0 for a one-layer model.
    pub r01: f32,
    /// RWKV-LM's `ratio_1_to_almost0`: 1 - layer / layers.
    pub r1a0: f32,
}

impl InitParam<'_> {
    /// `f(i / count)` for every channel `i`: RWKV-LM's `ddd` ramps.
    pub fn ramp(&self, f: impl Fn(f32) -> f32) -> Vec<f32> {
        (0..self.count)
            .map(|i| f(i as f32 / self.count.max(1) as f32))
            .collect()
    }

    /// Whether the tensor belongs to a channel-mix (`blocks.N.ffn.*`).
    pub fn in_channel_mix(&self) -> bool {
        self.name.contains(".ffn.")
    }
}
