//! Builders for Burn's standard layers from checkpoint tensors.

use burn::module::Param;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Tensor};

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

/// `x @ W` through a bias-free Linear.
///
/// On flex, a few rows (decode at batch 1 to 4) go through `matvec`, which reads each weight
/// row once for all of them on two threads, and more rows through a 2-D `matmul` (gemm with
/// its own threads). Measured side by side on 2 cores against gemm on dense `[in, out]`
/// weights split over two threads (`rwkv bench --preset P --prefill 256 --decode 200 --batch
/// 4`, alternating runs): batch-4 decode 110 -> 192 tok/s (4-169m) and 99 -> 157 (7-0.1b),
/// batch 1 and prefill unchanged. Other backends thread their own products.
pub fn project<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let inputs = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    if linear.bias.is_some() || !on_flex(&x) {
        return linear.forward(x);
    }
    let weight = linear.weight.val();
    let mut out = dims;
    out[D - 1] = weight.dims()[1];
    let x = x.reshape([rows, inputs]);
    #[cfg(feature = "flex")]
    if let Some(y) = super::matvec::small_rows(&x, &weight) {
        return y.reshape(out);
    }
    x.matmul(weight).reshape(out)
}

/// Whether `x` lives on the flex device (without autodiff: training keeps the plain path).
fn on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    is_flex(&x.device())
}

/// Whether `device` is flex (without autodiff).
pub(crate) fn is_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        *device == Device::flex()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

/// Runs `f`, a model call on `device`, on a rayon worker thread when [`project`] splits
/// products over threads there. From a worker, `project`'s `rayon::join` runs one half itself
/// and the other worker steals the other; from outside the pool both halves are injected and
/// the caller sleeps until they finish, a futex wake-up and sleep for every product (about 85
/// per token of the 169M shape). Measured on 2 cores (4-169m, `rwkv bench --prefill 64
/// --decode 256 --batch 2`, five runs each, alternating): batch-1 decode 79-82 -> 89-91
/// tok/s, batch 2 51-52 -> 57.
pub(crate) fn on_worker<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if is_flex(device) && rayon::current_num_threads() >= 2 {
        rayon::scope(|_| f())
    } else {
        f()
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

#[cfg(all(test, feature = "flex"))]
mod project_tests {
    use super::*;
    use crate::test_util::{Lcg, assert_close};
    use burn::tensor::{Device, TensorData};

    #[test]
    fn split_matrix_vector_product_equals_the_plain_one() {
        let device = Device::flex();
        let (inputs, outputs) = (1024, 600); // above SPLIT_MIN_ELEMENTS
        let mut rng = Lcg::new(3);
        let weight = Tensor::<2>::from_data(
            TensorData::new(rng.vec(inputs * outputs, 0.1), [inputs, outputs]),
            &device,
        );
        let layer = linear(weight);
        for rows in [1, 2] {
            let x = Tensor::<3>::from_data(
                TensorData::new(rng.vec(rows * inputs, 1.0), [1, rows, inputs]),
                &device,
            );
            let got = project(&layer, x.clone());
            assert_eq!(got.dims(), [1, rows, outputs]);
            let want = layer.forward(x).into_data().try_to_vec::<f32>().unwrap();
            let got = got.into_data().try_to_vec::<f32>().unwrap();
            assert_close(&got, &want, 1e-5, "project");
        }
    }
}
