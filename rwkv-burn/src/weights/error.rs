//! What can go wrong when loading a checkpoint. Every error names the file.

use crate::config::Version;
use std::path::PathBuf;

/// A checkpoint could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Nothing at the path.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The operating system failed to read it.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a checkpoint in a format we read.
    #[error("{path}: not an RWKV checkpoint ({reason})")]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The file looks like a checkpoint but ends early or is damaged.
    #[error("{path}: the file is truncated or corrupt ({detail})")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// A tensor the model needs is absent.
    #[error("{path}: missing tensor '{name}'")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The official tensor name.
        name: String,
    },
    /// A tensor has a shape that does not fit the rest of the model.
    #[error("{path}: tensor '{name}' has shape {got:?}, expected {expected:?}")]
    WrongShape {
        /// The file.
        path: PathBuf,
        /// The official tensor name.
        name: String,
        /// Shape in the file.
        got: Vec<usize>,
        /// Shape the model needs.
        expected: Vec<usize>,
    },
    /// A tensor is stored in an element type we cannot convert.
    #[error("{path}: tensor '{name}' has unsupported element type {dtype}")]
    UnsupportedDType {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The stored type.
        dtype: String,
    },
    /// A recognised RWKV generation that this build cannot run yet.
    #[error(
        "{path}: {version} checkpoints are not supported by this build (supported: RWKV-4, RWKV-5.2, RWKV-6, RWKV-7)"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The detected version.
        version: Version,
    },
    /// The tensors do not form any RWKV model we know.
    #[error("{path}: unrecognised model layout ({detail})")]
    UnknownArchitecture {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A Hugging Face `config.json` that cannot be used.
    #[error("{path}: {detail}")]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The dimensions read off the tensors do not make a model that can run (a zero width,
    /// a zero adapter rank, a head size that does not divide the width, layers that
    /// disagree).
    #[error("{path}: unusable model dimensions: {detail}")]
    BadDimensions {
        /// The file.
        path: PathBuf,
        /// Which dimension, and why.
        detail: String,
    },
    /// A tensor is larger than the device can hold in one buffer
    /// ([`crate::device::max_buffer_bytes`]).
    #[error(
        "{path}: tensor '{name}' needs a buffer of {bytes} bytes, more than the device allows in one ({limit} bytes); run this model on a CPU device (flex) or a GPU with larger buffers"
    )]
    TooLargeForDevice {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Its size on the device.
        bytes: u64,
        /// The device's limit.
        limit: u64,
    },
    /// A weight is NaN or infinite: the model would produce NaN logits. Loading with the
    /// check off (`Checkpoint::allow_non_finite`) accepts it.
    #[error(
        "{path}: tensor '{name}' holds {value} at index {index}; a trained model has only finite weights (the file is damaged?)"
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Flat index of the first such value.
        index: usize,
        /// The value (NaN, inf or -inf).
        value: f32,
    },
    /// The file holds tensors the model did not read: a variant this build does not know
    /// (RWKV-7a/7b extras), adapters left unmerged, or a mix-up. Running without them would
    /// give wrong logits silently.
    #[error(
        "{path}: {} tensor(s) that this model does not use: {} (a newer RWKV variant, or LoRA adapters left unmerged?); \
         to run without them anyway, pass --allow-unused-tensors",
        names.len(),
        list_names(names)
    )]
    UnusedTensors {
        /// The file.
        path: PathBuf,
        /// Their names (official naming where the layout maps them).
        names: Vec<String>,
    },
    /// A matrix stored in a block format does not hold what its format needs.
    #[error("{path}: tensor '{name}': {detail}")]
    BadBlocks {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// What does not fit.
        detail: String,
    },
}

/// Up to ten names, then how many more.
fn list_names(names: &[String]) -> String {
    let mut text = names
        .iter()
        .take(10)
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 10 {
        text += &format!(" and {} more", names.len() - 10);
    }
    text
}
