//! Decode's products `x W` on flex for a few rows (batch 1 to 4), with the weight stored
//! `[out, in]` (`layout.rs` keeps checkpoints' layout and hands Burn a transposed view).
//!
//! Decode reads every weight once per step, so its speed is the speed of streaming the
//! weights. Here each weight row is read once for all the input rows (dot products against
//! up to four inputs held in L1), and the outputs are split between two threads. Measured
//! against gemm on this layout and on `[in, out]` in `rwkv bench` (see `super::project`); gemm's
//! own small-row path reads the weight once per input row.

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use std::ops::Range;

/// Input rows handled by one pass over the weight.
pub(crate) const MAX_ROWS: usize = 4;

/// Most input rows [`small_rows`] takes (in groups of [`MAX_ROWS`] over weight blocks that
/// stay in L2); more go to gemm. Batched decode at 16 rows on 7-0.1b, side by side with a
/// build whose limit is 4 (`rwkv bench --preset 7-0.1b --prefill 16 --decode 64 --batch 16`,
/// 2 cores, three alternating pairs): gemm 75.5 / 75.9 / 76.9 tok/s, most of it in gemm's
/// packing of the whole weight for every call (`perf`: 54% in `gemm_common ... vectorize`);
/// grouped here 250.7 / 257.5 / 254.4; batch 1 the same path either way (62-69).
pub(crate) const MAX_GROUPED_ROWS: usize = 64;

/// Bytes of weight rows a block holds while every group of input rows passes over it: well
/// inside the L2 of current x86 cores (1-2 MiB), beside the inputs.
const BLOCK_BYTES: usize = 256 << 10;

/// Weights below this many elements run on one thread: splitting costs more than it saves.
const SPLIT_MIN_ELEMENTS: usize = 1 << 19;

/// `x [M, K] @ weight [K, N]` when both live on flex in f32, `M <= MAX_GROUPED_ROWS`, and the weight
/// is a transposed view of a dense `[N, K]` buffer; `None` otherwise (the caller uses
/// `matmul`).
pub(crate) fn small_rows(x: &Tensor<2>, weight: &Tensor<2>) -> Option<Tensor<2>> {
    let [m, k] = x.dims();
    let [k2, n] = weight.dims();
    if m == 0 || m > MAX_GROUPED_ROWS || k != k2 || k == 0 || n == 0 {
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

    let kernel = Kernel::best();
    let y = split_outputs(m, n, k, |cols| columns(kernel, m, x, w, k, cols));
    Some(Tensor::from_data(TensorData::new(y, [m, n]), &device))
}

/// `[m, n]` outputs of a product over `k` inputs, computed by `f` for ranges of outputs
/// (`[m, range.len()]` each): on two threads, each writing its own output columns, where the
/// weight is large enough for the split to pay; otherwise in one call.
pub(super) fn split_outputs(
    m: usize,
    n: usize,
    k: usize,
    f: impl Fn(Range<usize>) -> Vec<f32> + Sync,
) -> Vec<f32> {
    if n * k < SPLIT_MIN_ELEMENTS || rayon::current_num_threads() < 2 {
        return f(0..n);
    }
    // Outputs are laid out row by row, so the halves are gathered from two buffers.
    let half = n / 2;
    let (low, high) = rayon::join(|| f(0..half), || f(half..n));
    let rest = n - half;
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        y[r * n..r * n + half].copy_from_slice(&low[r * half..(r + 1) * half]);
        y[r * n + half..(r + 1) * n].copy_from_slice(&high[r * rest..(r + 1) * rest]);
    }
    y
}

/// Outputs `cols` of every row: `[M, cols.len()]`. Beyond [`MAX_ROWS`] rows, the weight is
/// read in blocks of rows that stay in L2 while each group of input rows passes over them, so
/// it streams from memory once however many rows there are.
fn columns(
    kernel: Kernel,
    m: usize,
    x: &[f32],
    w: &[f32],
    k: usize,
    cols: Range<usize>,
) -> Vec<f32> {
    let width = cols.len();
    let mut y = vec![0f32; m * width];
    let group = kernel.group();
    if m <= group {
        kernel.rows(m, x, w, k, cols, &mut y);
        return y;
    }
    let block = (BLOCK_BYTES / (4 * k)).max(8);
    let mut part = vec![0f32; group * block];
    let mut start = cols.start;
    while start < cols.end {
        let end = (start + block).min(cols.end);
        let len = end - start;
        for first in (0..m).step_by(group) {
            let rows = (m - first).min(group);
            let part = &mut part[..rows * len];
            part.fill(0.0);
            kernel.rows(
                rows,
                &x[first * k..(first + rows) * k],
                w,
                k,
                start..end,
                part,
            );
            for r in 0..rows {
                let at = (first + r) * width + start - cols.start;
                y[at..at + len].copy_from_slice(&part[r * len..(r + 1) * len]);
            }
        }
        start = end;
    }
    y
}

/// The instruction sets a product can run on, fastest first. `Avx2` also needs F16C and FMA
/// (every AVX2 CPU has them), for the half-precision widening of `packed_dots.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    /// The kernels this CPU can run, fastest first.
    #[cfg(test)]
    pub(super) fn available() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(Kernel::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                kernels.push(Kernel::Avx2);
            }
        }
        kernels.push(Kernel::Portable);
        kernels
    }

    pub(super) fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Input rows one pass takes. Within a pass every row's sums run in the same order
    /// whatever the number of rows, which AVX2 keeps only up to three (four rows take
    /// shorter accumulators there, for want of registers): so a row's result never depends
    /// on the rows it is computed with.
    pub(super) fn group(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => 3,
            _ => MAX_ROWS,
        }
    }

    /// `y[r, o - cols.start] += x[r] · w[o]` for `rows <= MAX_ROWS` input rows.
    fn rows(self, rows: usize, x: &[f32], w: &[f32], k: usize, cols: Range<usize>, y: &mut [f32]) {
        match rows {
            1 => self.run::<1>(x, w, k, cols, y),
            2 => self.run::<2>(x, w, k, cols, y),
            3 => self.run::<3>(x, w, k, cols, y),
            _ => self.run::<4>(x, w, k, cols, y),
        }
    }

    fn run<const M: usize>(
        self,
        x: &[f32],
        w: &[f32],
        k: usize,
        cols: Range<usize>,
        y: &mut [f32],
    ) {
        match self {
            // SAFETY (both): `available`/`best` return these only when the CPU has the
            // features the functions are compiled for.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { dots_avx512::<M>(x, w, k, cols, y) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe {
                if M <= 3 {
                    dots_avx2::<M, 32>(x, w, k, cols, y)
                } else {
                    dots_avx2::<M, 16>(x, w, k, cols, y)
                }
            },
            Kernel::Portable => dots::<M, false, 16>(x, w, k, cols, y),
        }
    }
}

/// Input-row tile: the tile of every input row stays in L1 while weight rows stream past.
/// The same for every number of rows (the L1 size of four rows), so that a row's products
/// add up in the same order whatever rows it is computed with: decoding a sequence alone or
/// in a batch gives the same bits, which the server's batching relies on.
fn tile_len<const M: usize>() -> usize {
    1024
}

/// [`dots`] with AVX-512 intrinsics: four independent 16-lane accumulator chains per input
/// row (at most 16 of the 32 vector registers). The generic code is not used here because
/// LLVM may split its 64-lane arrays into 256-bit halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dots_avx512<const M: usize>(x: &[f32], w: &[f32], k: usize, cols: Range<usize>, y: &mut [f32]) {
    use std::arch::x86_64::*;
    const CHAINS: usize = 4;
    const LANES: usize = 16;
    assert!(x.len() >= M * k && w.len() >= cols.end * k && y.len() >= M * cols.len());
    let width = cols.len();
    let tile = tile_len::<M>();
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut from = 0;
    while from < k {
        let to = (from + tile).min(k);
        for (c, o) in cols.clone().enumerate() {
            let row = o * k;
            let mut acc = [[_mm512_setzero_ps(); CHAINS]; M];
            let mut at = from;
            // SAFETY: every load reads 16 floats at `at + ..` below `to <= k`, of weight row
            // `o < cols.end` and input rows `r < M`, inside the slices checked above.
            unsafe {
                while at + CHAINS * LANES <= to {
                    for j in 0..CHAINS {
                        let wv = _mm512_loadu_ps(wp.add(row + at + j * LANES));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let xv = _mm512_loadu_ps(xp.add(r * k + at + j * LANES));
                            acc[j] = _mm512_fmadd_ps(wv, xv, acc[j]);
                        }
                    }
                    at += CHAINS * LANES;
                }
                while at + LANES <= to {
                    let wv = _mm512_loadu_ps(wp.add(row + at));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let xv = _mm512_loadu_ps(xp.add(r * k + at));
                        acc[0] = _mm512_fmadd_ps(wv, xv, acc[0]);
                    }
                    at += LANES;
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let sum =
                    _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
                let mut total = _mm512_reduce_add_ps(sum);
                for i in at..to {
                    total += w[row + i] * x[r * k + i];
                }
                y[r * width + c] += total;
            }
        }
        from = to;
    }
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
    let tile = tile_len::<M>().max(LANES);
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

    /// Every kernel this CPU runs, against a plain f64 product: every row count, odd sizes
    /// (remainders of each vector width, one tile and several).
    #[test]
    fn every_kernel_matches_a_plain_product() {
        let mut rng = Lcg::new(11);
        let kernels = Kernel::available();
        assert_eq!(kernels[0], Kernel::best());
        for kernel in kernels {
            for (m, k, n) in [
                (1, 5, 3),
                (2, 77, 9),
                (3, 1100, 17),
                (4, 3001, 7),
                (1, 4160, 5),
                (7, 3001, 70),
                (16, 768, 300),
                (64, 100, 50),
            ] {
                let x = rng.vec(m * k, 1.0);
                let w = rng.vec(n * k, 1.0);
                // Outputs 1.. of n: the column range does not start at 0.
                let got = columns(kernel, m, &x, &w, k, 1..n);
                assert_product(&got, &x, &w, [m, k, n], 1, &format!("{kernel:?}"));
            }
        }
    }

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
            assert_product(got, &x, &w_out_in, [m, k, n], 0, "small_rows");
        }
    }

    /// A row's products are the same bits whatever rows share the call: batched decoding is
    /// invisible to each sequence.
    #[test]
    fn a_rows_result_does_not_depend_on_its_company() {
        let mut rng = Lcg::new(5);
        let (k, n) = (3001, 40);
        let w = rng.vec(n * k, 1.0);
        let x = rng.vec(MAX_GROUPED_ROWS * k, 1.0);
        for kernel in Kernel::available() {
            let alone: Vec<Vec<f32>> = (0..MAX_GROUPED_ROWS)
                .map(|r| columns(kernel, 1, &x[r * k..(r + 1) * k], &w, k, 0..n))
                .collect();
            for m in [2, 3, 4, 5, 9, 16, MAX_GROUPED_ROWS] {
                let together = columns(kernel, m, &x[..m * k], &w, k, 0..n);
                for (r, alone) in alone.iter().take(m).enumerate() {
                    assert_eq!(
                        &together[r * n..(r + 1) * n],
                        &alone[..],
                        "{kernel:?} m={m} row {r}"
                    );
                }
            }
        }
    }

    /// `got [m, n - from]` against `x [m, k] · w[o, :]` for outputs `o` in `from..n`, in f64.
    fn assert_product(
        got: &[f32],
        x: &[f32],
        w: &[f32],
        [m, k, n]: [usize; 3],
        from: usize,
        what: &str,
    ) {
        let width = n - from;
        for r in 0..m {
            for o in from..n {
                let want: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                    .sum();
                let g = got[r * width + o - from] as f64;
                assert!(
                    (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{what} {m}x{k}x{n} [{r},{o}]: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let device = burn::tensor::Device::flex();
        let dense = Tensor::<2>::ones([8, 4], &device);
        let x = Tensor::<2>::ones([1, 8], &device);
        // `[in, out]` dense, more rows than grouped, mismatched sizes.
        assert!(small_rows(&x, &dense).is_none());
        let t = Tensor::<2>::ones([4, 8], &device).transpose();
        let many = MAX_GROUPED_ROWS + 1;
        assert!(small_rows(&Tensor::<2>::ones([many, 8], &device), &t).is_none());
        assert!(small_rows(&Tensor::<2>::ones([1, 7], &device), &t).is_none());
        assert!(small_rows(&x, &t).is_some());
    }
}
