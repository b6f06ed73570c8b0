//! Decode's products through the channel-mix value matrix, which skip the inputs that are
//! zero: the channel-mix computes `value(relu(key(x))²)`, and most of those activations are
//! exactly zero. Counted by `benches/src/bin/ffn_sparsity.rs`
//! (`cargo run --release -p rwkv-burn-benches --bin ffn-sparsity`): 88.9% of them on the
//! embedded (trained) model's held-out text, 50.0% on a random 7-0.1b-shape model. A zero
//! input multiplies a whole row of the `[in, out]` matrix, so the matrix is kept input-major
//! here (one contiguous row per input) and only the rows of nonzero inputs are read: each
//! adds `x_i · W[i, ..]` to the outputs. Exact: the same products, summed in another order.

use super::matvec::{Kernel, MAX_ROWS, split_outputs};
use super::packed::PackedMatrix;
use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use std::ops::Range;

/// Outputs per pass over the nonzero inputs: each input row's slice of the outputs stays in
/// L1 while the weight rows stream past.
const TILE: usize = 1024;

/// `x [M, K] @ weight [K, N]` when both live on flex in f32, `M <= MAX_ROWS`, and the weight
/// is one dense row-major `[K, N]` buffer (the input-major layout the loader gives the
/// channel-mix value); `None` otherwise.
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
    let layout = ws.layout();
    if layout.strides() != [n as isize, 1] {
        return None;
    }
    let start = layout.start_offset();
    let w = ws.storage::<f32>().get(start..start + k * n)?;
    let xs = xs.to_contiguous();
    let x = xs.as_slice::<f32>()?;
    let y = products(x, m, w, k, n);
    Some(Tensor::from_data(TensorData::new(y, [m, n]), &device))
}

/// `x [m, k] · w [k, n]` (`w` row-major) for `m <= MAX_ROWS`, reading only the rows of `w`
/// whose input is nonzero in some row of `x`.
fn products(x: &[f32], m: usize, w: &[f32], k: usize, n: usize) -> Vec<f32> {
    assert!((1..=MAX_ROWS).contains(&m) && x.len() == m * k && w.len() == k * n);
    let nonzero: Vec<usize> = (0..k)
        .filter(|&i| (0..m).any(|r| x[r * k + i] != 0.0))
        .collect();
    let kernel = Kernel::best();
    split_outputs(m, n, k, |cols| {
        let mut y = vec![0f32; m * cols.len()];
        match kernel {
            // SAFETY (both): `Kernel::best` returns these only when the CPU has the features
            // the functions are compiled for (AVX-512F; AVX2 and FMA).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { add_rows_avx512(x, m, w, k, n, &nonzero, cols, &mut y) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { add_rows_avx2(x, m, w, k, n, &nonzero, cols, &mut y) },
            Kernel::Portable => add_rows::<false>(x, m, w, k, n, &nonzero, cols, &mut y),
        }
        y
    })
}

/// `x [m, k] · Wᵀ` for an input-major packed `W` (`[n, k]` as the checkpoint has it) and
/// `m <= MAX_ROWS`: the nonzero inputs' rows of weights widened to f32 a tile at a time and
/// added as in [`products`].
pub(super) fn packed_products(x: &[f32], m: usize, weight: &PackedMatrix) -> Vec<f32> {
    let [n, k] = weight.dims();
    assert!((1..=MAX_ROWS).contains(&m) && x.len() == m * k && weight.is_input_major());
    let nonzero: Vec<usize> = (0..k)
        .filter(|&i| (0..m).any(|r| x[r * k + i] != 0.0))
        .collect();
    let kernel = Kernel::best();
    split_outputs(m, n, k, |cols| {
        let mut y = vec![0f32; m * cols.len()];
        match kernel {
            // SAFETY (both): `Kernel::best` returns these only when the CPU has the features.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                add_packed_rows_avx512(x, m, weight, &nonzero, cols, &mut y)
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { add_packed_rows_avx2(x, m, weight, &nonzero, cols, &mut y) },
            Kernel::Portable => add_packed_rows::<false>(x, m, weight, &nonzero, cols, &mut y),
        }
        y
    })
}

/// [`add_rows`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
fn add_rows_avx512(
    x: &[f32],
    m: usize,
    w: &[f32],
    k: usize,
    n: usize,
    nonzero: &[usize],
    cols: Range<usize>,
    y: &mut [f32],
) {
    add_rows::<true>(x, m, w, k, n, nonzero, cols, y)
}

/// [`add_rows`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn add_rows_avx2(
    x: &[f32],
    m: usize,
    w: &[f32],
    k: usize,
    n: usize,
    nonzero: &[usize],
    cols: Range<usize>,
    y: &mut [f32],
) {
    add_rows::<true>(x, m, w, k, n, nonzero, cols, y)
}

/// `y[r, ..] += x[r, i] · w[i, cols]` for every nonzero input `i`, a tile of outputs at a time
/// and four inputs at once (each output read and written once per four rows of weights;
/// one at a time the loads and stores of `y` made the 7-0.1b shape's decode slower than the
/// dense kernel it replaced). `y` is `[m, cols.len()]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn add_rows<const FMA: bool>(
    x: &[f32],
    m: usize,
    w: &[f32],
    k: usize,
    n: usize,
    nonzero: &[usize],
    cols: Range<usize>,
    y: &mut [f32],
) {
    let width = cols.len();
    let zeros = [0f32; TILE];
    let mut from = cols.start;
    while from < cols.end {
        let to = (from + TILE).min(cols.end);
        for group in nonzero.chunks(4) {
            let rows: [&[f32]; 4] = std::array::from_fn(|j| match group.get(j) {
                Some(&i) => &w[i * n + from..i * n + to],
                None => &zeros[..to - from],
            });
            for r in 0..m {
                let a: [f32; 4] =
                    std::array::from_fn(|j| group.get(j).map_or(0.0, |&i| x[r * k + i]));
                if a == [0.0; 4] {
                    continue;
                }
                let out = &mut y[r * width + from - cols.start..][..to - from];
                combine::<FMA>(a, rows, out);
            }
        }
        from = to;
    }
}

/// `y += Σ_j a[j] · rows[j]`.
#[inline(always)]
fn combine<const FMA: bool>(a: [f32; 4], rows: [&[f32]; 4], y: &mut [f32]) {
    let len = y.len();
    let [r0, r1, r2, r3] = rows.map(|r| &r[..len]);
    for o in 0..len {
        let mut v = y[o];
        if FMA {
            v = a[0].mul_add(r0[o], v);
            v = a[1].mul_add(r1[o], v);
            v = a[2].mul_add(r2[o], v);
            v = a[3].mul_add(r3[o], v);
        } else {
            v = v + a[0] * r0[o] + a[1] * r1[o] + a[2] * r2[o] + a[3] * r3[o];
        }
        y[o] = v;
    }
}

/// [`add_packed_rows`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn add_packed_rows_avx512(
    x: &[f32],
    m: usize,
    weight: &PackedMatrix,
    nonzero: &[usize],
    cols: Range<usize>,
    y: &mut [f32],
) {
    add_packed_rows::<true>(x, m, weight, nonzero, cols, y)
}

/// [`add_packed_rows`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn add_packed_rows_avx2(
    x: &[f32],
    m: usize,
    weight: &PackedMatrix,
    nonzero: &[usize],
    cols: Range<usize>,
    y: &mut [f32],
) {
    add_packed_rows::<true>(x, m, weight, nonzero, cols, y)
}

/// [`add_rows`] for an input-major packed matrix: each group of four nonzero inputs' rows
/// widened to f32 into a buffer, then combined.
#[inline(always)]
fn add_packed_rows<const FMA: bool>(
    x: &[f32],
    m: usize,
    weight: &PackedMatrix,
    nonzero: &[usize],
    cols: Range<usize>,
    y: &mut [f32],
) {
    let k = weight.dims()[1];
    let width = cols.len();
    let mut buffer = vec![0f32; 4 * TILE];
    let mut from = cols.start;
    while from < cols.end {
        let to = (from + TILE).min(cols.end);
        let len = to - from;
        for group in nonzero.chunks(4) {
            for (j, rows) in buffer.chunks_exact_mut(TILE).enumerate() {
                match group.get(j) {
                    Some(&i) => weight.expand_input(i, from..to, &mut rows[..len]),
                    None => rows[..len].fill(0.0),
                }
            }
            let rows: [&[f32]; 4] = std::array::from_fn(|j| &buffer[j * TILE..j * TILE + len]);
            for r in 0..m {
                let a: [f32; 4] =
                    std::array::from_fn(|j| group.get(j).map_or(0.0, |&i| x[r * k + i]));
                if a == [0.0; 4] {
                    continue;
                }
                let out = &mut y[r * width + from - cols.start..][..len];
                combine::<FMA>(a, rows, out);
            }
        }
        from = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::Lcg;

    /// Against an f64 product, with most inputs zero (and some zero in one row only), for
    /// every row count, widths that leave a partial tile, and one matrix large enough to be
    /// split over threads.
    #[test]
    fn products_skip_zero_inputs_and_equal_an_f64_product() {
        let mut rng = Lcg::new(3);
        for (m, k, n) in [(1, 64, 5), (2, 96, 1030), (3, 200, 48), (4, 1024, 1024)] {
            let mut x = rng.vec(m * k, 1.0);
            for (j, v) in x.iter_mut().enumerate() {
                // Most inputs zero in every row; every 7th only in row 0.
                let i = j % k;
                if i % 5 != 0 && (i % 7 != 0 || j / k == 0) {
                    *v = 0.0;
                }
            }
            let w = rng.vec(k * n, 1.0);
            let y = products(&x, m, &w, k, n);
            for r in 0..m {
                for o in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| f64::from(x[r * k + i]) * f64::from(w[i * n + o]))
                        .sum();
                    let got = f64::from(y[r * n + o]);
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{m}x{k}x{n} [{r},{o}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Input-major packed matrices hold the very values of their row-major form, write the
    /// same file bytes back, and multiply like an f64 product on those values, skipping
    /// zero inputs; every format, an odd output count, tiles split over threads.
    #[test]
    fn input_major_packed_products_equal_an_f64_product() {
        use crate::weights::WeightFormat;
        let mut rng = Lcg::new(8);
        for format in [
            WeightFormat::Bf16,
            WeightFormat::F16,
            WeightFormat::Q8,
            WeightFormat::Q4,
        ] {
            for (m, k, n) in [(1, 64, 6), (2, 96, 7), (4, 1024, 1030)] {
                let values = rng.vec(n * k, 0.5);
                let packed = PackedMatrix::pack("w", format, &values, n, k);
                let w = packed.to_f32();
                let (levels, scales) = packed.stored_bytes();
                let (levels, scales) = (levels.to_vec(), scales);
                let packed = packed.into_input_major();
                let odd_q4 = format == WeightFormat::Q4 && n % 2 == 1;
                assert_eq!(packed.is_input_major(), !odd_q4, "{format}");
                assert_eq!(packed.to_f32(), w, "{format} {k}x{n}");
                let (again, again_scales) = packed.stored_bytes();
                assert_eq!((again.to_vec(), again_scales), (levels, scales), "{format}");
                if odd_q4 {
                    continue;
                }
                let mut x = rng.vec(m * k, 1.0);
                for (j, v) in x.iter_mut().enumerate() {
                    if (j % k) % 3 != 0 {
                        *v = 0.0;
                    }
                }
                let y = packed_products(&x, m, &packed);
                for r in 0..m {
                    for o in 0..n {
                        let want: f64 = (0..k)
                            .map(|i| f64::from(x[r * k + i]) * f64::from(w[o * k + i]))
                            .sum();
                        let got = f64::from(y[r * n + o]);
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{format} {m}x{k}x{n} [{r},{o}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Only a dense row-major f32 weight on flex is taken; a transposed view is not.
    #[test]
    fn declines_other_layouts() {
        let device = burn::tensor::Device::flex();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1f32, 0.0], [1, 2]), &device);
        let w = Tensor::<2>::from_data(
            TensorData::new(vec![1f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]),
            &device,
        );
        let y = small_rows(&x, &w).expect("row-major weight");
        assert_eq!(
            y.into_data().try_to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        let wt = Tensor::<2>::from_data(
            TensorData::new(vec![1f32, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]),
            &device,
        );
        assert!(small_rows(&x, &wt.transpose()).is_none());
    }
}
