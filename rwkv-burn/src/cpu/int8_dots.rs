//! Decode's products with Q8_0/Q4_0 weights on CPUs with AVX-512 VNNI: the inputs are
//! quantized as well, to 8 bits per block of 32 with one f32 scale (ggml's way of
//! multiplying its Q8_0/Q4_0 matrices), so that each pair of blocks multiplies as integers:
//! `vpdpbusd` takes 64 byte products into 16 i32 lanes per instruction, and the lanes are
//! then scaled by the product of the two blocks' scales and summed in f32.
//!
//! Why: `packed_dots.rs` widens every weight to f32 before its multiply (about three
//! instructions per 16 weights), so on two cores its 8- and 4-bit products were bound by
//! arithmetic, not by the bytes they read. Here about one instruction covers 64 weights.
//!
//! The price is the inputs' rounding. With `d_b = max|x_b| / 127` for an input block `x_b`,
//! each rounded input is within `d_b / 2` of the true one, so a product differs from the exact
//! product with the format's weights by at most `Σ_b max|x_b| / 254 · Σ_{i∈b} |w_i|`, plus the
//! f32 rounding of the sums. The tests check exactly that bound; the model-level error is
//! measured (KL divergence, perplexity) in `benches/src/bin/weight_quality.rs`.
//! [`PackedMatrix::set_exact_inputs`](super::PackedMatrix::set_exact_inputs) keeps f32
//! inputs (the `packed_dots.rs` kernels) for a matrix.
//!
//! Layout of the quantized inputs, chosen so that one 64-byte load of weights meets one
//! 64-byte load of inputs:
//! - q8: blocks in pairs; each pair is 64 bytes of `q + 128` (the unsigned operand of
//!   `vpdpbusd`; the weights' levels are the signed one), and `128 Σ w` is taken back out of
//!   each lane before the scale. Lane `l` of a pair belongs to block `l / 8`.
//! - q4: blocks in fours; the four blocks' first 16 inputs, then their last 16 (the order of
//!   Q4_0's low and high nibbles). The nibbles `0..=15` are the unsigned operand, the inputs
//!   the signed one, and `8 Σ q` of each block starts its first lane (levels are nibble − 8).
//!   Lane `l` of a four belongs to block `l / 4`.

use super::packed::Rows;
use crate::weights::{BLOCK, WeightFormat};
use std::ops::Range;

/// Inputs `[m, k]` quantized for one block format's kernel (see the module's layout).
pub(super) struct QuantizedInputs {
    format: WeightFormat,
    m: usize,
    /// Groups of blocks per row (pairs for q8, fours for q4); the last one zero-padded.
    groups: usize,
    /// `groups * 64` (q8) or `groups * 128` (q4) bytes per row.
    bytes: Vec<u8>,
    /// Per row and group, 16 lanes: the scale of the block each lane belongs to.
    lane_scales: Vec<f32>,
    /// q4 only: per row and group, 16 lanes that start the integer sums.
    starts: Vec<i32>,
}

/// Blocks per group for `format`.
fn group_blocks(format: WeightFormat) -> usize {
    if format == WeightFormat::Q8 { 2 } else { 4 }
}

/// Whether this CPU runs the kernels of this file.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl QuantizedInputs {
    /// `x [m, k]` (row-major, `k` whole blocks) for products with `format` (q8 or q4).
    pub(super) fn new(format: WeightFormat, x: &[f32], m: usize, k: usize) -> Self {
        assert!(format.is_block() && k.is_multiple_of(BLOCK) && x.len() == m * k);
        let per = group_blocks(format);
        let blocks = k / BLOCK;
        let groups = blocks.div_ceil(per);
        let row_bytes = groups * per * BLOCK;
        let pad = if format == WeightFormat::Q8 { 128 } else { 0 };
        let bytes = vec![pad; m * row_bytes];
        let lane_scales = vec![0f32; m * groups * 16];
        let starts = vec![
            0i32;
            if format == WeightFormat::Q4 {
                m * groups * 16
            } else {
                0
            }
        ];
        let mut quantized = Self {
            format,
            m,
            groups,
            bytes,
            lane_scales,
            starts,
        };
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: `available` checked the features `fill_avx512` is compiled for.
            unsafe { fill_avx512(&mut quantized, x, k) };
            return quantized;
        }
        fill(&mut quantized, x, k);
        quantized
    }
}

/// [`fill`] compiled with AVX-512, where rounding is one instruction (elsewhere a call to
/// `rintf` per input, 2.9% of a q8 decode's time in `perf`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn fill_avx512(into: &mut QuantizedInputs, x: &[f32], k: usize) {
    fill(into, x, k)
}

/// Writes `x`'s rounded blocks, lane scales and (q4) starts into `into`'s zeroed buffers.
#[inline(always)]
fn fill(into: &mut QuantizedInputs, x: &[f32], k: usize) {
    let format = into.format;
    let per = group_blocks(format);
    let groups = into.groups;
    let row_bytes = groups * per * BLOCK;
    let lanes = 16 / per;
    let mut q = [0i8; BLOCK];
    for r in 0..into.m {
        for b in 0..k / BLOCK {
            let d = quantize_block(&x[r * k + b * BLOCK..][..BLOCK], &mut q);
            let (g, j) = (b / per, b % per);
            let at = (r * groups + g) * 16 + j * lanes;
            into.lane_scales[at..at + lanes].fill(d);
            let group = &mut into.bytes[r * row_bytes + g * per * BLOCK..][..per * BLOCK];
            if format == WeightFormat::Q8 {
                for (byte, q) in group[j * BLOCK..][..BLOCK].iter_mut().zip(q) {
                    *byte = (i16::from(q) + 128) as u8;
                }
            } else {
                let half = BLOCK / 2;
                let (low, high) = group.split_at_mut(per * half);
                low[j * half..][..half].copy_from_slice(bytemuck_i8(&q[..half]));
                high[j * half..][..half].copy_from_slice(bytemuck_i8(&q[half..]));
                into.starts[at] = -8 * q.iter().map(|&q| i32::from(q)).sum::<i32>();
            }
        }
    }
}

/// `i8`s as the bytes that hold them.
#[inline(always)]
fn bytemuck_i8(q: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(q.as_ptr().cast(), q.len()) }
}

/// `q` = `block` rounded to levels `-127..=127` of the returned scale `max|x| / 127`. A block
/// with a non-finite input gets a NaN scale, so that its products are NaN as the exact ones
/// would be (never a silent finite number).
#[inline(always)]
fn quantize_block(block: &[f32], q: &mut [i8; BLOCK]) -> f32 {
    let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
    if !block.iter().all(|v| v.is_finite()) {
        q.fill(0);
        return f32::NAN;
    }
    let inverse = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (q, v) in q.iter_mut().zip(block) {
        *q = (v * inverse).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}

/// Outputs `cols` of every input row: `[m, cols.len()]`.
///
/// # Panics
/// Where [`available`] is false, or `rows` is not in the format `x` was quantized for.
pub(super) fn columns(rows: Rows, x: &QuantizedInputs, cols: Range<usize>) -> Vec<f32> {
    assert!(available(), "AVX-512 VNNI kernels on a CPU without them");
    assert_eq!(rows.format, x.format);
    let mut y = vec![0f32; x.m * cols.len()];
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! with_rows {
            ($f:ident) => {
                match x.m {
                    1 => $f::<1>(rows, x, cols, &mut y),
                    2 => $f::<2>(rows, x, cols, &mut y),
                    3 => $f::<3>(rows, x, cols, &mut y),
                    _ => $f::<4>(rows, x, cols, &mut y),
                }
            };
        }
        // SAFETY: `available` checked the features both kernels are compiled for.
        unsafe {
            if x.format == WeightFormat::Q8 {
                with_rows!(q8_vnni);
            } else {
                with_rows!(q4_vnni);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, cols, &mut y);
    y
}

/// Groups per contraction tile: every input row's tile (bytes and lane scales) stays in L1
/// while the weight rows stream past. Sized for four rows whatever the row count, so that a
/// row's sums run in the same order in any company (batched decoding stays bit-identical).
#[cfg(target_arch = "x86_64")]
fn tile_groups(group_bytes: usize) -> usize {
    (16384 / super::matvec::MAX_ROWS / (group_bytes + 64)).max(1)
}

/// The loops both kernels share: tiles of groups, every output column `o`, two accumulator
/// chains per input row (`acc[r][0]`, `acc[r][1]`, alternating by group so that each chain's
/// additions wait on half as many), and `$step` for each group `g` into chain `chain`; the
/// chains' sum is added to `y[r, o]`.
#[cfg(target_arch = "x86_64")]
macro_rules! over_groups {
    ($m:ident, $groups:expr, $tile:expr, $cols:expr, $y:expr,
     |$o:ident, $acc:ident, $g:ident, $chain:ident| $step:block) => {{
        let width = $cols.len();
        let mut from = 0;
        while from < $groups {
            let to = (from + $tile).min($groups);
            for (c, $o) in $cols.clone().enumerate() {
                let mut $acc = [[_mm512_setzero_ps(); 2]; $m];
                let mut $g = from;
                while $g + 2 <= to {
                    {
                        let $chain = 0;
                        $step
                    }
                    $g += 1;
                    {
                        let $chain = 1;
                        $step
                    }
                    $g += 1;
                }
                if $g < to {
                    let $chain = 0;
                    $step
                }
                for (r, acc) in $acc.iter().enumerate() {
                    $y[r * width + c] += _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
                }
            }
            from = to;
        }
    }};
}

/// Q8_0 weights: a pair of blocks per group.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn q8_vnni<const M: usize>(rows: Rows, x: &QuantizedInputs, cols: Range<usize>, y: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = rows.k;
    let blocks = k / BLOCK;
    let groups = x.groups;
    assert!(rows.covers(cols.end) && x.m == M && groups == blocks.div_ceil(2));
    assert!(y.len() >= M * cols.len());
    let row_bytes = groups * 64;
    let zero = _mm512_setzero_si512();
    let offset = _mm512_set1_epi8(-128);
    let lane_block = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let (xb, xs) = (x.bytes.as_ptr(), x.lane_scales.as_ptr());
    over_groups!(M, groups, tile_groups(64), cols, y, |o, acc, g, chain| {
        let w = rows.bytes[o * k..].as_ptr();
        let s = rows.scales[o * blocks..].as_ptr();
        let b = 2 * g;
        // SAFETY: group `g < groups` reads the weight row's bytes `64 g ..` (the last, half
        // group masked to its 32 bytes) and scales `2 g ..` (one for a half group), inside
        // row `o < cols.end` that `covers` checked; and each input row's 64 bytes and 16
        // lane scales of group `g`, inside what `new` allocated for `M` rows.
        unsafe {
            let (wv, dw) = if b + 2 <= blocks {
                (
                    _mm512_loadu_si512(w.add(b * BLOCK).cast()),
                    _mm_castpd_ps(_mm_load_sd(s.add(b).cast())),
                )
            } else {
                (
                    _mm512_maskz_loadu_epi8(0xFFFF_FFFF, w.add(b * BLOCK).cast()),
                    _mm_load_ss(s.add(b)),
                )
            };
            let dw = _mm512_permutexvar_ps(lane_block, _mm512_castps128_ps512(dw));
            let take = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, wv));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_si512(xb.add(r * row_bytes + g * 64).cast());
                let sum = _mm512_dpbusd_epi32(take, xv, wv);
                let scale = _mm512_mul_ps(dw, _mm512_loadu_ps(xs.add((r * groups + g) * 16)));
                acc[chain] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[chain]);
            }
        }
    });
}

/// Q4_0 weights: four blocks (64 bytes of nibbles) per group.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn q4_vnni<const M: usize>(rows: Rows, x: &QuantizedInputs, cols: Range<usize>, y: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = rows.k;
    let blocks = k / BLOCK;
    let groups = x.groups;
    assert!(rows.covers(cols.end) && x.m == M && groups == blocks.div_ceil(4));
    assert!(y.len() >= M * cols.len());
    let row_bytes = groups * 128;
    let nibble = _mm512_set1_epi8(15);
    let lane_block = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let (xb, xs, xo) = (x.bytes.as_ptr(), x.lane_scales.as_ptr(), x.starts.as_ptr());
    over_groups!(M, groups, tile_groups(128), cols, y, |o, acc, g, chain| {
        let w = rows.bytes[o * k / 2..].as_ptr();
        let s = rows.scales[o * blocks..].as_ptr();
        let b = 4 * g;
        // SAFETY: group `g < groups` reads the weight row's bytes `64 g ..` and scales
        // `4 g ..`, masked to the blocks the row has, inside row `o < cols.end` that `covers`
        // checked; and each input row's 128 bytes, 16 lane scales and 16 starts of group `g`,
        // inside what `new` allocated for `M` rows.
        unsafe {
            let (raw, dw) = if b + 4 <= blocks {
                (
                    _mm512_loadu_si512(w.add(b * BLOCK / 2).cast()),
                    _mm_loadu_ps(s.add(b)),
                )
            } else {
                let have = blocks - b;
                (
                    _mm512_maskz_loadu_epi8((1u64 << (16 * have)) - 1, w.add(b * BLOCK / 2).cast()),
                    _mm_maskz_loadu_ps((1u8 << have) - 1, s.add(b)),
                )
            };
            let low = _mm512_and_si512(raw, nibble);
            let high = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
            let dw = _mm512_permutexvar_ps(lane_block, _mm512_castps128_ps512(dw));
            for (r, acc) in acc.iter_mut().enumerate() {
                let at = r * row_bytes + g * 128;
                let lanes = (r * groups + g) * 16;
                let start = _mm512_loadu_si512(xo.add(lanes).cast());
                let sum = _mm512_dpbusd_epi32(start, low, _mm512_loadu_si512(xb.add(at).cast()));
                let sum =
                    _mm512_dpbusd_epi32(sum, high, _mm512_loadu_si512(xb.add(at + 64).cast()));
                let scale = _mm512_mul_ps(dw, _mm512_loadu_ps(xs.add(lanes)));
                acc[chain] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[chain]);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::PackedMatrix;
    use crate::random::Lcg;

    /// Against an f64 product of the format's weights with the unrounded inputs: within the
    /// rounding bound of the module's documentation (plus f32 summation), for widths that
    /// leave a partial group (q8: 3 blocks; q4: 1 to 3) and several tiles, and a column range
    /// that does not start at 0. Inputs of very different sizes in one row make the
    /// per-block scales matter.
    #[test]
    fn products_stay_within_the_input_rounding_bound() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut rng = Lcg::new(31);
        for format in [WeightFormat::Q8, WeightFormat::Q4] {
            for (m, k, n) in [
                (1, 32, 3),
                (2, 96, 9),
                (3, 160, 5),
                (4, 224, 4),
                (4, 3072, 6),
                (1, 8192, 3),
                (2, 16384, 2),
            ] {
                let mut x = rng.vec(m * k, 1.0);
                for (i, v) in x.iter_mut().enumerate() {
                    *v *= [1.0, 30.0, 0.01][(i / 32) % 3];
                }
                let values = rng.vec(n * k, 1.0);
                let packed = PackedMatrix::pack("w", format, &values, n, k);
                let w = packed.to_f32();
                let quantized = QuantizedInputs::new(format, &x, m, k);
                let got = columns(packed.rows(), &quantized, 1..n);
                let width = n - 1;
                let mut worst = 0f64;
                for r in 0..m {
                    for o in 1..n {
                        let (mut want, mut bound, mut size) = (0f64, 0f64, 0f64);
                        for b in 0..k / BLOCK {
                            let xs = &x[r * k + b * BLOCK..][..BLOCK];
                            let ws = &w[o * k + b * BLOCK..][..BLOCK];
                            let amax = xs.iter().fold(0f64, |a, v| a.max(f64::from(v.abs())));
                            let wsum: f64 = ws.iter().map(|v| f64::from(v.abs())).sum();
                            bound += amax / 254.0 * wsum;
                            for (a, b) in xs.iter().zip(ws) {
                                want += f64::from(*a) * f64::from(*b);
                                size += f64::from((a * b).abs());
                            }
                        }
                        let g = f64::from(got[r * width + o - 1]);
                        let allowed = bound * (1.0 + 1e-4) + 1e-6 * size;
                        assert!(
                            (g - want).abs() <= allowed,
                            "{format} {m}x{k}x{n} [{r},{o}]: {g} vs {want} (bound {allowed})"
                        );
                        worst = worst.max((g - want).abs() / bound);
                    }
                }
                // The rounding is really there (the bound is not vacuous) yet well inside it.
                assert!(worst > 0.0 && worst < 0.5, "{format} {m}x{k}: {worst}");
            }
        }
    }

    /// The kernel computes exactly `Σ_b d_w d_x Σ q_w q_x` (up to f32 sums): compared with
    /// that sum in f64 on the same rounded inputs, the error is a few f32 roundings.
    #[test]
    fn products_equal_the_integer_block_sums() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut rng = Lcg::new(5);
        for format in [WeightFormat::Q8, WeightFormat::Q4] {
            let (m, k, n) = (3, 416, 7);
            let x = rng.vec(m * k, 2.0);
            let values = rng.vec(n * k, 1.0);
            let packed = PackedMatrix::pack("w", format, &values, n, k);
            let w = packed.to_f32();
            let got = columns(packed.rows(), &QuantizedInputs::new(format, &x, m, k), 0..n);
            let mut q = [0i8; BLOCK];
            for r in 0..m {
                for o in 0..n {
                    let mut want = 0f64;
                    let mut size = 0f64;
                    for b in 0..k / BLOCK {
                        let d = quantize_block(&x[r * k + b * BLOCK..][..BLOCK], &mut q);
                        for (i, q) in q.iter().enumerate() {
                            let p =
                                f64::from(d) * f64::from(*q) * f64::from(w[o * k + b * BLOCK + i]);
                            want += p;
                            size += p.abs();
                        }
                    }
                    let g = f64::from(got[r * n + o]);
                    assert!(
                        (g - want).abs() <= 1e-6 * size,
                        "{format} [{r},{o}]: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// A non-finite input makes its products NaN, as the exact kernel's would be; a zero block
    /// contributes nothing.
    #[test]
    fn non_finite_inputs_give_nan_and_zero_blocks_nothing() {
        if !available() {
            return;
        }
        let k = 64;
        let values: Vec<f32> = (0..2 * k).map(|i| (i % 7) as f32 - 3.0).collect();
        for format in [WeightFormat::Q8, WeightFormat::Q4] {
            let packed = PackedMatrix::pack("w", format, &values, 2, k);
            let mut x = vec![0f32; k];
            let zero = columns(packed.rows(), &QuantizedInputs::new(format, &x, 1, k), 0..2);
            assert_eq!(zero, vec![0.0, 0.0]);
            x[40] = f32::INFINITY;
            let y = columns(packed.rows(), &QuantizedInputs::new(format, &x, 1, k), 0..2);
            assert!(y.iter().all(|v| v.is_nan()), "{format}: {y:?}");
        }
    }
}
