//! Reading and writing named tensors as safetensors files (states, logits, exported weights).

use burn::tensor::{DType, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// A tensor with its name, in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// The name inside the file.
    pub name: String,
    /// Shape, dtype and values.
    pub data: TensorData,
}

impl NamedTensor {
    /// Pairs a name with data.
    pub fn new(name: impl Into<String>, data: TensorData) -> Self {
        Self {
            name: name.into(),
            data,
        }
    }
}

/// Failure to read or write a safetensors file.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The path is not a file this library reads or writes (see [`crate::files`]).
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// The bytes are not a valid safetensors file, or hold a dtype we cannot use.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Writes tensors to `path` by the output rule of [`crate::files`]: a new or regular file is
/// replaced atomically (a temporary file beside it, then a rename), so an interrupted write
/// never leaves a half-written file under the final name; a fifo or device is written into;
/// anything else is refused.
pub fn write(path: &Path, tensors: &[NamedTensor]) -> Result<(), IoError> {
    write_with_metadata(path, tensors, &[])
}

/// [`write`], with `metadata` (key, value) in the file's header.
pub fn write_with_metadata(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &[(&str, &str)],
) -> Result<(), IoError> {
    let format_err = |message: String| IoError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        let dtype = match t.data.dtype() {
            DType::F32 => Dtype::F32,
            DType::F64 => Dtype::F64,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
            DType::I64 => Dtype::I64,
            DType::I32 => Dtype::I32,
            DType::I8 => Dtype::I8,
            DType::U8 => Dtype::U8,
            other => return Err(format_err(format!("cannot store {other:?} ({})", t.name))),
        };
        let view = TensorView::new(dtype, t.data.shape().to_vec(), t.data.as_bytes())
            .map_err(|e| format_err(format!("tensor {}: {e}", t.name)))?;
        views.push((t.name.as_str(), view));
    }
    let metadata = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
    let bytes = safetensors::serialize(views, metadata).map_err(|e| format_err(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes bytes to `path` by the output rule of [`crate::files`] (see [`write`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    Ok(crate::files::write_output(
        path,
        bytes,
        &crate::files::Inputs::new(),
    )?)
}

/// Reads every tensor of a safetensors file. Floats come back as f32 whatever their stored
/// precision; integers (I64, I32, I8, U8) keep their type.
pub fn read(path: &Path) -> Result<Vec<NamedTensor>, IoError> {
    read_limited(path, u64::MAX)
}

/// [`read`] of a file of at most `limit` bytes (a regular file: a fifo or device is refused
/// before it is read).
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<NamedTensor>, IoError> {
    let bytes = crate::files::read_input(path, limit)?;
    let format_err = |message: String| IoError::Format {
        path: path.to_path_buf(),
        message,
    };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| format_err(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in file.tensors() {
        let shape = view.shape().to_vec();
        let data = match view.dtype() {
            Dtype::I64 => TensorData::new(crate::dtype::le_i64(view.data()), shape),
            Dtype::I32 => TensorData::new(
                view.data()
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<_>>(),
                shape,
            ),
            Dtype::I8 => TensorData::new(
                view.data().iter().map(|&b| b as i8).collect::<Vec<_>>(),
                shape,
            ),
            Dtype::U8 => TensorData::new(view.data().to_vec(), shape),
            dtype => {
                let source =
                    crate::dtype::SourceDType::from_safetensors(dtype).ok_or_else(|| {
                        format_err(format!("tensor {name} has unsupported dtype {dtype:?}"))
                    })?;
                TensorData::new(source.to_f32(view.data()), shape)
            }
        };
        out.push(NamedTensor::new(name, data));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let tensors = vec![
            NamedTensor::new("a", TensorData::new(vec![1.5f32, -2.0, 3.25], [3])),
            NamedTensor::new("b", TensorData::new(vec![7i64, 8], [1, 2])),
        ];
        write(&path, &tensors).unwrap();
        assert_eq!(read(&path).unwrap(), tensors);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn reports_garbage_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.safetensors");
        std::fs::write(&path, b"definitely not a tensor file").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("junk.safetensors"), "{err}");
    }
}
