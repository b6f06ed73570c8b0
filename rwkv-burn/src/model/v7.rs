//! RWKV-7 (Goose): a generalised delta rule with vector-valued in-context learning rate, and a
//! value residual from layer 0.

use super::layers::project;
use super::layers::{apply_ln_x, merge_heads, split_heads};
use super::token_shift::token_shift;
use crate::wkv::wkv7;
use burn::module::{Module, Param};
use burn::nn::{GroupNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid};

/// The official code's literal for `exp(-0.5)`, the largest per-token log-decay magnitude.
const DECAY_SCALE: f32 = 0.606531;

/// A low-rank adapter `C -> D -> C`, stored like the official `*1 [C, D]`, `*2 [D, C]` pair.
#[derive(Module, Debug)]
pub struct Lora {
    /// Down-projection.
    pub down: Linear,
    /// Up-projection.
    pub up: Linear,
}

impl Lora {
    /// Inner width D.
    pub fn rank(&self) -> usize {
        self.down.weight.dims()[1]
    }
}

/// RWKV-7 time-mix.
#[derive(Module, Debug)]
pub struct TimeMix7 {
    /// Token-shift mixes for r, w, k, v, a, g `[C]`.
    pub x_r: Param<Tensor<1>>,
    /// See `x_r`.
    pub x_w: Param<Tensor<1>>,
    /// See `x_r`.
    pub x_k: Param<Tensor<1>>,
    /// See `x_r`.
    pub x_v: Param<Tensor<1>>,
    /// See `x_r`.
    pub x_a: Param<Tensor<1>>,
    /// See `x_r`.
    pub x_g: Param<Tensor<1>>,
    /// Decay bias `[C]`.
    pub w0: Param<Tensor<1>>,
    /// Decay LoRA (tanh in between).
    pub w_lora: Lora,
    /// In-context learning rate bias `[C]`.
    pub a0: Param<Tensor<1>>,
    /// In-context learning rate LoRA.
    pub a_lora: Lora,
    /// Value-residual bias `[C]`; present in every layer of released checkpoints, unused in
    /// layer 0.
    pub v0: Option<Param<Tensor<1>>>,
    /// Value-residual LoRA (unused in layer 0).
    pub v_lora: Option<Lora>,
    /// Output gate LoRA (sigmoid in between).
    pub g_lora: Lora,
    /// Key scale for the normalised removal key `[C]`.
    pub k_k: Param<Tensor<1>>,
    /// How much the learning rate rescales the key `[C]`.
    pub k_a: Param<Tensor<1>>,
    /// Per-head bonus `[H, N]`.
    pub r_k: Param<Tensor<2>>,
    /// `C -> C`.
    pub receptance: Linear,
    /// `C -> C`.
    pub key: Linear,
    /// `C -> C`.
    pub value: Linear,
    /// `C -> C`.
    pub output: Linear,
    /// Per-head GroupNorm.
    pub ln_x: GroupNorm,
    /// Whether this is layer 0, whose value becomes every later layer's residual.
    pub first_layer: bool,
}

impl TimeMix7 {
    /// `x` is the ln1 output `[B, T, C]`; `v_first` carries layer 0's value to later layers.
    pub fn forward(
        &self,
        x: Tensor<3>,
        shift: &mut Tensor<2>,
        kv: &mut Tensor<4>,
        v_first: &mut Option<Tensor<3>>,
    ) -> Tensor<3> {
        let (prev, last) = token_shift(x.clone(), shift.clone());
        *shift = last;
        let [heads, _] = self.r_k.dims();
        let dx = prev - x.clone();
        let mix = |m: &Param<Tensor<1>>| x.clone() + dx.clone() * m.val().unsqueeze::<3>();
        let (xr, xw, xk, xv, xa, xg) = (
            mix(&self.x_r),
            mix(&self.x_w),
            mix(&self.x_k),
            mix(&self.x_v),
            mix(&self.x_a),
            mix(&self.x_g),
        );
        let bias = |p: &Param<Tensor<1>>| p.val().unsqueeze::<3>();

        let r = project(&self.receptance, xr);
        let k = project(&self.key, xk);
        let mut v = project(&self.value, xv.clone());
        let w_raw = self.w_lora.up.forward(self.w_lora.down.forward(xw).tanh());
        let w = (sigmoid(bias(&self.w0) + w_raw) * (-DECAY_SCALE)).exp();
        let a = sigmoid(bias(&self.a0) + self.a_lora.up.forward(self.a_lora.down.forward(xa)));
        let g = self
            .g_lora
            .up
            .forward(sigmoid(self.g_lora.down.forward(xg)));

        let kk = l2_normalize_heads(k.clone() * bias(&self.k_k), heads);
        let k = k * ((a.clone() - 1.0) * bias(&self.k_a) + 1.0);
        match (self.first_layer, &self.v0, &self.v_lora, v_first.as_ref()) {
            (true, ..) => *v_first = Some(v.clone()),
            (false, Some(v0), Some(lora), Some(first)) => {
                let gate = sigmoid(bias(v0) + lora.up.forward(lora.down.forward(xv)));
                v = v.clone() + (first.clone() - v) * gate;
            }
            _ => panic!("RWKV-7 layer without value residual, or v_first missing"),
        }

        let split = |t: Tensor<3>| split_heads(t, heads);
        let (y, state) = wkv7(
            split(r.clone()),
            split(w),
            split(k.clone()),
            split(v.clone()),
            split(kk.clone().neg()),
            split(kk * a),
            kv.clone(),
        );
        *kv = state;

        let y = apply_ln_x(&self.ln_x, merge_heads(y));
        // Bonus: per head, (r . (k * r_k)) * v.
        let rk = (split(r) * split(k) * self.r_k.val().unsqueeze::<4>()).sum_dim(3);
        let bonus = merge_heads(rk * split(v));
        project(&self.output, (y + bonus) * g)
    }

    /// Width of the attention (A = C).
    pub fn dim_att(&self) -> usize {
        self.key.weight.dims()[1]
    }
}

/// `F.normalize(x.view(.., H, N), dim=-1, eps=1e-12)`.
fn l2_normalize_heads(x: Tensor<3>, heads: usize) -> Tensor<3> {
    let split = split_heads(x, heads);
    let norm = (split.clone() * split.clone())
        .sum_dim(3)
        .sqrt()
        .clamp_min(1e-12);
    merge_heads(split / norm)
}

/// RWKV-7 channel-mix: token shift, squared-ReLU MLP, no receptance gate.
#[derive(Module, Debug)]
pub struct ChannelMix7 {
    /// Mix for the key `[C]`.
    pub x_k: Param<Tensor<1>>,
    /// `C -> F`.
    pub key: Linear,
    /// `F -> C`.
    pub value: Linear,
}

impl ChannelMix7 {
    /// `x` is the ln2 output `[B, T, C]`; returns the residual update.
    pub fn forward(&self, x: Tensor<3>, shift: &mut Tensor<2>) -> Tensor<3> {
        let (prev, last) = token_shift(x.clone(), shift.clone());
        *shift = last;
        let kx = x.clone() + (prev - x) * self.x_k.val().unsqueeze::<3>();
        let k = relu(project(&self.key, kx));
        project(&self.value, k.clone() * k)
    }

    /// Width of the hidden layer (F).
    pub fn dim_ffn(&self) -> usize {
        self.key.weight.dims()[1]
    }
}
