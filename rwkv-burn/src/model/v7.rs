//! RWKV-7 (Goose): a generalised delta rule with vector-valued in-context learning rate, and a
//! value residual from layer 0.
//!
//! Official names (layer `i`): `blocks.i.att.{x_{r,w,k,v,a,g} [1,1,C], w0/a0/v0 [1,1,C],
//! w1/a1/v1/g1 [C,D], w2/a2/v2/g2 [D,C], k_k/k_a [1,1,C], r_k [H,N],
//! receptance/key/value/output.weight [C,C], ln_x.{weight,bias} [C]}` (layer 0 may lack its
//! unused `v0/v1/v2`), `blocks.i.ffn.{x_k [1,1,C], key.weight [F,C], value.weight [C,F]}`.

use super::block::{ChannelMix, TimeMix};
use super::layers::{group_norm_rows, load_ln_x, merge_heads, split_heads};
use super::lora::Lora;
use super::projection::Projection;
use super::token_shift::token_shift;
use super::{Dims, Spec, heads};
use crate::config::{LoraRanks, RwkvConfig, Version};
use crate::weights::{InitParam, LoadError, Role, Weights};
use crate::wkv::wkv7;
use burn::module::{Module, Param};
use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid};

/// RWKV-7 in the library's version table. The official package selects RWKV-7 by an
/// environment variable; its tensors `r_k` and `x_r` are unique to it.
pub(crate) const SPEC: Spec = Spec {
    version: Version::V7,
    detect: |t| (t.any("att.r_k") || t.any("att.x_r")).then_some(Version::V7),
    dims: |t, n_layer| {
        // Layer 0 does not use its value residual; a checkpoint may lack it there.
        let value = match (0..n_layer)
            .map(|i| format!("blocks.{i}.att.v1"))
            .find(|name| t.0.shape(name).is_some())
        {
            Some(name) => t.cols(&name)?,
            None => 0,
        };
        Ok(Dims {
            head_size: Some(t.cols("blocks.0.att.r_k")?),
            lora: LoraRanks {
                decay: t.cols("blocks.0.att.w1")?,
                a: t.cols("blocks.0.att.a1")?,
                value,
                gate: t.cols("blocks.0.att.g1")?,
                ..LoraRanks::default()
            },
        })
    },
    load: |w, config, layer| {
        Ok((
            TimeMix::V7(w.within("att", |w| TimeMix7::load(w, config, layer == 0))?),
            ChannelMix::V7(w.within("ffn", |w| ChannelMix7::load(w, config))?),
        ))
    },
    init,
};

/// The official code's literal for `exp(-0.5)`, the largest per-token log-decay magnitude.
const DECAY_SCALE: f32 = 0.606531;

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
    pub receptance: Projection,
    /// `C -> C`.
    pub key: Projection,
    /// `C -> C`.
    pub value: Projection,
    /// `C -> C`.
    pub output: Projection,
    /// Per-head GroupNorm.
    pub ln_x: GroupNorm,
    /// Whether this is layer 0, whose value becomes every later layer's residual.
    pub first_layer: bool,
}

impl TimeMix7 {
    /// Reads `att.*` of one block (`w` scoped there).
    pub fn load(
        w: &mut Weights,
        config: &RwkvConfig,
        first_layer: bool,
    ) -> Result<Self, LoadError> {
        let c = config.n_embd;
        let (h, n) = heads(config);
        let lora = |w: &mut Weights, x: &str, rank| {
            Lora::load(w, [&format!("{x}1"), &format!("{x}2")], c, rank, c)
        };
        // Released checkpoints carry v0/v1/v2 in layer 0 too, unused there: take them if present.
        let (v0, v_lora) = if w.contains("v1") || !first_layer {
            (
                Some(w.per_channel(Role::Bias, "v0", c)?),
                Some(lora(w, "v", config.lora.value)?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            x_r: w.per_channel(Role::Mix, "x_r", c)?,
            x_w: w.per_channel(Role::Mix, "x_w", c)?,
            x_k: w.per_channel(Role::Mix, "x_k", c)?,
            x_v: w.per_channel(Role::Mix, "x_v", c)?,
            x_a: w.per_channel(Role::Mix, "x_a", c)?,
            x_g: w.per_channel(Role::Mix, "x_g", c)?,
            w0: w.per_channel(Role::Decay, "w0", c)?,
            w_lora: lora(w, "w", config.lora.decay)?,
            a0: w.per_channel(Role::Bias, "a0", c)?,
            a_lora: lora(w, "a", config.lora.a)?,
            v0,
            v_lora,
            g_lora: lora(w, "g", config.lora.gate)?,
            k_k: w.per_channel(Role::Bias, "k_k", c)?,
            k_a: w.per_channel(Role::Bias, "k_a", c)?,
            r_k: w.matrix(Role::Bonus, "r_k", h, n)?,
            receptance: Projection::load(w, Role::Matrix, "receptance.weight", c, c)?,
            key: Projection::load(w, Role::Matrix, "key.weight", c, c)?,
            value: Projection::load(w, Role::Matrix, "value.weight", c, c)?,
            output: Projection::load(w, Role::Output, "output.weight", c, c)?,
            ln_x: load_ln_x(w, "ln_x", c, h)?,
            first_layer,
        })
    }

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

        let r = self.receptance.forward(xr);
        let k = self.key.forward(xk);
        let mut v = self.value.forward(xv.clone());
        let w_raw = self.w_lora.forward(xw, Tensor::tanh);
        let w = (sigmoid(bias(&self.w0) + w_raw) * (-DECAY_SCALE)).exp();
        let a = sigmoid(bias(&self.a0) + self.a_lora.forward(xa, |x| x));
        let g = self.g_lora.forward(xg, sigmoid);

        let kk = l2_normalize_heads(k.clone() * bias(&self.k_k), heads);
        let k = k * ((a.clone() - 1.0) * bias(&self.k_a) + 1.0);
        match (self.first_layer, &self.v0, &self.v_lora, v_first.as_ref()) {
            (true, ..) => *v_first = Some(v.clone()),
            (false, Some(v0), Some(lora), Some(first)) => {
                let gate = sigmoid(bias(v0) + lora.forward(xv, |x| x));
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

        // ln_x, the bonus (per head, (r . (k * r_k)) * v) and the gate, all on rows of heads
        // `[B*T, H, N]`, reshaped first: one reshape between the element-wise steps ends Burn's
        // fusion block, and each step was then a kernel launch of its own on CubeCL devices.
        let [batch, len, channels] = g.dims();
        let rows = |t: Tensor<3>| t.reshape([batch * len, heads, channels / heads]);
        let (r, k, v, g) = (rows(r), rows(k), rows(v), rows(g));
        let r_k = self.r_k.val().unsqueeze::<3>();
        let y = y.reshape([batch * len, heads, channels / heads]);
        let rk = (r * k * r_k).sum_dim(2);
        let y = (group_norm_rows(&self.ln_x, y) + rk * v) * g;
        self.output.forward(y.reshape([batch, len, channels]))
    }
    /// Its projections, for summaries of the weights.
    pub fn projections(&self) -> Vec<&Projection> {
        vec![&self.receptance, &self.key, &self.value, &self.output]
    }

    /// Its projections by official leaf name (for adapters).
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut Projection)> {
        vec![
            ("receptance", &mut self.receptance),
            ("key", &mut self.key),
            ("value", &mut self.value),
            ("output", &mut self.output),
        ]
    }

    /// Width of the attention (A = C).
    pub fn dim_att(&self) -> usize {
        self.key.out_features()
    }

    /// Channels per head (N).
    pub fn head_size(&self) -> usize {
        self.r_k.dims()[1]
    }

    /// Ranks of the decay, learning-rate, value-residual and gate adapters.
    pub fn lora_ranks(&self) -> LoraRanks {
        LoraRanks {
            decay: self.w_lora.rank(),
            a: self.a_lora.rank(),
            value: self.v_lora.as_ref().map_or(0, Lora::rank),
            gate: self.g_lora.rank(),
            ..LoraRanks::default()
        }
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
    pub key: Projection,
    /// `F -> C`.
    pub value: Projection,
}

impl ChannelMix7 {
    /// Reads `ffn.*` of one block (`w` scoped there).
    pub fn load(w: &mut Weights, config: &RwkvConfig) -> Result<Self, LoadError> {
        let (c, f) = (config.n_embd, config.dim_ffn);
        Ok(Self {
            x_k: w.per_channel(Role::Mix, "x_k", c)?,
            key: Projection::load(w, Role::Matrix, "key.weight", f, c)?,
            value: Projection::load(w, Role::Output, "value.weight", c, f)?,
        })
    }

    /// `x` is the ln2 output `[B, T, C]`; returns the residual update.
    pub fn forward(&self, x: Tensor<3>, shift: &mut Tensor<2>) -> Tensor<3> {
        let (prev, last) = token_shift(x.clone(), shift.clone());
        *shift = last;
        let kx = x.clone() + (prev - x) * self.x_k.val().unsqueeze::<3>();
        let k = relu(self.key.forward(kx));
        self.value.forward(k.clone() * k)
    }
    /// Its projections, for summaries of the weights.
    pub fn projections(&self) -> Vec<&Projection> {
        vec![&self.key, &self.value]
    }

    /// Its projections by official leaf name (for adapters).
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut Projection)> {
        vec![("key", &mut self.key), ("value", &mut self.value)]
    }

    /// Width of the hidden layer (F).
    pub fn dim_ffn(&self) -> usize {
        self.key.out_features()
    }
}

/// RWKV-LM's RWKV-7 initialisation of the tensors it introduced: mixes `1 - ddd^p` with a
/// power per mix, the decay bias rising from -6.5 across channels, zero bonus, and the key
/// scales and biases of `RWKV_Tmix_x070`.
fn init(p: &InitParam) -> Option<Vec<f32>> {
    let (r01, r1a0) = (p.r01, p.r1a0);
    Some(match (p.role, p.leaf) {
        (Role::Mix, "x_r" | "x_g") => p.ramp(|d| 1.0 - d.powf(0.2 * r1a0)),
        (Role::Mix, "x_w" | "x_a") => p.ramp(|d| 1.0 - d.powf(0.9 * r1a0)),
        (Role::Mix, "x_k") if p.in_channel_mix() => p.ramp(|d| 1.0 - d.powf(r1a0.powi(4))),
        (Role::Mix, "x_k" | "x_v") => p.ramp(|d| 1.0 - d.powf(0.7 * r1a0)),
        (Role::Decay, "w0") => {
            let n = p.count.max(2) as f32 - 1.0;
            (0..p.count)
                .map(|i| -7.0 + 5.0 * (i as f32 / n).powf(0.85 + r01.sqrt()) + 0.5)
                .collect()
        }
        (Role::Bonus, "r_k") => vec![0.0; p.count],
        (Role::Bias, "k_k") => vec![0.85; p.count],
        (Role::Bias, "k_a" | "v0") => vec![1.0; p.count],
        (Role::Bias, _) => vec![0.0; p.count],
        _ => return None,
    })
}
