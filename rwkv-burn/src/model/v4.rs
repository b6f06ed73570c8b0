//! RWKV-4 (the paper's architecture): a vector-valued WKV with a running maximum, token-shift
//! mixes, a receptance gate and a squared-ReLU channel-mix (which RWKV-5.2 keeps).
//!
//! Official names (layer `i`): `blocks.i.att.{time_decay [A], time_first [A],
//! time_mix_{k,v,r} [1,1,C], key/value/receptance.weight [A,C], output.weight [C,A]}`,
//! `blocks.i.ffn.{time_mix_{k,r} [1,1,C], key.weight [F,C], receptance.weight [C,C],
//! value.weight [C,F]}`.

use super::block::{ChannelMix, TimeMix};
use super::projection::Projection;
use super::token_shift::{Blend, token_shift};
use super::{Dims, Spec};
use crate::config::{RwkvConfig, Version};
use crate::weights::{InitParam, LoadError, Role, Weights};
use crate::wkv::{Wkv4State, wkv4};
use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid};

/// RWKV-4 in the library's version table.
pub(crate) const SPEC: Spec = Spec {
    version: Version::V4,
    detect: |t| t.any("att.time_first").then_some(Version::V4),
    dims: |_, _| {
        Ok(Dims {
            head_size: None,
            lora: Default::default(),
        })
    },
    load: |w, config, _| {
        Ok((
            TimeMix::V4(w.within("att", |w| TimeMix4::load(w, config))?),
            ChannelMix::V4(w.within("ffn", |w| ChannelMix4::load(w, config))?),
        ))
    },
    init,
};

/// RWKV-4 time-mix: token shift, R/K/V projections, WKV, receptance gate, output projection.
#[derive(Module, Debug)]
pub struct TimeMix4 {
    /// Raw decay `[A]`; the WKV uses `w = -exp(time_decay)`.
    pub time_decay: Param<Tensor<1>>,
    /// Bonus for the current token `[A]` (`u`, log-space).
    pub time_first: Param<Tensor<1>>,
    /// Token-shift mix for the key `[C]`.
    pub time_mix_k: Param<Tensor<1>>,
    /// Token-shift mix for the value `[C]`.
    pub time_mix_v: Param<Tensor<1>>,
    /// Token-shift mix for the receptance `[C]`.
    pub time_mix_r: Param<Tensor<1>>,
    /// `C -> A`.
    pub key: Projection,
    /// `C -> A`.
    pub value: Projection,
    /// `C -> A`.
    pub receptance: Projection,
    /// `A -> C`.
    pub output: Projection,
}

impl TimeMix4 {
    /// Reads `att.*` of one block (`w` scoped there).
    pub fn load(w: &mut Weights, config: &RwkvConfig) -> Result<Self, LoadError> {
        let (c, a) = (config.n_embd, config.dim_att);
        Ok(Self {
            time_decay: w.vector(Role::Decay, "time_decay", a)?,
            time_first: w.vector(Role::Bonus, "time_first", a)?,
            time_mix_k: w.per_channel(Role::Mix, "time_mix_k", c)?,
            time_mix_v: w.per_channel(Role::Mix, "time_mix_v", c)?,
            time_mix_r: w.per_channel(Role::Mix, "time_mix_r", c)?,
            key: Projection::load(w, Role::Matrix, "key.weight", a, c)?,
            value: Projection::load(w, Role::Matrix, "value.weight", a, c)?,
            receptance: Projection::load(w, Role::Matrix, "receptance.weight", a, c)?,
            output: Projection::load(w, Role::Output, "output.weight", c, a)?,
        })
    }

    /// `x` is the ln1 output `[B, T, C]`; returns the residual update `[B, T, C]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        shift: &mut Tensor<2>,
        wkv_state: &mut Wkv4State,
    ) -> Tensor<3> {
        let (prev, last) = token_shift(x.clone(), shift.clone());
        *shift = last;
        let blend = Blend::new(x, prev);
        let k = self.key.forward(blend.mix(self.time_mix_k.val()));
        let v = self.value.forward(blend.mix(self.time_mix_v.val()));
        let r = sigmoid(self.receptance.forward(blend.mix(self.time_mix_r.val())));
        let w = self.time_decay.val().exp().neg();
        let (y, state) = wkv4(w, self.time_first.val(), k, v, wkv_state.clone());
        *wkv_state = state;
        self.output.forward(r * y)
    }
    /// Its projections, for summaries of the weights.
    pub fn projections(&self) -> Vec<&Projection> {
        vec![&self.key, &self.value, &self.receptance, &self.output]
    }

    /// Its projections by official leaf name (for adapters).
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut Projection)> {
        vec![
            ("key", &mut self.key),
            ("value", &mut self.value),
            ("receptance", &mut self.receptance),
            ("output", &mut self.output),
        ]
    }

    /// Width of the attention projections (A).
    pub fn dim_att(&self) -> usize {
        self.time_decay.dims()[0]
    }
}

/// RWKV-4 channel-mix: token shift, squared-ReLU MLP, receptance gate.
#[derive(Module, Debug)]
pub struct ChannelMix4 {
    /// Token-shift mix for the key `[C]`.
    pub time_mix_k: Param<Tensor<1>>,
    /// Token-shift mix for the receptance `[C]`.
    pub time_mix_r: Param<Tensor<1>>,
    /// `C -> F`.
    pub key: Projection,
    /// `C -> C`.
    pub receptance: Projection,
    /// `F -> C`.
    pub value: Projection,
}

impl ChannelMix4 {
    /// Reads `ffn.*` of one block (`w` scoped there).
    pub fn load(w: &mut Weights, config: &RwkvConfig) -> Result<Self, LoadError> {
        let (c, f) = (config.n_embd, config.dim_ffn);
        Ok(Self {
            time_mix_k: w.per_channel(Role::Mix, "time_mix_k", c)?,
            time_mix_r: w.per_channel(Role::Mix, "time_mix_r", c)?,
            key: Projection::load(w, Role::Matrix, "key.weight", f, c)?,
            receptance: Projection::load(w, Role::Output, "receptance.weight", c, c)?,
            value: Projection::load(w, Role::Output, "value.weight", c, f)?,
        })
    }

    /// `x` is the ln2 output `[B, T, C]`; returns the residual update `[B, T, C]`.
    pub fn forward(&self, x: Tensor<3>, shift: &mut Tensor<2>) -> Tensor<3> {
        let (prev, last) = token_shift(x.clone(), shift.clone());
        *shift = last;
        let blend = Blend::new(x, prev);
        let k = self.key.forward(blend.mix(self.time_mix_k.val()));
        let r = sigmoid(self.receptance.forward(blend.mix(self.time_mix_r.val())));
        let k = relu(k);
        r * self.value.forward(k.clone() * k)
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

/// RWKV-LM's initial mixes, decays and bonuses of RWKV-4 (RWKV-5.2 and 6 reuse the decay and
/// bonus rules): mixes `ddd^p`, decays rising from -5 to 3 across channels, bonuses
/// `ln(0.3)` with a zigzag.
pub(crate) fn init(p: &InitParam) -> Option<Vec<f32>> {
    let r1a0 = p.r1a0;
    Some(match (p.role, p.leaf) {
        (Role::Mix, "time_mix_v") => p.ramp(|d| d.powf(r1a0) + 0.3 * p.r01),
        (Role::Mix, "time_mix_r" | "time_mix_g") => p.ramp(|d| d.powf(0.5 * r1a0)),
        (Role::Mix, _) => p.ramp(|d| d.powf(r1a0)),
        (Role::Decay, _) => {
            let n = p.count.max(2) as f32 - 1.0;
            (0..p.count)
                .map(|i| -5.0 + 8.0 * (i as f32 / n).powf(0.7 + 1.3 * p.r01))
                .collect()
        }
        (Role::Bonus, _) => (0..p.count)
            .map(|i| 0.3f32.ln() + 0.5 * (((i + 1) % 3) as f32 - 1.0))
            .collect(),
        _ => return None,
    })
}
