//! RWKV-5/6 WKV kernels. One cube per (sequence, head) with one unit per state column: unit
//! `j` holds `S[:, j]` (value index `j`); columns evolve independently given the token's `r`,
//! `k`, `w`, which the units share through shared memory.

use super::{dense, empty};
use crate::wkv::Wkv5Grads;
use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Tensor arguments of the forward and backward kernels (storage buffers on wgpu).
pub(super) const FORWARD_BUFFERS: usize = 8;
pub(super) const BACKWARD_BUFFERS: usize = 16;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel<F: Float>(
    r: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    w: &Tensor<F>,
    u: &Tensor<F>,
    s0: &Tensor<F>,
    y: &mut Tensor<F>,
    s_out: &mut Tensor<F>,
    len: usize,
    heads: usize,
    #[comptime] n: usize,
    #[define(F)] _dtype: ElemType,
) {
    let bh = CUBE_POS_X as usize;
    let batch = bh / heads;
    let head = bh % heads;
    let j = UNIT_POS_X as usize;
    let origin = bh * n * n + j;

    let mut state = Array::<f32>::new(n);
    for i in 0..n {
        state[i] = f32::cast_from(s0[origin + i * n]);
    }
    let mut sr = Shared::<[f32]>::new_slice(n);
    let mut sk = Shared::<[f32]>::new_slice(n);
    let mut sw = Shared::<[f32]>::new_slice(n);
    let mut su = Shared::<[f32]>::new_slice(n);
    su[j] = f32::cast_from(u[head * n + j]);

    for t in 0..len {
        let base = ((batch * len + t) * heads + head) * n;
        sync_cube();
        sr[j] = f32::cast_from(r[base + j]);
        sk[j] = f32::cast_from(k[base + j]);
        sw[j] = f32::cast_from(w[base + j]);
        sync_cube();
        let vj = f32::cast_from(v[base + j]);
        let mut out = f32::new(0.0);
        for i in 0..n {
            let kv = sk[i] * vj;
            out += sr[i] * (su[i] * kv + state[i]);
            state[i] = kv + sw[i] * state[i];
        }
        y[base + j] = F::cast_from(out);
    }
    for i in 0..n {
        s_out[origin + i * n] = F::cast_from(state[i]);
    }
}

/// Backward pass, organised as the RWKV-7 one (`wkv7.rs`): checkpoints every `chunk` tokens,
/// per-chunk recomputation into `states`, `dS` in shared memory. Row sums (`dr`, `dk`, `dw`,
/// `du`) are taken by the unit owning the row, the column sum (`dv`) by the one owning the
/// column. `du` is summed over time here and over the batch by the caller.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn backward_kernel<F: Float>(
    r: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    w: &Tensor<F>,
    u: &Tensor<F>,
    s0: &Tensor<F>,
    dy: &Tensor<F>,
    ds: &Tensor<F>,
    dr: &mut Tensor<F>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    dw: &mut Tensor<F>,
    du: &mut Tensor<F>,
    ds0: &mut Tensor<F>,
    checkpoints: &mut Tensor<f32>,
    states: &mut Tensor<f32>,
    len: usize,
    heads: usize,
    chunk: usize,
    #[comptime] n: usize,
    #[define(F)] _dtype: ElemType,
) {
    let bh = CUBE_POS_X as usize;
    let batch = bh / heads;
    let head = bh % heads;
    let x = UNIT_POS_X as usize;
    // Kernel code spells out integer ops the CubeCL frontend knows (no `div_ceil`).
    #[allow(clippy::manual_div_ceil)]
    let chunks = (len + chunk - 1) / chunk;
    let nn = n * n;

    let mut sr = Shared::<[f32]>::new_slice(n);
    let mut sk = Shared::<[f32]>::new_slice(n);
    let mut sv = Shared::<[f32]>::new_slice(n);
    let mut sw = Shared::<[f32]>::new_slice(n);
    let mut su = Shared::<[f32]>::new_slice(n);
    let mut sdy = Shared::<[f32]>::new_slice(n);
    let mut d_state = Shared::<[f32]>::new_slice(n * n);
    su[x] = f32::cast_from(u[head * n + x]);

    // Forward over column x, keeping the state at the start of every chunk.
    let mut state = Array::<f32>::new(n);
    for i in 0..n {
        state[i] = f32::cast_from(s0[bh * nn + i * n + x]);
    }
    for c in 0..chunks {
        let at = (bh * chunks + c) * nn + x;
        for i in 0..n {
            checkpoints[at + i * n] = state[i];
        }
        let mut end = (c + 1) * chunk;
        if end > len {
            end = len;
        }
        for t in c * chunk..end {
            let base = ((batch * len + t) * heads + head) * n;
            sync_cube();
            sk[x] = f32::cast_from(k[base + x]);
            sw[x] = f32::cast_from(w[base + x]);
            sync_cube();
            let vx = f32::cast_from(v[base + x]);
            for i in 0..n {
                state[i] = sk[i] * vx + sw[i] * state[i];
            }
        }
    }

    for j in 0..n {
        d_state[x * n + j] = f32::cast_from(ds[bh * nn + x * n + j]);
    }
    let mut g_u = f32::new(0.0);

    let mut c = chunks;
    while c > 0 {
        c -= 1;
        let start = c * chunk;
        let mut end = start + chunk;
        if end > len {
            end = len;
        }
        // states[m] is the state before token start + m.
        let at = (bh * chunks + c) * nn + x;
        let scratch = bh * (chunk + 1) * nn + x;
        for i in 0..n {
            let s = checkpoints[at + i * n];
            state[i] = s;
            states[scratch + i * n] = s;
        }
        for t in start..end {
            let base = ((batch * len + t) * heads + head) * n;
            sync_cube();
            sk[x] = f32::cast_from(k[base + x]);
            sw[x] = f32::cast_from(w[base + x]);
            sync_cube();
            let vx = f32::cast_from(v[base + x]);
            let to = scratch + (t - start + 1) * nn;
            for i in 0..n {
                let s = sk[i] * vx + sw[i] * state[i];
                state[i] = s;
                states[to + i * n] = s;
            }
        }
        sync_storage();

        let mut t = end;
        while t > start {
            t -= 1;
            let base = ((batch * len + t) * heads + head) * n;
            sync_cube();
            sr[x] = f32::cast_from(r[base + x]);
            sk[x] = f32::cast_from(k[base + x]);
            sv[x] = f32::cast_from(v[base + x]);
            sw[x] = f32::cast_from(w[base + x]);
            sdy[x] = f32::cast_from(dy[base + x]);
            sync_cube();
            let mut dy_v = f32::new(0.0);
            let mut rku = f32::new(0.0);
            for j in 0..n {
                dy_v += sdy[j] * sv[j];
                rku += sr[j] * su[j] * sk[j];
            }

            // Row x (key index).
            let prev = bh * (chunk + 1) * nn + (t - start) * nn + x * n;
            let mut g_r = su[x] * sk[x] * dy_v;
            let mut g_k = sr[x] * su[x] * dy_v;
            let mut g_w = f32::new(0.0);
            for j in 0..n {
                let g = d_state[x * n + j];
                let before = states[prev + j];
                g_r += before * sdy[j];
                g_k += g * sv[j];
                g_w += g * before;
            }
            g_u += sr[x] * sk[x] * dy_v;
            dr[base + x] = F::cast_from(g_r);
            dk[base + x] = F::cast_from(g_k);
            dw[base + x] = F::cast_from(g_w);

            // Column x (value index).
            let mut g_v = sdy[x] * rku;
            for i in 0..n {
                g_v += d_state[i * n + x] * sk[i];
            }
            dv[base + x] = F::cast_from(g_v);
            sync_cube();

            // Row x: the gradient of the state before the token.
            let w_x = sw[x];
            let r_x = sr[x];
            for j in 0..n {
                d_state[x * n + j] = w_x * d_state[x * n + j] + r_x * sdy[j];
            }
        }
        // Every unit is done reading this chunk's states before the next chunk rewrites them.
        sync_storage();
    }

    for j in 0..n {
        ds0[bh * nn + x * n + j] = F::cast_from(d_state[x * n + j]);
    }
    du[bh * n + x] = F::cast_from(g_u);
}

/// Launch shape of the per-head kernels.
fn grid(r: &CubeTensor) -> (usize, usize, usize, usize, CubeCount, CubeDim) {
    let [batch, len, heads, n] = r.shape().dims::<4>();
    let count = CubeCount::Static((batch * heads) as u32, 1, 1);
    (batch, len, heads, n, count, CubeDim::new_1d(n as u32))
}

pub(super) fn forward(
    r: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    w: CubeTensor,
    u: CubeTensor,
    state: CubeTensor,
) -> (CubeTensor, CubeTensor) {
    let [r, k, v, w, u, state] = dense([r, k, v, w, u, state]);
    let (_, len, heads, n, count, dim) = grid(&r);
    let dtype = r.dtype;
    let y = empty(&r, r.shape(), dtype);
    let s_out = empty(&r, state.shape(), dtype);
    forward_kernel::launch(
        &r.client.clone(),
        count,
        dim,
        r.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        w.into_tensor_arg(),
        u.into_tensor_arg(),
        state.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        s_out.clone().into_tensor_arg(),
        len,
        heads,
        n,
        dtype_to_storage_type(dtype),
    );
    (y, s_out)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    r: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    w: CubeTensor,
    u: CubeTensor,
    state: CubeTensor,
    dy: CubeTensor,
    ds: CubeTensor,
) -> Wkv5Grads<CubeBackend> {
    let [r, k, v, w, u, state, dy, ds] = dense([r, k, v, w, u, state, dy, ds]);
    let (batch, len, heads, n, count, dim) = grid(&r);
    let dtype = r.dtype;
    let seq = r.shape();
    let [dr, dk, dv, dw] = std::array::from_fn(|_| empty(&r, seq.clone(), dtype));
    let du = empty(&r, [batch, heads, n], dtype);
    let d_state = empty(&r, state.shape(), dtype);
    let chunk = super::super::CHUNK.min(len.max(1));
    let checkpoints = empty(
        &r,
        [batch * heads * len.div_ceil(chunk).max(1), n, n],
        DType::F32,
    );
    let states = empty(&r, [batch * heads * (chunk + 1), n, n], DType::F32);
    backward_kernel::launch(
        &r.client.clone(),
        count,
        dim,
        r.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        w.into_tensor_arg(),
        u.into_tensor_arg(),
        state.into_tensor_arg(),
        dy.into_tensor_arg(),
        ds.into_tensor_arg(),
        dr.clone().into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        dw.clone().into_tensor_arg(),
        du.clone().into_tensor_arg(),
        d_state.clone().into_tensor_arg(),
        checkpoints.into_tensor_arg(),
        states.into_tensor_arg(),
        len,
        heads,
        chunk,
        n,
        dtype_to_storage_type(dtype),
    );
    let du = CubeBackend::float_reshape(CubeBackend::float_sum_dim(du, 0), Shape::new([heads, n]));
    Wkv5Grads {
        r: dr,
        k: dk,
        v: dv,
        w: dw,
        u: du,
        state: d_state,
    }
}
