//! Reference bodies of the WKV operators, written with plain backend tensor ops.
//!
//! These run on any backend, define what the kernels must compute, and keep to two rules:
//! memory linear in the sequence length (a loop over time carrying the state, no `T x T`
//! matrices) and no reads back to the host (the loop only issues tensor ops).

use super::Wkv4StatePrim;
use burn::backend::{
    Backend, TensorMetadata, get_or_init_device_settings,
    tensor::{BoolTensor, FloatTensor},
};
use burn::tensor::{BoolDType, Shape, Slice};

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

/// RWKV-5/6 WKV, one token at a time with tensor ops (see [`super::WkvOps::wkv5`]).
pub fn wkv5<B: Backend>(
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
fn heads_first<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_swap_dims(x, 1, 2)
}

/// Token `t` of a `[B, H, T, N]` tensor, shaped as a row `[B, H, 1, N]` or a column
/// `[B, H, N, 1]`.
fn token<B: Backend>(x: FloatTensor<B>, t: usize, shape: &Shape) -> FloatTensor<B> {
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
fn time_first<B: Backend>(mut outputs: Vec<FloatTensor<B>>) -> FloatTensor<B> {
    let y = if outputs.len() == 1 {
        outputs.pop().expect("one output")
    } else {
        B::float_cat(outputs, 2)
    };
    B::float_swap_dims(y, 1, 2)
}

/// Row `t` of a `[B, T, C]` tensor as `[B, C]`.
fn time_step<B: Backend>(x: FloatTensor<B>, t: usize, rows: &Shape) -> FloatTensor<B> {
    let t = t as isize;
    let slices = [Slice::full(), Slice::new(t, Some(t + 1), 1), Slice::full()];
    B::float_reshape(B::float_slice(x, &slices), rows.clone())
}

/// Element-wise maximum that returns one of its inputs exactly (`a + relu(b - a)` would not:
/// with `a = -1e30` it rounds `b` away).
fn maximum<B: Backend>(
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
            pp: Tensor::full([batch, ch], -1e30, device),
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
}
