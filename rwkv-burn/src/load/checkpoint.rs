//! The container readers: one safetensors or PyTorch file opened for reading, its tensor
//! names, shapes and element types, and lazy access to the values. Nothing here knows RWKV's
//! names or folders (`hf.rs` and `mod.rs` sit above).

use super::gguf::{GgmlType, Gguf};
use crate::dtype::SourceDType;
use crate::weights::{
    BLOCK, LoadError, Role, StoredData, StoredTensor, TensorIndex, WeightFormat, WeightSource,
};
use memmap2::Mmap;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The container a checkpoint came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` output (zip or legacy pickle), read without executing any pickle code.
    Pth,
    /// safetensors.
    Safetensors,
    /// A Hugging Face model folder (`config.json` plus weights, maybe sharded).
    HuggingFace,
    /// llama.cpp's GGUF.
    Gguf,
}

/// The bytes of a whole safetensors file: a memory map, or a buffer in memory.
type Buffer = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Where one tensor's bytes are.
#[derive(Clone)]
enum Source {
    Mapped {
        map: Buffer,
        start: usize,
        end: usize,
        /// Whether `map` maps a file (whose pages can be given back once read), rather than
        /// bytes in memory.
        file: bool,
    },
    Pth(pytorch_reader::Tensor),
    /// A matrix in a block format: its levels and scales, two tensors of the file
    /// (`NAME.q8` and `NAME.q8_scales`, see [`fold_blocks`]).
    Blocks {
        format: WeightFormat,
        levels: Box<Source>,
        scales: Box<Source>,
    },
    /// A GGUF Q8_0 or Q4_0 matrix: blocks of an f16 scale and its levels, interleaved; read
    /// into [`Source::Blocks`]' two planes (one copy, nothing re-quantized).
    Interleaved {
        format: WeightFormat,
        bytes: Box<Source>,
    },
    /// A GGUF matrix in one of ggml's K quantizations, dequantized to f32 as it is read.
    KQuant {
        kind: super::kquants::KQuant,
        bytes: Box<Source>,
    },
    /// A tensor stored in another layout than the official one (`hf.rs`, `gguf_rwkv.rs`),
    /// rearranged as it is read.
    Rearranged {
        stored: Box<Entry>,
        op: Rearrange,
    },
}

/// How a tensor stored in a foreign layout becomes the official one. The result is f32
/// (these are the small tensors: low-rank factors, fused mixes), except that a scaled block
/// matrix stays in blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Rearrange {
    /// `[.., rows, cols]` -> `[.., cols, rows]`.
    Transpose,
    /// Part `index` of `count` equal parts along the first dimension (a fused tensor).
    Part { index: usize, count: usize },
    /// Every value times `factor`, a power of two (exact): undoes llama.cpp's RWKV-6
    /// `rescale_every_n_layers` division.
    Scale(f32),
}

/// A tensor of a checkpoint: its official shape, stored element type and where it is.
#[derive(Clone)]
pub(super) struct Entry {
    shape: Vec<usize>,
    dtype: Result<SourceDType, String>,
    source: Source,
}

impl Entry {
    /// The shape it is read in.
    pub(super) fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The same values read in `shape`, which must hold as many (checked).
    pub(super) fn reshaped(mut self, shape: Vec<usize>) -> Option<Self> {
        let count = |s: &[usize]| s.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        (count(&shape).is_some() && count(&shape) == count(&self.shape)).then(|| {
            self.shape = shape;
            self
        })
    }

    /// The values rearranged by `op`; `None` where the shape does not allow it.
    pub(super) fn rearranged(self, op: Rearrange) -> Option<Self> {
        let mut shape = self.shape.clone();
        match op {
            Rearrange::Transpose => {
                let n = shape.len();
                if n < 2 {
                    return None;
                }
                shape.swap(n - 1, n - 2);
            }
            Rearrange::Part { index, count } => {
                let first = *shape.first()?;
                if count == 0 || index >= count || first % count != 0 {
                    return None;
                }
                shape[0] = first / count;
                if shape[0] == 1 && shape.len() > 1 {
                    shape.remove(0);
                }
            }
            Rearrange::Scale(_) => {}
        }
        Some(Self {
            shape,
            dtype: self.dtype.clone(),
            source: Source::Rearranged {
                stored: Box::new(self),
                op,
            },
        })
    }
}

/// An opened checkpoint whose tensors are read on demand, one at a time, so loading never
/// holds a second copy of the whole model.
pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    entries: BTreeMap<String, Entry>,
    /// Whether building refuses NaN and infinite weights ([`Checkpoint::allow_non_finite`]).
    check_finite: bool,
    /// Whether building refuses tensors it did not read ([`Checkpoint::allow_unused`]).
    check_unused: bool,
    /// A GGUF file's header and metadata.
    gguf: Option<Box<Gguf>>,
    /// The vocabulary a model folder ships (`hf.rs`).
    vocab_file: Option<PathBuf>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// First byte of a pickle stream of protocol 2 or later (legacy `torch.save`).
const PICKLE_PROTO: u8 = 0x80;

impl Checkpoint {
    /// A checkpoint of `entries`, checked as building does by default (finite values, no
    /// unused tensors).
    fn from_entries(path: &Path, format: Format, entries: BTreeMap<String, Entry>) -> Self {
        Self {
            path: path.to_path_buf(),
            format,
            entries,
            check_finite: true,
            check_unused: true,
            gguf: None,
            vocab_file: None,
        }
    }

    /// Opens one weights file, safetensors or `.pth` (recognised by content, not by name), with
    /// the names it stores.
    pub fn open_file(path: &Path) -> Result<Self, LoadError> {
        let io_err = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut head = [0u8; 9];
        let mut file = std::fs::File::open(path).map_err(io_err)?;
        let n = read_up_to(&mut file, &mut head).map_err(io_err)?;
        let head = &head[..n];
        if head.is_empty() {
            return Err(LoadError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: "the file is empty".into(),
            });
        }
        let len = file.metadata().ok().map(|m| m.len());
        match sniff(head, len) {
            Some(Format::Safetensors) => return Self::open_safetensors(path, file),
            Some(Format::Pth) => return Self::open_pth(path),
            Some(Format::Gguf) => return Self::open_gguf(path, file),
            _ => {}
        }
        Err(LoadError::NotACheckpoint {
            path: path.to_path_buf(),
            reason: "neither a PyTorch file, safetensors nor GGUF".into(),
        })
    }

    /// A GGUF file with the names and torch-order shapes it stores (`gguf_rwkv.rs` maps them
    /// to the official ones).
    fn open_gguf(path: &Path, file: std::fs::File) -> Result<Self, LoadError> {
        // SAFETY: as for safetensors above: only read, values copied out.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_gguf_buffer(Arc::new(map), path, true)
    }

    /// A GGUF file already in memory (a browser upload), with the names it stores; `label`
    /// names it in errors.
    pub(super) fn read_gguf_bytes(
        bytes: impl AsRef<[u8]> + Send + Sync + 'static,
        label: &Path,
    ) -> Result<Self, LoadError> {
        Self::from_gguf_buffer(Arc::new(bytes), label, false)
    }

    fn from_gguf_buffer(buffer: Buffer, path: &Path, file: bool) -> Result<Self, LoadError> {
        let gguf = Gguf::parse((*buffer).as_ref(), path)?;
        let entries = gguf
            .tensors
            .iter()
            .map(|t| {
                let bytes = Source::Mapped {
                    map: buffer.clone(),
                    start: t.start,
                    end: t.end,
                    file,
                };
                let (dtype, source) = match t.kind {
                    GgmlType::F32 => (Ok(SourceDType::F32), bytes),
                    GgmlType::F16 => (Ok(SourceDType::F16), bytes),
                    GgmlType::Bf16 => (Ok(SourceDType::BF16), bytes),
                    GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
                        let kind = t.kind.k_quant().expect("a K type");
                        let source = Source::KQuant {
                            kind,
                            bytes: Box::new(bytes),
                        };
                        (Err(t.kind.name().to_lowercase()), source)
                    }
                    GgmlType::Q8_0 | GgmlType::Q4_0 => {
                        let format = if t.kind == GgmlType::Q8_0 {
                            WeightFormat::Q8
                        } else {
                            WeightFormat::Q4
                        };
                        let source = Source::Interleaved {
                            format,
                            bytes: Box::new(bytes),
                        };
                        (Err(format.to_string()), source)
                    }
                };
                let entry = Entry {
                    shape: t.shape(),
                    dtype,
                    source,
                };
                (t.name.clone(), entry)
            })
            .collect();
        Ok(Self {
            gguf: Some(Box::new(gguf)),
            ..Self::from_entries(path, Format::Gguf, entries)
        })
    }

    /// The tensors, by name, for a layout's mapping to take apart (`hf.rs`, `gguf_rwkv.rs`).
    pub(super) fn take_entries(&mut self) -> BTreeMap<String, Entry> {
        std::mem::take(&mut self.entries)
    }

    /// Puts tensors (back) in.
    pub(super) fn set_entries(&mut self, entries: BTreeMap<String, Entry>) {
        self.entries = entries;
    }

    /// A GGUF file's header and metadata.
    pub fn gguf(&self) -> Option<&Gguf> {
        self.gguf.as_deref()
    }

    /// The vocabulary file a model folder ships, if any.
    pub fn vocab_file(&self) -> Option<&Path> {
        self.vocab_file.as_deref()
    }

    pub(super) fn set_vocab_file(&mut self, path: Option<PathBuf>) {
        self.vocab_file = path;
    }

    /// The same checkpoint, built even when it holds tensors the model does not read (by
    /// default refused: a variant we do not know, or adapters left unmerged, would otherwise
    /// run with those tensors ignored and give wrong logits silently).
    pub fn allow_unused(mut self) -> Self {
        self.check_unused = false;
        self
    }

    fn open_safetensors(path: &Path, file: std::fs::File) -> Result<Self, LoadError> {
        // SAFETY: the map is only read; a file changed underneath us while loading yields
        // wrong values, never memory unsafety in this code (we copy out of the map).
        let map = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_safetensors_buffer(Arc::new(map), path, true)
    }

    /// A safetensors file already in memory (an embedded model, a browser upload), with the
    /// names it stores; `label` names it in errors.
    pub fn read_safetensors_bytes(
        bytes: impl AsRef<[u8]> + Send + Sync + 'static,
        label: impl AsRef<Path>,
    ) -> Result<Self, LoadError> {
        Self::from_safetensors_buffer(Arc::new(bytes), label.as_ref(), false)
    }

    fn from_safetensors_buffer(buffer: Buffer, path: &Path, file: bool) -> Result<Self, LoadError> {
        Self::from_safetensors_buffers(vec![buffer], path, file)
    }

    /// A safetensors file in memory in consecutive parts (a browser page's download, split at
    /// tensor boundaries so that no allocation passes wasm32's 2 GiB), with the names it
    /// stores; `label` names it in errors. The header must lie in the first part. A tensor
    /// inside one part is read in place; one across parts (only if the split was not at
    /// tensor boundaries) is copied out whole.
    pub(super) fn read_safetensors_parts(
        parts: Vec<Vec<u8>>,
        label: &Path,
    ) -> Result<Self, LoadError> {
        let parts = parts.into_iter().map(|p| Arc::new(p) as Buffer).collect();
        Self::from_safetensors_buffers(parts, label, false)
    }

    fn from_safetensors_buffers(
        parts: Vec<Buffer>,
        path: &Path,
        file: bool,
    ) -> Result<Self, LoadError> {
        let bytes = |b: &Buffer| -> usize { (**b).as_ref().len() };
        let total: u64 = parts.iter().map(|p| bytes(p) as u64).sum();
        let head: &[u8] = parts.first().map_or(&[], |p| (**p).as_ref());
        if total < 9 {
            return Err(LoadError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: "too short for safetensors".into(),
            });
        }
        use super::safetensors_header::{HeaderError, read};
        let tensors = read(head, total).map_err(|e| match e {
            HeaderError::Truncated(detail) => LoadError::Truncated {
                path: path.to_path_buf(),
                detail,
            },
            HeaderError::Invalid(e) => LoadError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: format!("invalid safetensors header: {e}"),
            },
        })?;
        // Where each part starts in the file.
        let starts: Vec<usize> = parts
            .iter()
            .scan(0, |at, p| {
                let start = *at;
                *at += bytes(p);
                Some(start)
            })
            .collect();
        let entries = tensors
            .into_iter()
            .map(|t| {
                let (start, end) = (t.range.start, t.range.end);
                let i = starts.partition_point(|&s| s <= start).saturating_sub(1);
                let source = if end <= starts[i] + bytes(&parts[i]) {
                    Source::Mapped {
                        map: parts[i].clone(),
                        start: start - starts[i],
                        end: end - starts[i],
                        file,
                    }
                } else {
                    let mut copy = Vec::with_capacity(end - start);
                    for (part, &at) in parts.iter().zip(&starts).skip(i) {
                        if at >= end {
                            break;
                        }
                        let part: &[u8] = (**part).as_ref();
                        let from = start.max(at) - at;
                        let to = end.min(at + part.len()) - at;
                        copy.extend_from_slice(&part[from..to]);
                    }
                    Source::Mapped {
                        map: Arc::new(copy),
                        start: 0,
                        end: end - start,
                        file: false,
                    }
                };
                let entry = Entry {
                    shape: t.shape,
                    dtype: SourceDType::from_safetensors(t.dtype)
                        .ok_or_else(|| format!("{:?}", t.dtype)),
                    source,
                };
                (t.name, entry)
            })
            .collect();
        let entries = fold_blocks(strip_wrapper_prefix(entries)).map_err(|(name, detail)| {
            LoadError::BadBlocks {
                path: path.to_path_buf(),
                name,
                detail,
            }
        })?;
        Ok(Self::from_entries(path, Format::Safetensors, entries))
    }

    fn open_pth(path: &Path) -> Result<Self, LoadError> {
        let reader =
            pytorch_reader::PytorchReader::new(path).map_err(|e| LoadError::Truncated {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        let entries = reader
            .into_tensors()
            .into_iter()
            .map(|(name, tensor)| {
                let entry = Entry {
                    shape: tensor.shape().to_vec(),
                    dtype: SourceDType::from_pytorch(tensor.dtype())
                        .ok_or_else(|| format!("{:?}", tensor.dtype())),
                    source: Source::Pth(tensor),
                };
                (name, entry)
            })
            .collect();
        Ok(Self::from_entries(
            path,
            Format::Pth,
            strip_wrapper_prefix(entries),
        ))
    }

    /// A `.pth` file already in memory (a browser upload), with the names it stores;
    /// `label` names it in errors. Only the zip archive `torch.save` has written since
    /// PyTorch 1.6 is read from memory (`torch_zip.rs`); the legacy pickle stream needs the
    /// desktop reader.
    pub(super) fn read_pth_bytes(
        bytes: impl AsRef<[u8]> + Send + Sync + 'static,
        label: &Path,
    ) -> Result<Self, LoadError> {
        let buffer: Buffer = Arc::new(bytes);
        let data: &[u8] = (*buffer).as_ref();
        if !data.starts_with(ZIP_MAGIC) {
            return Err(LoadError::NotACheckpoint {
                path: label.to_path_buf(),
                reason: "a PyTorch file in the legacy format (before PyTorch 1.6), which is \
                         read from files only: convert it with `rwkv convert` first"
                    .into(),
            });
        }
        let tensors = super::torch_zip::read(data).map_err(|detail| LoadError::Truncated {
            path: label.to_path_buf(),
            detail,
        })?;
        let entries = tensors
            .into_iter()
            .map(|t| {
                let source = match t.bytes {
                    super::torch_zip::TensorBytes::InArchive(range) => Source::Mapped {
                        map: buffer.clone(),
                        start: range.start,
                        end: range.end,
                        file: false,
                    },
                    super::torch_zip::TensorBytes::Gathered(bytes) => {
                        let end = bytes.len();
                        Source::Mapped {
                            map: Arc::new(bytes),
                            start: 0,
                            end,
                            file: false,
                        }
                    }
                };
                let entry = Entry {
                    shape: t.shape,
                    dtype: t.dtype,
                    source,
                };
                (t.name, entry)
            })
            .collect();
        Ok(Self::from_entries(
            label,
            Format::Pth,
            strip_wrapper_prefix(entries),
        ))
    }

    pub(super) fn with_format(mut self, format: Format, path: &Path) -> Self {
        self.format = format;
        self.path = path.to_path_buf();
        self
    }

    /// The same tensors under the names `rename` gives them.
    pub(super) fn renamed(mut self, rename: impl Fn(&str) -> String) -> Self {
        self.entries = std::mem::take(&mut self.entries)
            .into_iter()
            .map(|(name, entry)| (rename(&name), entry))
            .collect();
        self
    }

    /// Makes `alias` another name for `name` (tied weights); false if `name` is absent.
    pub(super) fn alias(&mut self, name: &str, alias: &str) -> bool {
        match self.entries.get(name).cloned() {
            Some(entry) => {
                self.entries.insert(alias.to_string(), entry);
                true
            }
            None => false,
        }
    }

    /// The same checkpoint, built without the NaN/Inf check on its weights (for inspecting a
    /// damaged model; its logits will be NaN wherever the bad values reach).
    pub fn allow_non_finite(mut self) -> Self {
        self.check_finite = false;
        self
    }

    /// Reads every floating-point tensor and reports the first that holds a NaN or an
    /// infinity, as [`LoadError::NonFinite`]: the check building runs, for tools that
    /// inspect a checkpoint without building it (`rwkv info`). `progress` hears the number
    /// of tensors read.
    pub fn check_finite(&self, progress: &mut dyn FnMut(usize)) -> Result<(), LoadError> {
        for (done, name) in self.entries.keys().enumerate() {
            if self.entries[name].dtype.is_ok() {
                let values = self.read(name)?.into_f32();
                if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                    return Err(LoadError::NonFinite {
                        path: self.path.clone(),
                        name: name.clone(),
                        index,
                        value: values[index],
                    });
                }
            }
            progress(done + 1);
        }
        Ok(())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Tensor names, in the official RWKV naming, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The stored element types, e.g. `"bf16"` or `"f32, f16"`.
    pub fn dtypes(&self) -> String {
        let mut names: Vec<String> = self
            .entries
            .values()
            .map(|e| match &e.dtype {
                Ok(d) => format!("{d:?}").to_lowercase(),
                Err(other) => other.to_lowercase(),
            })
            .collect();
        names.sort();
        names.dedup();
        names.join(", ")
    }

    /// The stored element type of a tensor, if present and floating point.
    pub fn stored_dtype(&self, name: &str) -> Option<SourceDType> {
        self.entries.get(name).and_then(|e| e.dtype.clone().ok())
    }

    /// How a tensor is stored, as `rwkv info` reports it: its block format (`q8`, `q4`) or
    /// element type (`f32`, `bf16`, ...), and its bytes in the file (levels and scales for
    /// block formats; `None` for a non-float type, whose size this reader does not know).
    pub fn stored_as(&self, name: &str) -> Option<(String, Option<u64>)> {
        self.entries.get(name).map(stored_as)
    }

    /// Whether a tensor is stored in a type no format of ours holds (GGUF's K quantizations),
    /// so that reading it dequantizes to f32.
    pub fn dequantized_on_read(&self, name: &str) -> bool {
        fn of(source: &Source) -> bool {
            match source {
                Source::KQuant { .. } => true,
                Source::Rearranged { stored, .. } => of(&stored.source),
                _ => false,
            }
        }
        self.entries.get(name).is_some_and(|e| of(&e.source))
    }

    /// The block format a tensor is stored in (files `rwkv quantize` wrote), if any.
    pub fn block_format(&self, name: &str) -> Option<WeightFormat> {
        fn of(source: &Source) -> Option<WeightFormat> {
            match source {
                Source::Blocks { format, .. } | Source::Interleaved { format, .. } => Some(*format),
                Source::Rearranged {
                    stored,
                    op: Rearrange::Scale(_),
                } => of(&stored.source),
                _ => None,
            }
        }
        of(&self.entries.get(name)?.source)
    }

    /// Shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// A tensor's stored shape and values, in the stored element type (borrowed from the
    /// memory map for safetensors files).
    pub fn read(&self, name: &str) -> Result<StoredTensor<'_>, LoadError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        Ok(StoredTensor {
            shape: entry.shape.clone(),
            data: self.data(name, entry)?,
        })
    }

    /// The values of `entry` (tensor `name`), in the stored element type where nothing
    /// rearranges them.
    fn data<'s>(&'s self, name: &str, entry: &'s Entry) -> Result<StoredData<'s>, LoadError> {
        let bytes = match &entry.source {
            Source::Blocks {
                format,
                levels,
                scales,
            } => {
                return Ok(StoredData::Blocks {
                    format: *format,
                    levels: Cow::Borrowed(mapped(levels)),
                    scales: Cow::Borrowed(mapped(scales)),
                });
            }
            Source::Interleaved { format, bytes } => {
                let (levels, scales) = deinterleave(*format, mapped(bytes));
                return Ok(StoredData::Blocks {
                    format: *format,
                    levels: Cow::Owned(levels),
                    scales: Cow::Owned(scales),
                });
            }
            Source::Rearranged { stored, op } => {
                let data = self.data(name, stored)?;
                return Ok(rearrange(data, &stored.shape, *op));
            }
            Source::KQuant { kind, bytes } => {
                return Ok(StoredData::F32(kind.dequantize(mapped(bytes))));
            }
            Source::Mapped { .. } => Cow::Borrowed(mapped(&entry.source)),
            Source::Pth(tensor) => Cow::Owned(tensor.read().map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => {
                    LoadError::Truncated {
                        path: self.path.clone(),
                        detail: e.to_string(),
                    }
                }
                _ => LoadError::Io {
                    path: self.path.clone(),
                    source: e,
                },
            })?),
        };
        let dtype = entry
            .dtype
            .clone()
            .map_err(|dtype| LoadError::UnsupportedDType {
                path: self.path.clone(),
                name: name.to_string(),
                dtype,
            })?;
        let want = entry
            .shape
            .iter()
            .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
            .ok_or_else(|| LoadError::Truncated {
                path: self.path.clone(),
                detail: format!("tensor '{name}' has an impossible shape {:?}", entry.shape),
            })?;
        self.check_len(name, bytes.len(), want)?;
        Ok(StoredData::Bytes { dtype, bytes })
    }

    /// Reads a tensor as f32 values (row-major) and its shape, converting f16/bf16/f64.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let tensor = self.read(name)?;
        let shape = tensor.shape.clone();
        Ok((tensor.into_f32(), shape))
    }

    fn check_len(&self, name: &str, got: usize, want: usize) -> Result<(), LoadError> {
        if got == want {
            Ok(())
        } else {
            Err(LoadError::Truncated {
                path: self.path.clone(),
                detail: format!("tensor '{name}' has {got} bytes, its shape needs {want}"),
            })
        }
    }
}

impl TensorIndex for Checkpoint {
    fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(Checkpoint::names(self))
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        Checkpoint::shape(self, name)
    }
}

impl WeightSource for Checkpoint {
    fn path(&self) -> &Path {
        &self.path
    }

    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn checks_finite(&self) -> bool {
        self.check_finite
    }

    fn listed(&self) -> Option<Vec<&str>> {
        self.check_unused.then(|| Checkpoint::names(self).collect())
    }

    fn read(&self, name: &str, _: &[usize], _: Role) -> Result<StoredTensor<'_>, LoadError> {
        Checkpoint::read(self, name)
    }

    fn release(&self, name: &str) {
        if let Some(entry) = self.entries.get(name) {
            release(&entry.source);
        }
    }
}

/// The bytes of a tensor of a mapped file.
fn mapped(source: &Source) -> &[u8] {
    match source {
        Source::Mapped {
            map, start, end, ..
        } => &(**map).as_ref()[*start..*end],
        _ => &[],
    }
}

/// Tells Linux that a mapped file's tensor will not be read again, so that its pages leave
/// this process's resident set (they stay in the page cache). Without it, loading a model
/// touches every page of the file and the peak RSS is the file plus the model built from it:
/// measured on a bf16 7-0.1b-shape file (RESULTS in the closing note of issue 17).
fn release(source: &Source) {
    match source {
        #[cfg(target_os = "linux")]
        Source::Mapped {
            map,
            start,
            end,
            file: true,
        } => {
            const PAGE: usize = 4096;
            let base = (**map).as_ref().as_ptr() as usize;
            let (first, last) = (
                (base + start).next_multiple_of(PAGE),
                (base + end) / PAGE * PAGE,
            );
            if last > first {
                // SAFETY: the range lies inside a read-only file mapping that stays mapped;
                // MADV_DONTNEED on it drops resident pages, which later reads fault back in from
                // the file unchanged. No reference into these bytes outlives the caller's use.
                unsafe {
                    libc::madvise(
                        first as *mut libc::c_void,
                        last - first,
                        libc::MADV_DONTNEED,
                    );
                }
            }
        }
        Source::Blocks { levels, scales, .. } => {
            release(levels);
            release(scales);
        }
        Source::Interleaved { bytes, .. } | Source::KQuant { bytes, .. } => release(bytes),
        Source::Rearranged { stored, .. } => release(&stored.source),
        _ => {}
    }
}

/// How a tensor is stored, as [`Checkpoint::stored_as`] reports it (a rearranged one as
/// its file stores it).
fn stored_as(entry: &Entry) -> (String, Option<u64>) {
    let elements: usize = entry.shape.iter().product();
    match (&entry.source, &entry.dtype) {
        (Source::Interleaved { format, bytes }, _) => {
            (format.to_string(), Some(mapped(bytes).len() as u64))
        }
        (Source::Rearranged { stored, .. }, _) => stored_as(stored),
        (Source::KQuant { bytes, .. }, Err(name)) => {
            (name.clone(), Some(mapped(bytes).len() as u64))
        }
        (Source::Blocks { format, .. }, _) => {
            let cols = entry.shape.last().copied().unwrap_or(0);
            let rows = elements.checked_div(cols).unwrap_or(0);
            (
                format.to_string(),
                Some((format.row_bytes(cols) * rows) as u64),
            )
        }
        (_, Ok(dtype)) => (
            format!("{dtype:?}").to_lowercase(),
            Some((elements * dtype.size()) as u64),
        ),
        (_, Err(other)) => (other.to_lowercase(), None),
    }
}

/// ggml's interleaved Q8_0/Q4_0 blocks (an f16 scale, then the block's levels) as the two
/// planes of [`StoredData::Blocks`]: levels, then little-endian f16 scales. The length was
/// checked when the file was opened (whole blocks).
fn deinterleave(format: WeightFormat, bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let level_bytes = format.level_bytes(BLOCK);
    let blocks = bytes.len() / (2 + level_bytes);
    let mut levels = Vec::with_capacity(blocks * level_bytes);
    let mut scales = Vec::with_capacity(blocks * 2);
    for block in bytes.chunks_exact(2 + level_bytes) {
        scales.extend_from_slice(&block[..2]);
        levels.extend_from_slice(&block[2..]);
    }
    (levels, scales)
}

/// The values of a tensor stored in `shape`, rearranged by `op` (see [`Rearrange`]).
fn rearrange<'s>(data: StoredData<'s>, shape: &[usize], op: Rearrange) -> StoredData<'s> {
    if let (
        Rearrange::Scale(factor),
        StoredData::Blocks {
            format,
            levels,
            scales,
        },
    ) = (op, &data)
    {
        // A power of two times an f16 scale is exact (short of overflow, which a trained
        // model's scales are far from).
        let scales = scales
            .chunks_exact(2)
            .flat_map(|c| {
                let d = half::f16::from_le_bytes([c[0], c[1]]).to_f32() * factor;
                half::f16::from_f32(d).to_le_bytes()
            })
            .collect();
        return StoredData::Blocks {
            format: *format,
            levels: levels.clone(),
            scales: Cow::Owned(scales),
        };
    }
    let values = StoredTensor {
        shape: shape.to_vec(),
        data,
    }
    .into_f32();
    StoredData::F32(match op {
        Rearrange::Transpose => {
            let n = shape.len();
            let (rows, cols) = (shape[n - 2], shape[n - 1]);
            if rows * cols == 0 {
                return StoredData::F32(Vec::new());
            }
            let mut out = vec![0f32; values.len()];
            for (b, matrix) in values.chunks_exact(rows * cols).enumerate() {
                let target = &mut out[b * rows * cols..(b + 1) * rows * cols];
                for (r, row) in matrix.chunks_exact(cols).enumerate() {
                    for (c, v) in row.iter().enumerate() {
                        target[c * rows + r] = *v;
                    }
                }
            }
            out
        }
        Rearrange::Part { index, count } => {
            let part = values.len() / count;
            values[index * part..(index + 1) * part].to_vec()
        }
        Rearrange::Scale(factor) => values.iter().map(|v| v * factor).collect(),
    })
}

/// Joins each matrix that `rwkv quantize` stored in a block format, `NAME.q8` (I8 `[out, in]`)
/// or `NAME.q4` (U8 `[out, in / 2]`, two levels a byte as ggml's Q4_0) beside
/// `NAME.{q8,q4}_scales` (F16 `[out, in / 32]`), into one tensor `NAME` of shape
/// `[out, in]`, so that everything above reads it like any other weight. A half without
/// the other, or halves whose types and shapes disagree, is `(name, what is wrong)`.
fn fold_blocks(
    mut entries: BTreeMap<String, Entry>,
) -> Result<BTreeMap<String, Entry>, (String, String)> {
    for format in [WeightFormat::Q8, WeightFormat::Q4] {
        let suffix = format!(".{format}");
        let scale_suffix = format!(".{format}_scales");
        let names: Vec<String> = entries
            .keys()
            .filter(|n| n.ends_with(&suffix))
            .cloned()
            .collect();
        for name in names {
            let base = name.strip_suffix(&suffix).expect("filtered");
            let base = base.to_string();
            let levels = entries.remove(&name).expect("listed");
            let scales = entries
                .remove(&format!("{base}{scale_suffix}"))
                .ok_or_else(|| {
                    (
                        name.clone(),
                        format!("{format} levels without their scales"),
                    )
                })?;
            let bad = |detail: String| (name.clone(), detail);
            let level_dtype = if format == WeightFormat::Q8 {
                "I8"
            } else {
                "U8"
            };
            if levels.dtype.as_ref().err().map(String::as_str) != Some(level_dtype)
                || scales.dtype != Ok(SourceDType::F16)
            {
                return Err(bad(format!(
                    "{format} levels must be {level_dtype} and scales F16"
                )));
            }
            let (&[out, stored_in], &[scale_out, blocks]) =
                (levels.shape.as_slice(), scales.shape.as_slice())
            else {
                return Err(bad("levels and scales must be matrices".into()));
            };
            let input = if format == WeightFormat::Q8 {
                stored_in
            } else {
                stored_in.saturating_mul(2)
            };
            if scale_out != out || blocks.checked_mul(BLOCK) != Some(input) || input == 0 {
                return Err(bad(format!(
                    "levels {:?} and scales {:?} do not describe one matrix of {BLOCK}-value blocks",
                    levels.shape, scales.shape
                )));
            }
            if entries.contains_key(&base) {
                return Err(bad(format!(
                    "'{base}' is stored both plain and as {format}"
                )));
            }
            entries.insert(
                base,
                Entry {
                    shape: vec![out, input],
                    dtype: Err(format.to_string()),
                    source: Source::Blocks {
                        format,
                        levels: Box::new(levels.source),
                        scales: Box::new(scales.source),
                    },
                },
            );
        }
        if let Some(name) = entries.keys().find(|n| n.ends_with(&scale_suffix)) {
            return Err((
                name.clone(),
                format!("scales without their {format} levels"),
            ));
        }
    }
    Ok(entries)
}

/// Training frameworks sometimes save the model under a wrapper (`module.` from
/// DataParallel/DeepSpeed, `state_dict.` from a checkpoint dict); drop it when every key has it.
fn strip_wrapper_prefix(entries: BTreeMap<String, Entry>) -> BTreeMap<String, Entry> {
    for prefix in ["state_dict.", "module.", "_forward_module."] {
        if !entries.is_empty() && entries.keys().all(|k| k.starts_with(prefix)) {
            let stripped = entries
                .into_iter()
                .map(|(k, v)| (k[prefix.len()..].to_string(), v))
                .collect();
            return strip_wrapper_prefix(stripped);
        }
    }
    entries
}

/// The format of a weights file from its first bytes (at least 9 for safetensors) and, when
/// known, its length: [`Format::Safetensors`], [`Format::Pth`] (zip or legacy pickle),
/// [`Format::Gguf`], or `None`.
///
/// The first byte of safetensors is the low byte of its header length, which is 0x80,
/// pickle's protocol opcode, for one header length in 256: a file that could be either is
/// safetensors when its header length fits in the file. Otherwise a `{` at byte 8 means
/// safetensors (truncated ones included, so that loading reports the truncation).
pub fn sniff(head: &[u8], len: Option<u64>) -> Option<Format> {
    if head.starts_with(super::gguf::MAGIC) {
        return Some(Format::Gguf);
    }
    let pth = head.starts_with(ZIP_MAGIC) || head.first() == Some(&PICKLE_PROTO);
    if head.len() >= 9 && head[8] == b'{' {
        let header = u64::from_le_bytes(head[..8].try_into().expect("eight bytes"));
        if !pth || len.is_none_or(|len| header.saturating_add(8) <= len) {
            return Some(Format::Safetensors);
        }
    }
    pth.then_some(Format::Pth)
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors_io::{NamedTensor, write};
    use burn::tensor::TensorData;

    /// A safetensors header whose length ends in the byte 0x80 (pickle's protocol opcode) is
    /// still read as safetensors.
    #[test]
    fn a_header_length_ending_in_0x80_is_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let mut found = false;
        for pad in 0..256 {
            let name = format!("blocks.0.att.x_{}", "r".repeat(pad));
            let data = TensorData::new(vec![1.5f32, -2.0], [1, 1, 2]);
            write(&path, &[NamedTensor::new(name.clone(), data)]).unwrap();
            if std::fs::read(&path).unwrap()[0] != 0x80 {
                continue;
            }
            found = true;
            let checkpoint = Checkpoint::open_file(&path).unwrap();
            assert_eq!(checkpoint.format(), Format::Safetensors);
            let (values, shape) = checkpoint.read_f32(&name).unwrap();
            assert_eq!((values, shape), (vec![1.5, -2.0], vec![1, 1, 2]));
            break;
        }
        assert!(found, "no name length gave a header length ending in 0x80");
    }

    #[test]
    fn sniffs_pytorch_files_and_refuses_the_rest() {
        assert_eq!(sniff(b"PK\x03\x04\0\0\0\0\0", Some(100)), Some(Format::Pth));
        assert_eq!(
            sniff(&[0x80, 2, 0x8a, 10, 0, 0, 0, 0, 0], None),
            Some(Format::Pth)
        );
        // Truncated safetensors is still safetensors, unless it could be a pickle.
        let safetensors = Some(Format::Safetensors);
        assert_eq!(sniff(b"\x40\0\0\0\0\0\0\0{", Some(20)), safetensors);
        assert_eq!(sniff(b"\x80\0\0\0\0\0\0\0{", Some(200)), safetensors);
        assert_eq!(sniff(b"\x80\0\0\0\0\0\0\0{", Some(20)), Some(Format::Pth));
        assert_eq!(sniff(b"hello", None), None);
    }
}
