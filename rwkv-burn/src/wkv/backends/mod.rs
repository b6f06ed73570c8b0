//! One file per backend that implements [`WkvOps`](super::WkvOps).
//!
//! CubeCL backends (wgpu and its relatives) run kernels (`cube/`), libtorch's CUDA tensors
//! CUDA kernels (`tch/`). flex runs the forward passes as loops over its f32 buffers
//! (`flex.rs`: a token step of the reference body is a dozen small tensor ops whose dispatch
//! outweighs their arithmetic; measured +18% prefill on the RWKV-7 0.1B shape). ndarray and
//! libtorch's CPU run the reference body, the oracle every kernel is tested against.

#[cfg(feature = "autodiff")]
mod autodiff;
#[cfg(feature = "wgpu")]
mod cube;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "ndarray")]
mod ndarray;
#[cfg(feature = "tch")]
mod tch;

/// Time steps between two state checkpoints in the backward kernels (CubeCL and CUDA): the
/// recomputed states of one chunk live in a scratch buffer of `CHUNK + 1` states per head.
#[cfg(any(feature = "wgpu", feature = "tch"))]
const CHUNK: usize = 16;
