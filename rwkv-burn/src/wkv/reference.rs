//! Reference bodies of the WKV operators, written with plain backend tensor ops.
//!
//! These run on any backend, define what the kernels must compute, and keep to two rules:
//! memory linear in the sequence length (a loop over time carrying the state, no `T x T`
//! matrices) and no reads back to the host (the loop only issues tensor ops).

use super::Wkv4StatePrim;
use burn::backend::Scalar;
use burn::backend::{
    Backend, TensorMetadata, get_or_init_device_settings,
    tensor::{BoolTensor, FloatTensor},
};
use burn::tensor::{BoolDType, Shape, Slice, TensorData};

/// RWKV-4 WKV in the paper's numerically stable form.
///
/// `aa` and `bb` hold the decayed sums of `exp(k) v` and `exp(k)` divided by `exp(pp)`, where
/// `pp` is the largest exponent seen so far, so no `exp` ever overflows whatever the decay.
pub fn wkv4<B: Backend>(
    w: FloatTensor<B>,
    u: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    state: Wkv4StatePrim<B>,
) -> (FloatTensor<B>, Wkv4StatePrim<B>) {
    let [batch, len, channels] = k.shape().dims::<3>();
    let bool_dtype = get_or_init_device_settings::<B>(&k.device()).bool_dtype;
    let rows = Shape::new([batch, channels]);
    let w = B::float_expand(B::float_reshape(w, Shape::new([1, channels])), rows.clone());
    let u = B::float_expand(B::float_reshape(u, Shape::new([1, channels])), rows.clone());
    let Wkv4StatePrim {
        mut aa,
        mut bb,
        mut pp,
    } = state;

    let mut outputs = Vec::with_capacity(len);
    for t in 0..len {
        let kt = time_step::<B>(k.clone(), t, &rows);
        let vt = time_step::<B>(v.clone(), t, &rows);

        // Output: the current token enters with the bonus u instead of a decay.
        let ww = B::float_add(u.clone(), kt.clone());
        let p = maximum::<B>(pp.clone(), ww.clone(), bool_dtype);
        let e1 = B::float_exp(B::float_sub(pp.clone(), p.clone()));
        let e2 = B::float_exp(B::float_sub(ww, p));
        let num = B::float_add(
            B::float_mul(e1.clone(), aa.clone()),
            B::float_mul(e2.clone(), vt.clone()),
        );
        let den = B::float_add(B::float_mul(e1, bb.clone()), e2);
        outputs.push(B::float_reshape(
            B::float_div(num, den),
            Shape::new([batch, 1, channels]),
        ));

        // State: decay the past by exp(w), add the current token.
        let ww = B::float_add(w.clone(), pp);
        let p = maximum::<B>(ww.clone(), kt.clone(), bool_dtype);
        let e1 = B::float_exp(B::float_sub(ww, p.clone()));
        let e2 = B::float_exp(B::float_sub(kt, p.clone()));
        aa = B::float_add(B::float_mul(e1.clone(), aa), B::float_mul(e2.clone(), vt));
        bb = B::float_add(B::float_mul(e1, bb), e2);
        pp = p;
    }

    let y = if outputs.len() == 1 {
        outputs.pop().expect("one output")
    } else {
        B::float_cat(outputs, 1)
    };
    (y, Wkv4StatePrim { aa, bb, pp })
}

/// The chunk length at which [`wkv5_chunked`] measured fastest on flex.
pub const WKV5_CHUNK: usize = 16;

/// RWKV-5/6 WKV (see [`super::WkvOps::wkv5`]).
///
/// Token by token: on the CPU backends this measured faster than [`wkv5_chunked`] at every
/// chunk length tried (flex, 12 heads of 64, T = 512: 17 ms vs 21 ms at L = 16, 40 ms at
/// L = 32), because the chunked form's `L x L x N` element-wise work costs more there than the
/// per-token op overhead it saves.
pub fn wkv5<B: Backend>(
    r: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    w: FloatTensor<B>,
    u: FloatTensor<B>,
    state: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    wkv5_sequential::<B>(r, k, v, w, u, state)
}

/// RWKV-5/6 WKV in chunks: within a chunk, a `[L, L]` attention-like matrix built from the
/// decays between every pair of tokens; across chunks, the state carried by matrix products.
///
/// The decay between tokens `s < t` is `exp(sum of log w over s < m < t)`, summed directly
/// per pair (never as a difference of prefix sums, which would lose precision and overflow for
/// strong decays), so the result equals the token-by-token recurrence to float rounding.
#[allow(clippy::too_many_arguments)]
pub fn wkv5_chunked<B: Backend>(
    r: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    w: FloatTensor<B>,
    u: FloatTensor<B>,
    state: FloatTensor<B>,
    chunk: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [batch, len, heads, n] = r.shape().dims::<4>();
    let device = r.device();
    let [r, k, v, w] = [r, k, v, w].map(heads_first::<B>);
    // log(0) would poison the pairwise sums with -inf - -inf; 1e-38 decays to nothing anyway.
    let log_w = B::float_log(B::float_clamp_min(w, Scalar::Float(1e-38)));
    let u = B::float_reshape(u, Shape::new([1, heads, 1, n]));
    let mut s = state;
    let mut outputs = Vec::with_capacity(len.div_ceil(chunk));
    for start in (0..len).step_by(chunk) {
        let l = chunk.min(len - start);
        let part = |x: &FloatTensor<B>| {
            let slices = [
                Slice::full(),
                Slice::full(),
                Slice::new(start as isize, Some((start + l) as isize), 1),
                Slice::full(),
            ];
            B::float_slice(x.clone(), &slices)
        };
        let (rc, kc, vc, lw) = (part(&r), part(&k), part(&v), part(&log_w));
        let masks = ChunkMasks::<B>::new(l, &device);
        let over = |mask: &FloatTensor<B>, rows: usize| {
            let mask = B::float_expand(mask.clone(), Shape::new([batch, heads, rows, l]));
            B::float_matmul(mask, lw.clone())
        };
        // Sums of log decays as matmuls with 0/1 matrices: each sum holds exactly the terms it
        // needs, which keeps precision (a difference of prefix sums would not).
        let decay = B::float_mul(
            B::float_exp(B::float_reshape(
                over(&masks.between, l * l),
                Shape::new([batch, heads, l, l, n]),
            )),
            masks.before.clone(),
        ); // decay[t, s] = prod_{s < m < t} w_m for s < t, else 0
        let to_t = B::float_exp(over(&masks.prefix, l)); // prod_{m < t} w_m
        let to_end = B::float_exp(over(&masks.suffix, l)); // prod_{m > s} w_m
        let whole = B::float_exp(B::float_sum_dim(lw.clone(), 2)); // [b, h, 1, n]

        let scores = B::float_reshape(
            B::float_sum_dim(
                B::float_mul(
                    B::float_mul(
                        B::float_reshape(rc.clone(), Shape::new([batch, heads, l, 1, n])),
                        B::float_reshape(kc.clone(), Shape::new([batch, heads, 1, l, n])),
                    ),
                    decay,
                ),
                4,
            ),
            Shape::new([batch, heads, l, l]),
        );
        let bonus = B::float_sum_dim(
            B::float_mul(B::float_mul(rc.clone(), u.clone()), kc.clone()),
            3,
        );
        let y = B::float_add(
            B::float_add(
                B::float_matmul(scores, vc.clone()),
                B::float_mul(bonus, vc.clone()),
            ),
            B::float_matmul(B::float_mul(rc, to_t), s.clone()),
        );
        outputs.push(y);
        let carried = B::float_mul(B::float_reshape(whole, Shape::new([batch, heads, n, 1])), s);
        s = B::float_add(
            carried,
            B::float_matmul(B::float_swap_dims(B::float_mul(kc, to_end), 2, 3), vc),
        );
    }
    let y = if outputs.len() == 1 {
        outputs.pop().expect("one chunk")
    } else {
        B::float_cat(outputs, 2)
    };
    (B::float_swap_dims(y, 1, 2), s)
}

/// 0/1 matrices that select, for a chunk of `l` tokens, which log decays each sum takes.
struct ChunkMasks<B: Backend> {
    /// `[1, 1, l*l, l]`: row `(t, s)` selects `m` with `s < m < t`.
    between: FloatTensor<B>,
    /// `[1, 1, l, l]`: row `t` selects `m < t`.
    prefix: FloatTensor<B>,
    /// `[1, 1, l, l]`: row `s` selects `m > s`.
    suffix: FloatTensor<B>,
    /// `[1, 1, l, l, 1]`: 1 where `s < t`.
    before: FloatTensor<B>,
}

impl<B: Backend> ChunkMasks<B> {
    fn new(l: usize, device: &B::Device) -> Self {
        let make =
            |shape: Vec<usize>, rows: usize, cols: usize, f: &dyn Fn(usize, usize) -> bool| {
                let values: Vec<f32> = (0..rows * cols)
                    .map(|i| if f(i / cols, i % cols) { 1.0 } else { 0.0 })
                    .collect();
                B::float_from_data(TensorData::new(values, shape), device)
            };
        Self {
            between: make(vec![1, 1, l * l, l], l * l, l, &|row, m| {
                let (t, s) = (row / l, row % l);
                s < m && m < t
            }),
            prefix: make(vec![1, 1, l, l], l, l, &|t, m| m < t),
            suffix: make(vec![1, 1, l, l], l, l, &|s, m| m > s),
            before: make(vec![1, 1, l, l, 1], l, l, &|t, s| s < t),
        }
    }
}

/// RWKV-5/6 WKV, one token at a time with tensor ops (see [`super::WkvOps::wkv5`]).
pub fn wkv5_sequential<B: Backend>(
    r: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    w: FloatTensor<B>,
    u: FloatTensor<B>,
    state: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [batch, len, heads, n] = r.shape().dims::<4>();
    let [r, k, v, w] = [r, k, v, w].map(heads_first::<B>);
    let row = Shape::new([batch, heads, 1, n]);
    let column = Shape::new([batch, heads, n, 1]);
    let u = B::float_reshape(u, Shape::new([1, heads, n, 1]));
    let mut s = state;
    let mut outputs = Vec::with_capacity(len);
    for t in 0..len {
        let rt = token::<B>(r.clone(), t, &row);
        let kt = token::<B>(k.clone(), t, &column);
        let vt = token::<B>(v.clone(), t, &row);
        let wt = token::<B>(w.clone(), t, &column);
        let kv = B::float_mul(kt, vt);
        let visible = B::float_add(B::float_mul(u.clone(), kv.clone()), s.clone());
        outputs.push(B::float_matmul(rt, visible));
        s = B::float_add(kv, B::float_mul(wt, s));
    }
    (time_first::<B>(outputs), s)
}

/// RWKV-7 WKV, one token at a time with tensor ops (see [`super::WkvOps::wkv7`]).
#[allow(clippy::too_many_arguments)]
pub fn wkv7<B: Backend>(
    r: FloatTensor<B>,
    w: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    state: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [batch, len, heads, n] = r.shape().dims::<4>();
    let [r, w, k, v, a, b] = [r, w, k, v, a, b].map(heads_first::<B>);
    let row = Shape::new([batch, heads, 1, n]);
    let column = Shape::new([batch, heads, n, 1]);
    let mut s = state;
    let mut outputs = Vec::with_capacity(len);
    for t in 0..len {
        let wt = token::<B>(w.clone(), t, &row);
        let kt = token::<B>(k.clone(), t, &row);
        let vt = token::<B>(v.clone(), t, &column);
        let at = token::<B>(a.clone(), t, &column);
        let bt = token::<B>(b.clone(), t, &row);
        let rt = token::<B>(r.clone(), t, &column);
        // Both the decay and the delta-rule correction act on the previous state.
        let sa = B::float_matmul(s.clone(), at);
        let correction = B::float_matmul(sa, bt);
        s = B::float_add(
            B::float_add(B::float_mul(s, wt), correction),
            B::float_mul(vt, kt),
        );
        let y = B::float_matmul(s.clone(), rt);
        outputs.push(B::float_reshape(y, row.clone()));
    }
    (time_first::<B>(outputs), s)
}

/// `[B, T, H, N]` -> `[B, H, T, N]`, so each token's slice is contiguous per head.
pub(super) fn heads_first<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_swap_dims(x, 1, 2)
}

/// Token `t` of a `[B, H, T, N]` tensor, shaped as a row `[B, H, 1, N]` or a column
/// `[B, H, N, 1]`.
pub(super) fn token<B: Backend>(x: FloatTensor<B>, t: usize, shape: &Shape) -> FloatTensor<B> {
    let t = t as isize;
    let slices = [
        Slice::full(),
        Slice::full(),
        Slice::new(t, Some(t + 1), 1),
        Slice::full(),
    ];
    B::float_reshape(B::float_slice(x, &slices), shape.clone())
}

/// Per-token outputs `[B, H, 1, N]` -> `[B, T, H, N]`.
pub(super) fn time_first<B: Backend>(mut outputs: Vec<FloatTensor<B>>) -> FloatTensor<B> {
    let y = if outputs.len() == 1 {
        outputs.pop().expect("one output")
    } else {
        B::float_cat(outputs, 2)
    };
    B::float_swap_dims(y, 1, 2)
}

/// Row `t` of a `[B, T, C]` tensor as `[B, C]`.
pub(super) fn time_step<B: Backend>(x: FloatTensor<B>, t: usize, rows: &Shape) -> FloatTensor<B> {
    let t = t as isize;
    let slices = [Slice::full(), Slice::new(t, Some(t + 1), 1), Slice::full()];
    B::float_reshape(B::float_slice(x, &slices), rows.clone())
}

/// Element-wise maximum that returns one of its inputs exactly (`a + relu(b - a)` would not:
/// with `a = -1e30` it rounds `b` away).
pub(super) fn maximum<B: Backend>(
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    bool_dtype: BoolDType,
) -> FloatTensor<B> {
    let a_lower: BoolTensor<B> = B::float_lower(a.clone(), b.clone(), bool_dtype);
    B::float_mask_where(a, a_lower, b)
}

#[cfg(test)]
mod tests {
    use crate::test_util::{Lcg, assert_close, test_devices};
    use crate::wkv::{Wkv4State, wkv4};
    use burn::tensor::{Device, Tensor, TensorData};

    /// The recurrence written out in f64 scalars, without the max trick (inputs are kept small
    /// enough that plain exponentials stay finite).
    #[allow(clippy::too_many_arguments)]
    fn naive_wkv4(
        w: &[f32],
        u: &[f32],
        k: &[f32],
        v: &[f32],
        batch: usize,
        len: usize,
        ch: usize,
        num0: &[f64],
        den0: &[f64],
    ) -> (Vec<f32>, Vec<f64>, Vec<f64>) {
        let mut y = vec![0f32; batch * len * ch];
        let (mut num, mut den) = (num0.to_vec(), den0.to_vec());
        for b in 0..batch {
            for c in 0..ch {
                let s = b * ch + c;
                for t in 0..len {
                    let i = (b * len + t) * ch + c;
                    let (kt, vt) = (k[i] as f64, v[i] as f64);
                    let cur = (u[c] as f64 + kt).exp();
                    y[i] = ((num[s] + cur * vt) / (den[s] + cur)) as f32;
                    let decay = (w[c] as f64).exp();
                    num[s] = decay * num[s] + kt.exp() * vt;
                    den[s] = decay * den[s] + kt.exp();
                }
            }
        }
        (y, num, den)
    }

    fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(data, shape), device)
    }

    fn zero_state(batch: usize, ch: usize, device: &Device) -> Wkv4State {
        Wkv4State {
            aa: Tensor::zeros([batch, ch], device),
            bb: Tensor::zeros([batch, ch], device),
            pp: Tensor::full([batch, ch], crate::wkv::V4_EMPTY_MAX, device),
        }
    }

    #[test]
    fn matches_naive_recurrence_with_strong_and_weak_decay() {
        let (batch, len, ch) = (2, 37, 5);
        let mut rng = Lcg::new(7);
        // Channel decays from almost none (-1e-4) to very strong (-20).
        let w: Vec<f32> = vec![-1e-4, -0.05, -1.0, -5.0, -20.0];
        let u = rng.vec(ch, 1.0);
        let k = rng.vec(batch * len * ch, 2.0);
        let v = rng.vec(batch * len * ch, 3.0);
        let zeros = vec![0f64; batch * ch];
        let (y_exp, num, den) = naive_wkv4(&w, &u, &k, &v, batch, len, ch, &zeros, &zeros);
        for device in test_devices() {
            let (y, s) = wkv4(
                tensor(w.clone(), [ch], &device),
                tensor(u.clone(), [ch], &device),
                tensor(k.clone(), [batch, len, ch], &device),
                tensor(v.clone(), [batch, len, ch], &device),
                zero_state(batch, ch, &device),
            );
            assert_close(
                &y.into_data().try_to_vec::<f32>().unwrap(),
                &y_exp,
                1e-5,
                "y",
            );
            // The state is scaled by exp(-pp): undo it to compare with the plain sums.
            let pp = s.pp.into_data().try_to_vec::<f32>().unwrap();
            let scale = |x: Tensor<2>| -> Vec<f32> {
                let x = x.into_data().try_to_vec::<f32>().unwrap();
                x.iter()
                    .zip(&pp)
                    .map(|(a, p)| (*a as f64 * (*p as f64).exp()) as f32)
                    .collect()
            };
            let to32 = |x: &[f64]| x.iter().map(|a| *a as f32).collect::<Vec<_>>();
            assert_close(&scale(s.aa), &to32(&num), 1e-4, "numerator");
            assert_close(&scale(s.bb), &to32(&den), 1e-4, "denominator");
        }
    }

    #[test]
    fn stays_finite_where_plain_exponentials_overflow() {
        // k = 100 overflows exp() in f32; the running maximum must absorb it.
        let (batch, len, ch) = (1, 4, 2);
        for device in test_devices() {
            let (y, s) = wkv4(
                tensor(vec![-0.5, -0.5], [ch], &device),
                tensor(vec![0.0, 50.0], [ch], &device),
                tensor(
                    vec![100.0, 90.0, 100.0, 0.0, -80.0, 60.0, 1.0, 1.0],
                    [batch, len, ch],
                    &device,
                ),
                tensor(
                    vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                    [batch, len, ch],
                    &device,
                ),
                zero_state(batch, ch, &device),
            );
            let y = y.into_data().try_to_vec::<f32>().unwrap();
            assert!(y.iter().all(|x| x.is_finite()), "{y:?}");
            // Token 0 channel 0: only itself contributes, so wkv = v.
            assert!((y[0] - 1.0).abs() < 1e-6);
            let state: Vec<f32> = [s.aa, s.bb, s.pp]
                .into_iter()
                .flat_map(|t| t.into_data().try_to_vec::<f32>().unwrap())
                .collect();
            assert!(state.iter().all(|x| x.is_finite()), "{state:?}");
        }
    }

    #[test]
    fn chunks_with_state_carried_equal_one_pass() {
        let (batch, len, ch) = (3, 20, 4);
        let mut rng = Lcg::new(11);
        let w = rng.vec(ch, 2.0);
        let u = rng.vec(ch, 1.0);
        let k = rng.vec(batch * len * ch, 3.0);
        let v = rng.vec(batch * len * ch, 3.0);
        for device in test_devices() {
            let wt = tensor(w.clone(), [ch], &device);
            let ut = tensor(u.clone(), [ch], &device);
            let kt = tensor(k.clone(), [batch, len, ch], &device);
            let vt = tensor(v.clone(), [batch, len, ch], &device);
            let (full, _) = wkv4(
                wt.clone(),
                ut.clone(),
                kt.clone(),
                vt.clone(),
                zero_state(batch, ch, &device),
            );
            let mut state = zero_state(batch, ch, &device);
            let mut parts = Vec::new();
            for (start, end) in [(0, 7), (7, 8), (8, 20)] {
                let (y, s) = wkv4(
                    wt.clone(),
                    ut.clone(),
                    kt.clone().slice([0..batch, start..end, 0..ch]),
                    vt.clone().slice([0..batch, start..end, 0..ch]),
                    state,
                );
                parts.push(y);
                state = s;
            }
            let chunked = Tensor::cat(parts, 1);
            assert_close(
                &chunked.into_data().try_to_vec::<f32>().unwrap(),
                &full.into_data().try_to_vec::<f32>().unwrap(),
                1e-6,
                "chunked",
            );
        }
    }

    /// Matrix-state recurrences in f64 scalars. `v7 = false`: RWKV-5/6 with S[key][value];
    /// `v7 = true`: RWKV-7 with S[value][key], `a`/`b` the delta-rule vectors.
    struct Naive {
        batch: usize,
        len: usize,
        heads: usize,
        n: usize,
    }

    impl Naive {
        fn at(&self, x: &[f32], b: usize, t: usize, h: usize, i: usize) -> f64 {
            x[((b * self.len + t) * self.heads + h) * self.n + i] as f64
        }

        #[allow(clippy::too_many_arguments)]
        fn wkv5(
            &self,
            r: &[f32],
            k: &[f32],
            v: &[f32],
            w: &[f32],
            u: &[f32],
            s0: &[f32],
        ) -> (Vec<f32>, Vec<f32>) {
            let (nn, mut y) = (self.n, vec![0f32; r.len()]);
            let mut s: Vec<f64> = s0.iter().map(|x| *x as f64).collect();
            for b in 0..self.batch {
                for h in 0..self.heads {
                    let base = (b * self.heads + h) * nn * nn;
                    for t in 0..self.len {
                        for j in 0..nn {
                            let mut acc = 0.0;
                            for i in 0..nn {
                                let kv = self.at(k, b, t, h, i) * self.at(v, b, t, h, j);
                                acc += self.at(r, b, t, h, i)
                                    * (u[h * nn + i] as f64 * kv + s[base + i * nn + j]);
                            }
                            y[((b * self.len + t) * self.heads + h) * nn + j] = acc as f32;
                        }
                        for i in 0..nn {
                            for j in 0..nn {
                                let kv = self.at(k, b, t, h, i) * self.at(v, b, t, h, j);
                                let e = &mut s[base + i * nn + j];
                                *e = kv + self.at(w, b, t, h, i) * *e;
                            }
                        }
                    }
                }
            }
            (y, s.iter().map(|x| *x as f32).collect())
        }

        #[allow(clippy::too_many_arguments)]
        fn wkv7(
            &self,
            r: &[f32],
            w: &[f32],
            k: &[f32],
            v: &[f32],
            a: &[f32],
            bb: &[f32],
            s0: &[f32],
        ) -> (Vec<f32>, Vec<f32>) {
            let (nn, mut y) = (self.n, vec![0f32; r.len()]);
            let mut s: Vec<f64> = s0.iter().map(|x| *x as f64).collect();
            for b in 0..self.batch {
                for h in 0..self.heads {
                    let base = (b * self.heads + h) * nn * nn;
                    for t in 0..self.len {
                        let sa: Vec<f64> = (0..nn)
                            .map(|i| {
                                (0..nn)
                                    .map(|j| s[base + i * nn + j] * self.at(a, b, t, h, j))
                                    .sum()
                            })
                            .collect();
                        for i in 0..nn {
                            for j in 0..nn {
                                let e = &mut s[base + i * nn + j];
                                *e = *e * self.at(w, b, t, h, j)
                                    + sa[i] * self.at(bb, b, t, h, j)
                                    + self.at(v, b, t, h, i) * self.at(k, b, t, h, j);
                            }
                        }
                        for i in 0..nn {
                            let acc: f64 = (0..nn)
                                .map(|j| s[base + i * nn + j] * self.at(r, b, t, h, j))
                                .sum();
                            y[((b * self.len + t) * self.heads + h) * nn + i] = acc as f32;
                        }
                    }
                }
            }
            (y, s.iter().map(|x| *x as f32).collect())
        }
    }

    /// Decays spread from almost 1 (weak) to 1e-30 and exactly 0 (strong).
    fn decays(rng: &mut Lcg, count: usize) -> Vec<f32> {
        (0..count)
            .map(|i| match i % 5 {
                0 => 1.0 - 1e-4 * rng.next(1.0).abs(),
                1 => 1e-30,
                2 => 0.0,
                _ => 0.5 + rng.next(0.49),
            })
            .collect()
    }

    fn vals(x: Tensor<4>) -> Vec<f32> {
        x.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn wkv5_matches_naive_recurrence_in_every_length_regime() {
        let (batch, heads, n) = (2, 3, 8);
        let mut rng = Lcg::new(5);
        for len in [1, 3, 32, 100] {
            let naive = Naive {
                batch,
                len,
                heads,
                n,
            };
            let m = batch * len * heads * n;
            let (r, k, v) = (rng.vec(m, 1.0), rng.vec(m, 1.0), rng.vec(m, 2.0));
            let w = decays(&mut rng, m);
            let u = rng.vec(heads * n, 1.0);
            let s0 = rng.vec(batch * heads * n * n, 3.0);
            let (y_exp, s_exp) = naive.wkv5(&r, &k, &v, &w, &u, &s0);
            for device in test_devices() {
                let shape = [batch, len, heads, n];
                let (y, s) = super::super::wkv5(
                    tensor(r.clone(), shape, &device),
                    tensor(k.clone(), shape, &device),
                    tensor(v.clone(), shape, &device),
                    tensor(w.clone(), shape, &device),
                    tensor(u.clone(), [heads, n], &device),
                    tensor(s0.clone(), [batch, heads, n, n], &device),
                );
                assert_close(&vals(y), &y_exp, 1e-4, &format!("wkv5 y, T={len}"));
                assert_close(&vals(s), &s_exp, 1e-4, &format!("wkv5 state, T={len}"));
            }
            #[cfg(feature = "flex")]
            for chunk in [1, 7, super::WKV5_CHUNK] {
                use burn::backend::Flex;
                let device = burn::tensor::Device::flex();
                let shape = [batch, len, heads, n];
                let p = |x: &Vec<f32>, shape: [usize; 4]| {
                    tensor(x.clone(), shape, &device)
                        .try_into_primitive::<Flex>()
                        .unwrap()
                };
                let u = tensor(u.clone(), [heads, n], &device)
                    .try_into_primitive::<Flex>()
                    .unwrap();
                let (y, s) = super::wkv5_chunked::<Flex>(
                    p(&r, shape),
                    p(&k, shape),
                    p(&v, shape),
                    p(&w, shape),
                    u,
                    p(&s0, [batch, heads, n, n]),
                    chunk,
                );
                let y = Tensor::<4>::from_primitive::<Flex>(y);
                let s = Tensor::<4>::from_primitive::<Flex>(s);
                let what = format!("chunked({chunk}) T={len}");
                assert_close(&vals(y), &y_exp, 1e-4, &format!("wkv5 y, {what}"));
                assert_close(&vals(s), &s_exp, 1e-4, &format!("wkv5 state, {what}"));
            }
        }
    }

    #[test]
    fn wkv7_matches_naive_recurrence() {
        let (batch, heads, n) = (2, 2, 8);
        let mut rng = Lcg::new(9);
        for len in [1, 45] {
            let naive = Naive {
                batch,
                len,
                heads,
                n,
            };
            let m = batch * len * heads * n;
            let (r, k, v) = (rng.vec(m, 1.0), rng.vec(m, 1.0), rng.vec(m, 2.0));
            let w = decays(&mut rng, m);
            // a = -kk and b = kk * gate with kk unit-norm per head, as the model passes them.
            let kk: Vec<f32> = rng.vec(m, 1.0);
            let kk: Vec<f32> = kk
                .chunks(n)
                .flat_map(|c| {
                    let norm = c.iter().map(|x| x * x).sum::<f32>().sqrt();
                    c.iter().map(move |x| x / norm).collect::<Vec<_>>()
                })
                .collect();
            let a: Vec<f32> = kk.iter().map(|x| -x).collect();
            let b: Vec<f32> = kk.iter().map(|x| x * (0.5 + rng.next(0.5))).collect();
            let s0 = rng.vec(batch * heads * n * n, 1.0);
            let (y_exp, s_exp) = naive.wkv7(&r, &w, &k, &v, &a, &b, &s0);
            for device in test_devices() {
                let shape = [batch, len, heads, n];
                let t = |x: &Vec<f32>| tensor(x.clone(), shape, &device);
                let (y, s) = super::super::wkv7(
                    t(&r),
                    t(&w),
                    t(&k),
                    t(&v),
                    t(&a),
                    t(&b),
                    tensor(s0.clone(), [batch, heads, n, n], &device),
                );
                assert_close(&vals(y), &y_exp, 1e-4, &format!("wkv7 y, T={len}"));
                assert_close(&vals(s), &s_exp, 1e-4, &format!("wkv7 state, T={len}"));
            }
        }
    }
}
