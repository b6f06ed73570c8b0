//! The WKV operator: the linear-time "attention" at the heart of RWKV.
//!
//! It is a Burn backend extension so each backend can supply its own kernel while the model
//! code calls one function. The trait's default body ([`reference`]) is written with plain
//! backend tensor ops; it defines correctness and runs on every backend. Backends listed in the
//! `#[backend_extension]` attribute get their implementation from `backends/`, one file each.

mod backends;
mod backward;
mod ops;
pub mod reference;

pub use ops::{Wkv4Grads, Wkv4StatePrim, Wkv5Grads, Wkv7Grads, WkvOps};

use burn::backend::Dispatch;
use burn::tensor::{DType, Tensor};

/// `x` in `dtype`. The WKV state math runs in the state's precision (f32) whatever precision
/// the activations use (see [`crate::Rwkv::cast`]): inputs are cast up, outputs back down.
fn in_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// The running maximum of a fresh RWKV-4 WKV state (`att_pp` of the official package): "minus
/// infinity" that stays finite in f32 arithmetic.
pub const V4_EMPTY_MAX: f32 = -1e30;

/// RWKV-4 WKV state as high-level tensors, each `[batch, channels]`.
#[derive(Debug, Clone)]
pub struct Wkv4State {
    /// Numerator (`att_aa` in the official state).
    pub aa: Tensor<2>,
    /// Denominator (`att_bb`).
    pub bb: Tensor<2>,
    /// Running maximum exponent (`att_pp`).
    pub pp: Tensor<2>,
}

/// RWKV-4 WKV: see [`WkvOps::wkv4`] for shapes. Runs the backend's own kernel where it has one.
pub fn wkv4(
    w: Tensor<1>,
    u: Tensor<1>,
    k: Tensor<3>,
    v: Tensor<3>,
    state: Wkv4State,
) -> (Tensor<3>, Wkv4State) {
    let (compute, exact) = (k.dtype(), state.aa.dtype());
    let [w, u] = [w, u].map(|x| in_dtype(x, exact));
    let [k, v] = [k, v].map(|x| in_dtype(x, exact));
    let state = Wkv4StatePrim {
        aa: state.aa.into_dispatch(),
        bb: state.bb.into_dispatch(),
        pp: state.pp.into_dispatch(),
    };
    let (y, s) = <Dispatch as WkvOps>::wkv4(
        w.into_dispatch(),
        u.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        state,
    );
    (
        in_dtype(Tensor::from_dispatch(y), compute),
        Wkv4State {
            aa: Tensor::from_dispatch(s.aa),
            bb: Tensor::from_dispatch(s.bb),
            pp: Tensor::from_dispatch(s.pp),
        },
    )
}

/// RWKV-5/6 WKV: see [`WkvOps::wkv5`] for shapes and the recurrence.
pub fn wkv5(
    r: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    w: Tensor<4>,
    u: Tensor<2>,
    state: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let (compute, exact) = (r.dtype(), state.dtype());
    let [r, k, v, w] = [r, k, v, w].map(|x| in_dtype(x, exact));
    let u = in_dtype(u, exact);
    let (y, s) = <Dispatch as WkvOps>::wkv5(
        r.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        w.into_dispatch(),
        u.into_dispatch(),
        state.into_dispatch(),
    );
    (
        in_dtype(Tensor::from_dispatch(y), compute),
        Tensor::from_dispatch(s),
    )
}

/// RWKV-7 WKV: see [`WkvOps::wkv7`] for shapes and the recurrence.
pub fn wkv7(
    r: Tensor<4>,
    w: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    a: Tensor<4>,
    b: Tensor<4>,
    state: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let (compute, exact) = (r.dtype(), state.dtype());
    let [r, w, k, v, a, b] = [r, w, k, v, a, b].map(|x| in_dtype(x, exact));
    let (y, s) = <Dispatch as WkvOps>::wkv7(
        r.into_dispatch(),
        w.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        a.into_dispatch(),
        b.into_dispatch(),
        state.into_dispatch(),
    );
    (
        in_dtype(Tensor::from_dispatch(y), compute),
        Tensor::from_dispatch(s),
    )
}
