//! burn-tch (libtorch). CPU tensors run the reference body and the tensor-op backward with
//! libtorch's own ops; CUDA tensors run the kernels of `wkv.cu`, compiled at run time by
//! NVRTC (`nvrtc.rs`) and launched through the CUDA driver API (`cuda.rs`) on the tensors'
//! device pointers.
//!
//! If the kernels cannot be built on a machine (no libnvrtc, an architecture this NVRTC does
//! not know), CUDA tensors fall back to the reference body, and the reason is printed once.

#![allow(deprecated)] // burn-tch is deprecated upstream; the user asked to keep it.

mod cuda;
#[cfg(test)]
pub(crate) mod emulator;
mod launch;
pub mod nvrtc;

use crate::wkv::{Wkv4Grads, Wkv4StatePrim, Wkv5Grads, Wkv7Grads, WkvOps, backward, reference};
use ::tch::{Kind, Tensor};
use burn::backend::LibTorch;
use burn_tch::TchTensor;
use launch::{Arg, Launcher};

/// Threads per block of the RWKV-4 kernels (one per channel of a sequence).
const WKV4_BLOCK: i64 = 64;

/// The kernels for tensors like `like` with RWKV-5/6/7 head size `head_size`, to run on
/// `blocks` blocks with the `int` arguments `ints`: `None` on the CPU, for shapes the kernels
/// do not take, or when the kernels cannot be built here.
fn cuda_kernels(
    like: &TchTensor,
    head_size: usize,
    blocks: i64,
    ints: &[i64],
) -> Option<&'static dyn Launcher> {
    // One thread per state row, at most 1024 per block.
    let fits = (1..=1024).contains(&head_size)
        && (1..=u32::MAX as i64).contains(&blocks)
        && ints.iter().all(|x| (0..=i32::MAX as i64).contains(x));
    if !fits {
        return None;
    }
    let ::tch::Device::Cuda(ordinal) = like.tensor.device() else {
        #[cfg(test)]
        if let Some(emulator) = emulator::active(head_size) {
            return Some(emulator);
        }
        return None;
    };
    match cuda::kernels(ordinal, head_size) {
        Ok(kernels) => Some(kernels),
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                eprintln!(
                    "rwkv-burn: WKV CUDA kernels unavailable, using libtorch ops instead: {e}"
                )
            });
            None
        }
    }
}

/// `t` as a dense f32 tensor (the kernels compute and store in f32).
fn dense(t: &TchTensor) -> Tensor {
    t.tensor.to_kind(Kind::Float).contiguous()
}

fn ptr(t: &Tensor) -> Arg {
    Arg::Ptr(t.data_ptr() as u64)
}

fn int(x: i64) -> Arg {
    Arg::Int(x as i32)
}

/// A new f32 tensor on `like`'s device.
fn empty(dims: &[i64], like: &Tensor) -> Tensor {
    Tensor::empty(dims, (Kind::Float, like.device()))
}

/// A kernel output as a Burn tensor of the inputs' dtype.
fn output(t: Tensor, kind: Kind) -> TchTensor {
    TchTensor::new(if kind == Kind::Float {
        t
    } else {
        t.to_kind(kind)
    })
}

/// Launches a kernel whose arguments were built from live tensors of one device.
fn launch(
    kernels: &dyn Launcher,
    name: &'static str,
    grid: i64,
    block: i64,
    shared: usize,
    args: &[Arg],
) {
    // SAFETY: every pointer comes from a tensor the caller keeps alive across this call,
    // allocated with the size the kernel indexes (the shapes were read from those tensors).
    unsafe { kernels.launch(name, grid as u32, block as u32, shared, args) }
        .unwrap_or_else(|e| panic!("WKV kernel {name}: {e}"));
}

/// Shape, launch and scratch of the per-head (RWKV-5/6 and RWKV-7) backward kernels.
struct PerHeadBackward {
    dims: Vec<i64>,
    batch: i64,
    len: i64,
    heads: i64,
    n: usize,
    /// Tokens between two state checkpoints.
    chunk: i64,
    /// Dynamic shared memory: `vectors` vectors of N and one N × N state.
    shared: usize,
    kernels: &'static dyn Launcher,
}

impl PerHeadBackward {
    /// For inputs like `r` (`[B, T, H, N]`) and a kernel keeping `vectors` vectors in shared
    /// memory; `None` where the kernels do not run (the caller uses the tensor-op backward).
    fn new(r: &TchTensor, vectors: usize) -> Option<Self> {
        let dims = r.tensor.size();
        let (batch, len, heads, n) = (dims[0], dims[1], dims[2], dims[3] as usize);
        let chunk = super::CHUNK.min(len.max(1) as usize) as i64;
        let shared = (vectors * n + n * n) * 4;
        let kernels = cuda_kernels(r, n, batch * heads, &[len, heads, chunk])
            .filter(|k| k.fits_shared(shared))?;
        Some(Self {
            dims,
            batch,
            len,
            heads,
            n,
            chunk,
            shared,
            kernels,
        })
    }

    /// The checkpoints (one state every `chunk` tokens) and the recomputed states of one
    /// chunk, per (sequence, head), on `like`'s device.
    fn scratch(&self, like: &Tensor) -> [Tensor; 2] {
        let (bh, n) = (self.batch * self.heads, self.n as i64);
        let chunks = ((self.len + self.chunk - 1) / self.chunk).max(1);
        [
            empty(&[bh * chunks, n, n], like),
            empty(&[bh * (self.chunk + 1), n, n], like),
        ]
    }
}

impl WkvOps for LibTorch {
    fn wkv4(
        w: TchTensor,
        u: TchTensor,
        k: TchTensor,
        v: TchTensor,
        state: Wkv4StatePrim<Self>,
    ) -> (TchTensor, Wkv4StatePrim<Self>) {
        let dims = k.tensor.size();
        let (len, channels, rows) = (dims[1], dims[2], dims[0] * dims[2]);
        let blocks = (rows + WKV4_BLOCK - 1) / WKV4_BLOCK;
        let Some(kernels) = cuda_kernels(&k, 1, blocks, &[len, channels, rows]) else {
            return reference::wkv4::<Self>(w, u, k, v, state);
        };
        let kind = k.tensor.kind();
        let [w, u, k, v, aa, bb, pp] = [&w, &u, &k, &v, &state.aa, &state.bb, &state.pp].map(dense);
        let y = empty(&dims, &k);
        let [aa_out, bb_out, pp_out] = std::array::from_fn(|_| empty(&aa.size(), &k));
        launch(
            kernels,
            "wkv4_forward",
            blocks,
            WKV4_BLOCK,
            0,
            &[
                ptr(&w),
                ptr(&u),
                ptr(&k),
                ptr(&v),
                ptr(&aa),
                ptr(&bb),
                ptr(&pp),
                ptr(&y),
                ptr(&aa_out),
                ptr(&bb_out),
                ptr(&pp_out),
                int(len),
                int(channels),
                int(rows),
            ],
        );
        let state = Wkv4StatePrim {
            aa: output(aa_out, kind),
            bb: output(bb_out, kind),
            pp: output(pp_out, kind),
        };
        (output(y, kind), state)
    }

    fn wkv5(
        r: TchTensor,
        k: TchTensor,
        v: TchTensor,
        w: TchTensor,
        u: TchTensor,
        state: TchTensor,
    ) -> (TchTensor, TchTensor) {
        let dims = r.tensor.size();
        let (batch, len, heads, n) = (dims[0], dims[1], dims[2], dims[3] as usize);
        let Some(kernels) = cuda_kernels(&r, n, batch * heads, &[len, heads]) else {
            return reference::wkv5::<Self>(r, k, v, w, u, state);
        };
        let kind = r.tensor.kind();
        let [r, k, v, w, u, s0] = [&r, &k, &v, &w, &u, &state].map(dense);
        let y = empty(&dims, &r);
        let s_out = empty(&s0.size(), &r);
        launch(
            kernels,
            "wkv5_forward",
            batch * heads,
            n as i64,
            0,
            &[
                ptr(&r),
                ptr(&k),
                ptr(&v),
                ptr(&w),
                ptr(&u),
                ptr(&s0),
                ptr(&y),
                ptr(&s_out),
                int(len),
                int(heads),
            ],
        );
        (output(y, kind), output(s_out, kind))
    }

    fn wkv7(
        r: TchTensor,
        w: TchTensor,
        k: TchTensor,
        v: TchTensor,
        a: TchTensor,
        b: TchTensor,
        state: TchTensor,
    ) -> (TchTensor, TchTensor) {
        let dims = r.tensor.size();
        let (batch, len, heads, n) = (dims[0], dims[1], dims[2], dims[3] as usize);
        let Some(kernels) = cuda_kernels(&r, n, batch * heads, &[len, heads]) else {
            return reference::wkv7::<Self>(r, w, k, v, a, b, state);
        };
        let kind = r.tensor.kind();
        let [r, w, k, v, a, b, s0] = [&r, &w, &k, &v, &a, &b, &state].map(dense);
        let y = empty(&dims, &r);
        let s_out = empty(&s0.size(), &r);
        launch(
            kernels,
            "wkv7_forward",
            batch * heads,
            n as i64,
            0,
            &[
                ptr(&r),
                ptr(&w),
                ptr(&k),
                ptr(&v),
                ptr(&a),
                ptr(&b),
                ptr(&s0),
                ptr(&y),
                ptr(&s_out),
                int(len),
                int(heads),
            ],
        );
        (output(y, kind), output(s_out, kind))
    }

    fn wkv4_backward(
        w: TchTensor,
        u: TchTensor,
        k: TchTensor,
        v: TchTensor,
        state: Wkv4StatePrim<Self>,
        dy: TchTensor,
        d_state: Wkv4StatePrim<Self>,
    ) -> Wkv4Grads<Self> {
        let dims = k.tensor.size();
        let (batch, len, channels) = (dims[0], dims[1], dims[2]);
        let rows = batch * channels;
        let blocks = (rows + WKV4_BLOCK - 1) / WKV4_BLOCK;
        let Some(kernels) = cuda_kernels(&k, 1, blocks, &[len, channels, rows]) else {
            return backward::wkv4::<Self>(w, u, k, v, state, dy, d_state);
        };
        let kind = k.tensor.kind();
        let [w, u, k, v, aa, bb, pp] = [&w, &u, &k, &v, &state.aa, &state.bb, &state.pp].map(dense);
        let [dy, d_aa, d_bb, d_pp] = [&dy, &d_state.aa, &d_state.bb, &d_state.pp].map(dense);
        let [dk, dv] = std::array::from_fn(|_| empty(&dims, &k));
        let [dw, du, d_aa0, d_bb0, d_pp0] = std::array::from_fn(|_| empty(&[batch, channels], &k));
        let states = empty(&[3, rows * (len + 1)], &k);
        launch(
            kernels,
            "wkv4_backward",
            blocks,
            WKV4_BLOCK,
            0,
            &[
                ptr(&w),
                ptr(&u),
                ptr(&k),
                ptr(&v),
                ptr(&aa),
                ptr(&bb),
                ptr(&pp),
                ptr(&dy),
                ptr(&d_aa),
                ptr(&d_bb),
                ptr(&d_pp),
                ptr(&dw),
                ptr(&du),
                ptr(&dk),
                ptr(&dv),
                ptr(&d_aa0),
                ptr(&d_bb0),
                ptr(&d_pp0),
                ptr(&states),
                int(len),
                int(channels),
                int(rows),
            ],
        );
        let per_channel =
            |x: Tensor| output(x.sum_dim_intlist(&[0i64][..], false, Kind::Float), kind);
        Wkv4Grads {
            w: per_channel(dw),
            u: per_channel(du),
            k: output(dk, kind),
            v: output(dv, kind),
            state: Wkv4StatePrim {
                aa: output(d_aa0, kind),
                bb: output(d_bb0, kind),
                pp: output(d_pp0, kind),
            },
        }
    }

    fn wkv5_backward(
        r: TchTensor,
        k: TchTensor,
        v: TchTensor,
        w: TchTensor,
        u: TchTensor,
        state: TchTensor,
        dy: TchTensor,
        ds: TchTensor,
    ) -> Wkv5Grads<Self> {
        let Some(plan) = PerHeadBackward::new(&r, 6) else {
            return backward::wkv5::<Self>(r, k, v, w, u, state, dy, ds);
        };
        let [checkpoints, states] = plan.scratch(&r.tensor);
        let PerHeadBackward {
            dims,
            batch,
            len,
            heads,
            n,
            chunk,
            shared,
            kernels,
        } = plan;
        let kind = r.tensor.kind();
        let [r, k, v, w, u, s0, dy, ds] = [&r, &k, &v, &w, &u, &state, &dy, &ds].map(dense);
        let [dr, dk, dv, dw] = std::array::from_fn(|_| empty(&dims, &r));
        let du = empty(&[batch, heads, n as i64], &r);
        let ds0 = empty(&s0.size(), &r);
        launch(
            kernels,
            "wkv5_backward",
            batch * heads,
            n as i64,
            shared,
            &[
                ptr(&r),
                ptr(&k),
                ptr(&v),
                ptr(&w),
                ptr(&u),
                ptr(&s0),
                ptr(&dy),
                ptr(&ds),
                ptr(&dr),
                ptr(&dk),
                ptr(&dv),
                ptr(&dw),
                ptr(&du),
                ptr(&ds0),
                ptr(&checkpoints),
                ptr(&states),
                int(len),
                int(heads),
                int(chunk),
            ],
        );
        let du = du.sum_dim_intlist(&[0i64][..], false, Kind::Float);
        Wkv5Grads {
            r: output(dr, kind),
            k: output(dk, kind),
            v: output(dv, kind),
            w: output(dw, kind),
            u: output(du, kind),
            state: output(ds0, kind),
        }
    }

    fn wkv7_backward(
        r: TchTensor,
        w: TchTensor,
        k: TchTensor,
        v: TchTensor,
        a: TchTensor,
        b: TchTensor,
        state: TchTensor,
        dy: TchTensor,
        ds: TchTensor,
    ) -> Wkv7Grads<Self> {
        let Some(plan) = PerHeadBackward::new(&r, 9) else {
            return backward::wkv7::<Self>(r, w, k, v, a, b, state, dy, ds);
        };
        let [checkpoints, states] = plan.scratch(&r.tensor);
        let PerHeadBackward {
            dims,
            batch,
            len,
            heads,
            n,
            chunk,
            shared,
            kernels,
        } = plan;
        let kind = r.tensor.kind();
        let [r, w, k, v, a, b, s0, dy, ds] = [&r, &w, &k, &v, &a, &b, &state, &dy, &ds].map(dense);
        let [dr, dw, dk, dv, da, db] = std::array::from_fn(|_| empty(&dims, &r));
        let ds0 = empty(&s0.size(), &r);
        let sas = empty(&[batch * heads * chunk, n as i64], &r);
        launch(
            kernels,
            "wkv7_backward",
            batch * heads,
            n as i64,
            shared,
            &[
                ptr(&r),
                ptr(&w),
                ptr(&k),
                ptr(&v),
                ptr(&a),
                ptr(&b),
                ptr(&s0),
                ptr(&dy),
                ptr(&ds),
                ptr(&dr),
                ptr(&dw),
                ptr(&dk),
                ptr(&dv),
                ptr(&da),
                ptr(&db),
                ptr(&ds0),
                ptr(&checkpoints),
                ptr(&states),
                ptr(&sas),
                int(len),
                int(heads),
                int(chunk),
            ],
        );
        Wkv7Grads {
            r: output(dr, kind),
            w: output(dw, kind),
            k: output(dk, kind),
            v: output(dv, kind),
            a: output(da, kind),
            b: output(db, kind),
            state: output(ds0, kind),
        }
    }
}
