//! burn-flex: the WKV forward passes as loops over f32 slices, the same recurrences as the
//! reference body (`wkv/reference.rs`) and the kernels. A token step of the reference body
//! is a dozen tensor operations on small tensors, whose dispatch costs more than their
//! arithmetic on a CPU; here a step is a pass over the state. Sequences and heads of
//! RWKV-5/6/7 run on rayon's threads when there is enough work. Other dtypes and the
//! backward passes use the reference body and the tensor-op backward.

use crate::wkv::{Wkv4StatePrim, WkvOps, reference};
use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

type Prim = FloatTensor<Flex>;

/// State-update multiply-adds below which a call stays on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// Dense copies (or handles, when already dense) of `tensors`, if all are f32.
fn dense<const K: usize>(tensors: [&Prim; K]) -> Option<[Prim; K]> {
    tensors
        .iter()
        .all(|t| t.dtype() == DType::F32)
        .then(|| tensors.map(|t| t.to_contiguous()))
}

fn slice(t: &Prim) -> &[f32] {
    t.as_slice::<f32>().expect("dense f32")
}

fn tensor(values: Vec<f32>, shape: Vec<usize>, like: &Prim) -> Prim {
    Flex::float_from_data(TensorData::new(values, shape), &like.device())
}

/// Runs `step` for every (sequence, head) on its `N × N` state in `states`, each returning
/// its outputs `[T, N]`, on rayon's threads when `work` is large enough.
fn per_head(
    states: &mut [f32],
    nn: usize,
    work: usize,
    step: impl Fn(usize, &mut [f32]) -> Vec<f32> + Sync,
) -> Vec<Vec<f32>> {
    if work >= PARALLEL_MIN_WORK && rayon::current_num_threads() >= 2 {
        states
            .par_chunks_mut(nn)
            .enumerate()
            .map(|(bh, s)| step(bh, s))
            .collect()
    } else {
        states
            .chunks_mut(nn)
            .enumerate()
            .map(|(bh, s)| step(bh, s))
            .collect()
    }
}

/// `a · b` in eight independent lanes, so that the compiler can use vector instructions
/// (a single running sum is a dependency chain it must keep in order).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Scatters per-(sequence, head) outputs `[T, N]` into `[B, T, H, N]`.
fn gather(outputs: Vec<Vec<f32>>, batch: usize, len: usize, heads: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; batch * len * heads * n];
    for (bh, out) in outputs.into_iter().enumerate() {
        let (b, h) = (bh / heads, bh % heads);
        for t in 0..len {
            let at = ((b * len + t) * heads + h) * n;
            y[at..at + n].copy_from_slice(&out[t * n..(t + 1) * n]);
        }
    }
    y
}

impl WkvOps for Flex {
    fn wkv4(
        w: Prim,
        u: Prim,
        k: Prim,
        v: Prim,
        state: Wkv4StatePrim<Self>,
    ) -> (Prim, Wkv4StatePrim<Self>) {
        let Some([wd, ud, kd, vd, aa, bb, pp]) =
            dense([&w, &u, &k, &v, &state.aa, &state.bb, &state.pp])
        else {
            return reference::wkv4::<Self>(w, u, k, v, state);
        };
        let [batch, len, channels] = k.shape().dims::<3>();
        let (w, u, k, v) = (slice(&wd), slice(&ud), slice(&kd), slice(&vd));
        let mut aa_out = slice(&aa).to_vec();
        let mut bb_out = slice(&bb).to_vec();
        let mut pp_out = slice(&pp).to_vec();
        let mut y = vec![0f32; batch * len * channels];
        for b in 0..batch {
            let row = b * channels..(b + 1) * channels;
            let (aa, bb, pp) = (
                &mut aa_out[row.clone()],
                &mut bb_out[row.clone()],
                &mut pp_out[row],
            );
            for t in 0..len {
                let at = (b * len + t) * channels;
                for c in 0..channels {
                    let (kt, vt) = (k[at + c], v[at + c]);
                    // Every maximum is the reference's `maximum(a, b)`: `b` only when `a < b`.
                    let ww = u[c] + kt;
                    let p = if pp[c] < ww { ww } else { pp[c] };
                    let e1 = (pp[c] - p).exp();
                    let e2 = (ww - p).exp();
                    y[at + c] = (e1 * aa[c] + e2 * vt) / (e1 * bb[c] + e2);

                    let ww = w[c] + pp[c];
                    let p = if ww < kt { kt } else { ww };
                    let e1 = (ww - p).exp();
                    let e2 = (kt - p).exp();
                    aa[c] = e1 * aa[c] + e2 * vt;
                    bb[c] = e1 * bb[c] + e2;
                    pp[c] = p;
                }
            }
        }
        let state_shape = vec![batch, channels];
        let state = Wkv4StatePrim {
            aa: tensor(aa_out, state_shape.clone(), &kd),
            bb: tensor(bb_out, state_shape.clone(), &kd),
            pp: tensor(pp_out, state_shape, &kd),
        };
        (tensor(y, vec![batch, len, channels], &kd), state)
    }

    fn wkv5(r: Prim, k: Prim, v: Prim, w: Prim, u: Prim, state: Prim) -> (Prim, Prim) {
        let Some([rd, kd, vd, wd, ud, sd]) = dense([&r, &k, &v, &w, &u, &state]) else {
            return reference::wkv5::<Self>(r, k, v, w, u, state);
        };
        let [batch, len, heads, n] = r.shape().dims::<4>();
        let (r, k, v, w, u) = (slice(&rd), slice(&kd), slice(&vd), slice(&wd), slice(&ud));
        let mut states = slice(&sd).to_vec();
        let work = batch * heads * len * n * n;
        // S[key i, value j]: y = r (diag(u) k v^T + S), then S = k v^T + diag(w) S.
        let outputs = per_head(&mut states, n * n, work, |bh, s| {
            let (b, h) = (bh / heads, bh % heads);
            let u = &u[h * n..(h + 1) * n];
            let mut out = vec![0f32; len * n];
            for t in 0..len {
                let at = ((b * len + t) * heads + h) * n;
                let (r, k, v, w) = (
                    &r[at..at + n],
                    &k[at..at + n],
                    &v[at..at + n],
                    &w[at..at + n],
                );
                let y = &mut out[t * n..(t + 1) * n];
                let mut ruk = 0f32;
                for i in 0..n {
                    ruk += r[i] * u[i] * k[i];
                    let (ri, ki, wi) = (r[i], k[i], w[i]);
                    let row = &mut s[i * n..(i + 1) * n];
                    for j in 0..n {
                        y[j] += ri * row[j];
                        row[j] = ki * v[j] + wi * row[j];
                    }
                }
                for j in 0..n {
                    y[j] += ruk * v[j];
                }
            }
            out
        });
        let y = gather(outputs, batch, len, heads, n);
        (
            tensor(y, vec![batch, len, heads, n], &rd),
            tensor(states, vec![batch, heads, n, n], &rd),
        )
    }

    fn wkv7(r: Prim, w: Prim, k: Prim, v: Prim, a: Prim, b: Prim, state: Prim) -> (Prim, Prim) {
        let Some([rd, wd, kd, vd, ad, bd, sd]) = dense([&r, &w, &k, &v, &a, &b, &state]) else {
            return reference::wkv7::<Self>(r, w, k, v, a, b, state);
        };
        let [batch, len, heads, n] = r.shape().dims::<4>();
        let (r, w, k, v) = (slice(&rd), slice(&wd), slice(&kd), slice(&vd));
        let (a, bv) = (slice(&ad), slice(&bd));
        let mut states = slice(&sd).to_vec();
        let work = batch * heads * len * n * n;
        // S[value i, key j]: S = S diag(w) + (S a) b^T + v k^T, then y = S r.
        let outputs = per_head(&mut states, n * n, work, |bh, s| {
            let (bi, h) = (bh / heads, bh % heads);
            let mut out = vec![0f32; len * n];
            for t in 0..len {
                let at = ((bi * len + t) * heads + h) * n;
                let (r, w, k, v, a, bv) = (
                    &r[at..at + n],
                    &w[at..at + n],
                    &k[at..at + n],
                    &v[at..at + n],
                    &a[at..at + n],
                    &bv[at..at + n],
                );
                for i in 0..n {
                    let row = &mut s[i * n..(i + 1) * n];
                    let sa = dot(row, a);
                    let vi = v[i];
                    for j in 0..n {
                        row[j] = row[j] * w[j] + sa * bv[j] + vi * k[j];
                    }
                    out[t * n + i] = dot(row, r);
                }
            }
            out
        });
        let y = gather(outputs, batch, len, heads, n);
        (
            tensor(y, vec![batch, len, heads, n], &rd),
            tensor(states, vec![batch, heads, n, n], &rd),
        )
    }
}
