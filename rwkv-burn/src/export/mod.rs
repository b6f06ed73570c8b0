//! Writing a model back in the official layout (key names and shapes of the official
//! checkpoints), so the official Python package and every other RWKV tool can load it:
//! safetensors, or PyTorch's `.pth` (what the official package loads), in f32, f16 or bf16.

mod pth;

use crate::model::Rwkv;
use crate::safetensors_io::{self, IoError, NamedTensor};
use crate::weights::{Layout, NamedParam, ParamNames};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

/// The precision of exported weights. Official releases are bf16 (`.pth`) or f16; f32 keeps
/// every bit a training run produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageDType {
    /// 32-bit float.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl FromStr for StorageDType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            _ => Err(format!("unknown dtype '{s}' (expected f32, f16 or bf16)")),
        }
    }
}

/// The file format of an export, chosen by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// `.safetensors`.
    Safetensors,
    /// `.pth` / `.pt`: the zip archive of `torch.save`.
    Pth,
}

impl ExportFormat {
    /// The format a path's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "safetensors" => Some(Self::Safetensors),
            "pth" | "pt" => Some(Self::Pth),
            _ => None,
        }
    }
}

/// Collects every float parameter's values by id.
struct Collect(HashMap<ParamId, TensorData>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.insert(param.id, param.val().into_data());
    }
}

/// Every parameter named by `names`, with its official key and stored shape.
///
/// # Panics
/// If `names` lists a parameter the model does not have (names from another model).
pub fn official_tensors(model: &Rwkv, names: &ParamNames) -> Vec<NamedTensor> {
    let mut collect = Collect(HashMap::new());
    model.visit(&mut collect);
    names
        .0
        .iter()
        .map(|param| {
            let data = collect
                .0
                .remove(&param.id)
                .unwrap_or_else(|| panic!("the model has no parameter {}", param.name));
            NamedTensor::new(param.name.clone(), to_official(data, param))
        })
        .collect()
}

/// The key in a safetensors header that names the format of a file [`write_in_format`]
/// wrote (`"q8"`, ...).
pub const WEIGHTS_METADATA_KEY: &str = "rwkv.weights";

/// Every tensor of a model loaded in any [`WeightFormat`](crate::WeightFormat), as a file that
/// loads back in that format with nothing converted: f32 parameters by their official names
/// and shapes (as [`official_tensors`]), the embedding in its half type where the model holds
/// it so; bf16/f16 projections as plain `[out, in]` tensors of
/// that type (so the file is an official checkpoint any tool loads); q8/q4 projections as
/// `NAME.q8` (I8 `[out, in]`) or `NAME.q4` (U8 `[out, in / 2]`, ggml's Q4_0 nibble order)
/// beside `NAME.q8_scales`/`NAME.q4_scales` (F16 `[out, in / 32]`). Other tools refuse those
/// names rather than misread them.
pub fn format_tensors(model: &Rwkv, names: &ParamNames) -> Vec<NamedTensor> {
    use crate::weights::{BLOCK, WeightFormat};
    use half::{bf16, f16};
    let mut tensors = official_tensors(model, names);
    // An embedding held in its stored half type (see `Weights`) is written in that type: its
    // values are that type's, so nothing is rounded, and a World model's table is half the
    // bytes.
    let emb = model.emb.dtype();
    if matches!(emb, burn::tensor::DType::BF16 | burn::tensor::DType::F16)
        && let Some(t) = tensors.iter_mut().find(|t| t.name == "emb.weight")
    {
        t.data = t.data.clone().convert_dtype(emb);
    }
    for projection in model.projections() {
        // Packed on the CPU, or 8-bit blocks on a GPU (read back).
        let (name, [out, input], format, (levels, scales)) =
            match (projection.packed_matrix(), projection.block_matrix()) {
                (Some(p), _) => {
                    let (levels, scales) = p.stored_bytes();
                    let levels = std::borrow::Cow::Borrowed(levels);
                    (p.name(), p.dims(), p.format(), (levels, scales))
                }
                (None, Some(b)) => {
                    let (levels, scales) = b.stored_bytes();
                    let levels = std::borrow::Cow::Owned(levels);
                    (b.name(), b.dims(), b.format(), (levels, scales))
                }
                (None, None) => continue,
            };
        let name = name.to_string();
        match format {
            WeightFormat::Bf16 => {
                let values: Vec<bf16> = levels
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                    .collect();
                tensors.push(NamedTensor::new(
                    name,
                    TensorData::new(values, [out, input]),
                ));
            }
            WeightFormat::F16 => {
                let values: Vec<f16> = levels
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect();
                tensors.push(NamedTensor::new(
                    name,
                    TensorData::new(values, [out, input]),
                ));
            }
            format => {
                let scales: Vec<f16> = scales
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect();
                let levels = if format == WeightFormat::Q8 {
                    let values: Vec<i8> = levels.iter().map(|&b| b as i8).collect();
                    TensorData::new(values, [out, input])
                } else {
                    TensorData::new(levels.to_vec(), [out, input / 2])
                };
                tensors.push(NamedTensor::new(format!("{name}.{format}"), levels));
                tensors.push(NamedTensor::new(
                    format!("{name}.{format}_scales"),
                    TensorData::new(scales, [out, input / BLOCK]),
                ));
            }
        }
    }
    tensors
}

/// Writes a model in the format it was loaded in (see [`format_tensors`]) as safetensors,
/// atomically, with the format under [`WEIGHTS_METADATA_KEY`] in the header.
pub fn write_in_format(model: &Rwkv, names: &ParamNames, path: &Path) -> Result<(), IoError> {
    let format = model
        .projections()
        .first()
        .map_or(crate::WeightFormat::F32, |p| p.format());
    safetensors_io::write_with_metadata(
        path,
        &format_tensors(model, names),
        &[(WEIGHTS_METADATA_KEY, format.name())],
    )
}

/// Writes the model as an official-format safetensors file (atomically).
pub fn save_official(model: &Rwkv, names: &ParamNames, path: &Path) -> Result<(), IoError> {
    safetensors_io::write(path, &official_tensors(model, names))
}

/// Writes official tensors (as from [`official_tensors`]) to `path` in the format its extension
/// names and in `dtype`, atomically.
pub fn write_official(
    path: &Path,
    tensors: &[NamedTensor],
    dtype: StorageDType,
) -> Result<(), IoError> {
    let format = ExportFormat::from_path(path).ok_or_else(|| IoError::Format {
        path: path.to_path_buf(),
        message: "unknown export format: name the file *.safetensors or *.pth".into(),
    })?;
    let converted: Vec<NamedTensor> = tensors
        .iter()
        .map(|t| NamedTensor::new(t.name.clone(), cast(&t.data, dtype)))
        .collect();
    match format {
        ExportFormat::Safetensors => safetensors_io::write(path, &converted),
        ExportFormat::Pth => {
            let entries: Vec<pth::PthTensor<'_>> = converted
                .iter()
                .map(|t| pth::PthTensor {
                    name: &t.name,
                    shape: t.data.shape().to_vec(),
                    bytes: t.data.as_bytes(),
                })
                .collect();
            pth::write(path, &entries, dtype)
        }
    }
}

/// Float data as `dtype` (round to nearest even for the half types).
fn cast(data: &TensorData, dtype: StorageDType) -> TensorData {
    let target = match dtype {
        StorageDType::F32 => burn::tensor::DType::F32,
        StorageDType::F16 => burn::tensor::DType::F16,
        StorageDType::BF16 => burn::tensor::DType::BF16,
    };
    data.clone().convert_dtype(target)
}

/// A tensor in the model's layout -> the official layout of `param` (f32).
pub fn to_official(data: TensorData, param: &NamedParam) -> TensorData {
    let shape = data.shape().to_vec();
    let values = data
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values");
    let values = match param.layout {
        Layout::Same => values,
        Layout::Transposed => {
            let (rows, cols) = (shape[0], shape[1]); // Burn keeps [in, out]
            let mut out = vec![0f32; values.len()];
            for i in 0..rows {
                for o in 0..cols {
                    out[o * rows + i] = values[i * cols + o];
                }
            }
            out
        }
    };
    TensorData::new(values, param.stored_shape.clone())
}
