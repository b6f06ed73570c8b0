// WKV kernels for libtorch's CUDA tensors, compiled at run time by NVRTC (see `nvrtc.rs`).
//
// The same algorithms as the CubeCL kernels in `../cube/` (one source of truth for the maths
// is the reference body in `wkv/reference.rs`; both kernel sets are tested against it):
// - RWKV-4: one thread per (sequence, channel), the three state scalars in registers.
// - RWKV-5/6 and RWKV-7: one block per (sequence, head), one thread per state column (v5) or
//   row (v7) held in registers, the token's vectors shared through shared memory.
// - Backward: forward once keeping a checkpoint every `chunk` tokens, then chunk by chunk from
//   the end recompute the chunk's states into a scratch buffer and walk its tokens backwards.
//
// Every tensor is dense row-major f32 (the caller casts and makes them contiguous). HEAD_SIZE
// is defined by the compiler options, so the state rows are fixed-size register arrays.

#ifndef HEAD_SIZE
#define HEAD_SIZE 64
#endif
#define N HEAD_SIZE

// The block's dynamic shared memory (a macro so that the CPU emulation the tests compile this
// file with, `emulator.cpp`, can provide it).
#ifndef WKV_DYNAMIC_SHARED
#define WKV_DYNAMIC_SHARED(name) extern __shared__ float name[]
#endif

typedef unsigned long long usize;

// ---------------------------------------------------------------------------------------
// RWKV-4. Every maximum is the reference's `maximum(a, b)`: `b` only when `a < b`; the
// backward pass routes the gradient of a tie the same way.

extern "C" __global__ void wkv4_forward(
    const float* __restrict__ w, const float* __restrict__ u,
    const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ aa0, const float* __restrict__ bb0, const float* __restrict__ pp0,
    float* __restrict__ y, float* __restrict__ aa_out, float* __restrict__ bb_out,
    float* __restrict__ pp_out, int len, int channels, int rows)
{
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows) return;
    const int batch = idx / channels;
    const int c = idx % channels;
    const float w_c = w[c];
    const float u_c = u[c];
    float aa = aa0[idx], bb = bb0[idx], pp = pp0[idx];
    for (int t = 0; t < len; t++) {
        const usize at = ((usize)batch * len + t) * channels + c;
        const float kt = k[at];
        const float vt = v[at];

        float ww = u_c + kt;
        float p = pp < ww ? ww : pp;
        float e1 = expf(pp - p);
        float e2 = expf(ww - p);
        y[at] = (e1 * aa + e2 * vt) / (e1 * bb + e2);

        ww = w_c + pp;
        p = ww < kt ? kt : ww;
        e1 = expf(ww - p);
        e2 = expf(kt - p);
        aa = e1 * aa + e2 * vt;
        bb = e1 * bb + e2;
        pp = p;
    }
    aa_out[idx] = aa;
    bb_out[idx] = bb;
    pp_out[idx] = pp;
}

// `states` holds every state (`[3, B, T + 1, C]`); `dw`, `du` are per-row partial sums that
// the caller adds over the batch.
extern "C" __global__ void wkv4_backward(
    const float* __restrict__ w, const float* __restrict__ u,
    const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ aa0, const float* __restrict__ bb0, const float* __restrict__ pp0,
    const float* __restrict__ dy, const float* __restrict__ d_aa, const float* __restrict__ d_bb,
    const float* __restrict__ d_pp,
    float* __restrict__ dw, float* __restrict__ du, float* __restrict__ dk, float* __restrict__ dv,
    float* __restrict__ d_aa0, float* __restrict__ d_bb0, float* __restrict__ d_pp0,
    float* __restrict__ states, int len, int channels, int rows)
{
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows) return;
    const int batch = idx / channels;
    const int c = idx % channels;
    const float w_c = w[c];
    const float u_c = u[c];
    const usize plane = (usize)rows * (len + 1);
    const usize first = (usize)batch * (len + 1) * channels + c;

    float aa = aa0[idx], bb = bb0[idx], pp = pp0[idx];
    states[first] = aa;
    states[plane + first] = bb;
    states[2 * plane + first] = pp;
    for (int t = 0; t < len; t++) {
        const usize at = ((usize)batch * len + t) * channels + c;
        const float kt = k[at];
        const float vt = v[at];
        const float ww = w_c + pp;
        const float p = ww < kt ? kt : ww;
        const float e1 = expf(ww - p);
        const float e2 = expf(kt - p);
        aa = e1 * aa + e2 * vt;
        bb = e1 * bb + e2;
        pp = p;
        const usize s = first + (usize)(t + 1) * channels;
        states[s] = aa;
        states[plane + s] = bb;
        states[2 * plane + s] = pp;
    }

    float g_aa = d_aa[idx], g_bb = d_bb[idx], g_pp = d_pp[idx];
    float g_w = 0.0f, g_u = 0.0f;
    for (int t = len - 1; t >= 0; t--) {
        const usize at = ((usize)batch * len + t) * channels + c;
        const usize s = first + (usize)t * channels;
        const float aa = states[s];
        const float bb = states[plane + s];
        const float pp = states[2 * plane + s];
        const float kt = k[at];
        const float vt = v[at];
        const float gy = dy[at];

        // The state update: aa' = f1 aa + f2 v, bb' = f1 bb + f2, pp' = max(w + pp, k).
        float ww = w_c + pp;
        const bool k_wins = ww < kt;
        float p = k_wins ? kt : ww;
        const float f1 = expf(ww - p);
        const float f2 = expf(kt - p);
        const float g_f1 = (g_aa * aa + g_bb * bb) * f1;
        const float g_f2 = (g_aa * vt + g_bb) * f2;
        float next_aa = g_aa * f1;
        float next_bb = g_bb * f1;
        float g_v = g_aa * f2;
        float g_p = g_pp - g_f1 - g_f2;
        float g_ww = g_f1;
        float g_k = g_f2;
        if (k_wins) g_k += g_p; else g_ww += g_p;
        g_w += g_ww;
        float next_pp = g_ww;

        // The output: y = (e1 aa + e2 v) / (e1 bb + e2), e1 = e^(pp - p), e2 = e^(u + k - p).
        ww = u_c + kt;
        const bool ww_wins = pp < ww;
        p = ww_wins ? ww : pp;
        const float e1 = expf(pp - p);
        const float e2 = expf(ww - p);
        const float den = e1 * bb + e2;
        const float out = (e1 * aa + e2 * vt) / den;
        const float g_num = gy / den;
        const float g_den = -g_num * out;
        const float g_e1 = (g_num * aa + g_den * bb) * e1;
        const float g_e2 = (g_num * vt + g_den) * e2;
        next_aa += g_num * e1;
        next_bb += g_den * e1;
        g_v += g_num * e2;
        g_p = -(g_e1 + g_e2);
        next_pp += g_e1;
        g_ww = g_e2;
        if (ww_wins) g_ww += g_p; else next_pp += g_p;
        g_u += g_ww;
        g_k += g_ww;

        dk[at] = g_k;
        dv[at] = g_v;
        g_aa = next_aa;
        g_bb = next_bb;
        g_pp = next_pp;
    }
    d_aa0[idx] = g_aa;
    d_bb0[idx] = g_bb;
    d_pp0[idx] = g_pp;
    dw[idx] = g_w;
    du[idx] = g_u;
}

// ---------------------------------------------------------------------------------------
// RWKV-5/6: per head a state S[key, value]; thread j holds column S[:, j].
// y = r (diag(u) k v^T + S), then S = k v^T + diag(w) S.

extern "C" __global__ void __launch_bounds__(N) wkv5_forward(
    const float* __restrict__ r, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ w, const float* __restrict__ u, const float* __restrict__ s0,
    float* __restrict__ y, float* __restrict__ s_out, int len, int heads)
{
    const int bh = blockIdx.x;
    const int batch = bh / heads;
    const int head = bh % heads;
    const int j = threadIdx.x;
    const usize origin = (usize)bh * N * N + j;

    float state[N];
#pragma unroll
    for (int i = 0; i < N; i++) state[i] = s0[origin + (usize)i * N];
    __shared__ float sr[N], sk[N], sw[N], su[N];
    su[j] = u[head * N + j];

    for (int t = 0; t < len; t++) {
        const usize base = (((usize)batch * len + t) * heads + head) * N;
        __syncthreads();
        sr[j] = r[base + j];
        sk[j] = k[base + j];
        sw[j] = w[base + j];
        __syncthreads();
        const float vj = v[base + j];
        float out = 0.0f;
#pragma unroll
        for (int i = 0; i < N; i++) {
            const float kv = sk[i] * vj;
            out += sr[i] * (su[i] * kv + state[i]);
            state[i] = kv + sw[i] * state[i];
        }
        y[base + j] = out;
    }
#pragma unroll
    for (int i = 0; i < N; i++) s_out[origin + (usize)i * N] = state[i];
}

// Dynamic shared memory: six vectors of N and dS (N x N). Row sums (dr, dk, dw, du) are taken
// by the thread owning the row, the column sum (dv) by the one owning the column. `du` is
// summed over time here and over the batch by the caller.
extern "C" __global__ void __launch_bounds__(N) wkv5_backward(
    const float* __restrict__ r, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ w, const float* __restrict__ u, const float* __restrict__ s0,
    const float* __restrict__ dy, const float* __restrict__ ds,
    float* __restrict__ dr, float* __restrict__ dk, float* __restrict__ dv,
    float* __restrict__ dw, float* __restrict__ du, float* __restrict__ ds0,
    float* __restrict__ checkpoints, float* __restrict__ states,
    int len, int heads, int chunk)
{
    const int bh = blockIdx.x;
    const int batch = bh / heads;
    const int head = bh % heads;
    const int x = threadIdx.x;
    const int chunks = (len + chunk - 1) / chunk;
    const usize nn = (usize)N * N;

    WKV_DYNAMIC_SHARED(shared);
    float* sr = shared;
    float* sk = sr + N;
    float* sv = sk + N;
    float* sw = sv + N;
    float* su = sw + N;
    float* sdy = su + N;
    float* d_state = sdy + N;
    su[x] = u[head * N + x];

    // Forward over column x, keeping the state at the start of every chunk.
    float state[N];
#pragma unroll
    for (int i = 0; i < N; i++) state[i] = s0[bh * nn + (usize)i * N + x];
    for (int c = 0; c < chunks; c++) {
        const usize at = ((usize)bh * chunks + c) * nn + x;
#pragma unroll
        for (int i = 0; i < N; i++) checkpoints[at + (usize)i * N] = state[i];
        const int end = min((c + 1) * chunk, len);
        for (int t = c * chunk; t < end; t++) {
            const usize base = (((usize)batch * len + t) * heads + head) * N;
            __syncthreads();
            sk[x] = k[base + x];
            sw[x] = w[base + x];
            __syncthreads();
            const float vx = v[base + x];
#pragma unroll
            for (int i = 0; i < N; i++) state[i] = sk[i] * vx + sw[i] * state[i];
        }
    }

    for (int j = 0; j < N; j++) d_state[x * N + j] = ds[bh * nn + (usize)x * N + j];
    float g_u = 0.0f;

    for (int c = chunks - 1; c >= 0; c--) {
        const int start = c * chunk;
        const int end = min(start + chunk, len);
        // states[m] is the state before token start + m.
        const usize at = ((usize)bh * chunks + c) * nn + x;
        const usize scratch = (usize)bh * (chunk + 1) * nn + x;
#pragma unroll
        for (int i = 0; i < N; i++) {
            const float s = checkpoints[at + (usize)i * N];
            state[i] = s;
            states[scratch + (usize)i * N] = s;
        }
        for (int t = start; t < end; t++) {
            const usize base = (((usize)batch * len + t) * heads + head) * N;
            __syncthreads();
            sk[x] = k[base + x];
            sw[x] = w[base + x];
            __syncthreads();
            const float vx = v[base + x];
            const usize to = scratch + (usize)(t - start + 1) * nn;
#pragma unroll
            for (int i = 0; i < N; i++) {
                const float s = sk[i] * vx + sw[i] * state[i];
                state[i] = s;
                states[to + (usize)i * N] = s;
            }
        }
        __syncthreads();

        for (int t = end - 1; t >= start; t--) {
            const usize base = (((usize)batch * len + t) * heads + head) * N;
            __syncthreads();
            sr[x] = r[base + x];
            sk[x] = k[base + x];
            sv[x] = v[base + x];
            sw[x] = w[base + x];
            sdy[x] = dy[base + x];
            __syncthreads();
            float dy_v = 0.0f;
            float rku = 0.0f;
            for (int j = 0; j < N; j++) {
                dy_v += sdy[j] * sv[j];
                rku += sr[j] * su[j] * sk[j];
            }

            // Row x (key index).
            const usize prev = (usize)bh * (chunk + 1) * nn + (usize)(t - start) * nn + (usize)x * N;
            float g_r = su[x] * sk[x] * dy_v;
            float g_k = sr[x] * su[x] * dy_v;
            float g_w = 0.0f;
            for (int j = 0; j < N; j++) {
                const float g = d_state[x * N + j];
                const float before = states[prev + j];
                g_r += before * sdy[j];
                g_k += g * sv[j];
                g_w += g * before;
            }
            g_u += sr[x] * sk[x] * dy_v;
            dr[base + x] = g_r;
            dk[base + x] = g_k;
            dw[base + x] = g_w;

            // Column x (value index).
            float g_v = sdy[x] * rku;
            for (int i = 0; i < N; i++) g_v += d_state[i * N + x] * sk[i];
            dv[base + x] = g_v;
            __syncthreads();

            // Row x: the gradient of the state before the token.
            const float w_x = sw[x];
            const float r_x = sr[x];
            for (int j = 0; j < N; j++) d_state[x * N + j] = w_x * d_state[x * N + j] + r_x * sdy[j];
        }
        // Every thread is done reading this chunk's states before the next chunk rewrites them.
        __syncthreads();
    }

    for (int j = 0; j < N; j++) ds0[bh * nn + (usize)x * N + j] = d_state[x * N + j];
    du[(usize)bh * N + x] = g_u;
}

// ---------------------------------------------------------------------------------------
// RWKV-7: per head a state S[value, key]; thread i holds row S[i, :].
// S = S diag(w) + (S a) b^T + v k^T, then y = S r.

extern "C" __global__ void __launch_bounds__(N) wkv7_forward(
    const float* __restrict__ r, const float* __restrict__ w, const float* __restrict__ k,
    const float* __restrict__ v, const float* __restrict__ a, const float* __restrict__ b,
    const float* __restrict__ s0, float* __restrict__ y, float* __restrict__ s_out,
    int len, int heads)
{
    const int bh = blockIdx.x;
    const int batch = bh / heads;
    const int head = bh % heads;
    const int i = threadIdx.x;
    const usize row = ((usize)bh * N + i) * N;

    float state[N];
#pragma unroll
    for (int j = 0; j < N; j++) state[j] = s0[row + j];
    __shared__ float sr[N], sw[N], sk[N], sa[N], sb[N];

    for (int t = 0; t < len; t++) {
        const usize base = (((usize)batch * len + t) * heads + head) * N;
        __syncthreads();
        sr[i] = r[base + i];
        sw[i] = w[base + i];
        sk[i] = k[base + i];
        sa[i] = a[base + i];
        sb[i] = b[base + i];
        __syncthreads();
        const float vi = v[base + i];
        float s_a = 0.0f;
#pragma unroll
        for (int j = 0; j < N; j++) s_a += state[j] * sa[j];
        float out = 0.0f;
#pragma unroll
        for (int j = 0; j < N; j++) {
            const float s = state[j] * sw[j] + s_a * sb[j] + vi * sk[j];
            state[j] = s;
            out += s * sr[j];
        }
        y[base + i] = out;
    }
#pragma unroll
    for (int j = 0; j < N; j++) s_out[row + j] = state[j];
}

// One forward step of a state row (the token's w, k, a, b already in shared memory); returns
// S[i, :] . a, which the backward pass needs.
__device__ __forceinline__ float wkv7_step_row(
    float* state, const float* sw, const float* sk, const float* sa, const float* sb, float vi)
{
    float s_a = 0.0f;
#pragma unroll
    for (int j = 0; j < N; j++) s_a += state[j] * sa[j];
#pragma unroll
    for (int j = 0; j < N; j++) state[j] = state[j] * sw[j] + s_a * sb[j] + vi * sk[j];
    return s_a;
}

// Dynamic shared memory: nine vectors of N and dS (N x N), the gradient of the state after
// the token. Row sums (dv, dS b) are taken by the thread owning a row, column sums (dr, dk,
// dw, da, db) by the thread owning the column.
extern "C" __global__ void __launch_bounds__(N) wkv7_backward(
    const float* __restrict__ r, const float* __restrict__ w, const float* __restrict__ k,
    const float* __restrict__ v, const float* __restrict__ a, const float* __restrict__ b,
    const float* __restrict__ s0, const float* __restrict__ dy, const float* __restrict__ ds,
    float* __restrict__ dr, float* __restrict__ dw, float* __restrict__ dk,
    float* __restrict__ dv, float* __restrict__ da, float* __restrict__ db,
    float* __restrict__ ds0, float* __restrict__ checkpoints, float* __restrict__ states,
    float* __restrict__ sas, int len, int heads, int chunk)
{
    const int bh = blockIdx.x;
    const int batch = bh / heads;
    const int head = bh % heads;
    const int x = threadIdx.x;
    const usize row = ((usize)bh * N + x) * N;
    const int chunks = (len + chunk - 1) / chunk;
    const usize nn = (usize)N * N;

    WKV_DYNAMIC_SHARED(shared);
    float* sr = shared;
    float* sw = sr + N;
    float* sk = sw + N;
    float* sv = sk + N;
    float* sa = sv + N;
    float* sb = sa + N;
    float* sdy = sb + N;
    float* ssa = sdy + N;
    float* sdsa = ssa + N;
    float* d_state = sdsa + N;

    // Forward, keeping the state at the start of every chunk.
    float state[N];
#pragma unroll
    for (int j = 0; j < N; j++) state[j] = s0[row + j];
    for (int c = 0; c < chunks; c++) {
        const usize at = ((usize)bh * chunks + c) * nn + (usize)x * N;
#pragma unroll
        for (int j = 0; j < N; j++) checkpoints[at + j] = state[j];
        const int end = min((c + 1) * chunk, len);
        for (int t = c * chunk; t < end; t++) {
            const usize base = (((usize)batch * len + t) * heads + head) * N;
            __syncthreads();
            sw[x] = w[base + x];
            sk[x] = k[base + x];
            sa[x] = a[base + x];
            sb[x] = b[base + x];
            __syncthreads();
            wkv7_step_row(state, sw, sk, sa, sb, v[base + x]);
        }
    }

    for (int j = 0; j < N; j++) d_state[x * N + j] = ds[row + j];

    for (int c = chunks - 1; c >= 0; c--) {
        const int start = c * chunk;
        const int end = min(start + chunk, len);
        // This chunk's states: states[m] is the state before token start + m.
        const usize at = ((usize)bh * chunks + c) * nn + (usize)x * N;
        const usize scratch = (usize)bh * (chunk + 1) * nn + (usize)x * N;
#pragma unroll
        for (int j = 0; j < N; j++) {
            const float s = checkpoints[at + j];
            state[j] = s;
            states[scratch + j] = s;
        }
        for (int t = start; t < end; t++) {
            const usize base = (((usize)batch * len + t) * heads + head) * N;
            __syncthreads();
            sw[x] = w[base + x];
            sk[x] = k[base + x];
            sa[x] = a[base + x];
            sb[x] = b[base + x];
            __syncthreads();
            const int m = t - start;
            sas[((usize)bh * chunk + m) * N + x] =
                wkv7_step_row(state, sw, sk, sa, sb, v[base + x]);
            const usize to = scratch + (usize)(m + 1) * nn;
#pragma unroll
            for (int j = 0; j < N; j++) states[to + j] = state[j];
        }
        __syncthreads();

        for (int t = end - 1; t >= start; t--) {
            const int m = t - start;
            const usize base = (((usize)batch * len + t) * heads + head) * N;
            __syncthreads();
            sr[x] = r[base + x];
            sw[x] = w[base + x];
            sk[x] = k[base + x];
            sv[x] = v[base + x];
            sa[x] = a[base + x];
            sb[x] = b[base + x];
            sdy[x] = dy[base + x];
            ssa[x] = sas[((usize)bh * chunk + m) * N + x];
            __syncthreads();

            // Row x: dS += dy r^T, then dv = dS k and dS b.
            const float dy_x = sdy[x];
            float g_v = 0.0f;
            float g_sa = 0.0f;
            for (int j = 0; j < N; j++) {
                const float g = d_state[x * N + j] + dy_x * sr[j];
                d_state[x * N + j] = g;
                g_v += g * sk[j];
                g_sa += g * sb[j];
            }
            sdsa[x] = g_sa;
            dv[base + x] = g_v;
            __syncthreads();

            // Column x.
            const usize prev = (usize)bh * (chunk + 1) * nn + (usize)m * nn + x;
            const usize cur = prev + nn;
            float g_r = 0.0f, g_k = 0.0f, g_w = 0.0f, g_a = 0.0f, g_b = 0.0f;
            for (int i = 0; i < N; i++) {
                const float g = d_state[i * N + x];
                const float before = states[prev + (usize)i * N];
                g_r += sdy[i] * states[cur + (usize)i * N];
                g_k += g * sv[i];
                g_w += g * before;
                g_a += sdsa[i] * before;
                g_b += g * ssa[i];
            }
            dr[base + x] = g_r;
            dk[base + x] = g_k;
            dw[base + x] = g_w;
            da[base + x] = g_a;
            db[base + x] = g_b;
            __syncthreads();

            // Row x: the gradient of the state before the token.
            const float gs = sdsa[x];
            for (int j = 0; j < N; j++) d_state[x * N + j] = d_state[x * N + j] * sw[j] + gs * sa[j];
        }
        // Every thread is done reading this chunk's states before the next chunk rewrites them.
        __syncthreads();
    }

    for (int j = 0; j < N; j++) ds0[row + j] = d_state[x * N + j];
}
