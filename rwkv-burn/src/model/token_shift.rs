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

/// The interpolation RWKV uses to blend a token with its predecessor, `x * mix + prev * (1 -
/// mix)`, for several mixes of the same pair. Written `prev + (x - prev) * mix`, the difference
/// is shared and each mix costs two tensor ops instead of five: decode at batch 1 is a chain of
/// small ops on `[1, 1, C]` (RWKV-4 mixes five times per layer), each paying Burn's dispatch
/// and an allocation. Equal to the official form up to float rounding.
pub struct Blend {
    prev: Tensor<3>,
    delta: Tensor<3>,
}

impl Blend {
    /// Blends of `x` `[B, T, C]` with `prev`, its token-shifted copy.
    pub fn new(x: Tensor<3>, prev: Tensor<3>) -> Self {
        let delta = x - prev.clone();
        Self { prev, delta }
    }

    /// `x * mix + prev * (1 - mix)` for a mix `[C]`.
    pub fn mix(&self, mix: Tensor<1>) -> Tensor<3> {
        self.prev.clone() + self.delta.clone() * mix.unsqueeze::<3>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::test_devices;
    use burn::tensor::TensorData;

    #[test]
    fn blend_interpolates_between_token_and_predecessor() {
        for device in test_devices() {
            let x = Tensor::<3>::from_data([[[1.0, 2.0, -4.0]]], &device);
            let prev = Tensor::<3>::from_data([[[3.0, 2.0, 4.0]]], &device);
            let blend = Blend::new(x, prev);
            let mix = |m: [f32; 3]| {
                let m = Tensor::<1>::from_data(m, &device);
                blend.mix(m).into_data().try_to_vec::<f32>().unwrap()
            };
            assert_eq!(mix([1.0, 1.0, 1.0]), vec![1.0, 2.0, -4.0]);
            assert_eq!(mix([0.0, 0.0, 0.0]), vec![3.0, 2.0, 4.0]);
            assert_eq!(mix([0.25, 0.5, 0.75]), vec![2.5, 2.0, -2.0]);
        }
    }

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
