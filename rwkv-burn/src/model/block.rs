//! A residual block: `x + att(ln1(x))`, then `x + ffn(ln2(x))`. The mixers are per version.

use super::layers::load_layer_norm;
use super::projection::Projection;
use super::v4::{ChannelMix4, TimeMix4};
use super::v5::TimeMix5;
use super::v6::{ChannelMix6, TimeMix6};
use super::v7::{ChannelMix7, TimeMix7};
use crate::config::{LoraRanks, RwkvConfig, Version};
use crate::state::{LayerState, WkvState};
use crate::weights::{LoadError, Weights};
use burn::module::Module;
use burn::nn::LayerNorm;
use burn::tensor::Tensor;

/// The attention-like half of a block, one variant per RWKV generation.
// Built once per layer and never moved in a hot path: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum TimeMix {
    /// RWKV-4.
    V4(TimeMix4),
    /// RWKV-5.2.
    V5(TimeMix5),
    /// RWKV-6.
    V6(TimeMix6),
    /// RWKV-7.
    V7(TimeMix7),
}

impl TimeMix {
    /// Width of the attention projections (A).
    pub fn dim_att(&self) -> usize {
        match self {
            TimeMix::V4(m) => m.dim_att(),
            TimeMix::V5(m) => m.dim_att(),
            TimeMix::V6(m) => m.dim_att(),
            TimeMix::V7(m) => m.dim_att(),
        }
    }

    /// Channels per head, for the matrix-state versions.
    pub fn head_size(&self) -> Option<usize> {
        match self {
            TimeMix::V4(_) => None,
            TimeMix::V5(m) => Some(m.head_size()),
            TimeMix::V6(m) => Some(m.head_size()),
            TimeMix::V7(m) => Some(m.head_size()),
        }
    }

    /// Ranks of this layer's low-rank adapters.
    pub fn lora_ranks(&self) -> LoraRanks {
        match self {
            TimeMix::V4(_) | TimeMix::V5(_) => LoraRanks::default(),
            TimeMix::V6(m) => m.lora_ranks(),
            TimeMix::V7(m) => m.lora_ranks(),
        }
    }

    /// Its projections, for summaries of the weights.
    pub fn projections(&self) -> Vec<&Projection> {
        match self {
            TimeMix::V4(m) => m.projections(),
            TimeMix::V5(m) => m.projections(),
            TimeMix::V6(m) => m.projections(),
            TimeMix::V7(m) => m.projections(),
        }
    }

    /// Its projections by official leaf name (`key`, `receptance`, ...).
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut Projection)> {
        match self {
            TimeMix::V4(m) => m.projections_mut(),
            TimeMix::V5(m) => m.projections_mut(),
            TimeMix::V6(m) => m.projections_mut(),
            TimeMix::V7(m) => m.projections_mut(),
        }
    }

    /// The generation this mixer implements.
    pub fn version(&self) -> Version {
        match self {
            TimeMix::V4(_) => Version::V4,
            TimeMix::V5(_) => Version::V5 { minor: 2 },
            TimeMix::V6(_) => Version::V6,
            TimeMix::V7(_) => Version::V7,
        }
    }
}

/// The feed-forward half of a block, one variant per RWKV generation.
#[derive(Module, Debug)]
pub enum ChannelMix {
    /// RWKV-4 and RWKV-5.
    V4(ChannelMix4),
    /// RWKV-6.
    V6(ChannelMix6),
    /// RWKV-7.
    V7(ChannelMix7),
}

impl ChannelMix {
    /// Its projections, for summaries of the weights.
    pub fn projections(&self) -> Vec<&Projection> {
        match self {
            ChannelMix::V4(m) => m.projections(),
            ChannelMix::V6(m) => m.projections(),
            ChannelMix::V7(m) => m.projections(),
        }
    }

    /// Its projections by official leaf name.
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut Projection)> {
        match self {
            ChannelMix::V4(m) => m.projections_mut(),
            ChannelMix::V6(m) => m.projections_mut(),
            ChannelMix::V7(m) => m.projections_mut(),
        }
    }

    /// Width of the hidden layer (F).
    pub fn dim_ffn(&self) -> usize {
        match self {
            ChannelMix::V4(m) => m.dim_ffn(),
            ChannelMix::V6(m) => m.dim_ffn(),
            ChannelMix::V7(m) => m.dim_ffn(),
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
    /// Reads block `layer` (`blocks.{layer}.*`) of `config`'s version.
    pub fn load(w: &mut Weights, config: &RwkvConfig, layer: usize) -> Result<Self, LoadError> {
        let spec = super::spec(config.version).ok_or_else(|| LoadError::UnsupportedVersion {
            path: w.path().to_path_buf(),
            version: config.version,
        })?;
        let c = config.n_embd;
        w.within(&format!("blocks.{layer}"), |w| {
            let (att, ffn) = (spec.load)(w, config, layer)?;
            Ok(Block {
                ln1: load_layer_norm(w, "ln1", c)?,
                ln2: load_layer_norm(w, "ln2", c)?,
                att,
                ffn,
            })
        })
    }

    /// Runs the block on `[B, T, C]`, advancing this layer's state. `v_first` carries RWKV-7's
    /// layer-0 value to later layers (other versions ignore it).
    ///
    /// # Panics
    /// If the state belongs to another version.
    pub fn forward(
        &self,
        x: Tensor<3>,
        state: &mut LayerState,
        v_first: &mut Option<Tensor<3>>,
    ) -> Tensor<3> {
        let att_in = self.ln1.forward(x.clone());
        let shift = &mut state.att_x;
        let x = x + match (&self.att, &mut state.wkv) {
            (TimeMix::V4(att), WkvState::V4(wkv)) => att.forward(att_in, shift, wkv),
            (TimeMix::V5(att), WkvState::Matrix(kv)) => att.forward(att_in, shift, kv),
            (TimeMix::V6(att), WkvState::Matrix(kv)) => att.forward(att_in, shift, kv),
            (TimeMix::V7(att), WkvState::Matrix(kv)) => att.forward(att_in, shift, kv, v_first),
            (att, _) => panic!("state does not belong to a {} block", att.version()),
        };
        let ffn_in = self.ln2.forward(x.clone());
        x + match &self.ffn {
            ChannelMix::V4(ffn) => ffn.forward(ffn_in, &mut state.ffn_x),
            ChannelMix::V6(ffn) => ffn.forward(ffn_in, &mut state.ffn_x),
            ChannelMix::V7(ffn) => ffn.forward(ffn_in, &mut state.ffn_x),
        }
    }
}
