//! The layers every RWKV version shares: Burn's LayerNorm and Linear with RWKV's settings,
//! the per-head GroupNorm, and head splitting.

use crate::weights::{LoadError, Role, Weights};
use burn::module::Param;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::Tensor;

/// LayerNorm eps used by every RWKV version for its LayerNorms.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// A LayerNorm with the given scale and bias.
pub fn layer_norm(weight: Tensor<1>, bias: Tensor<1>) -> LayerNorm {
    let [dim] = weight.dims();
    let mut norm = LayerNormConfig::new(dim)
        .with_epsilon(LAYER_NORM_EPS)
        .init(&weight.device());
    norm.gamma = Param::from_tensor(weight);
    norm.beta = Some(Param::from_tensor(bias));
    norm
}

/// The LayerNorm `{leaf}.weight`, `{leaf}.bias` of a checkpoint.
pub fn load_layer_norm(w: &mut Weights, leaf: &str, dim: usize) -> Result<LayerNorm, LoadError> {
    w.within(leaf, |w| {
        let weight = w.vector(Role::NormScale, "weight", dim)?;
        let bias = w.vector(Role::NormShift, "bias", dim)?;
        let mut norm = layer_norm(weight.val(), bias.val());
        (norm.gamma, norm.beta) = (weight, Some(bias));
        Ok(norm)
    })
}

/// A bias-free Linear from a weight stored Burn-style as `[in, out]`.
pub fn linear(weight_in_out: Tensor<2>) -> Linear {
    Linear {
        weight: Param::from_tensor(weight_in_out),
        bias: None,
    }
}

/// eps of the per-head GroupNorm `ln_x` of RWKV-5 and later (hard-coded in the official code).
pub const LN_X_EPS: f64 = 64e-5;

/// The per-head GroupNorm `ln_x`, normalising each head's channels of each token.
pub fn ln_x(weight: Tensor<1>, bias: Tensor<1>, heads: usize) -> GroupNorm {
    let [channels] = weight.dims();
    GroupNorm {
        gamma: Some(Param::from_tensor(weight)),
        beta: Some(Param::from_tensor(bias)),
        num_groups: heads,
        num_channels: channels,
        epsilon: LN_X_EPS,
        affine: true,
    }
}

/// The per-head GroupNorm `{leaf}.weight`, `{leaf}.bias` of a checkpoint.
pub fn load_ln_x(
    w: &mut Weights,
    leaf: &str,
    dim: usize,
    heads: usize,
) -> Result<GroupNorm, LoadError> {
    w.within(leaf, |w| {
        let weight = w.vector(Role::HeadNormScale, "weight", dim)?;
        let bias = w.vector(Role::NormShift, "bias", dim)?;
        let mut norm = ln_x(weight.val(), bias.val(), heads);
        (norm.gamma, norm.beta) = (Some(weight), Some(bias));
        Ok(norm)
    })
}

/// Applies `ln_x` to `[B, T, A]`, token by token.
pub fn apply_ln_x(norm: &GroupNorm, x: Tensor<3>) -> Tensor<3> {
    let [batch, len, channels] = x.dims();
    norm.forward(x.reshape([batch * len, channels]))
        .reshape([batch, len, channels])
}

/// `[B, T, H*N]` -> `[B, T, H, N]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [batch, len, channels] = x.dims();
    x.reshape([batch, len, heads, channels / heads])
}

/// `[B, T, H, N]` -> `[B, T, H*N]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [batch, len, heads, n] = x.dims();
    x.reshape([batch, len, heads * n])
}
