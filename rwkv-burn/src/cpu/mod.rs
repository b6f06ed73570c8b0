//! The CPU decode path: how weights are laid out on the flex device and how the model
//! multiplies by them there. Two entry points, one for each side:
//!
//! - [`decode_weight`], for the loader: a checkpoint's `[out, in]` matrix placed where the
//!   decode kernels stream it (`layout.rs`);
//! - [`project`], for the model: `x @ W` through the fastest path the device has
//!   (`matvec.rs` for the few rows of decode, gemm for more, Burn's own op on other devices).
//!
//! [`on_worker`] runs a whole model call where those products split best. Everything that
//! depends on CPU micro-architecture (vector widths, alignment, huge pages, threads) stays
//! in this module; the model meets it only through these functions.

#[cfg(feature = "flex")]
mod layout;
#[cfg(feature = "flex")]
mod matvec;

use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

/// A checkpoint's `[out, in]` matrix (`values`, row-major) laid out for the CPU decode kernels
/// as Burn's `[in, out]`, or `None` where `device` has none (the loader then transposes on the
/// host).
pub(crate) fn decode_weight(
    values: &[f32],
    out: usize,
    input: usize,
    device: &Device,
) -> Option<Tensor<2>> {
    #[cfg(feature = "flex")]
    if is_flex(device) {
        return Some(layout::weight_rows(values, out, input, device));
    }
    let _ = (values, out, input, device);
    None
}

/// `x @ W` through a bias-free Linear.
///
/// On flex, a few rows (decode at batch 1 to 4) go through `matvec`, which reads each weight
/// row once for all of them on two threads, and more rows through a 2-D `matmul` (gemm with
/// its own threads). Measured side by side on 2 cores against gemm on dense `[in, out]`
/// weights split over two threads (`rwkv bench --preset P --prefill 256 --decode 200 --batch
/// 4`, alternating runs): batch-4 decode 110 -> 192 tok/s (4-169m) and 99 -> 157 (7-0.1b),
/// batch 1 and prefill unchanged. Other backends thread their own products.
pub(crate) fn project<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    if linear.bias.is_some() || !is_flex(&x.device()) {
        return linear.forward(x);
    }
    let dims = x.dims();
    let inputs = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    let weight = linear.weight.val();
    let mut out = dims;
    out[D - 1] = weight.dims()[1];
    let x = x.reshape([rows, inputs]);
    #[cfg(feature = "flex")]
    if let Some(y) = matvec::small_rows(&x, &weight) {
        return y.reshape(out);
    }
    x.matmul(weight).reshape(out)
}

/// Whether `device` is flex (without autodiff: training keeps the plain path).
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

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::model::layers::linear;
    use crate::random::Lcg;
    use crate::test_util::assert_close;
    use burn::tensor::TensorData;

    #[test]
    fn split_matrix_vector_product_equals_the_plain_one() {
        let device = Device::flex();
        let (inputs, outputs) = (1024, 600); // above matvec's SPLIT_MIN_ELEMENTS
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
