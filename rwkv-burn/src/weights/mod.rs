//! From named tensors to model parameters: the ground floor that every RWKV version's `load`
//! (in `model/vN.rs`) builds on. A [`WeightSource`] hands out tensors by official name;
//! [`Weights`] checks each against the shape the model needs, places it on the device in the
//! layout the model multiplies by, and records its official name and stored shape
//! ([`ParamNames`]) for gradients and export.

mod error;
mod format;
mod names;
mod source;

pub use error::LoadError;
pub(crate) use format::checked_block_scales;
pub use format::{BLOCK, UnknownFormat, WeightFormat};
pub use names::{Layout, NamedParam, ParamNames, stable_id};
pub use source::{InitParam, Role, Shapes, StoredData, StoredTensor, TensorIndex, WeightSource};

use crate::dtype::SourceDType;

use burn::module::{Param, ParamId};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use std::path::Path;

/// Reads tensors by official name for a model under construction, checking each shape, and
/// records the name of every parameter it creates. Names are relative to the current scope
/// ([`Weights::within`]): a time-mix asks for `key.weight`, and gets `blocks.3.att.key.weight`.
pub struct Weights<'a> {
    source: &'a dyn WeightSource,
    device: &'a Device,
    scope: String,
    names: Vec<NamedParam>,
    /// The device's largest buffer, checked before each tensor is uploaded.
    max_buffer: Option<u64>,
    /// The precision projections are held in.
    format: WeightFormat,
    /// Every name read so far (for [`Weights::unused`]).
    read: std::collections::HashSet<String>,
}

/// A projection matrix as [`Weights::linear`] placed it.
#[derive(Debug)]
pub enum LoadedMatrix {
    /// A Burn layer with an f32 weight `[in, out]`.
    Dense(Linear),
    /// Burn layers over consecutive blocks of output columns (`[in, out_b]` each), for a
    /// matrix larger than the device's largest buffer (inference devices only: training
    /// devices refuse it).
    Split(Vec<Linear>),
    /// The checkpoint's `[out, in]` rows in a compressed format, for the CPU kernels.
    Packed(crate::cpu::PackedMatrix),
    /// 8-bit blocks on a CubeCL device, for its block kernel (q8 and q4).
    Blocks(crate::gpu::BlockMatrix),
}

/// How official checkpoints store a vector of model shape `[len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VectorShape {
    /// `[len]` (norms, RWKV-4's decay and bonus).
    Flat,
    /// `[1, 1, len]`, broadcast over batch and time (RWKV-LM's per-channel `nn.Parameter`s).
    PerChannel,
}

impl<'a> Weights<'a> {
    /// A reader of `source` placing tensors on `device`.
    pub fn new(source: &'a dyn WeightSource, device: &'a Device) -> Self {
        Self {
            source,
            device,
            scope: String::new(),
            names: Vec::new(),
            max_buffer: crate::device::max_buffer_bytes(device),
            format: WeightFormat::F32,
            read: Default::default(),
        }
    }

    /// Holds projections in `format` (see [`WeightFormat::for_tensor`] for which): packed on
    /// devices whose kernels read the format (flex), and elsewhere as f32 tensors of the
    /// format's values, so that every device computes the same model.
    pub fn with_format(mut self, format: WeightFormat) -> Self {
        self.format = format;
        self
    }

    /// Sizes blocks for a device whose largest buffer holds at most `bytes` (the lower of
    /// this and what the device states).
    pub(crate) fn with_max_buffer(mut self, bytes: u64) -> Self {
        self.max_buffer = Some(self.max_buffer.map_or(bytes, |b| b.min(bytes)));
        self
    }

    /// The device parameters are placed on.
    pub fn device(&self) -> &Device {
        self.device
    }

    /// The file the weights come from.
    pub fn path(&self) -> &Path {
        self.source.path()
    }

    /// Runs `f` with names relative to `segment` below the current scope
    /// (`w.within("blocks.0", |w| w.within("att", ...))` reads `blocks.0.att.*`).
    pub fn within<T>(&mut self, segment: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        let len = self.scope.len();
        if !self.scope.is_empty() {
            self.scope.push('.');
        }
        self.scope.push_str(segment);
        let out = f(self);
        self.scope.truncate(len);
        out
    }

    /// Whether the source has the tensor `leaf` in the current scope.
    pub fn contains(&self, leaf: &str) -> bool {
        self.source.contains(&self.name(leaf))
    }

    /// Refuses, as [`LoadError::UnusedTensors`], the tensors of a source that lists its
    /// names ([`WeightSource::listed`]) and that nothing has read: call once the model is
    /// built.
    pub fn check_unused(&self) -> Result<(), LoadError> {
        let Some(names) = self.source.listed() else {
            return Ok(());
        };
        let unused: Vec<String> = names
            .into_iter()
            .filter(|n| !self.read.contains(*n))
            .map(str::to_string)
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(LoadError::UnusedTensors {
                path: self.path().to_path_buf(),
                names: unused,
            })
        }
    }

    /// The names recorded so far, in reading order.
    pub fn into_names(self) -> ParamNames {
        ParamNames(self.names)
    }

    fn name(&self, leaf: &str) -> String {
        if self.scope.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.scope)
        }
    }

    /// Values and stored shape of tensor `name`, whose model shape is `expected`; sources
    /// without stored shapes get `official` as the stored shape.
    fn read(
        &mut self,
        name: &str,
        expected: &[usize],
        official: &[usize],
        role: Role,
    ) -> Result<(StoredTensor<'a>, Vec<usize>), LoadError> {
        self.read.insert(name.to_string());
        let tensor = self.source.read(name, expected, role)?;
        let shape = if self.source.stores_shapes() {
            tensor.shape.clone()
        } else {
            official.to_vec()
        };
        // Vectors are stored as [C], [1, C] or [1, 1, C] depending on the producer.
        let squeezed: Vec<usize> = match expected.len() {
            1 => shape.iter().copied().filter(|&d| d != 1).collect(),
            _ => shape.clone(),
        };
        let fits = squeezed == expected || (expected == [1] && squeezed.is_empty());
        if !fits {
            return Err(LoadError::WrongShape {
                path: self.path().to_path_buf(),
                name: name.to_string(),
                got: shape,
                expected: expected.to_vec(),
            });
        }
        Ok((tensor, shape))
    }

    /// The values of tensor `name` as f32, refusing NaN and infinities where the source
    /// asks for the check (one pass over values already in cache from the conversion).
    fn values(&self, name: &str, tensor: StoredTensor<'_>) -> Result<Vec<f32>, LoadError> {
        self.check_buffer(name, &tensor)?;
        self.checked_f32(name, tensor)
    }

    /// Refuses a tensor larger than the device's largest buffer, at f32.
    fn check_buffer(&self, name: &str, tensor: &StoredTensor<'_>) -> Result<(), LoadError> {
        if let Some(limit) = self.max_buffer {
            let bytes = (tensor.elements() as u64).saturating_mul(4);
            if bytes > limit {
                return Err(LoadError::TooLargeForDevice {
                    path: self.path().to_path_buf(),
                    name: name.to_string(),
                    bytes,
                    limit,
                });
            }
        }
        Ok(())
    }

    /// The values as f32, refusing NaN and infinities where the source asks for the check.
    fn checked_f32(&self, name: &str, tensor: StoredTensor<'_>) -> Result<Vec<f32>, LoadError> {
        let values = tensor.into_f32();
        if self.source.checks_finite()
            && let Some(index) = values.iter().position(|v| !v.is_finite())
        {
            return Err(LoadError::NonFinite {
                path: self.path().to_path_buf(),
                name: name.to_string(),
                index,
                value: values[index],
            });
        }
        Ok(values)
    }

    /// Gives a new parameter its stable id and records its name.
    fn record(
        &mut self,
        name: String,
        id: &mut ParamId,
        stored: Vec<usize>,
        rank: usize,
        layout: Layout,
    ) {
        *id = stable_id(&name);
        self.names.push(NamedParam {
            name,
            id: *id,
            stored_shape: stored,
            rank,
            layout,
        });
    }

    /// A parameter of any rank, stored in the model's shape.
    pub fn tensor<const D: usize>(
        &mut self,
        role: Role,
        leaf: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<D>>, LoadError> {
        self.param(role, leaf, shape, &shape)
    }

    /// The token embedding `[rows, cols]`: one parameter, or row blocks where the table is
    /// larger than the device's largest buffer (see [`crate::model::TokenEmbedding`]).
    pub fn embedding(
        &mut self,
        leaf: &str,
        rows: usize,
        cols: usize,
    ) -> Result<crate::model::TokenEmbedding, LoadError> {
        // Training devices keep one parameter (its gradient and export need it); the loader
        // refuses the table there, as any tensor too large for one buffer.
        let block_rows = match self.max_buffer {
            Some(limit)
                if (rows as u64).saturating_mul(cols as u64 * 4) > limit
                    && !self.device.is_autodiff() =>
            {
                (limit / (cols as u64 * 4).max(1)) as usize
            }
            _ => {
                let weight = self.tensor(Role::Embedding, leaf, [rows, cols])?;
                return Ok(crate::model::TokenEmbedding::whole(weight));
            }
        };
        let name = self.name(leaf);
        let shape = [rows, cols];
        let (tensor, _) = self.read(&name, &shape, &shape, Role::Embedding)?;
        if block_rows == 0 {
            return Err(LoadError::TooLargeForDevice {
                path: self.path().to_path_buf(),
                name,
                bytes: cols as u64 * 4,
                limit: self.max_buffer.unwrap_or(0),
            });
        }
        let values = self.checked_f32(&name, tensor)?;
        self.source.release(&name);
        let blocks = values
            .chunks(block_rows * cols)
            .map(|chunk| {
                let data = TensorData::new(chunk.to_vec(), [chunk.len() / cols, cols]);
                Param::from_tensor(Tensor::from_data(data, self.device))
            })
            .collect();
        Ok(crate::model::TokenEmbedding { blocks })
    }

    /// A parameter whose official stored shape is `official`.
    fn param<const D: usize>(
        &mut self,
        role: Role,
        leaf: &str,
        shape: [usize; D],
        official: &[usize],
    ) -> Result<Param<Tensor<D>>, LoadError> {
        let name = self.name(leaf);
        let (tensor, stored) = self.read(&name, &shape, official, role)?;
        let tensor = match self.stored_half(&name, role, &tensor)? {
            // Created in the data's own type (`from_data` alone converts to the device's
            // default float type).
            Some(halves) => {
                let dtype = halves.dtype();
                Tensor::from_data(halves, (self.device, dtype))
            }
            None => Tensor::from_data(
                TensorData::new(self.values(&name, tensor)?, shape),
                self.device,
            ),
        };
        let mut param = Param::from_tensor(tensor);
        self.source.release(&name);
        self.record(name, &mut param.id, stored, D, Layout::Same);
        Ok(param)
    }

    /// The embedding in the half type a file stores it in, when the model is loaded in a
    /// compressed format on a device that holds them (flex): it is a lookup of one row per
    /// token, so its precision costs nothing, while at f32 it would be the largest tensor in
    /// memory (a World model's 65536 rows). `None` keeps the f32 path.
    fn stored_half(
        &self,
        name: &str,
        role: Role,
        tensor: &StoredTensor<'_>,
    ) -> Result<Option<TensorData>, LoadError> {
        use half::{bf16, f16};
        let StoredData::Bytes { dtype, bytes } = &tensor.data else {
            return Ok(None);
        };
        if role != Role::Embedding
            || self.format == WeightFormat::F32
            || !crate::cpu::holds_packed(self.device)
        {
            return Ok(None);
        }
        let shape = tensor.shape.clone();
        let pairs = bytes.chunks_exact(2).map(|c| [c[0], c[1]]);
        let (data, finite) = match dtype {
            SourceDType::BF16 => {
                let values: Vec<bf16> = pairs.map(bf16::from_le_bytes).collect();
                let finite = values.iter().position(|v| !v.is_finite());
                (TensorData::new(values, shape), finite)
            }
            SourceDType::F16 => {
                let values: Vec<f16> = pairs.map(f16::from_le_bytes).collect();
                let finite = values.iter().position(|v| !v.is_finite());
                (TensorData::new(values, shape), finite)
            }
            _ => return Ok(None),
        };
        if self.source.checks_finite()
            && let Some(index) = finite
        {
            return Err(LoadError::NonFinite {
                path: self.path().to_path_buf(),
                name: name.to_string(),
                index,
                value: dtype.to_f32(&bytes[index * 2..index * 2 + 2])[0],
            });
        }
        Ok(Some(data))
    }

    fn vector_as(
        &mut self,
        role: Role,
        leaf: &str,
        len: usize,
        stored: VectorShape,
    ) -> Result<Param<Tensor<1>>, LoadError> {
        let official = match stored {
            VectorShape::Flat => vec![len],
            VectorShape::PerChannel => vec![1, 1, len],
        };
        self.param(role, leaf, [len], &official)
    }

    /// A vector that official checkpoints store flat, `[len]`.
    pub fn vector(
        &mut self,
        role: Role,
        leaf: &str,
        len: usize,
    ) -> Result<Param<Tensor<1>>, LoadError> {
        self.vector_as(role, leaf, len, VectorShape::Flat)
    }

    /// A per-channel vector that official checkpoints store `[1, 1, len]` (token-shift mixes,
    /// most decays and biases).
    pub fn per_channel(
        &mut self,
        role: Role,
        leaf: &str,
        len: usize,
    ) -> Result<Param<Tensor<1>>, LoadError> {
        self.vector_as(role, leaf, len, VectorShape::PerChannel)
    }

    /// A `[rows, cols]` parameter.
    pub fn matrix(
        &mut self,
        role: Role,
        leaf: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Param<Tensor<2>>, LoadError> {
        self.tensor(role, leaf, [rows, cols])
    }

    /// A matrix stored `[in, out]` and used as `x @ W` (low-rank adapter factors): already
    /// Burn's layout.
    pub fn factor(
        &mut self,
        role: Role,
        leaf: &str,
        input: usize,
        out: usize,
    ) -> Result<Linear, LoadError> {
        Ok(Linear {
            weight: self.tensor(role, leaf, [input, out])?,
            bias: None,
        })
    }

    /// A torch `nn.Linear` weight `[out, in]`, laid out for the device in the precision the
    /// reader was given ([`with_format`](Self::with_format)): packed where the device's kernels
    /// read that format; else an f32 bias-free [`Linear`] (of the format's values), for which
    /// [`crate::cpu::decode_weight`] keeps the checkpoint's layout where the CPU decode kernels
    /// stream it, and elsewhere it is transposed on the host to Burn's `[in, out]`, as
    /// backends may copy strided operands on every product.
    pub fn linear(
        &mut self,
        role: Role,
        leaf: &str,
        out: usize,
        input: usize,
    ) -> Result<LoadedMatrix, LoadError> {
        let name = self.name(leaf);
        let shape = [out, input];
        let (tensor, stored) = self.read(&name, &shape, &shape, role)?;
        let format = self.format.for_tensor(role, input);
        // A file's blocks are checked whatever becomes of them (packed, GPU blocks, or f32
        // values on devices that hold neither), so that a damaged file fails on every device.
        if let StoredData::Blocks {
            format: stored,
            levels,
            scales,
        } = &tensor.data
            && let Err(detail) = checked_block_scales(*stored, levels, scales, shape)
        {
            return Err(LoadError::BadBlocks {
                path: self.path().to_path_buf(),
                name,
                detail,
            });
        }
        // A file already in this block format is taken as it is: nothing re-quantized.
        if let StoredData::Blocks {
            format: stored,
            levels,
            scales,
        } = &tensor.data
            && *stored == format
            && let Some(packed) = crate::cpu::packed_from_blocks(
                &name,
                format,
                [levels, scales],
                [out, input],
                self.device,
            )
        {
            let packed = packed.map(LoadedMatrix::Packed);
            self.source.release(&name);
            return match packed {
                Ok(packed) => Ok(packed),
                Err(detail) => Err(LoadError::BadBlocks {
                    path: self.path().to_path_buf(),
                    name,
                    detail,
                }),
            };
        }
        if format.is_block() && crate::gpu::runs_kernels(self.device) {
            // A part of the levels holds whole panels: `PANEL * input` bytes each.
            let panel = (crate::gpu::PANEL * input) as u64;
            if let Some(limit) = self.max_buffer
                && panel > limit
            {
                return Err(LoadError::TooLargeForDevice {
                    path: self.path().to_path_buf(),
                    name,
                    bytes: panel,
                    limit,
                });
            }
            let blocks = match &tensor.data {
                StoredData::Blocks {
                    format: stored,
                    levels,
                    scales,
                } if *stored == format => crate::gpu::BlockMatrix::from_stored(
                    &name,
                    format,
                    [levels, scales],
                    [out, input],
                    self.device,
                    self.max_buffer,
                )
                .map_err(|detail| LoadError::BadBlocks {
                    path: self.path().to_path_buf(),
                    name: name.clone(),
                    detail,
                })?,
                _ => {
                    let values = self.checked_f32(&name, tensor)?;
                    crate::gpu::BlockMatrix::quantize(
                        &name,
                        format,
                        &values,
                        [out, input],
                        self.device,
                        self.max_buffer,
                    )
                }
            };
            self.source.release(&name);
            return Ok(LoadedMatrix::Blocks(blocks));
        }
        if format != WeightFormat::F32 {
            let values = self.checked_f32(&name, tensor)?;
            self.source.release(&name);
            if let Some(packed) =
                crate::cpu::pack_weight(&name, format, &values, out, input, self.device)
            {
                return Ok(LoadedMatrix::Packed(packed));
            }
            let rounded = format.round_trip(&values, input);
            drop(values);
            // Exact: the values are the format's own. Products cast the weight back to f32
            // (`Projection::forward`), so the arithmetic stays f32.
            let dtype = format
                .tensor_dtype()
                .filter(|_| holds_as_tensor(self.device, format));
            return self.placed_linear(name, rounded, stored, [out, input], dtype);
        }
        let values = self.checked_f32(&name, tensor)?;
        self.source.release(&name);
        self.placed_linear(name, values, stored, [out, input], None)
    }

    /// `values` (`[out, in]`) as one Burn layer, in `dtype` where given, or as blocks of
    /// output rows where the matrix is larger than the device's largest buffer.
    fn placed_linear(
        &mut self,
        name: String,
        values: Vec<f32>,
        stored: Vec<usize>,
        [out, input]: [usize; 2],
        dtype: Option<burn::tensor::DType>,
    ) -> Result<LoadedMatrix, LoadError> {
        // Sized by f32 whatever `dtype` holds: a bf16/f16 weight is widened to f32 for each
        // product (`Projection::forward`), and that copy is what the product binds: sized by
        // its own 2 bytes, a 65536 x 768 f16 head (96 MiB) stayed whole under WebGPU's
        // 128 MiB binding limit and its 192 MiB f32 copy did not fit.
        let row_bytes = input as u64 * 4;
        let cast = |mut linear: Linear| {
            if let Some(dtype) = dtype {
                linear.weight = linear.weight.map(|w| w.cast(dtype));
            }
            linear
        };
        match self.max_buffer {
            Some(limit)
                if row_bytes > limit
                    || (self.device.is_autodiff()
                        && (out as u64).saturating_mul(row_bytes) > limit) =>
            {
                Err(LoadError::TooLargeForDevice {
                    path: self.path().to_path_buf(),
                    name,
                    bytes: if row_bytes > limit {
                        row_bytes
                    } else {
                        (out as u64).saturating_mul(row_bytes)
                    },
                    limit,
                })
            }
            Some(limit) if (out as u64).saturating_mul(row_bytes) > limit => {
                let rows = (limit / row_bytes.max(1)) as usize;
                let blocks = values
                    .chunks(rows * input)
                    .map(|chunk| {
                        let rows = chunk.len() / input;
                        let weight = transposed(chunk, rows, input, self.device);
                        cast(Linear {
                            weight: Param::from_tensor(weight),
                            bias: None,
                        })
                    })
                    .collect();
                Ok(LoadedMatrix::Split(blocks))
            }
            _ => Ok(LoadedMatrix::Dense(cast(
                self.dense_linear(name, values, stored, out, input),
            ))),
        }
    }

    /// An f32 bias-free [`Linear`] of `values` (`[out, in]`), recorded under `name`.
    fn dense_linear(
        &mut self,
        name: String,
        values: Vec<f32>,
        stored: Vec<usize>,
        out: usize,
        input: usize,
    ) -> Linear {
        let weight = match crate::cpu::decode_weight(&values, out, input, self.device) {
            Some(weight) => weight,
            None => transposed(&values, out, input, self.device),
        };
        let mut layer = Linear {
            weight: Param::from_tensor(weight),
            bias: None,
        };
        self.record(name, &mut layer.weight.id, stored, 2, Layout::Transposed);
        layer
    }
}

/// `values` (`[out, in]`, row-major) as a Burn `[in, out]` tensor, transposed on the host
/// (backends may copy strided operands on every product).
fn transposed(values: &[f32], out: usize, input: usize, device: &Device) -> Tensor<2> {
    let mut t = vec![0f32; values.len()];
    for (o, row) in values.chunks_exact(input).enumerate() {
        for (i, v) in row.iter().enumerate() {
            t[i * out + o] = *v;
        }
    }
    Tensor::from_data(TensorData::new(t, [input, out]), device)
}

/// Whether `device`, which has no packed kernels, holds a projection in `format` as a Burn
/// tensor of that element type (bf16/f16 where the device supports it: libtorch, wgpu with
/// `shader-f16` for f16; not ndarray, not training devices).
pub(crate) fn holds_as_tensor(device: &Device, format: WeightFormat) -> bool {
    !crate::cpu::holds_packed(device)
        && !device.is_autodiff()
        && format
            .tensor_dtype()
            .is_some_and(|dtype| device.supports_dtype(dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source of one shape per name, storing shapes or not.
    struct Fake {
        shapes: Vec<(&'static str, Vec<usize>)>,
        stores_shapes: bool,
    }

    impl WeightSource for Fake {
        fn path(&self) -> &Path {
            Path::new("fake")
        }

        fn contains(&self, name: &str) -> bool {
            self.shapes.iter().any(|(n, _)| *n == name)
        }

        fn stores_shapes(&self) -> bool {
            self.stores_shapes
        }

        fn read(&self, name: &str, _: &[usize], _: Role) -> Result<StoredTensor<'_>, LoadError> {
            let (_, shape) = self.shapes.iter().find(|(n, _)| *n == name).unwrap();
            Ok(StoredTensor {
                shape: shape.clone(),
                data: StoredData::F32(vec![0.5; shape.iter().product()]),
            })
        }
    }

    #[test]
    fn names_are_scoped_and_vectors_take_any_official_form() {
        let device = Device::default();
        let source = Fake {
            shapes: vec![
                ("blocks.0.att.mix", vec![1, 1, 4]),
                ("blocks.0.att.norm", vec![4]),
                ("blocks.0.att.bad", vec![2, 2]),
            ],
            stores_shapes: true,
        };
        let mut w = Weights::new(&source, &device);
        w.within("blocks.0", |w| {
            w.within("att", |w| {
                assert!(w.contains("mix") && !w.contains("x"));
                w.per_channel(Role::Mix, "mix", 4).unwrap();
                w.vector(Role::NormScale, "norm", 4).unwrap();
                assert!(matches!(
                    w.vector(Role::NormScale, "bad", 4),
                    Err(LoadError::WrongShape { name, .. }) if name == "blocks.0.att.bad"
                ));
            })
        });
        let names = w.into_names();
        let got: Vec<_> = names
            .0
            .iter()
            .map(|p| (p.name.as_str(), p.stored_shape.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("blocks.0.att.mix", vec![1, 1, 4]),
                ("blocks.0.att.norm", vec![4])
            ]
        );
        assert_eq!(names.0[0].id, stable_id("blocks.0.att.mix"));
    }

    /// A tensor larger than the device's largest buffer is refused by name before upload,
    /// unless it is a projection or the embedding, which are split into blocks of rows that
    /// fit (and refused only when one row does not); smaller ones load whole.
    #[test]
    fn tensors_above_the_device_buffer_limit_are_split_or_refused_by_name() {
        let device = Device::default();
        let source = Fake {
            shapes: vec![
                ("small", vec![4]),
                ("big", vec![4, 8]),
                ("lin", vec![8, 4]),
                ("wide", vec![2, 32]),
                ("emb", vec![10, 4]),
            ],
            stores_shapes: true,
        };
        let mut w = Weights::new(&source, &device);
        // 16 f32 fit, 32 do not.
        w.max_buffer = Some(64);
        w.vector(Role::NormScale, "small", 4).unwrap();
        match w.matrix(Role::Matrix, "big", 4, 8) {
            Err(LoadError::TooLargeForDevice {
                name, bytes, limit, ..
            }) => assert_eq!((name.as_str(), bytes, limit), ("big", 128, 64)),
            other => panic!("expected TooLargeForDevice, got {other:?}"),
        }
        match w.linear(Role::Matrix, "lin", 8, 4).unwrap() {
            LoadedMatrix::Split(blocks) => {
                let dims: Vec<_> = blocks.iter().map(|b| b.weight.dims()).collect();
                assert_eq!(dims, [[4, 4], [4, 4]]);
            }
            other => panic!("expected a split matrix, got {other:?}"),
        }
        match w.linear(Role::Matrix, "wide", 2, 32) {
            Err(LoadError::TooLargeForDevice { name, bytes, .. }) => {
                assert_eq!((name.as_str(), bytes), ("wide", 128))
            }
            other => panic!("expected TooLargeForDevice, got {other:?}"),
        }
        let emb = w.embedding("emb", 10, 4).unwrap();
        let rows: Vec<_> = emb.blocks.iter().map(|b| b.dims()).collect();
        assert_eq!(rows, [[4, 4], [4, 4], [2, 4]]);
        assert_eq!(emb.dims(), [10, 4]);
    }

    /// Half-precision weights held as tensors are split by the size of the f32 copy each
    /// product makes of them, which is what the product binds.
    #[test]
    fn half_precision_blocks_are_sized_by_their_f32_copy() {
        for device in crate::test_util::test_devices() {
            if crate::cpu::holds_packed(&device) || device.is_autodiff() {
                continue;
            }
            let source = Fake {
                shapes: vec![("lin", vec![8, 4])],
                stores_shapes: true,
            };
            let mut w = Weights::new(&source, &device).with_format(WeightFormat::F16);
            // 8 x 4 in f16 is 64 bytes: whole by its own size, two blocks of 4 rows by f32's.
            w.max_buffer = Some(64);
            match w.linear(Role::Matrix, "lin", 8, 4).unwrap() {
                LoadedMatrix::Split(blocks) => {
                    let dims: Vec<_> = blocks.iter().map(|b| b.weight.dims()).collect();
                    assert_eq!(dims, [[4, 4], [4, 4]], "{device:?}");
                    let want = if holds_as_tensor(&device, WeightFormat::F16) {
                        burn::tensor::DType::F16
                    } else {
                        burn::tensor::DType::F32
                    };
                    assert!(
                        blocks.iter().all(|b| b.weight.val().dtype() == want),
                        "{device:?}"
                    );
                }
                other => panic!("{device:?}: expected a split matrix, got {other:?}"),
            }
        }
    }

    /// Training devices hold every weight as one parameter: what would be split elsewhere is
    /// refused there.
    #[cfg(feature = "autodiff")]
    #[test]
    fn training_devices_refuse_rather_than_split() {
        let device = Device::default().autodiff();
        let source = Fake {
            shapes: vec![("lin", vec![8, 4]), ("emb", vec![10, 4])],
            stores_shapes: true,
        };
        let mut w = Weights::new(&source, &device);
        w.max_buffer = Some(64);
        for result in [
            w.linear(Role::Matrix, "lin", 8, 4).map(|_| ()),
            w.embedding("emb", 10, 4).map(|_| ()),
        ] {
            match result {
                Err(LoadError::TooLargeForDevice { bytes, .. }) => assert!(bytes > 64),
                other => panic!("expected TooLargeForDevice, got {other:?}"),
            }
        }
    }

    /// Sources that invent values get the shapes official checkpoints store.
    #[test]
    fn invented_tensors_get_official_shapes() {
        let device = Device::default();
        let source = Fake {
            shapes: vec![("m", vec![4]), ("v", vec![4]), ("w", vec![3, 2])],
            stores_shapes: false,
        };
        let mut w = Weights::new(&source, &device);
        w.per_channel(Role::Mix, "m", 4).unwrap();
        w.vector(Role::Decay, "v", 4).unwrap();
        let LoadedMatrix::Dense(linear) = w.linear(Role::Matrix, "w", 3, 2).unwrap() else {
            panic!("f32 weights load as a Burn layer");
        };
        assert_eq!(linear.weight.dims(), [2, 3]);
        let names = w.into_names();
        let shapes: Vec<_> = names
            .0
            .iter()
            .map(|p| (p.stored_shape.clone(), p.layout))
            .collect();
        assert_eq!(
            shapes,
            [
                (vec![1, 1, 4], Layout::Same),
                (vec![4], Layout::Same),
                (vec![3, 2], Layout::Transposed)
            ]
        );
    }
}
