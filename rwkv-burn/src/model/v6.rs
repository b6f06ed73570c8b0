//! RWKV-6 (Finch): data-dependent token shift (a LoRA on the mix coefficients) and a
//! data-dependent decay per token.
//!
//! Official names (layer `i`): `blocks.i.att.{time_maa_{x,w,k,v,r,g} [1,1,C], time_maa_w1
//! [C,5D], time_maa_w2 [5,D,C], time_decay [1,1,A], time_decay_w1 [C,D'], time_decay_w2
//! [D',A], time_faaaa [H,N], receptance/key/value/gate.weight [A,C], output.weight [C,A],
//! ln_x.{weight,bias} [A]}`, `blocks.i.ffn.{time_maa_{k,r} [1,1,C], key.weight [F,C],
//! receptance.weight [C,C], value.weight [C,F]}`.

use super::block::{ChannelMix, TimeMix};
use super::layers::{apply_ln_x, load_ln_x, merge_heads, split_heads};
use super::lora::Lora;
use super::projection::Projection;
use super::token_shift::token_shift;
use super::{Dims, Spec, heads};
use crate::config::{LoraRanks, RwkvConfig, Version};
use crate::weights::{InitParam, LoadError, Role, Weights};
use crate::wkv::wkv5;
use burn::module::{Module, Param};
use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid, silu};

/// RWKV-6 in the library's version table.
pub(crate) const SPEC: Spec = Spec {
    version: Version::V6,
    detect: |t| t.any("time_maa").then_some(Version::V6),
    dims: |t, _| {
        Ok(Dims {
            head_size: Some(t.cols("blocks.0.att.time_faaaa")?),
            lora: LoraRanks {
                mix: t.cols("blocks.0.att.time_maa_w1")? / 5,
                decay: t.cols("blocks.0.att.time_decay_w1")?,
                ..LoraRanks::default()
            },
        })
    },
    load: |w, config, _| {
        Ok((
            TimeMix::V6(w.within("att", |w| TimeMix6::load(w, config))?),
            ChannelMix::V6(w.within("ffn", |w| ChannelMix6::load(w, config))?),
        ))
    },
    init,
};

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
    /// Decay LoRA `C -> D' -> A` (`time_decay_w1`, `time_decay_w2`; tanh in between).
    pub decay_lora: Lora,
    /// Bonus for the current token `[H, N]`.
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

impl TimeMix6 {
    /// Reads `att.*` of one block (`w` scoped there).
    pub fn load(w: &mut Weights, config: &RwkvConfig) -> Result<Self, LoadError> {
        let (c, a) = (config.n_embd, config.dim_att);
        let (h, n) = heads(config);
        let (mix_rank, decay_rank) = (config.lora.mix, config.lora.decay);
        Ok(Self {
            time_maa_x: w.per_channel(Role::Mix, "time_maa_x", c)?,
            time_maa_w: w.per_channel(Role::Mix, "time_maa_w", c)?,
            time_maa_k: w.per_channel(Role::Mix, "time_maa_k", c)?,
            time_maa_v: w.per_channel(Role::Mix, "time_maa_v", c)?,
            time_maa_r: w.per_channel(Role::Mix, "time_maa_r", c)?,
            time_maa_g: w.per_channel(Role::Mix, "time_maa_g", c)?,
            time_maa_w1: w.matrix(Role::LoraDown, "time_maa_w1", c, mix_rank * 5)?,
            time_maa_w2: w.tensor(Role::LoraUp, "time_maa_w2", [5, mix_rank, c])?,
            time_decay: w.per_channel(Role::Decay, "time_decay", a)?,
            decay_lora: Lora::load(w, ["time_decay_w1", "time_decay_w2"], c, decay_rank, a)?,
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

        let r = split_heads(self.receptance.forward(rx), heads);
        let k = split_heads(self.key.forward(kx), heads);
        let v = split_heads(self.value.forward(vx), heads);
        let g = silu(self.gate.forward(gx));
        let decay =
            self.time_decay.val().unsqueeze::<3>() + self.decay_lora.forward(wx, Tensor::tanh);
        let w = split_heads(decay.exp().neg().exp(), heads);

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

    /// Ranks of the mix and decay adapters.
    pub fn lora_ranks(&self) -> LoraRanks {
        LoraRanks {
            decay: self.decay_lora.rank(),
            mix: self.time_maa_w2.dims()[1],
            ..LoraRanks::default()
        }
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
    pub key: Projection,
    /// `C -> C`.
    pub receptance: Projection,
    /// `F -> C`.
    pub value: Projection,
}

impl ChannelMix6 {
    /// Reads `ffn.*` of one block (`w` scoped there).
    pub fn load(w: &mut Weights, config: &RwkvConfig) -> Result<Self, LoadError> {
        let (c, f) = (config.n_embd, config.dim_ffn);
        Ok(Self {
            time_maa_k: w.per_channel(Role::Mix, "time_maa_k", c)?,
            time_maa_r: w.per_channel(Role::Mix, "time_maa_r", c)?,
            key: Projection::load(w, Role::Matrix, "key.weight", f, c)?,
            receptance: Projection::load(w, Role::Output, "receptance.weight", c, c)?,
            value: Projection::load(w, Role::Output, "value.weight", c, f)?,
        })
    }

    /// `x` is the ln2 output `[B, T, C]`; returns the residual update.
    pub fn forward(&self, x: Tensor<3>, shift: &mut Tensor<2>) -> Tensor<3> {
        let (prev, last) = token_shift(x.clone(), shift.clone());
        *shift = last;
        let sx = prev - x.clone();
        let kx = x.clone() + sx.clone() * self.time_maa_k.val().unsqueeze::<3>();
        let rx = x + sx * self.time_maa_r.val().unsqueeze::<3>();
        let k = relu(self.key.forward(kx));
        sigmoid(self.receptance.forward(rx)) * self.value.forward(k.clone() * k)
    }
    /// Its projections, for summaries of the weights.
    pub fn projections(&self) -> Vec<&Projection> {
        vec![&self.key, &self.receptance, &self.value]
    }

    /// Its projections by official leaf name (for adapters).
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut Projection)> {
        vec![
            ("key", &mut self.key),
            ("receptance", &mut self.receptance),
            ("value", &mut self.value),
        ]
    }

    /// Width of the hidden layer (F).
    pub fn dim_ffn(&self) -> usize {
        self.key.out_features()
    }
}

/// RWKV-LM's initial mixes of RWKV-6 (`1 - ddd^p`; decays and bonuses as RWKV-4's).
fn init(p: &InitParam) -> Option<Vec<f32>> {
    match p.role {
        Role::Mix if p.leaf.starts_with("time_maa") => Some(p.ramp(|d| 1.0 - d.powf(0.5 * p.r1a0))),
        _ => super::v4::init(p),
    }
}
