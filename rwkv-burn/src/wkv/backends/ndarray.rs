#![allow(deprecated)] // burn-ndarray is deprecated upstream; the user asked to keep it.

use crate::wkv::WkvOps;
use burn::backend::NdArray;

/// burn-ndarray runs the reference body.
impl WkvOps for NdArray {}
