//! The backend extension trait. Every backend compiled in must implement it (see `backends/`).

// The `NdArray` and `LibTorch` selectors name backends deprecated upstream, kept because users
// asked for them; this file is the one place that names them.
#![allow(deprecated)]

use super::{backward, reference};
use burn::backend::{Backend, ExtensionType, backend_extension, tensor::FloatTensor};

/// RWKV-4 WKV state at the backend level: numerator, denominator and running maximum,
/// each `[batch, channels]`.
#[derive(ExtensionType, Debug)]
#[extension_type(fusion: cfg(feature = "wgpu"))]
pub struct Wkv4StatePrim<B: Backend> {
    /// Decayed sum of `exp(k) * v`, scaled by `exp(-pp)`.
    pub aa: FloatTensor<B>,
    /// Decayed sum of `exp(k)`, scaled by `exp(-pp)`.
    pub bb: FloatTensor<B>,
    /// The running maximum exponent that keeps `aa` and `bb` finite.
    pub pp: FloatTensor<B>,
}

/// Gradients of the RWKV-4 WKV inputs, in the inputs' shapes.
#[derive(ExtensionType, Debug)]
#[extension_type(fusion: cfg(feature = "wgpu"))]
pub struct Wkv4Grads<B: Backend> {
    /// d loss / d w, `[C]`.
    pub w: FloatTensor<B>,
    /// d loss / d u, `[C]`.
    pub u: FloatTensor<B>,
    /// d loss / d k, `[B, T, C]`.
    pub k: FloatTensor<B>,
    /// d loss / d v, `[B, T, C]`.
    pub v: FloatTensor<B>,
    /// d loss / d the initial state.
    #[extension_type]
    pub state: Wkv4StatePrim<B>,
}

/// Gradients of the RWKV-5/6 WKV inputs, in the inputs' shapes.
#[derive(ExtensionType, Debug)]
#[extension_type(fusion: cfg(feature = "wgpu"))]
pub struct Wkv5Grads<B: Backend> {
    /// d loss / d r, `[B, T, H, N]`.
    pub r: FloatTensor<B>,
    /// d loss / d k.
    pub k: FloatTensor<B>,
    /// d loss / d v.
    pub v: FloatTensor<B>,
    /// d loss / d w.
    pub w: FloatTensor<B>,
    /// d loss / d u, `[H, N]`.
    pub u: FloatTensor<B>,
    /// d loss / d initial state, `[B, H, N, N]`.
    pub state: FloatTensor<B>,
}

/// Gradients of the RWKV-7 WKV inputs, in the inputs' shapes.
#[derive(ExtensionType, Debug)]
#[extension_type(fusion: cfg(feature = "wgpu"))]
pub struct Wkv7Grads<B: Backend> {
    /// d loss / d r, `[B, T, H, N]`.
    pub r: FloatTensor<B>,
    /// d loss / d w.
    pub w: FloatTensor<B>,
    /// d loss / d k.
    pub k: FloatTensor<B>,
    /// d loss / d v.
    pub v: FloatTensor<B>,
    /// d loss / d a.
    pub a: FloatTensor<B>,
    /// d loss / d b.
    pub b: FloatTensor<B>,
    /// d loss / d initial state, `[B, H, N, N]`.
    pub state: FloatTensor<B>,
}

/// The WKV operators, one forward and one backward method per RWKV generation.
///
/// The default bodies (plain backend tensor ops) are the reference; CubeCL backends override
/// them with kernels. Under fusion each call is one opaque operation whose outputs have the
/// shapes of the matching inputs (the `meta` closures).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    LibTorch: cfg(feature = "tch"),
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "wgpu"),
    Autodiff: cfg(feature = "autodiff"),
)]
pub trait WkvOps: Backend {
    /// RWKV-4 WKV over a sequence.
    ///
    /// Shapes: `w`, `u` `[A]` (`w = -exp(time_decay)`, `u = time_first`); `k`, `v`
    /// `[B, T, A]`; state tensors `[B, A]`. Returns `wkv` `[B, T, A]` and the state after the
    /// last token.
    #[fusion(meta = |_w, _u, k, _v, state| (k.clone(), state.clone()))]
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
    #[fusion(meta = |r, _k, _v, _w, _u, state| (r.clone(), state.clone()))]
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
    #[fusion(meta = |r, _w, _k, _v, _a, _b, state| (r.clone(), state.clone()))]
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

    /// Backward of [`WkvOps::wkv4`]: the gradients of every input given `dy` (the gradient
    /// of the output) and `d_state` (of the final state).
    #[fusion(meta = |w, u, k, v, state, _dy, _d_state| Wkv4GradsMetadata {
        w: w.clone(),
        u: u.clone(),
        k: k.clone(),
        v: v.clone(),
        state: state.clone(),
    })]
    fn wkv4_backward(
        w: FloatTensor<Self>,
        u: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        #[extension_type] state: Wkv4StatePrim<Self>,
        dy: FloatTensor<Self>,
        #[extension_type] d_state: Wkv4StatePrim<Self>,
    ) -> Wkv4Grads<Self> {
        backward::wkv4::<Self>(w, u, k, v, state, dy, d_state)
    }

    /// Backward of [`WkvOps::wkv5`] given `dy` `[B, T, H, N]` and `ds` `[B, H, N, N]`.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |r, k, v, w, u, state, _dy, _ds| Wkv5GradsMetadata {
        r: r.clone(),
        k: k.clone(),
        v: v.clone(),
        w: w.clone(),
        u: u.clone(),
        state: state.clone(),
    })]
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
        backward::wkv5::<Self>(r, k, v, w, u, state, dy, ds)
    }

    /// Backward of [`WkvOps::wkv7`] given `dy` `[B, T, H, N]` and `ds` `[B, H, N, N]`.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |r, w, k, v, a, b, state, _dy, _ds| Wkv7GradsMetadata {
        r: r.clone(),
        w: w.clone(),
        k: k.clone(),
        v: v.clone(),
        a: a.clone(),
        b: b.clone(),
        state: state.clone(),
    })]
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
        backward::wkv7::<Self>(r, w, k, v, a, b, state, dy, ds)
    }
}
