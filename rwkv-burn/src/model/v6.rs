//! RWKV-6 (Finch): data-dependent token shift (a LoRA on the mix coefficients) and a
//! data-dependent decay per token.

use super::layers::project;
use super::layers::{apply_ln_x, merge_heads, split_heads};
use super::token_shift::token_shift;
use crate::wkv::wkv5;
use burn::module::{Module, Param};
use burn::nn::{GroupNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid, silu};

/// RWKV-6 time-mix.
#[derive(Module, Debug)]
pub struct TimeMix6 {
    /// Base mix for the LoRA input `[C]`.
    pub time_maa_x: Param<Tensor<1>>,
    /// Base mixes for w, k, v, r, g `[C]`.
    pub time_maa_w: Param<Tensor<1>>,
    /// See `time_maa_w`.
    pub time_maa_k: Param<Tensor<1>>,
    /// See `time_maa_w`.
    pub time_maa_v: Param<Tensor<1>>,
    /// See `time_maa_w`.
    pub time_maa_r: Param<Tensor<1>>,
    /// See `time_maa_w`.
    pub time_maa_g: Param<Tensor<1>>,
    /// Mix LoRA down-projection `[C, 5 * D]` (stored `[in, out]`).
    pub time_maa_w1: Param<Tensor<2>>,
    /// Mix LoRA up-projections `[5, D, C]`, in the order w, k, v, r, g.
    pub time_maa_w2: Param<Tensor<3>>,
    /// Base decay `[A]`.
    pub time_decay: Param<Tensor<1>>,
    /// Decay LoRA `C -> D'`.
    pub time_decay_w1: Linear,
    /// Decay LoRA `D' -> A`.
    pub time_decay_w2: Linear,
    /// Bonus for the current token `[H, N]`.
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

impl TimeMix6 {
    /// `x` is the ln1 output `[B, T, C]`; returns the residual update.
    pub fn forward(&self, x: Tensor<3>, shift: &mut Tensor<2>, kv: &mut Tensor<4>) -> Tensor<3> {
        let (prev, last) = token_shift(x.clone(), shift.clone());
        *shift = last;
        let [heads, _] = self.time_faaaa.dims();
        let [batch, len, channels] = x.dims();
        let [parts, rank, _] = self.time_maa_w2.dims();
        let sx = prev - x.clone();

        // Five data-dependent mix offsets from one LoRA: [B*T, 5*D] -> [5, B*T, D] -> [5, B*T, C].
        let lora_in = (x.clone() + sx.clone() * self.time_maa_x.val().unsqueeze::<3>())
            .reshape([batch * len, channels]);
        let hidden = lora_in
            .matmul(self.time_maa_w1.val())
            .tanh()
            .reshape([batch * len, parts, rank])
            .swap_dims(0, 1);
        let offsets = hidden.matmul(self.time_maa_w2.val());
        let offset = |j: usize| {
            offsets
                .clone()
                .slice([j..j + 1, 0..batch * len, 0..channels])
                .reshape([batch, len, channels])
        };
        let mix = |base: &Param<Tensor<1>>, j: usize| {
            x.clone() + sx.clone() * (base.val().unsqueeze::<3>() + offset(j))
        };
        let wx = mix(&self.time_maa_w, 0);
        let kx = mix(&self.time_maa_k, 1);
        let vx = mix(&self.time_maa_v, 2);
        let rx = mix(&self.time_maa_r, 3);
        let gx = mix(&self.time_maa_g, 4);

        let r = split_heads(project(&self.receptance, rx), heads);
        let k = split_heads(project(&self.key, kx), heads);
        let v = split_heads(project(&self.value, vx), heads);
        let g = silu(project(&self.gate, gx));
        let decay = self.time_decay.val().unsqueeze::<3>()
            + self
                .time_decay_w2
                .forward(self.time_decay_w1.forward(wx).tanh());
        let w = split_heads(decay.exp().neg().exp(), heads);

        let (y, state) = wkv5(r, k, v, w, self.time_faaaa.val(), kv.clone());
        *kv = state;
        project(&self.output, apply_ln_x(&self.ln_x, merge_heads(y)) * g)
    }

    /// Width of the attention projections (A).
    pub fn dim_att(&self) -> usize {
        self.key.weight.dims()[1]
    }
}

/// RWKV-6 channel-mix: RWKV-4's, with the mix written as `x + (prev - x) * maa`.
#[derive(Module, Debug)]
pub struct ChannelMix6 {
    /// Mix for the key `[C]`.
    pub time_maa_k: Param<Tensor<1>>,
    /// Mix for the receptance `[C]`.
    pub time_maa_r: Param<Tensor<1>>,
    /// `C -> F`.
    pub key: Linear,
    /// `C -> C`.
    pub receptance: Linear,
    /// `F -> C`.
    pub value: Linear,
}

impl ChannelMix6 {
    /// `x` is the ln2 output `[B, T, C]`; returns the residual update.
    pub fn forward(&self, x: Tensor<3>, shift: &mut Tensor<2>) -> Tensor<3> {
        let (prev, last) = token_shift(x.clone(), shift.clone());
        *shift = last;
        let sx = prev - x.clone();
        let kx = x.clone() + sx.clone() * self.time_maa_k.val().unsqueeze::<3>();
        let rx = x + sx * self.time_maa_r.val().unsqueeze::<3>();
        let k = relu(project(&self.key, kx));
        sigmoid(project(&self.receptance, rx)) * project(&self.value, k.clone() * k)
    }

    /// Width of the hidden layer (F).
    pub fn dim_ffn(&self) -> usize {
        self.key.weight.dims()[1]
    }
}
