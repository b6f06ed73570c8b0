//! WKV under autodiff: the inner backend runs the forward pass untracked, and one graph node
//! per call holds a hand-written backward ([`crate::wkv::backward`]), so training never
//! records a per-token graph. Gradients reach every input, the initial state included.
//!
//! An op has one output node, but WKV has two outputs (`y` and the final state), both of
//! which may feed the loss (chunked training carries the state). The node's output is their
//! concatenation, and `y` and the state are tracked slices of it.
//!
//! The RWKV-4 operator still differentiates the reference body op by op.

use crate::wkv::WkvOps;
use crate::wkv::backward;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Autodiff, Backend, TensorMetadata, tensor::FloatTensor};
use burn::tensor::{Shape, Slice};

/// An op's inputs, saved for its backward pass, and the shapes of its two outputs.
#[derive(Debug, Clone)]
struct Saved<B: Backend, const N: usize> {
    inputs: [FloatTensor<B>; N],
    y_shape: Shape,
    state_shape: Shape,
}

impl<B: Backend, const N: usize> Saved<B, N> {
    /// Rows of the joined output: `y` then the state, each flattened per batch entry.
    fn columns(&self) -> ([Slice; 2], [Slice; 2]) {
        let batch = self.y_shape[0];
        let y_len = (self.y_shape.num_elements() / batch) as isize;
        let state_len = (self.state_shape.num_elements() / batch) as isize;
        (
            [Slice::full(), Slice::new(0, Some(y_len), 1)],
            [Slice::full(), Slice::new(y_len, Some(y_len + state_len), 1)],
        )
    }

    /// The joined output's gradient split into `dy` and `ds`, in the outputs' shapes.
    fn split(&self, grad: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
        let (y_cols, state_cols) = self.columns();
        (
            B::float_reshape(B::float_slice(grad.clone(), &y_cols), self.y_shape.clone()),
            B::float_reshape(B::float_slice(grad, &state_cols), self.state_shape.clone()),
        )
    }
}

/// Gives each tracked parent its gradient.
fn register<B: Backend, const N: usize>(
    ops: &Ops<impl Clone, N>,
    grads: &mut Gradients,
    values: [FloatTensor<B>; N],
) {
    for (parent, grad) in ops.parents.iter().zip(values) {
        if let Some(node) = parent {
            grads.register::<B>(node.id, grad);
        }
    }
}

/// Runs `forward` on the inner backend and returns its two outputs as tracked slices of one
/// node whose backward is `op`.
fn track<B, C, Op, const N: usize>(
    op: Op,
    inputs: [FloatTensor<Autodiff<B, C>>; N],
    forward: impl FnOnce([FloatTensor<B>; N]) -> (FloatTensor<B>, FloatTensor<B>),
) -> (FloatTensor<Autodiff<B, C>>, FloatTensor<Autodiff<B, C>>)
where
    B: Backend,
    C: CheckpointStrategy,
    Op: Backward<B, N, State = Saved<B, N>>,
{
    let guards = inputs.each_ref().map(|x| x.node());
    let inputs = inputs.map(|x| x.into_primitive());
    let (y, s) = forward(inputs.clone());
    let saved = Saved {
        inputs,
        y_shape: y.shape(),
        state_shape: s.shape(),
    };
    let batch = saved.y_shape[0];
    let flat = |x: FloatTensor<B>| {
        let per_batch = x.shape().num_elements() / batch;
        B::float_reshape(x, Shape::new([batch, per_batch]))
    };
    let joined = B::float_cat(vec![flat(y), flat(s)], 1);
    let (y_cols, state_cols) = saved.columns();
    let (y_shape, state_shape) = (saved.y_shape.clone(), saved.state_shape.clone());
    let joined = match op.prepare::<C>(guards).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(saved, joined),
        OpsKind::UnTracked(prep) => prep.finish(joined),
    };
    type Ad<B, C> = Autodiff<B, C>;
    let y = Ad::<B, C>::float_reshape(Ad::<B, C>::float_slice(joined.clone(), &y_cols), y_shape);
    let s = Ad::<B, C>::float_reshape(Ad::<B, C>::float_slice(joined, &state_cols), state_shape);
    (y, s)
}

#[derive(Debug)]
struct Wkv5Backward;

impl<B: Backend> Backward<B, 6> for Wkv5Backward {
    type State = Saved<B, 6>;

    fn backward(self, ops: Ops<Self::State, 6>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (dy, ds) = ops.state.split(grad);
        let [r, k, v, w, u, state] = ops.state.inputs.clone();
        let g = backward::wkv5::<B>(r, k, v, w, u, state, dy, ds);
        register::<B, 6>(&ops, grads, [g.r, g.k, g.v, g.w, g.u, g.state]);
    }
}

#[derive(Debug)]
struct Wkv7Backward;

impl<B: Backend> Backward<B, 7> for Wkv7Backward {
    type State = Saved<B, 7>;

    fn backward(self, ops: Ops<Self::State, 7>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (dy, ds) = ops.state.split(grad);
        let [r, w, k, v, a, b, state] = ops.state.inputs.clone();
        let g = backward::wkv7::<B>(r, w, k, v, a, b, state, dy, ds);
        register::<B, 7>(&ops, grads, [g.r, g.w, g.k, g.v, g.a, g.b, g.state]);
    }
}

impl<B: WkvOps, C: CheckpointStrategy> WkvOps for Autodiff<B, C> {
    // wkv4 still differentiates the reference body op by op.

    fn wkv5(
        r: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w: FloatTensor<Self>,
        u: FloatTensor<Self>,
        state: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        track::<B, C, _, 6>(Wkv5Backward, [r, k, v, w, u, state], |[r, k, v, w, u, s]| {
            B::wkv5(r, k, v, w, u, s)
        })
    }

    fn wkv7(
        r: FloatTensor<Self>,
        w: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        state: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        track::<B, C, _, 7>(
            Wkv7Backward,
            [r, w, k, v, a, b, state],
            |[r, w, k, v, a, b, s]| B::wkv7(r, w, k, v, a, b, s),
        )
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use crate::wkv::reference;
    use burn::backend::Dispatch;
    use burn::tensor::{Device, Tensor, TensorData};

    /// Deterministic values in `[lo, hi)`.
    fn values(count: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..count)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                lo + (hi - lo) * ((x >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }

    /// Gradients of every input of a random RWKV-7 WKV call, through the hand-written backward
    /// (`custom`) or through autodiff of the reference body.
    fn wkv7_grads(custom: bool, len: usize, decay: (f32, f32)) -> Vec<Vec<f32>> {
        let device = Device::flex().autodiff();
        let (batch, heads, n) = (2, 2, 8);
        let seq = [batch, len, heads, n];
        let tensor = |shape: &[usize], seed, lo, hi| {
            let count = shape.iter().product();
            Tensor::<4>::from_data(
                TensorData::new(values(count, seed, lo, hi), shape.to_vec()),
                &device,
            )
            .require_grad()
        };
        let r = tensor(&seq, 1, -1.0, 1.0);
        let w = tensor(&seq, 2, decay.0, decay.1);
        let k = tensor(&seq, 3, -1.0, 1.0);
        let v = tensor(&seq, 4, -1.0, 1.0);
        let a = tensor(&seq, 5, -0.3, 0.0);
        let b = tensor(&seq, 6, 0.0, 0.3);
        let s0 = tensor(&[batch, heads, n, n], 7, -0.5, 0.5);
        let inputs = [&r, &w, &k, &v, &a, &b, &s0].map(|x| x.clone());
        let (y, s) = if custom {
            let [r, w, k, v, a, b, s0] = inputs;
            crate::wkv::wkv7(r, w, k, v, a, b, s0)
        } else {
            let [r, w, k, v, a, b, s0] = inputs.map(|x| x.into_dispatch());
            let (y, s) = reference::wkv7::<Dispatch>(r, w, k, v, a, b, s0);
            (Tensor::from_dispatch(y), Tensor::from_dispatch(s))
        };
        // Weights make every output element matter differently.
        let loss = weighted_sum(y, 8) + weighted_sum(s, 9);
        let grads = loss.backward();
        [r, w, k, v, a, b, s0]
            .iter()
            .map(|x| host(x.grad(&grads).expect("every input gets a gradient")))
            .collect()
    }

    /// Gradients of every input of a random RWKV-5/6 WKV call (per-token decays, as RWKV-6).
    fn wkv5_grads(custom: bool, len: usize, decay: (f32, f32)) -> Vec<Vec<f32>> {
        let device = Device::flex().autodiff();
        let (batch, heads, n) = (2, 2, 8);
        let seq = [batch, len, heads, n];
        let tensor = |shape: &[usize], seed, lo, hi| {
            let count = shape.iter().product();
            Tensor::<4>::from_data(
                TensorData::new(values(count, seed, lo, hi), shape.to_vec()),
                &device,
            )
            .require_grad()
        };
        let r = tensor(&seq, 11, -1.0, 1.0);
        let k = tensor(&seq, 12, -1.0, 1.0);
        let v = tensor(&seq, 13, -1.0, 1.0);
        let w = tensor(&seq, 14, decay.0, decay.1);
        let u = Tensor::<2>::from_data(
            TensorData::new(values(heads * n, 15, -1.0, 1.0), [heads, n]),
            &device,
        )
        .require_grad();
        let s0 = tensor(&[batch, heads, n, n], 16, -0.5, 0.5);
        let [r1, k1, v1, w1, s1] = [&r, &k, &v, &w, &s0].map(|x| x.clone());
        let (y, s) = if custom {
            crate::wkv::wkv5(r1, k1, v1, w1, u.clone(), s1)
        } else {
            let [r1, k1, v1, w1, s1] = [r1, k1, v1, w1, s1].map(|x| x.into_dispatch());
            let (y, s) =
                reference::wkv5::<Dispatch>(r1, k1, v1, w1, u.clone().into_dispatch(), s1);
            (Tensor::from_dispatch(y), Tensor::from_dispatch(s))
        };
        let loss = weighted_sum(y, 17) + weighted_sum(s, 18);
        let grads = loss.backward();
        let mut out: Vec<Vec<f32>> = [r, k, v, w, s0]
            .iter()
            .map(|x| host(x.grad(&grads).expect("every input gets a gradient")))
            .collect();
        out.push(host(u.grad(&grads).expect("u gets a gradient")));
        out
    }

    fn weighted_sum(x: Tensor<4>, seed: u64) -> Tensor<1> {
        let weights = Tensor::<4>::from_data(
            TensorData::new(values(x.shape().num_elements(), seed, -1.0, 1.0), x.dims()),
            &x.device(),
        );
        (x * weights).sum()
    }

    fn host<const D: usize>(x: Tensor<D>) -> Vec<f32> {
        x.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn assert_close(names: &[&str], ours: &[Vec<f32>], oracle: &[Vec<f32>], len: usize) {
        for ((name, x), y) in names.iter().zip(ours).zip(oracle) {
            assert_eq!(x.len(), y.len(), "d{name}");
            for (p, q) in x.iter().zip(y) {
                assert!(
                    (p - q).abs() <= 1e-4 + 1e-4 * q.abs(),
                    "T = {len}, d{name}: {p} vs {q}"
                );
            }
        }
    }

    #[test]
    fn wkv5_backward_matches_autodiff_of_the_reference() {
        let names = ["r", "k", "v", "w", "state", "u"];
        for (len, decay) in [(1, (0.5, 1.0)), (37, (0.9, 1.0)), (64, (0.0, 0.3))] {
            let ours = wkv5_grads(true, len, decay);
            let oracle = wkv5_grads(false, len, decay);
            assert_close(&names, &ours, &oracle, len);
        }
    }

    #[test]
    fn wkv7_backward_matches_autodiff_of_the_reference() {
        let names = ["r", "w", "k", "v", "a", "b", "state"];
        for (len, decay) in [(1, (0.5, 1.0)), (37, (0.9, 1.0)), (64, (0.01, 0.3))] {
            let ours = wkv7_grads(true, len, decay);
            let oracle = wkv7_grads(false, len, decay);
            assert_close(&names, &ours, &oracle, len);
        }
    }
}
