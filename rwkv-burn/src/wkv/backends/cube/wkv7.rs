//! RWKV-7 WKV kernels. One cube per (sequence, head) with one unit per state row: unit `i`
//! holds `S[i, :]` (value index `i`). Rows evolve independently given the token's vectors,
//! which the units share through shared memory.

use super::{dense, empty};
use crate::wkv::Wkv7Grads;
use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Tensor arguments of the forward and backward kernels (storage buffers on wgpu).
pub(super) const FORWARD_BUFFERS: usize = 9;
pub(super) const BACKWARD_BUFFERS: usize = 19;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel<F: Float>(
    r: &Tensor<F>,
    w: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    a: &Tensor<F>,
    b: &Tensor<F>,
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
    let i = UNIT_POS_X as usize;
    let row = (bh * n + i) * n;

    let mut state = Array::<f32>::new(n);
    for j in 0..n {
        state[j] = f32::cast_from(s0[row + j]);
    }
    let mut sr = Shared::<[f32]>::new_slice(n);
    let mut sw = Shared::<[f32]>::new_slice(n);
    let mut sk = Shared::<[f32]>::new_slice(n);
    let mut sa = Shared::<[f32]>::new_slice(n);
    let mut sb = Shared::<[f32]>::new_slice(n);

    for t in 0..len {
        let base = ((batch * len + t) * heads + head) * n;
        sync_cube();
        sr[i] = f32::cast_from(r[base + i]);
        sw[i] = f32::cast_from(w[base + i]);
        sk[i] = f32::cast_from(k[base + i]);
        sa[i] = f32::cast_from(a[base + i]);
        sb[i] = f32::cast_from(b[base + i]);
        sync_cube();
        let vi = f32::cast_from(v[base + i]);
        let mut s_a = f32::new(0.0);
        for j in 0..n {
            s_a += state[j] * sa[j];
        }
        let mut out = f32::new(0.0);
        for j in 0..n {
            let s = state[j] * sw[j] + s_a * sb[j] + vi * sk[j];
            state[j] = s;
            out += s * sr[j];
        }
        y[base + i] = F::cast_from(out);
    }
    for j in 0..n {
        s_out[row + j] = F::cast_from(state[j]);
    }
}

/// One forward step of row `i` of the state (the token's `w`, `k`, `a`, `b` already in shared
/// memory); returns `S[i, :] · a`, which the backward pass needs.
#[cube]
#[allow(clippy::too_many_arguments)]
fn step_row(
    state: &mut Array<f32>,
    sw: &Shared<[f32]>,
    sk: &Shared<[f32]>,
    sa: &Shared<[f32]>,
    sb: &Shared<[f32]>,
    vi: f32,
    #[comptime] n: usize,
) -> f32 {
    let mut s_a = f32::new(0.0);
    for j in 0..n {
        s_a += state[j] * sa[j];
    }
    for j in 0..n {
        state[j] = state[j] * sw[j] + s_a * sb[j] + vi * sk[j];
    }
    s_a
}

/// Backward pass. Forward once storing the state every `chunk` tokens; then, chunk by chunk
/// from the end, recompute the chunk's states into `states` and walk its tokens backwards,
/// carrying `dS` (the gradient of the state after the token) in shared memory. Per token,
/// row sums (`dv`, `dS b`) are taken by the unit that owns a row and column sums (`dr`, `dk`,
/// `dw`, `da`, `db`) by the unit that owns the column.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn backward_kernel<F: Float>(
    r: &Tensor<F>,
    w: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    a: &Tensor<F>,
    b: &Tensor<F>,
    s0: &Tensor<F>,
    dy: &Tensor<F>,
    ds: &Tensor<F>,
    dr: &mut Tensor<F>,
    dw: &mut Tensor<F>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    da: &mut Tensor<F>,
    db: &mut Tensor<F>,
    ds0: &mut Tensor<F>,
    checkpoints: &mut Tensor<f32>,
    states: &mut Tensor<f32>,
    sas: &mut Tensor<f32>,
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
    let row = (bh * n + x) * n;
    // Kernel code spells out integer ops the CubeCL frontend knows (no `div_ceil`).
    #[allow(clippy::manual_div_ceil)]
    let chunks = (len + chunk - 1) / chunk;
    let nn = n * n;

    let mut sr = Shared::<[f32]>::new_slice(n);
    let mut sw = Shared::<[f32]>::new_slice(n);
    let mut sk = Shared::<[f32]>::new_slice(n);
    let mut sv = Shared::<[f32]>::new_slice(n);
    let mut sa = Shared::<[f32]>::new_slice(n);
    let mut sb = Shared::<[f32]>::new_slice(n);
    let mut sdy = Shared::<[f32]>::new_slice(n);
    let mut ssa = Shared::<[f32]>::new_slice(n);
    let mut sdsa = Shared::<[f32]>::new_slice(n);
    let mut d_state = Shared::<[f32]>::new_slice(n * n);

    // Forward, keeping the state at the start of every chunk.
    let mut state = Array::<f32>::new(n);
    for j in 0..n {
        state[j] = f32::cast_from(s0[row + j]);
    }
    for c in 0..chunks {
        let at = (bh * chunks + c) * nn + x * n;
        for j in 0..n {
            checkpoints[at + j] = state[j];
        }
        let mut end = (c + 1) * chunk;
        if end > len {
            end = len;
        }
        for t in c * chunk..end {
            let base = ((batch * len + t) * heads + head) * n;
            sync_cube();
            sw[x] = f32::cast_from(w[base + x]);
            sk[x] = f32::cast_from(k[base + x]);
            sa[x] = f32::cast_from(a[base + x]);
            sb[x] = f32::cast_from(b[base + x]);
            sync_cube();
            let vi = f32::cast_from(v[base + x]);
            step_row(&mut state, &sw, &sk, &sa, &sb, vi, n);
        }
    }

    for j in 0..n {
        d_state[x * n + j] = f32::cast_from(ds[row + j]);
    }

    let mut c = chunks;
    while c > 0 {
        c -= 1;
        let start = c * chunk;
        let mut end = start + chunk;
        if end > len {
            end = len;
        }
        // This chunk's states: states[m] is the state before token start + m.
        let at = (bh * chunks + c) * nn + x * n;
        let scratch = bh * (chunk + 1) * nn + x * n;
        for j in 0..n {
            let s = checkpoints[at + j];
            state[j] = s;
            states[scratch + j] = s;
        }
        for t in start..end {
            let base = ((batch * len + t) * heads + head) * n;
            sync_cube();
            sw[x] = f32::cast_from(w[base + x]);
            sk[x] = f32::cast_from(k[base + x]);
            sa[x] = f32::cast_from(a[base + x]);
            sb[x] = f32::cast_from(b[base + x]);
            sync_cube();
            let vi = f32::cast_from(v[base + x]);
            let m = t - start;
            sas[(bh * chunk + m) * n + x] = step_row(&mut state, &sw, &sk, &sa, &sb, vi, n);
            let to = scratch + (m + 1) * nn;
            for j in 0..n {
                states[to + j] = state[j];
            }
        }
        sync_storage();

        let mut t = end;
        while t > start {
            t -= 1;
            let m = t - start;
            let base = ((batch * len + t) * heads + head) * n;
            sync_cube();
            sr[x] = f32::cast_from(r[base + x]);
            sw[x] = f32::cast_from(w[base + x]);
            sk[x] = f32::cast_from(k[base + x]);
            sv[x] = f32::cast_from(v[base + x]);
            sa[x] = f32::cast_from(a[base + x]);
            sb[x] = f32::cast_from(b[base + x]);
            sdy[x] = f32::cast_from(dy[base + x]);
            ssa[x] = sas[(bh * chunk + m) * n + x];
            sync_cube();

            // Row x: dS += dy r^T, then dv = dS k and dS b.
            let dy_x = sdy[x];
            let mut g_v = f32::new(0.0);
            let mut g_sa = f32::new(0.0);
            for j in 0..n {
                let g = d_state[x * n + j] + dy_x * sr[j];
                d_state[x * n + j] = g;
                g_v += g * sk[j];
                g_sa += g * sb[j];
            }
            sdsa[x] = g_sa;
            dv[base + x] = F::cast_from(g_v);
            sync_cube();

            // Column x.
            let prev = bh * (chunk + 1) * nn + m * nn + x;
            let cur = prev + nn;
            let mut g_r = f32::new(0.0);
            let mut g_k = f32::new(0.0);
            let mut g_w = f32::new(0.0);
            let mut g_a = f32::new(0.0);
            let mut g_b = f32::new(0.0);
            for i in 0..n {
                let g = d_state[i * n + x];
                let before = states[prev + i * n];
                g_r += sdy[i] * states[cur + i * n];
                g_k += g * sv[i];
                g_w += g * before;
                g_a += sdsa[i] * before;
                g_b += g * ssa[i];
            }
            dr[base + x] = F::cast_from(g_r);
            dk[base + x] = F::cast_from(g_k);
            dw[base + x] = F::cast_from(g_w);
            da[base + x] = F::cast_from(g_a);
            db[base + x] = F::cast_from(g_b);
            sync_cube();

            // Row x: the gradient of the state before the token.
            let g_sa = sdsa[x];
            for j in 0..n {
                d_state[x * n + j] = d_state[x * n + j] * sw[j] + g_sa * sa[j];
            }
        }
        // Every unit is done reading this chunk's states before the next chunk rewrites them.
        sync_storage();
    }

    for j in 0..n {
        ds0[row + j] = F::cast_from(d_state[x * n + j]);
    }
}

/// Launch shape of the per-head kernels.
fn grid(r: &CubeTensor) -> (usize, usize, usize, usize, CubeCount, CubeDim) {
    let [batch, len, heads, n] = r.shape().dims::<4>();
    let count = CubeCount::Static((batch * heads) as u32, 1, 1);
    (batch, len, heads, n, count, CubeDim::new_1d(n as u32))
}

pub(super) fn forward(
    r: CubeTensor,
    w: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    a: CubeTensor,
    b: CubeTensor,
    state: CubeTensor,
) -> (CubeTensor, CubeTensor) {
    let [r, w, k, v, a, b, state] = dense([r, w, k, v, a, b, state]);
    let (_, len, heads, n, count, dim) = grid(&r);
    let dtype = r.dtype;
    let y = empty(&r, r.shape(), dtype);
    let s_out = empty(&r, state.shape(), dtype);
    forward_kernel::launch(
        &r.client.clone(),
        count,
        dim,
        r.into_tensor_arg(),
        w.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        a.into_tensor_arg(),
        b.into_tensor_arg(),
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
    w: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    a: CubeTensor,
    b: CubeTensor,
    state: CubeTensor,
    dy: CubeTensor,
    ds: CubeTensor,
) -> Wkv7Grads<burn_cubecl::CubeBackend> {
    let [r, w, k, v, a, b, state, dy, ds] = dense([r, w, k, v, a, b, state, dy, ds]);
    let (batch, len, heads, n, count, dim) = grid(&r);
    let dtype = r.dtype;
    let seq = r.shape();
    let [dr, dw, dk, dv, da, db] = std::array::from_fn(|_| empty(&r, seq.clone(), dtype));
    let d_state = empty(&r, state.shape(), dtype);
    let chunk = super::super::CHUNK.min(len.max(1));
    let checkpoints = empty(
        &r,
        [batch * heads * len.div_ceil(chunk).max(1), n, n],
        DType::F32,
    );
    let states = empty(&r, [batch * heads * (chunk + 1), n, n], DType::F32);
    let sas = empty(&r, [batch * heads * chunk, n], DType::F32);
    backward_kernel::launch(
        &r.client.clone(),
        count,
        dim,
        r.into_tensor_arg(),
        w.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        a.into_tensor_arg(),
        b.into_tensor_arg(),
        state.into_tensor_arg(),
        dy.into_tensor_arg(),
        ds.into_tensor_arg(),
        dr.clone().into_tensor_arg(),
        dw.clone().into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        da.clone().into_tensor_arg(),
        db.clone().into_tensor_arg(),
        d_state.clone().into_tensor_arg(),
        checkpoints.into_tensor_arg(),
        states.into_tensor_arg(),
        sas.into_tensor_arg(),
        len,
        heads,
        chunk,
        n,
        dtype_to_storage_type(dtype),
    );
    Wkv7Grads {
        r: dr,
        w: dw,
        k: dk,
        v: dv,
        a: da,
        b: db,
        state: d_state,
    }
}
