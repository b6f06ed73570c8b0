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
    let groups = norm.num_groups;
    group_norm_rows(norm, x.reshape([batch * len, groups, channels / groups]))
        .reshape([batch, len, channels])
}

/// `ln_x` on rows already split into its groups, `[R, G, N]` (`G` = `norm.num_groups`),
/// computed as Burn's `GroupNorm` computes it, but with every reshape done before the
/// element-wise steps: in Burn's `GroupNorm` the affine parameters are reshaped between them,
/// which ends a fusion block there, so on CubeCL devices each step was a kernel launch of
/// its own (5 per layer of a decode step; `RWKV_TRACE_LAUNCHES=1 rwkv bench --device wgpu`).
/// Callers that stay in `[R, G, N]` (RWKV-7's bonus and gate) extend the same block.
pub fn group_norm_rows(norm: &GroupNorm, x: Tensor<3>) -> Tensor<3> {
    let [_, groups, n] = x.dims();
    let affine = |p: &Option<Param<Tensor<1>>>| p.as_ref().map(|p| p.val().reshape([1, groups, n]));
    let (gamma, beta) = (affine(&norm.gamma), affine(&norm.beta));
    // As Burn's GroupNorm: the statistics of f16 input in f32 (a sum of squares overflows f16).
    let original = x.dtype();
    let x = match original {
        burn::tensor::DType::F16 => x.cast(burn::tensor::FloatDType::F32),
        _ => x,
    };
    let mean = x.clone().mean_dim(2);
    let x = x - mean;
    let var = x.clone().square().mean_dim(2);
    let y = x / var.add_scalar(norm.epsilon).sqrt();
    let y = match original {
        burn::tensor::DType::F16 => y.cast(burn::tensor::FloatDType::F16),
        _ => y,
    };
    match (gamma, beta) {
        (Some(gamma), Some(beta)) => y * gamma + beta,
        _ => y,
    }
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
