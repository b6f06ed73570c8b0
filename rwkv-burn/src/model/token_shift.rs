//! Token shift: each position sees the previous position's (normalised) input.

use burn::tensor::Tensor;

/// Returns `(previous, last)`: `previous[:, t] = x[:, t-1]` with `prev` (the state carried
/// from the last call, `[B, C]`) standing in for position -1, and `last = x[:, T-1]`, the
/// state for the next call.
///
/// The state stays f32 whatever precision the activations use (see [`crate::Rwkv::cast`]).
pub fn token_shift(x: Tensor<3>, prev: Tensor<2>) -> (Tensor<3>, Tensor<2>) {
    let [batch, len, channels] = x.dims();
    let (compute, stored) = (x.dtype(), prev.dtype());
    let last = x
        .clone()
        .slice([0..batch, len - 1..len, 0..channels])
        .reshape([batch, channels]);
    let last = if compute == stored {
        last
    } else {
        last.cast(stored)
    };
    let prev = if compute == stored {
        prev
    } else {
        prev.cast(compute)
    };
    let prev = prev.reshape([batch, 1, channels]);
    let previous = if len == 1 {
        prev
    } else {
        Tensor::cat(vec![prev, x.slice([0..batch, 0..len - 1, 0..channels])], 1)
    };
    (previous, last)
}

/// `a * mix + b * (1 - mix)`, the interpolation RWKV uses to blend a token with its predecessor.
pub fn lerp(a: Tensor<3>, b: Tensor<3>, mix: Tensor<1>) -> Tensor<3> {
    let mix = mix.unsqueeze::<3>();
    let keep = mix.clone().neg() + 1.0;
    a * mix + b * keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::test_devices;
    use burn::tensor::TensorData;

    #[test]
    fn shifts_by_one_and_returns_last() {
        for device in test_devices() {
            let x = Tensor::<3>::from_data(
                TensorData::new((1..=12).map(|v| v as f32).collect::<Vec<_>>(), [2, 3, 2]),
                &device,
            );
            let prev = Tensor::<2>::from_data([[-1.0, -2.0], [-3.0, -4.0]], &device);
            let (shifted, last) = token_shift(x, prev);
            assert_eq!(
                shifted.into_data().try_to_vec::<f32>().unwrap(),
                vec![
                    -1.0, -2.0, 1.0, 2.0, 3.0, 4.0, -3.0, -4.0, 7.0, 8.0, 9.0, 10.0
                ]
            );
            assert_eq!(
                last.into_data().try_to_vec::<f32>().unwrap(),
                vec![5.0, 6.0, 11.0, 12.0]
            );
        }
    }
}
