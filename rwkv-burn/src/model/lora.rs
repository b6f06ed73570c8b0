//! The low-rank adapters (LoRA-style bottlenecks `C -> D -> C'`) with which RWKV-6 and RWKV-7
//! make decay, mixing, learning rate, value residual and gate depend on the token.

use crate::weights::{LoadError, Role, Weights};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;

/// A low-rank adapter: a down- and an up-projection, each stored `[in, out]` as official
/// checkpoints keep them (`x @ W`, no transpose), with an activation in between.
#[derive(Module, Debug)]
pub struct Lora {
    /// Down-projection `[in, D]`.
    pub down: Linear,
    /// Up-projection `[D, out]`.
    pub up: Linear,
}

impl Lora {
    /// The adapter of tensors `down` `[input, rank]` and `up` `[rank, out]`.
    pub fn load(
        w: &mut Weights,
        [down, up]: [&str; 2],
        input: usize,
        rank: usize,
        out: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            down: w.factor(Role::LoraDown, down, input, rank)?,
            up: w.factor(Role::LoraUp, up, rank, out)?,
        })
    }

    /// `between(x @ down) @ up`.
    pub fn forward(&self, x: Tensor<3>, between: impl FnOnce(Tensor<3>) -> Tensor<3>) -> Tensor<3> {
        self.up.forward(between(self.down.forward(x)))
    }

    /// Inner width D.
    pub fn rank(&self) -> usize {
        self.down.weight.dims()[1]
    }
}
