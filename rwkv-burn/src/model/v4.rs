//! RWKV-4 time-mix and channel-mix (the paper's architecture).

use super::layers::project;
use super::token_shift::{Blend, token_shift};
use crate::wkv::{Wkv4State, wkv4};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid};

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
    pub key: Linear,
    /// `C -> A`.
    pub value: Linear,
    /// `C -> A`.
    pub receptance: Linear,
    /// `A -> C`.
    pub output: Linear,
}

impl TimeMix4 {
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
        let k = project(&self.key, blend.mix(self.time_mix_k.val()));
        let v = project(&self.value, blend.mix(self.time_mix_v.val()));
        let r = sigmoid(project(&self.receptance, blend.mix(self.time_mix_r.val())));
        let w = self.time_decay.val().exp().neg();
        let (y, state) = wkv4(w, self.time_first.val(), k, v, wkv_state.clone());
        *wkv_state = state;
        project(&self.output, r * y)
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
    pub key: Linear,
    /// `C -> C`.
    pub receptance: Linear,
    /// `F -> C`.
    pub value: Linear,
}

impl ChannelMix4 {
    /// `x` is the ln2 output `[B, T, C]`; returns the residual update `[B, T, C]`.
    pub fn forward(&self, x: Tensor<3>, shift: &mut Tensor<2>) -> Tensor<3> {
        let (prev, last) = token_shift(x.clone(), shift.clone());
        *shift = last;
        let blend = Blend::new(x, prev);
        let k = project(&self.key, blend.mix(self.time_mix_k.val()));
        let r = sigmoid(project(&self.receptance, blend.mix(self.time_mix_r.val())));
        let k = relu(k);
        r * project(&self.value, k.clone() * k)
    }

    /// Width of the hidden layer (F).
    pub fn dim_ffn(&self) -> usize {
        self.key.weight.dims()[1]
    }
}
