//! Backward passes of the WKV operators, written with plain backend tensor ops from the same
//! recurrences as [`reference`](super::reference).
//!
//! Autodiff could differentiate the reference body op by op, but that records a graph of
//! several nodes per token and keeps every intermediate of every layer alive until the
//! backward pass. These functions instead keep only the operator's inputs: the backward pass
//! recomputes the states of one layer, then walks time backwards carrying the state gradient.

use super::reference::{heads_first, time_first, token};
use burn::backend::{Backend, TensorMetadata, tensor::FloatTensor};
use burn::tensor::Shape;

/// Gradients of the RWKV-7 WKV inputs, in the inputs' shapes.
#[derive(Debug)]
pub struct Wkv7Grads<B: Backend> {
    /// d loss / d r, `[B, T, H, N]`.
    pub r: FloatTensor<B>,
    /// d loss / d w.
    pub w: FloatTensor<B>,
    /// d loss / d k.
    pub k: FloatTensor<B>,
    /// d loss / d v.
    pub v: FloatTensor<B>,
    /// d loss / d a.
    pub a: FloatTensor<B>,
    /// d loss / d b.
    pub b: FloatTensor<B>,
    /// d loss / d initial state, `[B, H, N, N]`.
    pub state: FloatTensor<B>,
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
        let db = B::float_matmul(transpose(d_state.clone()), B::float_matmul(prev, a_col.clone()));
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

/// Gradients of the RWKV-5/6 WKV inputs, in the inputs' shapes.
#[derive(Debug)]
pub struct Wkv5Grads<B: Backend> {
    /// d loss / d r, `[B, T, H, N]`.
    pub r: FloatTensor<B>,
    /// d loss / d k.
    pub k: FloatTensor<B>,
    /// d loss / d v.
    pub v: FloatTensor<B>,
    /// d loss / d w.
    pub w: FloatTensor<B>,
    /// d loss / d u, `[H, N]`.
    pub u: FloatTensor<B>,
    /// d loss / d initial state, `[B, H, N, N]`.
    pub state: FloatTensor<B>,
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
