//! Builders for Burn's standard layers from checkpoint tensors.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
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

/// A bias-free Linear from a weight stored Burn-style as `[in, out]`.
pub fn linear(weight_in_out: Tensor<2>) -> Linear {
    Linear {
        weight: Param::from_tensor(weight_in_out),
        bias: None,
    }
}
