//! Decode's products `x W` with `W` in a compressed format ([`PackedMatrix`]): each weight
//! row is read once for up to four input rows, as in `matvec.rs`, and each 16 (AVX-512) or 8
//! (AVX2) weights are widened to f32 in registers: bf16 by a shift, f16 by the F16C/AVX-512
//! conversion, Q8_0/Q4_0 levels by an integer widening and one multiply by the block's
//! scale. Inputs and sums stay f32, so a product equals the f32 product with the format's
//! values up to the order of the additions.

use super::int8_dots::{self, QuantizedInputs};
use super::matvec::{Kernel, MAX_ROWS, split_outputs};
use super::packed::{PackedMatrix, Rows};
use crate::weights::WeightFormat;
use std::ops::Range;

/// `x [m, k] · Wᵀ` for `W [n, k]` packed, `1 <= m <= MAX_ROWS`: `[m, n]` row-major. Block
/// formats go to `int8_dots.rs` where [`PackedMatrix::rounds_inputs`] says so.
pub(super) fn packed_rows(x: &[f32], m: usize, weight: &PackedMatrix) -> Vec<f32> {
    let [n, k] = weight.dims();
    assert!((1..=MAX_ROWS).contains(&m) && x.len() == m * k);
    let rows = weight.rows();
    if weight.rounds_inputs() {
        let x = QuantizedInputs::new(weight.format(), x, m, k);
        return split_outputs(m, n, k, |cols| int8_dots::columns(rows, &x, cols));
    }
    let kernel = Kernel::best();
    split_outputs(m, n, k, |cols| columns(kernel, rows, m, x, cols))
}

/// Outputs `cols` of every row: `[m, cols.len()]`.
pub(super) fn columns(
    kernel: Kernel,
    rows: Rows,
    m: usize,
    x: &[f32],
    cols: Range<usize>,
) -> Vec<f32> {
    let mut y = vec![0f32; m * cols.len()];
    match m {
        1 => run::<1>(kernel, rows, x, cols, &mut y),
        2 => run::<2>(kernel, rows, x, cols, &mut y),
        3 => run::<3>(kernel, rows, x, cols, &mut y),
        _ => run::<4>(kernel, rows, x, cols, &mut y),
    }
    y
}

// Const parameters naming a format inside the kernels (so the widening is chosen at
// compile time, not per load).
const BF16: u8 = 0;
const F16: u8 = 1;
const Q8: u8 = 2;
const Q4: u8 = 3;

fn run<const M: usize>(kernel: Kernel, rows: Rows, x: &[f32], cols: Range<usize>, y: &mut [f32]) {
    macro_rules! with_format {
        ($f:ident) => {
            match rows.format {
                WeightFormat::Bf16 => $f::<M, BF16>(rows, x, cols, y),
                WeightFormat::F16 => $f::<M, F16>(rows, x, cols, y),
                WeightFormat::Q8 => $f::<M, Q8>(rows, x, cols, y),
                WeightFormat::Q4 => $f::<M, Q4>(rows, x, cols, y),
                WeightFormat::F32 => unreachable!("f32 weights are not packed"),
            }
        };
    }
    match kernel {
        // SAFETY (both): `Kernel::best`/`available` return these only when the CPU has the
        // features the functions are compiled for (AVX-512F with F16C; AVX2, FMA, F16C).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { with_format!(dots_avx512) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { with_format!(dots_avx2) },
        Kernel::Portable => with_format!(dots_portable),
    }
}

/// Contraction tile: every input row's tile stays in L1 while weight rows stream past; a
/// multiple of 64, so that tiles start on whole blocks and whole vectors. The same for every
/// number of rows (as `matvec::tile_len`), so a row's result does not depend on its company.
fn tile_len<const M: usize>() -> usize {
    1024
}

/// [`tile_len`] and the scalar tail: `y[r, c] += x[r, at..to] · w[o, at..to]`.
#[inline(always)]
fn tail<const M: usize>(
    rows: &Rows,
    x: &[f32],
    o: usize,
    at: usize,
    to: usize,
    sums: &mut [f32; M],
) {
    for i in at..to {
        let w = rows.get(o, i);
        for (r, sum) in sums.iter_mut().enumerate() {
            *sum += w * x[r * rows.k + i];
        }
    }
}

/// The portable kernel: 16 weights at a time widened into an array, then multiplied like
/// `matvec`'s portable loop (what other CPUs and wasm32 run).
fn dots_portable<const M: usize, const F: u8>(
    rows: Rows,
    x: &[f32],
    cols: Range<usize>,
    y: &mut [f32],
) {
    const LANES: usize = 16;
    let k = rows.k;
    let width = cols.len();
    let tile = tile_len::<M>();
    let mut from = 0;
    while from < k {
        let to = (from + tile).min(k);
        for (c, o) in cols.clone().enumerate() {
            let mut acc = [[0f32; LANES]; M];
            let mut w = [0f32; LANES];
            let mut at = from;
            while at + LANES <= to {
                for (l, w) in w.iter_mut().enumerate() {
                    *w = rows.get(o, at + l);
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xr = &x[r * k + at..r * k + at + LANES];
                    for l in 0..LANES {
                        acc[l] += w[l] * xr[l];
                    }
                }
                at += LANES;
            }
            let mut sums = [0f32; M];
            for (sum, acc) in sums.iter_mut().zip(&acc) {
                *sum = acc.iter().sum();
            }
            tail(&rows, x, o, at, to, &mut sums);
            for (r, sum) in sums.iter().enumerate() {
                y[r * width + c] += sum;
            }
        }
        from = to;
    }
}

/// 16 weights of row `o` from `i` (a multiple of 16, `i + 16 <= k`) as f32.
///
/// # Safety
/// The CPU has AVX-512F; `rows` holds row `o` in format `F`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load16<const F: u8>(rows: &Rows, o: usize, i: usize) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let at = o * rows.k + i;
    let p = rows.bytes.as_ptr();
    // SAFETY: the caller keeps `at + 16` within the matrix, whose bytes and scales `rows`
    // covers; every load below reads those 16 weights' bytes.
    unsafe {
        match F {
            BF16 => _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.add(2 * at).cast())),
                16,
            )),
            F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * at).cast())),
            Q8 => _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(at).cast()))),
                _mm512_set1_ps(*rows.scales.get_unchecked(at / 32)),
            ),
            _ => {
                let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(at / 32 * 16).cast()));
                let levels = if at.is_multiple_of(32) {
                    _mm512_and_si512(bytes, _mm512_set1_epi32(15))
                } else {
                    _mm512_srli_epi32(bytes, 4)
                };
                _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(levels, _mm512_set1_epi32(8))),
                    _mm512_set1_ps(*rows.scales.get_unchecked(at / 32)),
                )
            }
        }
    }
}

/// With AVX-512: four 16-lane accumulator chains per input row, as `matvec::dots_avx512`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c,fma")]
fn dots_avx512<const M: usize, const F: u8>(
    rows: Rows,
    x: &[f32],
    cols: Range<usize>,
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    const CHAINS: usize = 4;
    const LANES: usize = 16;
    let k = rows.k;
    assert!(x.len() >= M * k && y.len() >= M * cols.len());
    assert!(rows.covers(cols.end));
    let width = cols.len();
    let tile = tile_len::<M>();
    let xp = x.as_ptr();
    let mut from = 0;
    while from < k {
        let to = (from + tile).min(k);
        for (c, o) in cols.clone().enumerate() {
            let mut acc = [[_mm512_setzero_ps(); CHAINS]; M];
            let mut at = from;
            // SAFETY: every load reads 16 weights or inputs at `at + ..` below `to <= k`, of
            // weight row `o < cols.end` and input rows `r < M`, inside what was checked above.
            unsafe {
                while at + CHAINS * LANES <= to {
                    for j in 0..CHAINS {
                        let wv = load16::<F>(&rows, o, at + j * LANES);
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let xv = _mm512_loadu_ps(xp.add(r * k + at + j * LANES));
                            acc[j] = _mm512_fmadd_ps(wv, xv, acc[j]);
                        }
                    }
                    at += CHAINS * LANES;
                }
                while at + LANES <= to {
                    let wv = load16::<F>(&rows, o, at);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let xv = _mm512_loadu_ps(xp.add(r * k + at));
                        acc[0] = _mm512_fmadd_ps(wv, xv, acc[0]);
                    }
                    at += LANES;
                }
            }
            let mut sums = [0f32; M];
            for (sum, acc) in sums.iter_mut().zip(&acc) {
                let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
                *sum = _mm512_reduce_add_ps(v);
            }
            tail(&rows, x, o, at, to, &mut sums);
            for (r, sum) in sums.iter().enumerate() {
                y[r * width + c] += sum;
            }
        }
        from = to;
    }
}

/// 8 weights of row `o` from `i` (a multiple of 8, `i + 8 <= k`) as f32.
///
/// # Safety
/// The CPU has AVX2 and F16C; `rows` holds row `o` in format `F`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load8<const F: u8>(rows: &Rows, o: usize, i: usize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let at = o * rows.k + i;
    let p = rows.bytes.as_ptr();
    // SAFETY: as `load16`, for 8 weights.
    unsafe {
        match F {
            BF16 => _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * at).cast())),
                16,
            )),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * at).cast())),
            Q8 => _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(at).cast()))),
                _mm256_set1_ps(*rows.scales.get_unchecked(at / 32)),
            ),
            _ => {
                let within = at % 32;
                let bytes =
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(at / 32 * 16 + within % 16).cast()));
                let levels = if within < 16 {
                    _mm256_and_si256(bytes, _mm256_set1_epi32(15))
                } else {
                    _mm256_srli_epi32(bytes, 4)
                };
                _mm256_mul_ps(
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(levels, _mm256_set1_epi32(8))),
                    _mm256_set1_ps(*rows.scales.get_unchecked(at / 32)),
                )
            }
        }
    }
}

/// With AVX2: `CHAINS` 8-lane accumulator chains per input row (four for up to three rows,
/// two for four: what 16 vector registers hold, as `matvec::dots_avx2`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dots_avx2<const M: usize, const F: u8>(
    rows: Rows,
    x: &[f32],
    cols: Range<usize>,
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    const LANES: usize = 8;
    let chains = if M <= 3 { 4 } else { 2 };
    let k = rows.k;
    assert!(x.len() >= M * k && y.len() >= M * cols.len());
    assert!(rows.covers(cols.end));
    let width = cols.len();
    let tile = tile_len::<M>();
    let xp = x.as_ptr();
    let mut from = 0;
    while from < k {
        let to = (from + tile).min(k);
        for (c, o) in cols.clone().enumerate() {
            let mut acc = [[_mm256_setzero_ps(); 4]; M];
            let mut at = from;
            // SAFETY: as in `dots_avx512`, for 8-wide loads.
            unsafe {
                while at + chains * LANES <= to {
                    for j in 0..chains {
                        let wv = load8::<F>(&rows, o, at + j * LANES);
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let xv = _mm256_loadu_ps(xp.add(r * k + at + j * LANES));
                            acc[j] = _mm256_fmadd_ps(wv, xv, acc[j]);
                        }
                    }
                    at += chains * LANES;
                }
                while at + LANES <= to {
                    let wv = load8::<F>(&rows, o, at);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(xp.add(r * k + at));
                        acc[0] = _mm256_fmadd_ps(wv, xv, acc[0]);
                    }
                    at += LANES;
                }
            }
            let mut sums = [0f32; M];
            for (sum, acc) in sums.iter_mut().zip(&acc) {
                let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                let mut lanes = [0f32; LANES];
                // SAFETY: `lanes` holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
                *sum = lanes.iter().sum();
            }
            tail(&rows, x, o, at, to, &mut sums);
            for (r, sum) in sums.iter().enumerate() {
                y[r * width + c] += sum;
            }
        }
        from = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::Lcg;

    /// Every kernel this CPU runs, for every format and row count, against an f64 product on
    /// the format's own values (`PackedMatrix::to_f32`): whole tiles, several tiles, a column
    /// range that does not start at 0, and a width (48) that leaves a scalar tail for the
    /// half formats.
    #[test]
    fn every_kernel_matches_an_f64_product_on_the_formats_values() {
        let mut rng = Lcg::new(21);
        for kernel in Kernel::available() {
            for format in [
                WeightFormat::Bf16,
                WeightFormat::F16,
                WeightFormat::Q8,
                WeightFormat::Q4,
            ] {
                for (m, k, n) in [
                    (1, 64, 3),
                    (2, 96, 9),
                    (3, 1408, 5),
                    (4, 4160, 4),
                    (1, 8192, 3),
                    (2, 48, 4),
                ] {
                    if format.is_block() && k % 32 != 0 {
                        continue;
                    }
                    let x = rng.vec(m * k, 1.0);
                    let values = rng.vec(n * k, 1.0);
                    let packed = PackedMatrix::pack("w", format, &values, n, k);
                    let w = packed.to_f32();
                    let got = columns(kernel, packed.rows(), m, &x, 1..n);
                    let width = n - 1;
                    for r in 0..m {
                        for o in 1..n {
                            let want: f64 = (0..k)
                                .map(|i| f64::from(x[r * k + i]) * f64::from(w[o * k + i]))
                                .sum();
                            let g = f64::from(got[r * width + o - 1]);
                            assert!(
                                (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{kernel:?} {format} {m}x{k}x{n} [{r},{o}]: {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A row's products are the same bits whatever rows share the call, up to the group
    /// each kernel takes (`Kernel::group`), in every format, with f32 and with 8-bit inputs.
    #[test]
    fn a_rows_result_does_not_depend_on_its_company() {
        let mut rng = Lcg::new(6);
        let (n, k) = (24, 4160);
        for format in [
            WeightFormat::Bf16,
            WeightFormat::F16,
            WeightFormat::Q8,
            WeightFormat::Q4,
        ] {
            let packed = PackedMatrix::pack("w", format, &rng.vec(n * k, 1.0), n, k);
            let x = rng.vec(MAX_ROWS * k, 1.0);
            for kernel in Kernel::available() {
                let alone: Vec<Vec<f32>> = (0..MAX_ROWS)
                    .map(|r| columns(kernel, packed.rows(), 1, &x[r * k..(r + 1) * k], 0..n))
                    .collect();
                for m in 2..=kernel.group() {
                    let together = columns(kernel, packed.rows(), m, &x[..m * k], 0..n);
                    for (r, alone) in alone.iter().take(m).enumerate() {
                        assert_eq!(
                            &together[r * n..(r + 1) * n],
                            &alone[..],
                            "{kernel:?} {format} m={m}"
                        );
                    }
                }
            }
            if format.is_block() && int8_dots::available() {
                let one = |r: usize| {
                    let q = QuantizedInputs::new(format, &x[r * k..(r + 1) * k], 1, k);
                    int8_dots::columns(packed.rows(), &q, 0..n)
                };
                for m in 2..=MAX_ROWS {
                    let q = QuantizedInputs::new(format, &x[..m * k], m, k);
                    let together = int8_dots::columns(packed.rows(), &q, 0..n);
                    for r in 0..m {
                        assert_eq!(
                            &together[r * n..(r + 1) * n],
                            &one(r)[..],
                            "8-bit {format} m={m}"
                        );
                    }
                }
            }
        }
    }

    /// The threaded entry point (a matrix large enough to split) equals one pass.
    #[test]
    fn split_products_equal_one_pass() {
        let mut rng = Lcg::new(4);
        let (n, k) = (1030, 1024);
        let values = rng.vec(n * k, 0.5);
        let packed = PackedMatrix::pack("w", WeightFormat::Q4, &values, n, k);
        packed.set_exact_inputs(true);
        for m in 1..=MAX_ROWS {
            let x = rng.vec(m * k, 1.0);
            let whole = columns(Kernel::best(), packed.rows(), m, &x, 0..n);
            assert_eq!(packed_rows(&x, m, &packed), whole);
        }
        // With 8-bit inputs (where the CPU has them): the same split, one quantization.
        packed.set_exact_inputs(false);
        if int8_dots::available() {
            for m in 1..=MAX_ROWS {
                let x = rng.vec(m * k, 1.0);
                let quantized = QuantizedInputs::new(WeightFormat::Q4, &x, m, k);
                let whole = int8_dots::columns(packed.rows(), &quantized, 0..n);
                assert_eq!(packed_rows(&x, m, &packed), whole);
            }
        }
    }
}
