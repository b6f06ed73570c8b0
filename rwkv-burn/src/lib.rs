//! RWKV language models on the [Burn](https://burn.dev) framework.
//!
//! One [`Rwkv`] module serves every Burn backend compiled into the build; the backend is chosen
//! at run time by the [`Device`](burn::tensor::Device) the model lives on. The recurrent
//! [`State`] is a plain value: clone it, save it, carry it between calls.
//!
//! ```no_run
//! use burn::tensor::{Device, Int, Tensor};
//! use rwkv_burn::{load_model, State};
//!
//! # fn main() -> Result<(), rwkv_burn::LoadError> {
//! let device = Device::flex();
//! let (config, model) = load_model("model.pth", &device)?;
//! let tokens = Tensor::<2, Int>::from_data([[1, 2, 3]], &device);
//! let mut state = State::zeros(&config, 1, &device);
//! let logits = model.forward(tokens, &mut state); // [1, 3, vocab]
//! # Ok(()) }
//! ```
//!
//! Supported: RWKV-4, RWKV-5.2 (Eagle), RWKV-6 (Finch) and RWKV-7 (Goose), from official `.pth`,
//! official-name safetensors and (RWKV-4) Hugging Face folders. Pre-release RWKV-5.0/5.1
//! checkpoints are recognised and refused with [`LoadError::UnsupportedVersion`].

pub mod adapters;
pub mod config;
mod cpu;
pub mod device;
pub mod dispatches;
pub mod dtype;
pub mod export;
pub mod files;
mod gpu;
pub mod init;
pub mod load;
pub mod model;
pub mod parity;
pub mod presets;
pub mod random;
pub mod safetensors_io;
pub mod state;
pub mod time_state;
pub mod tokenizer;
pub mod weights;
pub mod wkv;

pub use config::{RwkvConfig, Version};
pub use device::DeviceSpec;
pub use load::{load_model, load_model_with};
pub use model::Rwkv;
pub use state::{State, StateError};
pub use weights::{LoadError, WeightFormat};

#[cfg(test)]
pub(crate) mod test_util;
