//! One file per backend that implements [`WkvOps`](super::WkvOps).
//!
//! CubeCL backends (wgpu and its relatives) run kernels (`cube/`). CPU backends use the
//! reference body: on a CPU a hand-written loop would gain little over the per-step tensor ops
//! until sequences get long, and the reference is the oracle kernels are tested against.

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
