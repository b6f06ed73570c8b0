//! The backend extension behind [`super`]'s products: CubeCL backends run them as kernels
//! (`cube.rs`); no other backend is asked (the model calls them only on CubeCL devices).

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};
use burn::tensor::Shape;

/// `[rows, out]` in `x`'s dtype, for `x [rows, in]` and a weight of `out` columns.
fn product_spec(x: &TensorSpec, out: usize) -> TensorSpec {
    TensorSpec::new(Shape::new([x.shape[0], out]), x.dtype)
}

/// Products of a few rows with a weight read in one pass (decode).
#[backend_extension(Cube: cfg(feature = "wgpu"), Fusion: cfg(feature = "wgpu"))]
pub trait ProjectionOps: Backend {
    /// `x [rows, in] @ w [in, out]`, the weight in f32 or a half type (read as it is stored,
    /// summed in f32), `x` and the result in `x`'s dtype.
    #[fusion(meta = |x, w| product_spec(x, w.shape[1]))]
    fn few_rows_product(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x [rows, in] @ W`, `W [in, cols]` held in blocks of 32 inputs in panels of
    /// [`PANEL`](super::PANEL) columns (see [`super::BlockMatrix`]): `levels [panels * in / 4,
    /// PANEL]`, four signed 8-bit levels per 32-bit word (bits `8k..8k+8` for input `4j + k`),
    /// `scales [panels * in / 32, PANEL]` f32; `W[i, o] = level(i, o) * scale(i / 32, o)`.
    #[fusion(meta = |x, _levels, _scales, cols| product_spec(x, *cols))]
    fn block_product(
        x: FloatTensor<Self>,
        levels: IntTensor<Self>,
        scales: FloatTensor<Self>,
        cols: usize,
    ) -> FloatTensor<Self>;
}
