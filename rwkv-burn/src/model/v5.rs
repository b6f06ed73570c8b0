//! RWKV-5.2 (Eagle) time-mix: multi-head matrix-valued state with a per-channel decay and a
//! SiLU gate. Its channel-mix is RWKV-4's.
//!
//! Official names (layer `i`): `blocks.i.att.{time_mix_{k,v,r,g} [1,1,C], time_decay [H,N],
//! time_faaaa [H,N], receptance/key/value/gate.weight [A,C], output.weight [C,A],
//! ln_x.{weight,bias} [A]}`; the channel-mix's are RWKV-4's.

use super::block::{ChannelMix, TimeMix};
use super::layers::{apply_ln_x, load_ln_x, merge_heads, split_heads};
use super::projection::Projection;
use super::token_shift::{Blend, token_shift};
use super::v4::ChannelMix4;
use super::{Dims, Spec, heads};
use crate::config::{RwkvConfig, Version};
use crate::weights::{LoadError, Role, Weights};
use crate::wkv::wkv5;
use burn::module::{Module, Param};
use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

/// RWKV-5 in the library's version table. Detection follows the official package: `ln_x`
/// marks 5.x, a `gate` 5.1, a two-dimensional `time_decay` 5.2; only 5.2 is run.
pub(crate) const SPEC: Spec = Spec {
    version: Version::V5 { minor: 2 },
    detect: |t| {
        if !t.any("ln_x") {
            return None;
        }
        let decay_2d =
            t.0.shape("blocks.0.att.time_decay")
                .is_some_and(|s| s.len() == 2 && s[1] > 1);
        let minor = match (t.any("gate.weight"), decay_2d) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        };
        Some(Version::V5 { minor })
    },
    dims: |t, _| {
        Ok(Dims {
            head_size: Some(t.cols("blocks.0.att.time_faaaa")?),
            lora: Default::default(),
        })
    },
    load: |w, config, _| {
        Ok((
            TimeMix::V5(w.within("att", |w| TimeMix5::load(w, config))?),
            ChannelMix::V4(w.within("ffn", |w| ChannelMix4::load(w, config))?),
        ))
    },
    // RWKV-4's rules cover every tensor RWKV-5.2 adds (`time_mix_g` included).
    init: super::v4::init,
};

/// RWKV-5.2 time-mix.
#[derive(Module, Debug)]
pub struct TimeMix5 {
    /// Token-shift mixes for k, v, r, g `[C]`.
    pub time_mix_k: Param<Tensor<1>>,
    /// See `time_mix_k`.
    pub time_mix_v: Param<Tensor<1>>,
    /// See `time_mix_k`.
    pub time_mix_r: Param<Tensor<1>>,
    /// See `time_mix_k`.
    pub time_mix_g: Param<Tensor<1>>,
    /// Raw decay `[H, N]`; the WKV uses `exp(-exp(time_decay))`.
    pub time_decay: Param<Tensor<2>>,
    /// Bonus for the current token `[H, N]` (`time_faaaa`, used as is).
    pub time_faaaa: Param<Tensor<2>>,
    /// `C -> A`.
    pub receptance: Projection,
    /// `C -> A`.
    pub key: Projection,
    /// `C -> A`.
    pub value: Projection,
    /// `C -> A`.
    pub gate: Projection,
    /// `A -> C`.
    pub output: Projection,
    /// Per-head GroupNorm.
    pub ln_x: GroupNorm,
}

impl TimeMix5 {
    /// Reads `att.*` of one block (`w` scoped there).
    pub fn load(w: &mut Weights, config: &RwkvConfig) -> Result<Self, LoadError> {
        let (c, a) = (config.n_embd, config.dim_att);
        let (h, n) = heads(config);
        Ok(Self {
            time_mix_k: w.per_channel(Role::Mix, "time_mix_k", c)?,
            time_mix_v: w.per_channel(Role::Mix, "time_mix_v", c)?,
            time_mix_r: w.per_channel(Role::Mix, "time_mix_r", c)?,
            time_mix_g: w.per_channel(Role::Mix, "time_mix_g", c)?,
            time_decay: w.matrix(Role::Decay, "time_decay", h, n)?,
            time_faaaa: w.matrix(Role::Bonus, "time_faaaa", h, n)?,
            receptance: Projection::load(w, Role::Matrix, "receptance.weight", a, c)?,
            key: Projection::load(w, Role::Matrix, "key.weight", a, c)?,
            value: Projection::load(w, Role::Matrix, "value.weight", a, c)?,
            gate: Projection::load(w, Role::Matrix, "gate.weight", a, c)?,
            output: Projection::load(w, Role::Output, "output.weight", c, a)?,
            ln_x: load_ln_x(w, "ln_x", a, h)?,
        })
    }

    /// `x` is the ln1 output `[B, T, C]`; returns the residual update.
    pub fn forward(&self, x: Tensor<3>, shift: &mut Tensor<2>, kv: &mut Tensor<4>) -> Tensor<3> {
        let (prev, last) = token_shift(x.clone(), shift.clone());
        *shift = last;
        let [heads, _] = self.time_decay.dims();
        let [batch, len, _] = x.dims();
        let blend = Blend::new(x, prev);
        let mix = |m: &Param<Tensor<1>>| blend.mix(m.val());
        let r = split_heads(self.receptance.forward(mix(&self.time_mix_r)), heads);
        let k = split_heads(self.key.forward(mix(&self.time_mix_k)), heads);
        let v = split_heads(self.value.forward(mix(&self.time_mix_v)), heads);
        let g = silu(self.gate.forward(mix(&self.time_mix_g)));

        let decay = self.time_decay.val().exp().neg().exp();
        let [_, n] = decay.dims();
        let w = decay.unsqueeze::<4>().expand([batch, len, heads, n]);
        let (y, state) = wkv5(r, k, v, w, self.time_faaaa.val(), kv.clone());
        *kv = state;
        self.output
            .forward(apply_ln_x(&self.ln_x, merge_heads(y)) * g)
    }
    /// Its projections, for summaries of the weights.
    pub fn projections(&self) -> Vec<&Projection> {
        vec![
            &self.receptance,
            &self.key,
            &self.value,
            &self.gate,
            &self.output,
        ]
    }

    /// Its projections by official leaf name (for adapters).
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut Projection)> {
        vec![
            ("receptance", &mut self.receptance),
            ("key", &mut self.key),
            ("value", &mut self.value),
            ("gate", &mut self.gate),
            ("output", &mut self.output),
        ]
    }

    /// Width of the attention projections (A).
    pub fn dim_att(&self) -> usize {
        self.key.out_features()
    }

    /// Channels per head (N).
    pub fn head_size(&self) -> usize {
        self.time_faaaa.dims()[1]
    }
}
