//! Loading checkpoints: official `.pth`, official-name safetensors and Hugging Face folders.
//!
//! The format, the version and every dimension are detected from the file. Files are read
//! tensor by tensor (safetensors through a memory map), converting f16/bf16/f64 to f32.

mod build;
mod checkpoint;
mod detect;
pub mod dtype;
mod error;
pub mod hf;

pub use build::{Layout, NamedParam, ParamNames, Role, WeightSource, build, build_named};
pub use checkpoint::{Checkpoint, Format, sniff};
pub use detect::{count_layers, detect_config, detect_version};
pub use error::LoadError;

use crate::config::RwkvConfig;
use crate::model::Rwkv;
use burn::tensor::Device;
use std::path::Path;

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
