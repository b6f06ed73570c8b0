//! Loading checkpoints: official `.pth`, official-name safetensors, Hugging Face folders
//! (RWKV-4 transformers, RWKV-7 fla-hub and rwkv7-hf layouts, sharded or not) and llama.cpp's
//! GGUF (RWKV-6, RWKV-7).
//!
//! The format, the version and every dimension are detected from the file. Files are read
//! tensor by tensor (safetensors and GGUF through a memory map). `checkpoint.rs` reads
//! containers, `gguf.rs` GGUF's header; `hf.rs` and `gguf_rwkv.rs` hold those layouts' naming
//! tables, which `layout.rs` applies; this module opens whichever a path holds.

mod checkpoint;
pub mod gguf;
pub mod gguf_rwkv;
pub mod hf;
pub mod kquants;
mod layout;
mod pickle;
mod safetensors_header;
mod torch_zip;

pub use crate::model::{detect_config, detect_version, read_config};
pub use crate::weights::LoadError;
pub use checkpoint::{Checkpoint, Format, sniff};

use crate::config::RwkvConfig;
use crate::dtype::SourceDType;
use crate::model::{Rwkv, build, build_named, build_with};
use crate::weights::{ParamNames, WeightFormat};
use burn::tensor::Device;
use std::path::Path;

impl Checkpoint {
    /// Opens a `.pth` file, a safetensors file or a Hugging Face folder, in the official
    /// naming. The format is recognised from the content, not the file name.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound {
                path: path.to_path_buf(),
            },
            _ => LoadError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        if meta.is_dir() {
            return hf::open_folder(path);
        }
        if !meta.is_file() {
            // A fifo or a device would be read until it ends, if it ever does.
            return Err(LoadError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: "not a regular file or a folder".into(),
            });
        }
        let checkpoint = Self::open_file(path)?;
        match checkpoint.format() {
            Format::Gguf => gguf_rwkv::official(checkpoint),
            _ => hf::official_names(checkpoint),
        }
    }

    /// The tokenizer the checkpoint ships: a model folder's vocabulary file, or a GGUF
    /// file's World vocabulary; `None` when it has none (choose by vocabulary size then).
    pub fn tokenizer(
        &self,
    ) -> Result<Option<Box<dyn crate::tokenizer::Tokenizer>>, crate::tokenizer::TokenizerError>
    {
        if let Some(file) = self.vocab_file() {
            return crate::tokenizer::load_tokenizer(file).map(Some);
        }
        let Some(vocab) = self.gguf().and_then(gguf_rwkv::world_vocab) else {
            return Ok(None);
        };
        let tokens = vocab.map_err(|message| crate::tokenizer::TokenizerError::Vocab {
            path: self.path().to_path_buf(),
            line: 0,
            message: format!("GGUF vocabulary: {message}"),
        })?;
        crate::tokenizer::WorldTokenizer::from_tokens(tokens, self.path())
            .map(|t| Some(Box::new(t) as Box<dyn crate::tokenizer::Tokenizer>))
    }

    /// A GGUF file already in memory (a browser upload), in the official naming, as
    /// [`Checkpoint::open`] reads one from disk; `label` names it in errors.
    pub fn from_gguf_bytes(
        bytes: impl AsRef<[u8]> + Send + Sync + 'static,
        label: impl AsRef<Path>,
    ) -> Result<Self, LoadError> {
        gguf_rwkv::official(Self::read_gguf_bytes(bytes, label.as_ref())?)
    }

    /// A safetensors checkpoint in memory in consecutive parts (a browser page holds a file
    /// over 2 GiB so: one allocation on wasm32 is at most that), in the official naming, as
    /// [`Checkpoint::from_safetensors_bytes`] reads it whole; `label` names it in errors.
    /// Parts split at tensor boundaries are read in place.
    pub fn from_safetensors_parts(
        parts: Vec<Vec<u8>>,
        label: impl AsRef<Path>,
    ) -> Result<Self, LoadError> {
        hf::official_names(Self::read_safetensors_parts(parts, label.as_ref())?)
    }

    /// A `.pth` checkpoint (`torch.save`'s zip archive) already in memory (a browser
    /// upload), in the official naming, as [`Checkpoint::open`] reads one from disk; `label`
    /// names it in errors. Contiguous tensors are read in place, not copied.
    pub fn from_pth_bytes(
        bytes: impl AsRef<[u8]> + Send + Sync + 'static,
        label: impl AsRef<Path>,
    ) -> Result<Self, LoadError> {
        hf::official_names(Self::read_pth_bytes(bytes, label.as_ref())?)
    }

    /// A safetensors checkpoint already in memory (an embedded model, a browser upload), in
    /// the official naming; `label` names it in errors.
    pub fn from_safetensors_bytes(
        bytes: impl AsRef<[u8]> + Send + Sync + 'static,
        label: impl AsRef<Path>,
    ) -> Result<Self, LoadError> {
        hf::official_names(Self::read_safetensors_bytes(bytes, label)?)
    }
}

/// Where to cut a safetensors file of `file_len` bytes into parts of about `part_bytes`
/// without cutting a tensor, for [`Checkpoint::from_safetensors_parts`]: each part's end in
/// the file, the last `file_len`. `head` is the file's start as far as it has arrived, and
/// must hold the header; the first part ends past it. `None` when the header cannot be read
/// (the file is then best read whole, where its error is reported).
pub fn safetensors_part_ends(head: &[u8], file_len: u64, part_bytes: u64) -> Option<Vec<u64>> {
    safetensors_header::part_ends(head, file_len, part_bytes)
}

/// Loads a model onto `device`, detecting format, version and dimensions.
pub fn load_model(
    path: impl AsRef<Path>,
    device: &Device,
) -> Result<(RwkvConfig, Rwkv), LoadError> {
    let checkpoint = Checkpoint::open(path)?;
    load_checkpoint(&checkpoint, device)
}

/// Like [`load_model`], also returning the official name of every parameter (for gradients
/// and export).
pub fn load_model_named(
    path: impl AsRef<Path>,
    device: &Device,
) -> Result<(RwkvConfig, Rwkv, ParamNames), LoadError> {
    let checkpoint = Checkpoint::open(path)?;
    let config = detect_config(&checkpoint)?;
    let (model, names) = build_named(&checkpoint, &config, device)?;
    Ok((config, model, names))
}

/// Like [`load_model`], holding the projection matrices in `format` (see [`WeightFormat`]):
/// bf16, f16, 8-bit or 4-bit blocks on flex, whose CPU kernels read them; on other devices
/// the model computes in f32 with the format's values (same results, no memory saving).
/// [`default_format`] picks the checkpoint's own precision.
pub fn load_model_with(
    path: impl AsRef<Path>,
    device: &Device,
    format: WeightFormat,
) -> Result<(RwkvConfig, Rwkv), LoadError> {
    let checkpoint = Checkpoint::open(path)?;
    let config = detect_config(&checkpoint)?;
    let (model, _) = build_with(&checkpoint, &config, device, format)?;
    Ok((config, model))
}

/// The precision a checkpoint stores its projections in (its first block's first
/// projection, and the head): bf16 or f16 where both are; q8 or q4 where the block's is (a
/// file `rwkv quantize` wrote, a GGUF Q8_0/Q4_0 file); q8 for GGUF's K quantizations, which
/// no format of ours holds (dequantized at load, then 8-bit blocks: at 8.5 bits a weight
/// against their 4.5-6.6, the re-quantization error is far below theirs, where f32 would take
/// 32 bits); else f32. What an inference command runs by default, so that an official bf16
/// release runs in bf16 and a quantized file as it is.
pub fn stored_format(checkpoint: &Checkpoint) -> WeightFormat {
    let probe = checkpoint
        .names()
        .filter(|n| n.starts_with("blocks.0.") && n.ends_with(".weight"))
        .find(|n| checkpoint.shape(n).is_some_and(|s| s.len() == 2));
    if let Some(format) = probe.and_then(|n| checkpoint.block_format(n)) {
        return format;
    }
    if probe.is_some_and(|n| checkpoint.dequantized_on_read(n)) {
        return WeightFormat::Q8;
    }
    let dtypes = [probe, Some("head.weight")].map(|n| n.and_then(|n| checkpoint.stored_dtype(n)));
    match dtypes {
        [Some(SourceDType::BF16), Some(SourceDType::BF16)] => WeightFormat::Bf16,
        [Some(SourceDType::F16), Some(SourceDType::F16)] => WeightFormat::F16,
        _ => WeightFormat::F32,
    }
}

/// Whether `device` holds projections in `format` itself (packed for the CPU kernels, 8-bit
/// blocks for the GPU kernels, or bf16/f16 tensors where the device has that element type)
/// rather than computing with f32 copies of the format's values.
pub fn holds_format(device: &Device, format: WeightFormat) -> bool {
    format == WeightFormat::F32
        || crate::cpu::holds_packed(device)
        || (format.is_block() && crate::gpu::runs_kernels(device))
        || crate::weights::holds_as_tensor(device, format)
}

/// Builds the model of an already opened checkpoint.
pub fn load_checkpoint(
    checkpoint: &Checkpoint,
    device: &Device,
) -> Result<(RwkvConfig, Rwkv), LoadError> {
    let config = detect_config(checkpoint)?;
    let model = build(checkpoint, &config, device)?;
    Ok((config, model))
}
