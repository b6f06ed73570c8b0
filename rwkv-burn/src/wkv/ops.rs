//! The backend extension trait. Every backend compiled in must implement it (see `backends/`).

// The `NdArray` and `LibTorch` selectors name backends deprecated upstream, kept because users
// asked for them; this file is the one place that names them.
#![allow(deprecated)]

use super::reference;
use burn::backend::{Backend, ExtensionType, backend_extension, tensor::FloatTensor};

/// RWKV-4 WKV state at the backend level: numerator, denominator and running maximum,
/// each `[batch, channels]`.
#[derive(ExtensionType, Debug)]
pub struct Wkv4StatePrim<B: Backend> {
    /// Decayed sum of `exp(k) * v`, scaled by `exp(-pp)`.
    pub aa: FloatTensor<B>,
    /// Decayed sum of `exp(k)`, scaled by `exp(-pp)`.
    pub bb: FloatTensor<B>,
    /// The running maximum exponent that keeps `aa` and `bb` finite.
    pub pp: FloatTensor<B>,
}

/// The WKV operators, one method per RWKV generation.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    LibTorch: cfg(feature = "tch"),
    Autodiff: cfg(feature = "autodiff"),
)]
pub trait WkvOps: Backend {
    /// RWKV-4 WKV over a sequence.
    ///
    /// Shapes: `w`, `u` `[A]` (`w = -exp(time_decay)`, `u = time_first`); `k`, `v`
    /// `[B, T, A]`; state tensors `[B, A]`. Returns `wkv` `[B, T, A]` and the state after the
    /// last token.
    fn wkv4(
        w: FloatTensor<Self>,
        u: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        #[extension_type] state: Wkv4StatePrim<Self>,
    ) -> (FloatTensor<Self>, Wkv4StatePrim<Self>) {
        reference::wkv4::<Self>(w, u, k, v, state)
    }

    /// RWKV-5/6 WKV over a sequence: per head, a matrix state `S[key, value]`.
    ///
    /// Shapes: `r`, `k`, `v`, `w` `[B, T, H, N]` (`w` is the decay factor in (0, 1), per
    /// token for RWKV-6, repeated over time for RWKV-5); `u` `[H, N]`; `state` `[B, H, N, N]`.
    /// Per token: `y = r (diag(u) k v^T + S)`, then `S = k v^T + diag(w) S`.
    fn wkv5(
        r: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w: FloatTensor<Self>,
        u: FloatTensor<Self>,
        state: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::wkv5::<Self>(r, k, v, w, u, state)
    }

    /// RWKV-7 WKV (generalised delta rule) over a sequence: per head, a matrix state
    /// `S[value, key]`.
    ///
    /// Shapes: `r`, `w`, `k`, `v`, `a`, `b` `[B, T, H, N]`; `state` `[B, H, N, N]`. Per token:
    /// `S = S diag(w) + (S a) b^T + v k^T`, then `y = S r`. The model passes `a = -kk` and
    /// `b = kk * a_gate`.
    #[allow(clippy::too_many_arguments)]
    fn wkv7(
        r: FloatTensor<Self>,
        w: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        state: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::wkv7::<Self>(r, w, k, v, a, b, state)
    }
}
