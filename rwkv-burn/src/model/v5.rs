//! RWKV-5.2 (Eagle) time-mix: multi-head matrix-valued state with a per-channel decay and a
//! SiLU gate. Its channel-mix is RWKV-4's.

use super::layers::project;
use super::layers::{apply_ln_x, merge_heads, split_heads};
use super::token_shift::{Blend, token_shift};
use crate::wkv::wkv5;
use burn::module::{Module, Param};
use burn::nn::{GroupNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

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
    pub receptance: Linear,
    /// `C -> A`.
    pub key: Linear,
    /// `C -> A`.
    pub value: Linear,
    /// `C -> A`.
    pub gate: Linear,
    /// `A -> C`.
    pub output: Linear,
    /// Per-head GroupNorm.
    pub ln_x: GroupNorm,
}

impl TimeMix5 {
    /// `x` is the ln1 output `[B, T, C]`; returns the residual update.
    pub fn forward(&self, x: Tensor<3>, shift: &mut Tensor<2>, kv: &mut Tensor<4>) -> Tensor<3> {
        let (prev, last) = token_shift(x.clone(), shift.clone());
        *shift = last;
        let [heads, _] = self.time_decay.dims();
        let [batch, len, _] = x.dims();
        let blend = Blend::new(x, prev);
        let mix = |m: &Param<Tensor<1>>| blend.mix(m.val());
        let r = split_heads(project(&self.receptance, mix(&self.time_mix_r)), heads);
        let k = split_heads(project(&self.key, mix(&self.time_mix_k)), heads);
        let v = split_heads(project(&self.value, mix(&self.time_mix_v)), heads);
        let g = silu(project(&self.gate, mix(&self.time_mix_g)));

        let decay = self.time_decay.val().exp().neg().exp();
        let [_, n] = decay.dims();
        let w = decay.unsqueeze::<4>().expand([batch, len, heads, n]);
        let (y, state) = wkv5(r, k, v, w, self.time_faaaa.val(), kv.clone());
        *kv = state;
        project(&self.output, apply_ln_x(&self.ln_x, merge_heads(y)) * g)
    }

    /// Width of the attention projections (A).
    pub fn dim_att(&self) -> usize {
        self.key.weight.dims()[1]
    }
}
