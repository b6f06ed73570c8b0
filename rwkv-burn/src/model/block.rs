//! A residual block: `x + att(ln1(x))`, then `x + ffn(ln2(x))`. The mixers are per version.

use super::v4::{ChannelMix4, TimeMix4};
use crate::config::Version;
use crate::state::{LayerState, WkvState};
use burn::module::Module;
use burn::nn::LayerNorm;
use burn::tensor::Tensor;

/// The attention-like half of a block, one variant per RWKV generation.
#[derive(Module, Debug)]
pub enum TimeMix {
    /// RWKV-4.
    V4(TimeMix4),
}

impl TimeMix {
    /// Width of the attention projections (A).
    pub fn dim_att(&self) -> usize {
        match self {
            TimeMix::V4(m) => m.dim_att(),
        }
    }

    /// The generation this mixer implements.
    pub fn version(&self) -> Version {
        match self {
            TimeMix::V4(_) => Version::V4,
        }
    }
}

/// The feed-forward half of a block, one variant per RWKV generation.
#[derive(Module, Debug)]
pub enum ChannelMix {
    /// RWKV-4 (also the layout of 5.x).
    V4(ChannelMix4),
}

impl ChannelMix {
    /// Width of the hidden layer (F).
    pub fn dim_ffn(&self) -> usize {
        match self {
            ChannelMix::V4(m) => m.dim_ffn(),
        }
    }
}

/// One RWKV layer.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before the time-mix.
    pub ln1: LayerNorm,
    /// Norm before the channel-mix.
    pub ln2: LayerNorm,
    /// Time-mix.
    pub att: TimeMix,
    /// Channel-mix.
    pub ffn: ChannelMix,
}

impl Block {
    /// Runs the block on `[B, T, C]`, advancing this layer's state.
    pub fn forward(&self, x: Tensor<3>, state: &mut LayerState) -> Tensor<3> {
        let att_in = self.ln1.forward(x.clone());
        let x = x + match (&self.att, &mut state.wkv) {
            (TimeMix::V4(att), WkvState::V4(wkv)) => att.forward(att_in, &mut state.att_x, wkv),
        };
        let ffn_in = self.ln2.forward(x.clone());
        x + match &self.ffn {
            ChannelMix::V4(ffn) => ffn.forward(ffn_in, &mut state.ffn_x),
        }
    }
}
