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

/// Weights below this many elements are multiplied on one thread: splitting costs more than
/// it saves on them.
const SPLIT_MIN_ELEMENTS: usize = 1 << 19;

/// `x @ W` through a bias-free Linear. On flex, for a single row (decode at batch 1), the two
/// halves of the contraction run on two threads and are summed: one core does not saturate
/// memory bandwidth on a matrix-vector product, and flex's gemm runs matrix-vector products on
/// one thread (measured: 1.3x on 768×3072, 1.7x on the 768×50277 head; decode of the 4-169m
/// shape 58 -> 73 tok/s). Slicing the weight by rows takes a view, so nothing is copied.
/// ndarray and libtorch thread their own products and measured slower split, so they are left
/// alone.
pub fn project<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let inputs = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    let weight = linear.weight.val();
    let [_, outputs] = weight.dims();
    if rows != 1
        || linear.bias.is_some()
        || inputs * outputs < SPLIT_MIN_ELEMENTS
        || rayon::current_num_threads() < 2
        || !on_flex(&x)
    {
        return linear.forward(x);
    }
    let half = inputs / 2;
    let x = x.reshape([1, inputs]);
    let (low, high) = rayon::join(
        || {
            x.clone()
                .slice([0..1, 0..half])
                .matmul(weight.clone().slice([0..half, 0..outputs]))
        },
        || {
            x.clone()
                .slice([0..1, half..inputs])
                .matmul(weight.clone().slice([half..inputs, 0..outputs]))
        },
    );
    let mut out = dims;
    out[D - 1] = outputs;
    (low + high).reshape(out)
}

/// Whether `x` lives on the flex device (without autodiff: training keeps the plain path).
fn on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    is_flex(&x.device())
}

fn is_flex(device: &Device) -> bool {
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
