//! Loading checkpoints: official `.pth`, official-name safetensors and Hugging Face folders.
//!
//! The format, the version and every dimension are detected from the file. Files are read
//! tensor by tensor (safetensors through a memory map). `checkpoint.rs` reads containers,
//! `hf.rs` Hugging Face folders and names; this module opens whichever a path holds.

mod checkpoint;
pub mod hf;

pub use crate::model::{detect_config, detect_version, read_config};
pub use crate::weights::LoadError;
pub use checkpoint::{Checkpoint, Format, sniff};

use crate::config::RwkvConfig;
use crate::model::{Rwkv, build, build_named};
use crate::weights::ParamNames;
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
        Ok(hf::official_names(Self::open_file(path)?))
    }

    /// A safetensors checkpoint already in memory (an embedded model, a browser upload), in
    /// the official naming; `label` names it in errors.
    pub fn from_safetensors_bytes(
        bytes: impl AsRef<[u8]> + Send + Sync + 'static,
        label: impl AsRef<Path>,
    ) -> Result<Self, LoadError> {
        Ok(hf::official_names(Self::read_safetensors_bytes(
            bytes, label,
        )?))
    }
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

/// Builds the model of an already opened checkpoint.
pub fn load_checkpoint(
    checkpoint: &Checkpoint,
    device: &Device,
) -> Result<(RwkvConfig, Rwkv), LoadError> {
    let config = detect_config(checkpoint)?;
    let model = build(checkpoint, &config, device)?;
    Ok((config, model))
}
