//! The default model built into the `rwkv` binary, so it generates text on a fresh machine
//! without a download: a small RWKV-7 with a byte-level vocabulary, trained by this project on
//! the King James Genesis and Exodus (see `assets/default-model.md` for the exact command).

use burn::tensor::Device;
use rwkv_burn::LoadError;
use rwkv_burn::load::{Checkpoint, load_checkpoint};
use rwkv_burn::{Rwkv, RwkvConfig};

/// The model file (official-format safetensors).
pub static DEFAULT_MODEL: &[u8] = include_bytes!("../assets/default-model.safetensors");

/// The embedded model as an opened checkpoint.
pub fn default_checkpoint() -> Result<Checkpoint, LoadError> {
    Checkpoint::from_safetensors_bytes(DEFAULT_MODEL, "<embedded default model>")
}

/// Loads the embedded model onto `device`.
pub fn load_default(device: &Device) -> Result<(RwkvConfig, Rwkv), LoadError> {
    load_checkpoint(&default_checkpoint()?, device)
}
