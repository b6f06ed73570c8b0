//! CubeCL kernels for the WKV operators: one source for every CubeCL runtime (wgpu's Vulkan,
//! Metal, DX12 and WebGPU; CUDA and ROCm where Burn's backends for them build).
//!
//! Each kernel walks time inside one launch, with the recurrent state in registers and f32
//! arithmetic whatever the storage dtype. The backward kernels recompute the forward states
//! from checkpoints instead of keeping them from the forward pass: a call keeps only its
//! inputs alive between forward and backward, as the tensor-op backward does.

mod wkv4;
mod wkv5;
mod wkv7;

use crate::wkv::{Wkv4Grads, Wkv4StatePrim, Wkv5Grads, Wkv7Grads, WkvOps, backward, reference};
use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

/// A new uninitialised tensor on `like`'s device.
fn empty(like: &CubeTensor, shape: impl Into<Shape>, dtype: DType) -> CubeTensor {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        dtype,
    )
}

/// Whether a kernel with `units` units per cube, `floats` f32 of shared memory and `buffers`
/// tensor arguments fits the device. What does not fit runs the reference body or the
/// tensor-op backward instead. (Browsers may allow as few as 8 storage buffers per kernel, so
/// the backward kernels, with 16 to 19, fall back there.)
fn fits(like: &CubeTensor, units: usize, floats: usize, buffers: usize) -> bool {
    let hardware = &like.client.properties().hardware;
    units <= hardware.max_units_per_cube as usize
        && units <= hardware.max_cube_dim.0 as usize
        && floats * 4 <= hardware.max_shared_memory_size
        && buffers <= hardware.max_bindings as usize
}

impl WkvOps for CubeBackend {
    fn wkv4(
        w: FloatTensor<Self>,
        u: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        state: Wkv4StatePrim<Self>,
    ) -> (FloatTensor<Self>, Wkv4StatePrim<Self>) {
        if !fits(&k, 1, 0, wkv4::FORWARD_BUFFERS) {
            return reference::wkv4::<Self>(w, u, k, v, state);
        }
        wkv4::forward(w, u, k, v, state)
    }

    fn wkv5(
        r: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w: FloatTensor<Self>,
        u: FloatTensor<Self>,
        state: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let n = r.shape()[3];
        if !fits(&r, n, 4 * n, wkv5::FORWARD_BUFFERS) {
            return reference::wkv5::<Self>(r, k, v, w, u, state);
        }
        wkv5::forward(r, k, v, w, u, state)
    }

    fn wkv7(
        r: FloatTensor<Self>,
        w: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        state: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let n = r.shape()[3];
        if !fits(&r, n, 5 * n, wkv7::FORWARD_BUFFERS) {
            return reference::wkv7::<Self>(r, w, k, v, a, b, state);
        }
        wkv7::forward(r, w, k, v, a, b, state)
    }

    fn wkv4_backward(
        w: FloatTensor<Self>,
        u: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        state: Wkv4StatePrim<Self>,
        dy: FloatTensor<Self>,
        d_state: Wkv4StatePrim<Self>,
    ) -> Wkv4Grads<Self> {
        if !fits(&k, 1, 0, wkv4::BACKWARD_BUFFERS) {
            return backward::wkv4::<Self>(w, u, k, v, state, dy, d_state);
        }
        wkv4::backward(w, u, k, v, state, dy, d_state)
    }

    fn wkv5_backward(
        r: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w: FloatTensor<Self>,
        u: FloatTensor<Self>,
        state: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        ds: FloatTensor<Self>,
    ) -> Wkv5Grads<Self> {
        let n = r.shape()[3];
        if !fits(&r, n, n * n + 6 * n, wkv5::BACKWARD_BUFFERS) {
            return backward::wkv5::<Self>(r, k, v, w, u, state, dy, ds);
        }
        wkv5::backward(r, k, v, w, u, state, dy, ds)
    }

    fn wkv7_backward(
        r: FloatTensor<Self>,
        w: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        state: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        ds: FloatTensor<Self>,
    ) -> Wkv7Grads<Self> {
        let n = r.shape()[3];
        if !fits(&r, n, n * n + 9 * n, wkv7::BACKWARD_BUFFERS) {
            return backward::wkv7::<Self>(r, w, k, v, a, b, state, dy, ds);
        }
        wkv7::backward(r, w, k, v, a, b, state, dy, ds)
    }
}

/// The inputs made contiguous (the kernels index them as dense row-major arrays).
fn dense<const N: usize>(tensors: [CubeTensor; N]) -> [CubeTensor; N] {
    tensors.map(into_contiguous)
}
