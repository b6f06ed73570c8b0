//! Decode's products `x W` on flex for a few rows (batch 1 to 4), with the weight stored
//! `[out, in]` (the loader keeps checkpoints' layout and hands Burn a transposed view).
//!
//! Decode reads every weight once per step, so its speed is the speed of streaming the
//! weights. Here each weight row is read once for all the input rows (dot products against
//! up to four inputs held in L1), and the outputs are split between two threads. Measured
//! against gemm on this layout and on `[in, out]` in `rwkv bench` (see `project`); gemm's
//! own small-row path reads the weight once per input row.

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use std::ops::Range;

/// Input rows handled by one pass over the weight.
pub(crate) const MAX_ROWS: usize = 4;

/// Weights below this many elements run on one thread: splitting costs more than it saves.
const SPLIT_MIN_ELEMENTS: usize = 1 << 19;

/// `x [M, K] @ weight [K, N]` when both live on flex in f32, `M <= MAX_ROWS`, and the weight
/// is a transposed view of a dense `[N, K]` buffer; `None` otherwise (the caller uses
/// `matmul`).
pub(crate) fn small_rows(x: &Tensor<2>, weight: &Tensor<2>) -> Option<Tensor<2>> {
    let [m, k] = x.dims();
    let [k2, n] = weight.dims();
    if m == 0 || m > MAX_ROWS || k != k2 || k == 0 || n == 0 {
        return None;
    }
    let device = x.device();
    let xs = x.clone().try_into_primitive::<Flex>().ok()?;
    let ws = weight.clone().try_into_primitive::<Flex>().ok()?;
    if xs.dtype() != DType::F32 || ws.dtype() != DType::F32 {
        return None;
    }
    // The weight: element (i, o) at o·K + i of one dense buffer.
    let layout = ws.layout();
    if layout.strides() != [1, k as isize] {
        return None;
    }
    let start = layout.start_offset();
    let w = ws.storage::<f32>().get(start..start + n * k)?;
    let xs = xs.to_contiguous();
    let x = xs.as_slice::<f32>()?;

    let mut y = vec![0f32; m * n];
    if n * k >= SPLIT_MIN_ELEMENTS && rayon::current_num_threads() >= 2 {
        // Each thread writes its own output columns: outputs are laid out row by row, so the
        // halves are gathered from two buffers.
        let half = n / 2;
        let (low, high) = rayon::join(
            || columns(m, x, w, k, 0..half),
            || columns(m, x, w, k, half..n),
        );
        for r in 0..m {
            y[r * n..r * n + half].copy_from_slice(&low[r * half..(r + 1) * half]);
            let rest = n - half;
            y[r * n + half..(r + 1) * n].copy_from_slice(&high[r * rest..(r + 1) * rest]);
        }
    } else {
        y = columns(m, x, w, k, 0..n);
    }
    Some(Tensor::from_data(TensorData::new(y, [m, n]), &device))
}

/// Outputs `cols` of every row: `[M, cols.len()]`.
fn columns(m: usize, x: &[f32], w: &[f32], k: usize, cols: Range<usize>) -> Vec<f32> {
    let mut y = vec![0f32; m * cols.len()];
    match m {
        1 => dispatch::<1>(x, w, k, cols, &mut y),
        2 => dispatch::<2>(x, w, k, cols, &mut y),
        3 => dispatch::<3>(x, w, k, cols, &mut y),
        _ => dispatch::<4>(x, w, k, cols, &mut y),
    }
    y
}

fn dispatch<const M: usize>(x: &[f32], w: &[f32], k: usize, cols: Range<usize>, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe {
            if M <= 3 {
                dots_avx2::<M, 32>(x, w, k, cols, y)
            } else {
                dots_avx2::<M, 16>(x, w, k, cols, y)
            }
        };
        return;
    }
    dots::<M, false, 16>(x, w, k, cols, y);
}

/// With AVX2, `LANES` accumulators per input row are `LANES / 8` vectors, independent add
/// chains: four for up to three rows, two for four (what 16 vector registers hold). Measured
/// (`rwkv bench --preset 4-169m --batch N`): with two chains, batch 2 and 3 decoded no faster
/// in total than batch 1 (69 tok/s; the compiler's code for those shapes streams poorly),
/// with four 120 and 170; batch 1 gains ~3%.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2<const M: usize, const LANES: usize>(
    x: &[f32],
    w: &[f32],
    k: usize,
    cols: Range<usize>,
    y: &mut [f32],
) {
    dots::<M, true, LANES>(x, w, k, cols, y);
}

/// `y[r, o - cols.start] += x[r, :] · w[o, :]` for `o` in `cols`. The contraction runs in
/// tiles, so that the tile of every input row stays in L1 while weight rows stream past.
#[inline(always)]
fn dots<const M: usize, const FMA: bool, const LANES: usize>(
    x: &[f32],
    w: &[f32],
    k: usize,
    cols: Range<usize>,
    y: &mut [f32],
) {
    let width = cols.len();
    let tile = (4096 / M).max(LANES);
    let mut from = 0;
    while from < k {
        let to = (from + tile).min(k);
        for (c, o) in cols.clone().enumerate() {
            let row = &w[o * k + from..o * k + to];
            let mut acc = [[0f32; LANES]; M];
            let mut chunks = row.chunks_exact(LANES);
            let mut at = from;
            for chunk in &mut chunks {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xr = &x[r * k + at..r * k + at + LANES];
                    for l in 0..LANES {
                        acc[l] = if FMA {
                            chunk[l].mul_add(xr[l], acc[l])
                        } else {
                            acc[l] + chunk[l] * xr[l]
                        };
                    }
                }
                at += LANES;
            }
            for (r, acc) in acc.iter().enumerate() {
                let mut total: f32 = acc.iter().sum();
                for (i, wv) in chunks.remainder().iter().enumerate() {
                    total += wv * x[r * k + at + i];
                }
                y[r * width + c] += total;
            }
        }
        from = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Lcg;

    /// Against a plain f64 product, for every row count, odd sizes (remainders, one tile and
    /// several) and a size that splits over threads.
    #[test]
    fn matches_a_plain_product() {
        let device = burn::tensor::Device::flex();
        let mut rng = Lcg::new(7);
        for (m, k, n) in [
            (1, 5, 3),
            (2, 37, 9),
            (3, 1100, 17),
            (4, 3000, 33),
            (1, 768, 1024),
            (2, 1024, 768),
        ] {
            let x = rng.vec(m * k, 1.0);
            let w_out_in = rng.vec(n * k, 1.0);
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
            let wt = Tensor::<2>::from_data(TensorData::new(w_out_in.clone(), [n, k]), &device)
                .transpose();
            let got = small_rows(&xt, &wt)
                .expect("takes the fast path")
                .into_data();
            let got = got.as_slice::<f32>().unwrap();
            for r in 0..m {
                for o in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| x[r * k + i] as f64 * w_out_in[o * k + i] as f64)
                        .sum();
                    let g = got[r * n + o] as f64;
                    assert!(
                        (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{m}x{k}x{n} [{r},{o}]: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let device = burn::tensor::Device::flex();
        let dense = Tensor::<2>::ones([8, 4], &device);
        let x = Tensor::<2>::ones([1, 8], &device);
        // `[in, out]` dense, five rows, mismatched sizes.
        assert!(small_rows(&x, &dense).is_none());
        let t = Tensor::<2>::ones([4, 8], &device).transpose();
        assert!(small_rows(&Tensor::<2>::ones([5, 8], &device), &t).is_none());
        assert!(small_rows(&Tensor::<2>::ones([1, 7], &device), &t).is_none());
        assert!(small_rows(&x, &t).is_some());
    }
}
