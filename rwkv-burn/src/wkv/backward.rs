//! Backward passes of the WKV operators, written with plain backend tensor ops from the same
//! recurrences as [`reference`](super::reference).
//!
//! Autodiff could differentiate the reference body op by op, but that records a graph of
//! several nodes per token and keeps every intermediate of every layer alive until the
//! backward pass. These functions instead keep only the operator's inputs: the backward pass
//! recomputes the states of one layer, then walks time backwards carrying the state gradient.

use super::reference::{heads_first, maximum, time_first, time_step, token};
use super::{Wkv4Grads, Wkv4StatePrim, Wkv5Grads, Wkv7Grads};
use burn::backend::{
    Backend, Scalar, TensorMetadata, get_or_init_device_settings, tensor::FloatTensor,
};
use burn::tensor::Shape;

/// Backward of [`reference::wkv4`](super::reference::wkv4) given `dy` `[B, T, C]` and the
/// gradient of the final state.
///
/// The state is kept in the scaled form `(aa, bb, pp)` (true sums `aa·e^pp`, `bb·e^pp`), so
/// this differentiates exactly the scaled updates the forward pass runs, step by step in
/// reverse; every exponent it evaluates is one the forward pass evaluated, so it stays finite
/// for any decay. Where a running maximum ties, the gradient goes where the reference's
/// `maximum` takes its value from.
pub fn wkv4<B: Backend>(
    w: FloatTensor<B>,
    u: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    state: Wkv4StatePrim<B>,
    dy: FloatTensor<B>,
    d_state: Wkv4StatePrim<B>,
) -> Wkv4Grads<B> {
    let [batch, len, channels] = k.shape().dims::<3>();
    let bool_dtype = get_or_init_device_settings::<B>(&k.device()).bool_dtype;
    let rows = Shape::new([batch, channels]);
    let w = B::float_expand(B::float_reshape(w, Shape::new([1, channels])), rows.clone());
    let u = B::float_expand(B::float_reshape(u, Shape::new([1, channels])), rows.clone());
    let (add, sub, mul) = (B::float_add, B::float_sub, B::float_mul);
    // Splits the gradient of `maximum(a, b)` between `a` and `b`.
    let route = |a: &FloatTensor<B>, b: &FloatTensor<B>, g: FloatTensor<B>| {
        let b_wins = B::float_lower(a.clone(), b.clone(), bool_dtype);
        let to_a = B::float_mask_fill(g.clone(), b_wins, Scalar::Float(0.0));
        (to_a.clone(), sub(g, to_a))
    };

    // States before each token: (aa, bb, pp) for t = 0 ..= T.
    let mut states = Vec::with_capacity(len + 1);
    states.push((state.aa, state.bb, state.pp));
    for t in 0..len {
        let (aa, bb, pp) = states[t].clone();
        let kt = time_step::<B>(k.clone(), t, &rows);
        let vt = time_step::<B>(v.clone(), t, &rows);
        let ww = add(w.clone(), pp);
        let p = maximum::<B>(ww.clone(), kt.clone(), bool_dtype);
        let e1 = B::float_exp(sub(ww, p.clone()));
        let e2 = B::float_exp(sub(kt, p.clone()));
        let aa = add(mul(e1.clone(), aa), mul(e2.clone(), vt));
        let bb = add(mul(e1, bb), e2);
        states.push((aa, bb, p));
    }

    let Wkv4StatePrim {
        aa: mut g_aa,
        bb: mut g_bb,
        pp: mut g_pp,
    } = d_state;
    let (mut g_w, mut g_u): (Option<FloatTensor<B>>, Option<FloatTensor<B>>) = (None, None);
    let accumulate = |total: Option<FloatTensor<B>>, x: FloatTensor<B>| match total {
        Some(total) => add(total, x),
        None => x,
    };
    let mut g_k = Vec::with_capacity(len);
    let mut g_v = Vec::with_capacity(len);
    for t in (0..len).rev() {
        let (aa, bb, pp) = states[t].clone();
        let kt = time_step::<B>(k.clone(), t, &rows);
        let vt = time_step::<B>(v.clone(), t, &rows);
        let gy = time_step::<B>(dy.clone(), t, &rows);

        // The state update: aa' = f1 aa + f2 v, bb' = f1 bb + f2, pp' = max(w + pp, k).
        let ww = add(w.clone(), pp.clone());
        let p = maximum::<B>(ww.clone(), kt.clone(), bool_dtype);
        let f1 = B::float_exp(sub(ww.clone(), p.clone()));
        let f2 = B::float_exp(sub(kt.clone(), p));
        let g_f1 = mul(
            add(mul(g_aa.clone(), aa.clone()), mul(g_bb.clone(), bb.clone())),
            f1.clone(),
        );
        let g_f2 = mul(add(mul(g_aa.clone(), vt.clone()), g_bb.clone()), f2.clone());
        let mut next_aa = mul(g_aa.clone(), f1.clone());
        let mut next_bb = mul(g_bb, f1);
        let mut gv = mul(g_aa, f2);
        let g_p = sub(sub(g_pp, g_f1.clone()), g_f2.clone());
        let (to_ww, to_k) = route(&ww, &kt, g_p);
        let g_ww = add(g_f1, to_ww);
        let mut gk = add(g_f2, to_k);
        g_w = Some(accumulate(g_w, g_ww.clone()));
        let mut next_pp = g_ww;

        // The output: y = (e1 aa + e2 v) / (e1 bb + e2), e1 = e^(pp - p), e2 = e^(u + k - p).
        let ww = add(u.clone(), kt.clone());
        let p = maximum::<B>(pp.clone(), ww.clone(), bool_dtype);
        let e1 = B::float_exp(sub(pp.clone(), p.clone()));
        let e2 = B::float_exp(sub(ww.clone(), p));
        let num = add(mul(e1.clone(), aa.clone()), mul(e2.clone(), vt.clone()));
        let den = add(mul(e1.clone(), bb.clone()), e2.clone());
        let y = B::float_div(num, den.clone());
        let g_num = B::float_div(gy, den.clone());
        let g_den = B::float_neg(mul(g_num.clone(), y));
        let g_e1 = mul(
            add(mul(g_num.clone(), aa), mul(g_den.clone(), bb)),
            e1.clone(),
        );
        let g_e2 = mul(add(mul(g_num.clone(), vt), g_den.clone()), e2.clone());
        next_aa = add(next_aa, mul(g_num.clone(), e1.clone()));
        next_bb = add(next_bb, mul(g_den, e1));
        gv = add(gv, mul(g_num, e2));
        let g_p = B::float_neg(add(g_e1.clone(), g_e2.clone()));
        let (to_pp, to_ww) = route(&pp, &ww, g_p);
        next_pp = add(add(next_pp, g_e1), to_pp);
        let g_ww = add(g_e2, to_ww);
        g_u = Some(accumulate(g_u, g_ww.clone()));
        gk = add(gk, g_ww);

        g_k.push(B::float_reshape(gk, Shape::new([batch, 1, channels])));
        g_v.push(B::float_reshape(gv, Shape::new([batch, 1, channels])));
        (g_aa, g_bb, g_pp) = (next_aa, next_bb, next_pp);
    }
    let over_time = |mut list: Vec<FloatTensor<B>>| {
        list.reverse();
        if list.len() == 1 {
            list.pop().expect("one token")
        } else {
            B::float_cat(list, 1)
        }
    };
    let per_channel = |total: Option<FloatTensor<B>>| {
        let total = total.expect("at least one token");
        B::float_reshape(B::float_sum_dim(total, 0), Shape::new([channels]))
    };
    Wkv4Grads {
        w: per_channel(g_w),
        u: per_channel(g_u),
        k: over_time(g_k),
        v: over_time(g_v),
        state: Wkv4StatePrim {
            aa: g_aa,
            bb: g_bb,
            pp: g_pp,
        },
    }
}

/// Backward of [`reference::wkv7`](super::reference::wkv7) given the gradients of its outputs
/// `dy` `[B, T, H, N]` and `ds` `[B, H, N, N]` (the final state).
///
/// With `S_t = S_{t-1} M_t + v_t k_t^T`, `M_t = diag(w_t) + a_t b_t^T` and `y_t = S_t r_t`,
/// walking back from `dS = ds`:
/// `dS += dy_t r_t^T`, `dr_t = S_t^T dy_t`, `dv_t = dS k_t`, `dk_t = dS^T v_t`,
/// `dw_t = colsum(S_{t-1} ⊙ dS)`, `da_t = S_{t-1}^T (dS b_t)`, `db_t = dS^T (S_{t-1} a_t)`,
/// then `dS = dS ⊙ w_t + (dS b_t) a_t^T` is the gradient of `S_{t-1}`.
#[allow(clippy::too_many_arguments)]
pub fn wkv7<B: Backend>(
    r: FloatTensor<B>,
    w: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    state: FloatTensor<B>,
    dy: FloatTensor<B>,
    ds: FloatTensor<B>,
) -> Wkv7Grads<B> {
    let [batch, len, heads, n] = r.shape().dims::<4>();
    let [r, w, k, v, a, b, dy] = [r, w, k, v, a, b, dy].map(heads_first::<B>);
    let row = Shape::new([batch, heads, 1, n]);
    let column = Shape::new([batch, heads, n, 1]);
    let at = |x: &FloatTensor<B>, t: usize, shape: &Shape| token::<B>(x.clone(), t, shape);

    // The states S_0 .. S_T of this call (one layer, one sequence chunk).
    let mut states = Vec::with_capacity(len + 1);
    states.push(state);
    for t in 0..len {
        let s = states[t].clone();
        let sa = B::float_matmul(s.clone(), at(&a, t, &column));
        let next = B::float_add(
            B::float_add(
                B::float_mul(s, at(&w, t, &row)),
                B::float_matmul(sa, at(&b, t, &row)),
            ),
            B::float_mul(at(&v, t, &column), at(&k, t, &row)),
        );
        states.push(next);
    }

    let transpose = |x: FloatTensor<B>| B::float_swap_dims(x, 2, 3);
    let mut d_state = ds;
    let mut grads: [Vec<FloatTensor<B>>; 6] = std::array::from_fn(|_| Vec::with_capacity(len));
    for t in (0..len).rev() {
        let (prev, cur) = (states[t].clone(), states[t + 1].clone());
        let dy_t = at(&dy, t, &column);
        let (rt, wt, kt, vt) = (
            at(&r, t, &row),
            at(&w, t, &row),
            at(&k, t, &column),
            at(&v, t, &column),
        );
        let (a_col, b_col) = (at(&a, t, &column), at(&b, t, &column));
        d_state = B::float_add(d_state, B::float_mul(dy_t.clone(), rt));
        let dr = B::float_matmul(transpose(cur), dy_t);
        let dv = B::float_matmul(d_state.clone(), kt);
        let dk = B::float_matmul(transpose(d_state.clone()), vt);
        let dw = B::float_sum_dim(B::float_mul(prev.clone(), d_state.clone()), 2);
        let ds_b = B::float_matmul(d_state.clone(), b_col);
        let da = B::float_matmul(transpose(prev.clone()), ds_b.clone());
        let db = B::float_matmul(
            transpose(d_state.clone()),
            B::float_matmul(prev, a_col.clone()),
        );
        d_state = B::float_add(
            B::float_mul(d_state, wt),
            B::float_mul(ds_b, transpose(a_col)),
        );
        for (list, g) in grads.iter_mut().zip([dr, dw, dk, dv, da, db]) {
            list.push(B::float_reshape(g, row.clone()));
        }
    }
    let [r, w, k, v, a, b] = grads.map(|mut list| {
        list.reverse();
        time_first::<B>(list)
    });
    Wkv7Grads {
        r,
        w,
        k,
        v,
        a,
        b,
        state: d_state,
    }
}

/// Backward of [`reference::wkv5`](super::reference::wkv5) given `dy` `[B, T, H, N]` and `ds`
/// `[B, H, N, N]`.
///
/// With `y_t = r_t^T (u ⊙ k_t v_t^T + S_{t-1})` and `S_t = k_t v_t^T + diag(w_t) S_{t-1}`,
/// walking back from `dS = ds` with `G = r_t dy_t^T` and `dKV = dS + u ⊙ G`:
/// `dr_t = (u ⊙ k_t v_t^T + S_{t-1}) dy_t`, `dk_t = dKV v_t`, `dv_t = dKV^T k_t`,
/// `dw_t = rowsum(dS ⊙ S_{t-1})`, `du += rowsum(G ⊙ k_t v_t^T)`, then
/// `dS = diag(w_t) dS + G` is the gradient of `S_{t-1}`.
#[allow(clippy::too_many_arguments)]
pub fn wkv5<B: Backend>(
    r: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    w: FloatTensor<B>,
    u: FloatTensor<B>,
    state: FloatTensor<B>,
    dy: FloatTensor<B>,
    ds: FloatTensor<B>,
) -> Wkv5Grads<B> {
    let [batch, len, heads, n] = r.shape().dims::<4>();
    let [r, k, v, w, dy] = [r, k, v, w, dy].map(heads_first::<B>);
    let row = Shape::new([batch, heads, 1, n]);
    let column = Shape::new([batch, heads, n, 1]);
    let u = B::float_reshape(u, Shape::new([1, heads, n, 1]));
    let at = |x: &FloatTensor<B>, t: usize, shape: &Shape| token::<B>(x.clone(), t, shape);

    let mut states = Vec::with_capacity(len + 1);
    states.push(state);
    for t in 0..len {
        let kv = B::float_mul(at(&k, t, &column), at(&v, t, &row));
        let next = B::float_add(kv, B::float_mul(at(&w, t, &column), states[t].clone()));
        states.push(next);
    }

    let mut d_state = ds;
    let mut d_u = None;
    let mut grads: [Vec<FloatTensor<B>>; 4] = std::array::from_fn(|_| Vec::with_capacity(len));
    for t in (0..len).rev() {
        let prev = states[t].clone();
        let (r_col, k_col, k_row) = (at(&r, t, &column), at(&k, t, &column), at(&k, t, &row));
        let (v_row, v_col) = (at(&v, t, &row), at(&v, t, &column));
        let (dy_row, dy_col) = (at(&dy, t, &row), at(&dy, t, &column));
        let kv = B::float_mul(k_col, v_row);
        let g = B::float_mul(r_col, dy_row);
        let d_kv = B::float_add(d_state.clone(), B::float_mul(u.clone(), g.clone()));
        let visible = B::float_add(B::float_mul(u.clone(), kv.clone()), prev.clone());
        let dr = B::float_matmul(visible, dy_col);
        let dk = B::float_matmul(d_kv.clone(), v_col);
        let dv = B::float_matmul(k_row, d_kv);
        let dw = B::float_sum_dim(B::float_mul(d_state.clone(), prev), 3);
        let du = B::float_sum_dim(B::float_mul(g.clone(), kv), 3);
        d_u = Some(match d_u {
            Some(total) => B::float_add(total, du),
            None => du,
        });
        d_state = B::float_add(B::float_mul(at(&w, t, &column), d_state), g);
        for (list, grad) in grads.iter_mut().zip([dr, dk, dv, dw]) {
            list.push(B::float_reshape(grad, row.clone()));
        }
    }
    let [r, k, v, w] = grads.map(|mut list| {
        list.reverse();
        time_first::<B>(list)
    });
    let d_u = d_u.expect("at least one token");
    let u = B::float_reshape(B::float_sum_dim(d_u, 0), Shape::new([heads, n]));
    Wkv5Grads {
        r,
        k,
        v,
        w,
        u,
        state: d_state,
    }
}
