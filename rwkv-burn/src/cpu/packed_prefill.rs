//! Prefill's products `x Wᵀ` with a packed `W [out, in]` (many input rows): slices of `W`'s
//! rows expanded to f32 into a scratch buffer that this thread keeps between calls, and
//! multiplied by gemm straight into the output.
//!
//! Why not a Burn tensor of the expanded matrix and `matmul`: that allocated a fresh buffer of
//! the matrix's size on every call, and the kernel's page faults and zeroing of it were 11%
//! of a 512-token q8 prefill of the 0.1B shape (`perf record` on `rwkv bench --prefill 512
//! --decode 2 --threads 1`: `clear_page_erms` 8.2%, page faults 2.8%). Why not an integer
//! gemm on the blocks: with per-block scales, each 64-product `vpdpbusd` needs a convert, a
//! scale and an add of its own, about as many instructions per product as gemm's f32 FMAs.

use super::packed::PackedMatrix;
use std::cell::Cell;

/// At most this many weights expanded at once (16 MiB of f32): whole matrices of the small
/// models, slices of the large ones.
const SLICE_WEIGHTS: usize = 1 << 22;

thread_local! {
    /// The expanded slice, grown to the largest needed and kept.
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// `x [rows, in] · Wᵀ` as `[rows, out]`, row-major.
pub(super) fn product(x: &[f32], rows: usize, weight: &PackedMatrix) -> Vec<f32> {
    let [out, input] = weight.dims();
    assert_eq!(x.len(), rows * input, "input of a packed product");
    let mut y = vec![0f32; rows * out];
    if rows == 0 || out == 0 {
        return y;
    }
    let slice_rows = (SLICE_WEIGHTS / input.max(1)).clamp(1, out);
    let parallelism = if rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // Taken out of the thread-local for the call, not borrowed: while this thread waits in
    // the expansion's or gemm's parallel sections, rayon may hand it another model's product
    // (tests run models side by side on one pool), which then finds the slot empty and
    // allocates its own buffer. A `RefCell` borrow held across them would panic there, on a
    // worker thread, whose message the test harness does not capture: one suite run failed
    // that way, with an empty failure report, before this change.
    let mut scratch = SCRATCH.take();
    {
        let scratch = &mut scratch;
        let mut first = 0;
        while first < out {
            let last = (first + slice_rows).min(out);
            let n = last - first;
            scratch.resize(n * input, 0.0);
            let w = &mut scratch[..n * input];
            weight.expand_rows(first..last, w);
            // SAFETY: `dst` is columns `first..last` of `y` ([rows, out], row stride `out`),
            // `lhs` is `x` ([rows, input], row stride `input`), `rhs` is `wᵀ` ([input, n]:
            // element (i, j) at `j * input + i`); every index gemm forms lies inside those
            // three slices, whose lengths were checked above. `read_dst` is false, so `y`'s
            // columns are written, not read.
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    input,
                    y.as_mut_ptr().add(first),
                    1,
                    out as isize,
                    false,
                    x.as_ptr(),
                    1,
                    input as isize,
                    w.as_ptr(),
                    input as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            first = last;
        }
    }
    SCRATCH.set(scratch);
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::Lcg;
    use crate::weights::WeightFormat;

    /// Against an f64 product on the format's values, with a matrix split into several
    /// slices (the last one short) and one in a single slice.
    #[test]
    fn sliced_products_equal_an_f64_product() {
        let mut rng = Lcg::new(12);
        for (format, out, input, rows) in [
            (WeightFormat::Q8, 5, (SLICE_WEIGHTS / 2) + 32, 3),
            (WeightFormat::Q4, 33, 96, 20),
            (WeightFormat::Bf16, 7, 40, 17),
        ] {
            let values = rng.vec(out * input, 0.5);
            let packed = PackedMatrix::pack("w", format, &values, out, input);
            let w = packed.to_f32();
            let x = rng.vec(rows * input, 1.0);
            let y = product(&x, rows, &packed);
            for r in 0..rows {
                for o in 0..out {
                    let want: f64 = (0..input)
                        .map(|i| f64::from(x[r * input + i]) * f64::from(w[o * input + i]))
                        .sum();
                    let got = f64::from(y[r * out + o]);
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{format} [{r},{o}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
