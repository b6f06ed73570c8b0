#![allow(deprecated)] // burn-tch is deprecated upstream; the user asked to keep it.

use crate::wkv::WkvOps;
use burn::backend::LibTorch;

/// burn-tch runs the reference body (libtorch's own ops, on CPU or CUDA).
impl WkvOps for LibTorch {}
