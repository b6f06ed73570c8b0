//! RWKV-4 WKV kernels: channels are independent, so one unit per (sequence, channel) walks
//! time with its three state scalars in registers.
//!
//! Every maximum is taken as the reference's `maximum(a, b)`: `b` only when `a < b`. The
//! backward pass routes the gradient of a tie the same way, so it differentiates exactly the
//! function the forward pass computes.

use super::{dense, empty};
use crate::wkv::{Wkv4Grads, Wkv4StatePrim};
use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Tensor arguments of the forward and backward kernels (storage buffers on wgpu).
pub(super) const FORWARD_BUFFERS: usize = 9;
pub(super) const BACKWARD_BUFFERS: usize = 19;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel<F: Float>(
    w: &Tensor<F>,
    u: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    state0: &Tensor<F>,
    y: &mut Tensor<F>,
    aa_out: &mut Tensor<F>,
    bb_out: &mut Tensor<F>,
    pp_out: &mut Tensor<F>,
    len: usize,
    channels: usize,
    rows: usize,
    #[define(F)] _dtype: ElemType,
) {
    let idx = ABSOLUTE_POS;
    if idx >= rows {
        terminate!();
    }
    let batch = idx / channels;
    let c = idx % channels;
    let w_c = f32::cast_from(w[c]);
    let u_c = f32::cast_from(u[c]);
    let mut aa = f32::cast_from(state0[idx]);
    let mut bb = f32::cast_from(state0[rows + idx]);
    let mut pp = f32::cast_from(state0[2 * rows + idx]);
    for t in 0..len {
        let at = (batch * len + t) * channels + c;
        let kt = f32::cast_from(k[at]);
        let vt = f32::cast_from(v[at]);

        let ww = u_c + kt;
        let mut p = pp;
        if pp < ww {
            p = ww;
        }
        let e1 = (pp - p).exp();
        let e2 = (ww - p).exp();
        y[at] = F::cast_from((e1 * aa + e2 * vt) / (e1 * bb + e2));

        let ww = w_c + pp;
        let mut p = ww;
        if ww < kt {
            p = kt;
        }
        let e1 = (ww - p).exp();
        let e2 = (kt - p).exp();
        aa = e1 * aa + e2 * vt;
        bb = e1 * bb + e2;
        pp = p;
    }
    aa_out[idx] = F::cast_from(aa);
    bb_out[idx] = F::cast_from(bb);
    pp_out[idx] = F::cast_from(pp);
}

/// Backward pass: forward once keeping every state in `states` (`[3, B, T + 1, C]`: as many
/// values as the inputs), then walk time backwards. `dw`, `du` are per-row partial sums the
/// caller adds over the batch.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn backward_kernel<F: Float>(
    w: &Tensor<F>,
    u: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    aa0: &Tensor<F>,
    bb0: &Tensor<F>,
    pp0: &Tensor<F>,
    dy: &Tensor<F>,
    d_aa: &Tensor<F>,
    d_bb: &Tensor<F>,
    d_pp: &Tensor<F>,
    dw: &mut Tensor<F>,
    du: &mut Tensor<F>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    d_aa0: &mut Tensor<F>,
    d_bb0: &mut Tensor<F>,
    d_pp0: &mut Tensor<F>,
    states: &mut Tensor<f32>,
    len: usize,
    channels: usize,
    rows: usize,
    #[define(F)] _dtype: ElemType,
) {
    let idx = ABSOLUTE_POS;
    if idx >= rows {
        terminate!();
    }
    let batch = idx / channels;
    let c = idx % channels;
    let w_c = f32::cast_from(w[c]);
    let u_c = f32::cast_from(u[c]);
    // states[plane + (batch * (len + 1) + t) * channels + c], plane = 0 (aa), 1 (bb), 2 (pp).
    let plane = rows * (len + 1);
    let first = batch * (len + 1) * channels + c;

    let mut aa = f32::cast_from(aa0[idx]);
    let mut bb = f32::cast_from(bb0[idx]);
    let mut pp = f32::cast_from(pp0[idx]);
    states[first] = aa;
    states[plane + first] = bb;
    states[2 * plane + first] = pp;
    for t in 0..len {
        let at = (batch * len + t) * channels + c;
        let kt = f32::cast_from(k[at]);
        let vt = f32::cast_from(v[at]);
        let ww = w_c + pp;
        let mut p = ww;
        if ww < kt {
            p = kt;
        }
        let e1 = (ww - p).exp();
        let e2 = (kt - p).exp();
        aa = e1 * aa + e2 * vt;
        bb = e1 * bb + e2;
        pp = p;
        let s = first + (t + 1) * channels;
        states[s] = aa;
        states[plane + s] = bb;
        states[2 * plane + s] = pp;
    }

    let zero = f32::new(0.0);
    let mut g_aa = f32::cast_from(d_aa[idx]);
    let mut g_bb = f32::cast_from(d_bb[idx]);
    let mut g_pp = f32::cast_from(d_pp[idx]);
    let mut g_w = zero;
    let mut g_u = zero;
    let mut t = len;
    while t > 0 {
        t -= 1;
        let at = (batch * len + t) * channels + c;
        let s = first + t * channels;
        let aa = states[s];
        let bb = states[plane + s];
        let pp = states[2 * plane + s];
        let kt = f32::cast_from(k[at]);
        let vt = f32::cast_from(v[at]);
        let gy = f32::cast_from(dy[at]);

        // The state update: aa' = f1 aa + f2 v, bb' = f1 bb + f2, pp' = max(w + pp, k).
        let ww = w_c + pp;
        let k_wins = ww < kt;
        let mut p = ww;
        if k_wins {
            p = kt;
        }
        let f1 = (ww - p).exp();
        let f2 = (kt - p).exp();
        let g_f1 = (g_aa * aa + g_bb * bb) * f1;
        let g_f2 = (g_aa * vt + g_bb) * f2;
        let mut next_aa = g_aa * f1;
        let mut next_bb = g_bb * f1;
        let mut g_v = g_aa * f2;
        let g_p = g_pp - g_f1 - g_f2;
        let mut g_ww = g_f1;
        let mut g_k = g_f2;
        if k_wins {
            g_k += g_p;
        } else {
            g_ww += g_p;
        }
        g_w += g_ww;
        let mut next_pp = g_ww;

        // The output: y = (e1 aa + e2 v) / (e1 bb + e2), e1 = e^(pp - p), e2 = e^(u + k - p).
        let ww = u_c + kt;
        let ww_wins = pp < ww;
        let mut p = pp;
        if ww_wins {
            p = ww;
        }
        let e1 = (pp - p).exp();
        let e2 = (ww - p).exp();
        let den = e1 * bb + e2;
        let y = (e1 * aa + e2 * vt) / den;
        let g_num = gy / den;
        let g_den = zero - g_num * y;
        let g_e1 = (g_num * aa + g_den * bb) * e1;
        let g_e2 = (g_num * vt + g_den) * e2;
        next_aa += g_num * e1;
        next_bb += g_den * e1;
        g_v += g_num * e2;
        let g_p = zero - (g_e1 + g_e2);
        next_pp += g_e1;
        let mut g_ww = g_e2;
        if ww_wins {
            g_ww += g_p;
        } else {
            next_pp += g_p;
        }
        g_u += g_ww;
        g_k += g_ww;

        dk[at] = F::cast_from(g_k);
        dv[at] = F::cast_from(g_v);
        g_aa = next_aa;
        g_bb = next_bb;
        g_pp = next_pp;
    }
    d_aa0[idx] = F::cast_from(g_aa);
    d_bb0[idx] = F::cast_from(g_bb);
    d_pp0[idx] = F::cast_from(g_pp);
    dw[idx] = F::cast_from(g_w);
    du[idx] = F::cast_from(g_u);
}

/// Launch shape: one unit per (sequence, channel).
fn grid(k: &CubeTensor) -> (usize, usize, usize, CubeCount, CubeDim) {
    let [batch, len, channels] = k.shape().dims::<3>();
    let rows = batch * channels;
    let dim = CubeDim::new_1d(64);
    let count = CubeCount::Static(rows.div_ceil(64).max(1) as u32, 1, 1);
    (len, channels, rows, count, dim)
}

pub(super) fn forward(
    w: CubeTensor,
    u: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    state: Wkv4StatePrim<CubeBackend>,
) -> (CubeTensor, Wkv4StatePrim<CubeBackend>) {
    // The initial state's three parts travel as one `[3, B·C]` buffer, so the kernel takes 9
    // storage buffers (plus CubeCL's metadata one), within the 10 most browsers allow. (The
    // outputs stay separate: slicing a packed output gave views that Burn's fusion
    // mis-compiles downstream.)
    let state_shape = state.aa.shape();
    let state0 = CubeBackend::float_cat(
        [state.aa, state.bb, state.pp]
            .map(|p| {
                let n = p.shape().num_elements();
                CubeBackend::float_reshape(p, Shape::new([1, n]))
            })
            .into(),
        0,
    );
    let [w, u, k, v, state0] = dense([w, u, k, v, state0]);
    let (len, channels, rows, count, dim) = grid(&k);
    let dtype = k.dtype;
    let y = empty(&k, k.shape(), dtype);
    let [aa_out, bb_out, pp_out] = std::array::from_fn(|_| empty(&k, state_shape.clone(), dtype));
    forward_kernel::launch(
        &k.client.clone(),
        count,
        dim,
        w.into_tensor_arg(),
        u.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        state0.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        aa_out.clone().into_tensor_arg(),
        bb_out.clone().into_tensor_arg(),
        pp_out.clone().into_tensor_arg(),
        len,
        channels,
        rows,
        dtype_to_storage_type(dtype),
    );
    let state = Wkv4StatePrim {
        aa: aa_out,
        bb: bb_out,
        pp: pp_out,
    };
    (y, state)
}

pub(super) fn backward(
    w: CubeTensor,
    u: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    state: Wkv4StatePrim<CubeBackend>,
    dy: CubeTensor,
    d_state: Wkv4StatePrim<CubeBackend>,
) -> Wkv4Grads<CubeBackend> {
    let [w, u, k, v, aa, bb, pp] = dense([w, u, k, v, state.aa, state.bb, state.pp]);
    let [dy, d_aa, d_bb, d_pp] = dense([dy, d_state.aa, d_state.bb, d_state.pp]);
    let (len, channels, rows, count, dim) = grid(&k);
    let dtype = k.dtype;
    let [dk, dv] = std::array::from_fn(|_| empty(&k, k.shape(), dtype));
    let [dw, du, d_aa0, d_bb0, d_pp0] = std::array::from_fn(|_| empty(&k, aa.shape(), dtype));
    let states = empty(&k, [3, rows * (len + 1)], DType::F32);
    backward_kernel::launch(
        &k.client.clone(),
        count,
        dim,
        w.into_tensor_arg(),
        u.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        aa.into_tensor_arg(),
        bb.into_tensor_arg(),
        pp.into_tensor_arg(),
        dy.into_tensor_arg(),
        d_aa.into_tensor_arg(),
        d_bb.into_tensor_arg(),
        d_pp.into_tensor_arg(),
        dw.clone().into_tensor_arg(),
        du.clone().into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        d_aa0.clone().into_tensor_arg(),
        d_bb0.clone().into_tensor_arg(),
        d_pp0.clone().into_tensor_arg(),
        states.into_tensor_arg(),
        len,
        channels,
        rows,
        dtype_to_storage_type(dtype),
    );
    let per_channel =
        |x| CubeBackend::float_reshape(CubeBackend::float_sum_dim(x, 0), Shape::new([channels]));
    Wkv4Grads {
        w: per_channel(dw),
        u: per_channel(du),
        k: dk,
        v: dv,
        state: Wkv4StatePrim {
            aa: d_aa0,
            bb: d_bb0,
            pp: d_pp0,
        },
    }
}
