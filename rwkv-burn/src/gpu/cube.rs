//! Kernels for products of a few rows (decode), on every CubeCL runtime.
//!
//! One unit per output column: it walks the column of `W [in, out]` from top to bottom, so
//! the units of a cube read consecutive words of each weight row (coalesced on a GPU, one
//! vector load on a CPU emulation), and every weight is read once for all rows of `x`. The
//! rows' sums live in registers; their count is a compile-time bucket (1, 2, 4, 8, 16) so
//! that a decode loop compiles a handful of kernels, not one per prompt length.

use super::PANEL;
use super::ops::ProjectionOps;
use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

/// Units per cube of the few-rows kernel: output columns per cube.
const UNITS: u32 = 64;

/// `y = x @ w`, `w` in any float type, sums in f32.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn few_rows_kernel<F: Float, W: Float>(
    x: &Tensor<F>,
    w: &Tensor<W>,
    y: &mut Tensor<F>,
    rows: usize,
    input: usize,
    out: usize,
    #[comptime] bucket: usize,
    #[define(F, W)] _dtypes: [ElemType; 2],
) {
    let o = ABSOLUTE_POS;
    if o < out {
        let mut acc = Array::<f32>::new(bucket);
        #[unroll]
        for m in 0..bucket {
            acc[m] = f32::new(0.0);
        }
        for i in 0..input {
            let weight = f32::cast_from(w[i * out + o]);
            #[unroll]
            for m in 0..bucket {
                if m < rows {
                    acc[m] += f32::cast_from(x[m * input + i]) * weight;
                }
            }
        }
        #[unroll]
        for m in 0..bucket {
            if m < rows {
                y[m * out + o] = F::cast_from(acc[m]);
            }
        }
    }
}

/// `y = x @ W` for `W` in blocks of 32 (levels packed four to a word, one f32 scale per
/// block and column, in panels of [`PANEL`] columns; see [`ProjectionOps::block_product`]):
/// cube `p` computes panel `p`. A block's products are summed on the levels and scaled once,
/// as ggml's Q8_0 dot products are.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn block_kernel<F: Float>(
    x: &Tensor<F>,
    levels: &Tensor<u32>,
    scales: &Tensor<f32>,
    y: &mut Tensor<F>,
    rows: usize,
    input: usize,
    out: usize,
    #[comptime] bucket: usize,
    #[define(F)] _dtype: ElemType,
) {
    let panel = CUBE_POS_X as usize;
    let unit = UNIT_POS_X as usize;
    let o = panel * PANEL + unit;
    if o < out {
        let blocks = input / 32;
        let words = panel * (input / 4);
        let panel_scales = panel * blocks;
        let mut acc = Array::<f32>::new(bucket);
        let mut part = Array::<f32>::new(bucket);
        #[unroll]
        for m in 0..bucket {
            acc[m] = f32::new(0.0);
        }
        for b in 0..blocks {
            #[unroll]
            for m in 0..bucket {
                part[m] = f32::new(0.0);
            }
            for j in 0..8usize {
                let mut word = levels[(words + b * 8 + j) * PANEL + unit];
                let i = b * 32 + j * 4;
                #[unroll]
                for k in 0..4usize {
                    // The byte as a signed level: its value less 256 when the sign bit is set.
                    let byte = word & 255;
                    let level = f32::cast_from(byte) - f32::cast_from(byte >> 7) * 256.0;
                    word >>= 8;
                    #[unroll]
                    for m in 0..bucket {
                        if m < rows {
                            part[m] += f32::cast_from(x[m * input + i + k]) * level;
                        }
                    }
                }
            }
            let scale = scales[(panel_scales + b) * PANEL + unit];
            #[unroll]
            for m in 0..bucket {
                acc[m] += part[m] * scale;
            }
        }
        #[unroll]
        for m in 0..bucket {
            if m < rows {
                y[m * out + o] = F::cast_from(acc[m]);
            }
        }
    }
}

/// The register bucket for `rows` rows (at most [`super::MAX_ROWS`]).
fn bucket(rows: usize) -> usize {
    rows.next_power_of_two()
}

/// Cubes of [`UNITS`] columns covering `out`.
fn grid(out: usize) -> (CubeCount, CubeDim) {
    let cubes = out.div_ceil(UNITS as usize) as u32;
    (CubeCount::Static(cubes, 1, 1), CubeDim::new_1d(UNITS))
}

impl ProjectionOps for CubeBackend {
    fn few_rows_product(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let [x, w] = [x, w].map(into_contiguous);
        let [rows, input] = x.shape().dims::<2>();
        let out = w.shape()[1];
        let y = empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            Shape::new([rows, out]),
            x.dtype,
        );
        let (count, dim) = grid(out);
        let dtypes = [x.dtype, w.dtype].map(dtype_to_storage_type);
        few_rows_kernel::launch(
            &x.client.clone(),
            count,
            dim,
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            rows,
            input,
            out,
            bucket(rows),
            dtypes,
        );
        y
    }

    fn block_product(
        x: FloatTensor<Self>,
        levels: IntTensor<Self>,
        scales: FloatTensor<Self>,
        cols: usize,
    ) -> FloatTensor<Self> {
        let [x, levels, scales] = [x, levels, scales].map(into_contiguous);
        assert_eq!(levels.dtype.size(), 4, "block levels are 32-bit words");
        assert_eq!(scales.dtype, DType::F32, "block scales are f32");
        let [rows, input] = x.shape().dims::<2>();
        let panels = levels.shape()[0] / (input / 4);
        assert!(cols <= panels * PANEL, "{cols} columns in {panels} panels");
        let y = empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            Shape::new([rows, cols]),
            x.dtype,
        );
        let dtype = dtype_to_storage_type(x.dtype);
        block_kernel::launch(
            &x.client.clone(),
            CubeCount::Static(panels as u32, 1, 1),
            CubeDim::new_1d(PANEL as u32),
            x.into_tensor_arg(),
            levels.into_tensor_arg(),
            scales.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            rows,
            input,
            cols,
            bucket(rows),
            dtype,
        );
        y
    }
}
