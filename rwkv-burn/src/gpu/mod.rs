//! The GPU decode path: products `x @ W` of a few rows on CubeCL devices (wgpu, Vulkan,
//! WebGPU), and weights held there in 8-bit blocks.
//!
//! Decode reads every weight once per token, so its speed is the speed of streaming the
//! weights. Burn's matmul tunes for large products; for one to sixteen rows the kernels here
//! read each weight once for all rows (`cube.rs`), in the type it is stored in (f32, f16), or
//! as 8-bit levels with a scale per block of 32 ([`BlockMatrix`]: q8 and q4 files, held at
//! 1.125 bytes a weight instead of 4).
//!
//! Measured on lavapipe and in the page (SwiftShader): the README's "GPU decode products".

#[cfg(feature = "wgpu")]
mod cube;
#[cfg(feature = "wgpu")]
mod ops;

use crate::weights::{BLOCK, WeightFormat, checked_block_scales};
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Most rows a product takes in one pass over the weight (one kernel's registers); more
/// rows go to Burn's matmul, or for block weights to passes of this many rows.
pub(crate) const MAX_ROWS: usize = 16;

/// Set to `burn` to send every dense product to Burn's matmul (for comparing the two).
pub const PRODUCTS_ENV: &str = "RWKV_GPU_PRODUCTS";

/// Whether `device` runs this module's kernels: a CubeCL device without autodiff.
pub(crate) fn runs_kernels(device: &Device) -> bool {
    cfg!(feature = "wgpu") && crate::device::is_cubecl(device) && !device.is_autodiff()
}

/// Whether dense products skip the kernels ([`PRODUCTS_ENV`]).
fn burn_products() -> bool {
    static BURN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BURN.get_or_init(|| std::env::var(PRODUCTS_ENV).is_ok_and(|v| v.trim() == "burn"))
}

/// `x [.., in] @ weight [in, out]` through the few-rows kernel, where `x` lives on a device
/// that runs it and has at most [`MAX_ROWS`] rows; `None` otherwise (the caller uses
/// `matmul`).
pub(crate) fn few_rows<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>) -> Option<Tensor<D>> {
    let dims = x.dims();
    let input = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    let [input2, out] = weight.dims();
    if rows == 0 || rows > MAX_ROWS || input != input2 || input == 0 || out == 0 {
        return None;
    }
    if !runs_kernels(&x.device()) || burn_products() {
        return None;
    }
    #[cfg(feature = "wgpu")]
    {
        use burn::backend::Dispatch;
        let mut shape = dims;
        shape[D - 1] = out;
        let y = <Dispatch as ops::ProjectionOps>::few_rows_product(
            x.clone().reshape([rows, input]).into_dispatch(),
            weight.clone().into_dispatch(),
        );
        Some(Tensor::<2>::from_dispatch(y).reshape(shape))
    }
    #[cfg(not(feature = "wgpu"))]
    None
}

/// Output columns per panel of a [`BlockMatrix`] (one cube of the block kernel).
pub(crate) const PANEL: usize = 64;

/// A `[out, in]` projection held on a CubeCL device as 8-bit levels in blocks of 32 inputs,
/// one f32 scale per block and output (a q8 file's levels as they are; a q4 file's 4-bit
/// levels widened to 8 bits, exact).
///
/// Laid out in panels of [`PANEL`] output columns, each panel one contiguous run of its
/// weights input by input (`[in / 4][PANEL]` words of four levels, then `[in / 32][PANEL]`
/// scales): the block kernel's cube reads its panel front to back, a GPU's units one word
/// each side by side (coalesced), a CPU emulation (lavapipe, SwiftShader) one contiguous
/// run instead of a jump of a whole matrix row per input as in Burn's `[in, out]` layout. (On
/// lavapipe the two layouts measured alike, 30 and 37 ms for a 32768 x 768 product at one row,
/// `gpu::timing`: lavapipe is bound by its arithmetic there.) Panels are grouped into parts
/// that each fit the device's largest buffer.
#[derive(Debug, Clone)]
pub struct BlockMatrix {
    /// Per part: levels `[panels * in / 4, PANEL]` and scales `[panels * in / 32, PANEL]`.
    parts: Vec<(Tensor<2, Int>, Tensor<2>)>,
    out: usize,
    input: usize,
    format: WeightFormat,
    name: String,
}

impl BlockMatrix {
    /// From per-value levels `[out, in]` (row-major, -128..=127) and per-block scales
    /// `[out, in / 32]`: `W[o, i] = levels[o, i] * scales[o, i / 32]`. `max_buffer` bounds
    /// each part's levels (bytes); it must hold one panel (`PANEL * in` bytes: the loader
    /// checks).
    ///
    /// # Panics
    /// If the lengths do not match `out` x `input` or `input` is not a whole number of blocks
    /// (the loader checks both first).
    pub(crate) fn new(
        name: &str,
        format: WeightFormat,
        levels: &[i8],
        scales: &[f32],
        [out, input]: [usize; 2],
        device: &Device,
        max_buffer: Option<u64>,
    ) -> Self {
        assert!(input > 0 && input.is_multiple_of(BLOCK));
        assert_eq!(levels.len(), out * input);
        assert_eq!(scales.len(), out * input / BLOCK);
        let panels = out.div_ceil(PANEL);
        // Levels are the larger buffer: a byte a weight against the scales' 1/8.
        let per_part = match max_buffer {
            Some(limit) => ((limit / (PANEL * input) as u64) as usize).clamp(1, panels.max(1)),
            None => panels.max(1),
        };
        let (words, blocks) = (input / 4, input / BLOCK);
        let mut parts = Vec::new();
        for first in (0..panels).step_by(per_part) {
            let count = per_part.min(panels - first);
            let mut part_words = vec![0i32; count * words * PANEL];
            let mut part_scales = vec![0f32; count * blocks * PANEL];
            for p in 0..count {
                for u in 0..PANEL {
                    let o = (first + p) * PANEL + u;
                    if o >= out {
                        break; // zero levels and scales beyond the last column
                    }
                    let row = &levels[o * input..(o + 1) * input];
                    for (j, four) in row.chunks_exact(4).enumerate() {
                        let bytes = [four[0], four[1], four[2], four[3]].map(|q| q as u8);
                        part_words[(p * words + j) * PANEL + u] = u32::from_le_bytes(bytes) as i32;
                    }
                    for b in 0..blocks {
                        part_scales[(p * blocks + b) * PANEL + u] = scales[o * blocks + b];
                    }
                }
            }
            parts.push((
                Tensor::from_data(TensorData::new(part_words, [count * words, PANEL]), device),
                Tensor::from_data(
                    TensorData::new(part_scales, [count * blocks, PANEL]),
                    device,
                ),
            ));
        }
        Self {
            parts,
            out,
            input,
            format,
            name: name.to_string(),
        }
    }

    /// A matrix a file stores in `format`'s blocks, as it is: `levels` and `scales` are
    /// the file's bytes ([`crate::weights::StoredData::Blocks`]). Nothing is re-quantized.
    ///
    /// # Errors
    /// What does not fit (see [`checked_block_scales`]), for the loader to report.
    pub(crate) fn from_stored(
        name: &str,
        format: WeightFormat,
        [levels, scales]: [&[u8]; 2],
        dims: [usize; 2],
        device: &Device,
        max_buffer: Option<u64>,
    ) -> Result<Self, String> {
        let scales = checked_block_scales(format, levels, scales, dims)?;
        let multiples: Vec<i8> = levels
            .chunks_exact(format.level_bytes(BLOCK))
            .flat_map(|bytes| format.block_multiples(bytes))
            .collect();
        Ok(Self::new(
            name, format, &multiples, &scales, dims, device, max_buffer,
        ))
    }

    /// `values` (`[out, in]`, row-major) quantized to `format`'s blocks
    /// ([`WeightFormat::quantize_block`], as `rwkv quantize` writes them).
    pub(crate) fn quantize(
        name: &str,
        format: WeightFormat,
        values: &[f32],
        dims: [usize; 2],
        device: &Device,
        max_buffer: Option<u64>,
    ) -> Self {
        let mut multiples = Vec::with_capacity(values.len());
        let mut scales = Vec::with_capacity(values.len() / BLOCK);
        for block in values.chunks_exact(BLOCK) {
            let (d, q) = format.quantize_block(block);
            scales.push(d.to_f32());
            multiples.extend(q.map(|q| format.level(q) as i8));
        }
        Self::new(name, format, &multiples, &scales, dims, device, max_buffer)
    }

    /// The official name of the matrix.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The levels and scales as a file of this format stores them (read back from the
    /// device): `[out, in]` levels ([`WeightFormat::level_bytes`]: q8 one signed byte each, q4
    /// ggml's nibbles) and one little-endian f16 scale per block, row by row.
    pub fn stored_bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let (out, input) = (self.out, self.input);
        let (words, blocks) = (input / 4, input / BLOCK);
        let mut multiples = vec![0i8; out * input];
        let mut scales = vec![0u8; out * blocks * 2];
        let mut first = 0;
        for (levels, part_scales) in &self.parts {
            let levels: Vec<i32> = levels
                .clone()
                .into_data()
                .convert::<i32>()
                .try_to_vec()
                .unwrap();
            let part_scales: Vec<f32> = part_scales.clone().into_data().try_to_vec().unwrap();
            let panels = levels.len() / (words * PANEL);
            for p in 0..panels {
                for u in 0..PANEL {
                    let o = first + p * PANEL + u;
                    if o >= out {
                        break;
                    }
                    for j in 0..words {
                        let bytes = (levels[(p * words + j) * PANEL + u] as u32).to_le_bytes();
                        for (k, b) in bytes.iter().enumerate() {
                            multiples[o * input + 4 * j + k] = *b as i8;
                        }
                    }
                    for b in 0..blocks {
                        let d = half::f16::from_f32(part_scales[(p * blocks + b) * PANEL + u]);
                        scales[(o * blocks + b) * 2..][..2].copy_from_slice(&d.to_le_bytes());
                    }
                }
            }
            first += panels * PANEL;
        }
        let levels = match self.format {
            WeightFormat::Q4 => multiples
                .chunks_exact(BLOCK)
                .flat_map(|q| {
                    (0..BLOCK / 2).map(|j| (q[j] + 8) as u8 | ((q[j + BLOCK / 2] + 8) as u8) << 4)
                })
                .collect(),
            _ => multiples.iter().map(|&q| q as u8).collect(),
        };
        (levels, scales)
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.out, self.input]
    }

    /// The format of the file's weights (q8, or q4 widened to 8 bits here).
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Bytes one product reads: a byte a weight, four per block scale.
    pub fn bytes(&self) -> usize {
        self.out * self.input + self.out * self.input / BLOCK * 4
    }

    /// The device the blocks live on.
    pub fn device(&self) -> Device {
        self.parts[0].1.device()
    }

    /// `x @ Wᵀ`, `x [.., in]`: passes of at most [`MAX_ROWS`] rows, parts' columns
    /// concatenated.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        assert_eq!(dims[D - 1], self.input, "input width of a block projection");
        let rows: usize = dims[..D - 1].iter().product();
        let mut shape = dims;
        shape[D - 1] = self.out;
        let x = x.reshape([rows, self.input]);
        let passes: Vec<Tensor<2>> = (0..rows)
            .step_by(MAX_ROWS)
            .map(|start| {
                let end = (start + MAX_ROWS).min(rows);
                let x = x.clone().slice(start..end);
                let mut done = 0;
                let columns = self
                    .parts
                    .iter()
                    .map(|(levels, scales)| {
                        let panels = levels.dims()[0] / (self.input / 4);
                        let cols = (panels * PANEL).min(self.out - done);
                        done += cols;
                        part_product(x.clone(), levels, scales, cols)
                    })
                    .collect();
                one_or_cat(columns, 1)
            })
            .collect();
        one_or_cat(passes, 0).reshape(shape)
    }
}

/// One part's product (the kernel; only CubeCL devices hold block matrices).
fn part_product(
    x: Tensor<2>,
    levels: &Tensor<2, Int>,
    scales: &Tensor<2>,
    cols: usize,
) -> Tensor<2> {
    #[cfg(feature = "wgpu")]
    {
        use burn::backend::Dispatch;
        let y = <Dispatch as ops::ProjectionOps>::block_product(
            x.into_dispatch(),
            levels.clone().into_dispatch(),
            scales.clone().into_dispatch(),
            cols,
        );
        Tensor::from_dispatch(y)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = (levels, scales, cols);
        unreachable!(
            "block matrices exist only on CubeCL devices: {:?}",
            x.dims()
        )
    }
}

/// `parts` concatenated along `dim` (a single part as it is, without a copy).
fn one_or_cat(mut parts: Vec<Tensor<2>>, dim: usize) -> Tensor<2> {
    if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(parts, dim)
    }
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use crate::DeviceSpec;
    use crate::test_util::{Lcg, assert_close};
    use burn::tensor::DType;

    /// `x [rows, in] @ w` with `w` given as `[out, in]` rows, summed in f64 on the host.
    fn host_product(x: &[f32], w: &[f32], rows: usize, input: usize) -> Vec<f32> {
        let out = w.len() / input;
        let mut y = Vec::with_capacity(rows * out);
        for xr in x.chunks_exact(input) {
            for wr in w.chunks_exact(input) {
                y.push(
                    xr.iter()
                        .zip(wr)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>() as f32,
                );
            }
        }
        y
    }

    fn wgpu() -> Option<Device> {
        DeviceSpec::Wgpu.device().ok()
    }

    fn values(tensor: Tensor<2>) -> Vec<f32> {
        tensor.into_data().convert::<f32>().try_to_vec().unwrap()
    }

    /// The few-rows kernel against host sums, for every register bucket (1 to 16 rows, and
    /// row counts between buckets), f32 and (where the adapter has it) f16 weights, and a
    /// width that is not a multiple of the cube's 64 columns.
    #[test]
    fn few_rows_products_match_host_sums() {
        let Some(device) = wgpu() else { return };
        let (input, out) = (96, 131);
        let mut rng = Lcg::new(7);
        let w = rng.vec(out * input, 0.5);
        let mut w_t = vec![0f32; out * input];
        for o in 0..out {
            for i in 0..input {
                w_t[i * out + o] = w[o * input + i];
            }
        }
        let weight = Tensor::<2>::from_data(TensorData::new(w_t, [input, out]), &device);
        for rows in [1, 2, 3, 5, 8, 13, 16] {
            let x = rng.vec(rows * input, 1.0);
            let want = host_product(&x, &w, rows, input);
            let xt = Tensor::<2>::from_data(TensorData::new(x, [rows, input]), &device);
            let got = few_rows(&xt, &weight).expect("a CubeCL device runs the kernel");
            assert_close(&values(got), &want, 1e-5, &format!("f32, {rows} rows"));
            if device.supports_dtype(DType::F16) {
                let half = weight.clone().cast(DType::F16);
                let rounded: Vec<f32> =
                    w.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
                let want = host_product(&values(xt.clone()), &rounded, rows, input);
                let got = few_rows(&xt, &half).unwrap();
                assert_close(&values(got), &want, 1e-5, &format!("f16, {rows} rows"));
            }
        }
        let too_many = Tensor::<2>::zeros([MAX_ROWS + 1, input], &device);
        assert!(few_rows(&too_many, &weight).is_none());
    }

    /// Block matrices (q8 from values, q4 as a file stores it) against host sums of the
    /// dequantized weights: split into parts of columns by a small buffer limit, and more rows
    /// than one pass takes.
    #[test]
    fn block_products_match_host_sums_of_the_dequantized_weights() {
        let Some(device) = wgpu() else { return };
        let (input, out) = (64, 70);
        let mut rng = Lcg::new(11);
        let w = rng.vec(out * input, 0.5);
        for format in [WeightFormat::Q8, WeightFormat::Q4] {
            let dequantized = format.round_trip(&w, input);
            // From values (as the loader quantizes f32 files) and from a file's bytes.
            let mut levels = Vec::new();
            let mut scales = Vec::new();
            for block in w.chunks_exact(BLOCK) {
                let (d, q) = format.quantize_block(block);
                scales.extend(d.to_le_bytes());
                match format {
                    WeightFormat::Q8 => levels.extend(q.map(|q| q as u8)),
                    _ => levels.extend((0..16).map(|j| q[j] as u8 | (q[j + 16] as u8) << 4)),
                }
            }
            let matrices = [
                BlockMatrix::quantize("w", format, &w, [out, input], &device, None),
                BlockMatrix::from_stored(
                    "w",
                    format,
                    [&levels, &scales],
                    [out, input],
                    &device,
                    Some(64 * 64 + 1),
                )
                .unwrap(),
            ];
            assert_eq!(
                matrices[1].parts.len(),
                2,
                "2 panels of 64 columns, 1 a part"
            );
            // Read back as the file stores them, whichever way they came.
            for matrix in &matrices {
                assert_eq!(
                    matrix.stored_bytes(),
                    (levels.clone(), scales.clone()),
                    "{format}"
                );
            }
            for matrix in &matrices {
                assert_eq!(matrix.bytes(), out * input * 9 / 8);
                for rows in [1, 4, 20] {
                    let x = rng.vec(rows * input, 1.0);
                    let want = host_product(&x, &dequantized, rows, input);
                    let xt = Tensor::<3>::from_data(TensorData::new(x, [1, rows, input]), &device);
                    let got = matrix.forward(xt);
                    assert_eq!(got.dims(), [1, rows, out]);
                    let got = values(got.reshape([rows, out]));
                    assert_close(&got, &want, 1e-5, &format!("{format}, {rows} rows"));
                }
            }
        }
        // A file's bad bytes are refused, not uploaded.
        let bad = BlockMatrix::from_stored(
            "w",
            WeightFormat::Q8,
            [&[0x80; 64], &[0; 4]],
            [1, 64],
            &device,
            None,
        );
        assert!(bad.unwrap_err().contains("-128"));
    }
}

/// Times of the products on half a World head, for tuning the kernels by hand
/// (`cargo test --release -p rwkv-burn --features wgpu --lib -- --ignored gpu::timing --nocapture`).
#[cfg(all(test, feature = "wgpu"))]
mod timing {
    use super::*;
    use crate::DeviceSpec;
    use crate::test_util::Lcg;
    use std::time::Instant;

    fn time(what: &str, bytes: usize, mut f: impl FnMut(f32) -> Tensor<2>) {
        let first: Vec<f32> = f(0.0).into_data().try_to_vec().unwrap();
        let runs = 10;
        let start = Instant::now();
        let mut sum = 0.0;
        for run in 0..runs {
            let y: Vec<f32> = f(run as f32).into_data().try_to_vec().unwrap();
            sum += y.iter().map(|v| v.abs()).sum::<f32>();
        }
        let s = start.elapsed().as_secs_f64() / runs as f64;
        let check: f32 = first.iter().take(4).sum();
        println!(
            "{what}: {:.2} ms, {:.2} GB/s (check {check:.4}, {sum:.1})",
            s * 1e3,
            bytes as f64 / s / 1e9
        );
    }

    #[test]
    #[ignore]
    fn head_products() {
        let device = DeviceSpec::Wgpu.device().unwrap();
        let (input, out) = (768, 32768); // half a World head: one buffer on lavapipe
        let mut rng = Lcg::new(1);
        let w = rng.vec(out * input, 0.1);
        let blocks =
            BlockMatrix::quantize("head", WeightFormat::Q8, &w, [out, input], &device, None);
        let weight = Tensor::<2>::from_data(TensorData::new(w, [out, input]), &device).transpose();
        let weight = weight.clone() + weight.zeros_like(); // contiguous [in, out]
        for rows in [1, 4, 16] {
            let x = Tensor::<2>::from_data(
                TensorData::new(rng.vec(rows * input, 1.0), [rows, input]),
                &device,
            );
            time(&format!("matmul f32, {rows} rows"), out * input * 4, |a| {
                x.clone().add_scalar(a).matmul(weight.clone())
            });
            time(
                &format!("few rows f32, {rows} rows"),
                out * input * 4,
                |a| few_rows(&x.clone().add_scalar(a), &weight).unwrap(),
            );
            time(&format!("blocks q8, {rows} rows"), blocks.bytes(), |a| {
                blocks.forward(x.clone().add_scalar(a))
            });
        }
    }
}
