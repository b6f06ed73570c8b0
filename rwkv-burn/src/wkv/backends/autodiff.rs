//! WKV under autodiff: the inner backend runs the forward pass untracked, and one graph node
//! per call holds the inner backend's hand-written backward (`WkvOps::wkv*_backward`: a
//! kernel on CubeCL backends, tensor ops elsewhere), so training never records a per-token
//! graph. Gradients reach every input, the initial state included.
//!
//! An op has one output node, but WKV has two outputs (`y` and the final state), both of
//! which may feed the loss (chunked training carries the state). The node's output is their
//! concatenation, and `y` and the state are tracked slices of it.

use crate::wkv::{Wkv4StatePrim, WkvOps};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Autodiff, Backend, TensorMetadata, tensor::FloatTensor};
use burn::tensor::{Shape, Slice};

/// An op's inputs, saved for its backward pass, and the shapes of its outputs.
#[derive(Debug, Clone)]
struct Saved<B: Backend, const N: usize> {
    inputs: [FloatTensor<B>; N],
    outputs: Vec<Shape>,
}

impl<B: Backend, const N: usize> Saved<B, N> {
    /// Column ranges of each output inside the joined `[batch, sum of output sizes]` tensor.
    fn columns(&self) -> Vec<[Slice; 2]> {
        let batch = self.outputs[0][0];
        let mut start = 0isize;
        self.outputs
            .iter()
            .map(|shape| {
                let end = start + (shape.num_elements() / batch) as isize;
                let cols = [Slice::full(), Slice::new(start, Some(end), 1)];
                start = end;
                cols
            })
            .collect()
    }

    /// The joined output's gradient split into one gradient per output, in its shape.
    fn split(&self, grad: FloatTensor<B>) -> Vec<FloatTensor<B>> {
        self.columns()
            .iter()
            .zip(&self.outputs)
            .map(|(cols, shape)| {
                B::float_reshape(B::float_slice(grad.clone(), cols), shape.clone())
            })
            .collect()
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

/// Runs `forward` on the inner backend and returns its outputs (all with the same leading
/// batch dimension) as tracked slices of one node whose backward is `op`.
fn track<B, C, Op, const N: usize>(
    op: Op,
    inputs: [FloatTensor<Autodiff<B, C>>; N],
    forward: impl FnOnce([FloatTensor<B>; N]) -> Vec<FloatTensor<B>>,
) -> Vec<FloatTensor<Autodiff<B, C>>>
where
    B: Backend,
    C: CheckpointStrategy,
    Op: Backward<B, N, State = Saved<B, N>>,
{
    let guards = inputs.each_ref().map(|x| x.node());
    let inputs = inputs.map(|x| x.into_primitive());
    let outputs = forward(inputs.clone());
    let saved = Saved {
        inputs,
        outputs: outputs.iter().map(|x| x.shape()).collect(),
    };
    let batch = saved.outputs[0][0];
    let flat = |x: FloatTensor<B>| {
        let per_batch = x.shape().num_elements() / batch;
        B::float_reshape(x, Shape::new([batch, per_batch]))
    };
    let joined = B::float_cat(outputs.into_iter().map(flat).collect(), 1);
    let columns = saved.columns();
    let shapes = saved.outputs.clone();
    let joined = match op.prepare::<C>(guards).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(saved, joined),
        OpsKind::UnTracked(prep) => prep.finish(joined),
    };
    type Ad<B, C> = Autodiff<B, C>;
    columns
        .iter()
        .zip(shapes)
        .map(|(cols, shape)| {
            Ad::<B, C>::float_reshape(Ad::<B, C>::float_slice(joined.clone(), cols), shape)
        })
        .collect()
}

/// The `K` outputs of an op, which `track` returns in the order the forward gave them.
fn fixed<T, const K: usize>(outputs: Vec<T>) -> [T; K] {
    match outputs.try_into() {
        Ok(array) => array,
        Err(outputs) => unreachable!("expected {K} outputs, got {}", outputs.len()),
    }
}

/// The two outputs of a matrix-state WKV.
fn pair<T>(outputs: Vec<T>) -> (T, T) {
    let [y, s] = fixed(outputs);
    (y, s)
}

#[derive(Debug)]
struct Wkv4Backward;

impl<B: WkvOps> Backward<B, 7> for Wkv4Backward {
    type State = Saved<B, 7>;

    fn backward(self, ops: Ops<Self::State, 7>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [dy, daa, dbb, dpp] = fixed(ops.state.split(grad));
        let [w, u, k, v, aa, bb, pp] = ops.state.inputs.clone();
        let state = Wkv4StatePrim { aa, bb, pp };
        let d_state = Wkv4StatePrim {
            aa: daa,
            bb: dbb,
            pp: dpp,
        };
        let g = B::wkv4_backward(w, u, k, v, state, dy, d_state);
        let s = g.state;
        register::<B, 7>(&ops, grads, [g.w, g.u, g.k, g.v, s.aa, s.bb, s.pp]);
    }
}

#[derive(Debug)]
struct Wkv5Backward;

impl<B: WkvOps> Backward<B, 6> for Wkv5Backward {
    type State = Saved<B, 6>;

    fn backward(self, ops: Ops<Self::State, 6>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (dy, ds) = pair(ops.state.split(grad));
        let [r, k, v, w, u, state] = ops.state.inputs.clone();
        let g = B::wkv5_backward(r, k, v, w, u, state, dy, ds);
        register::<B, 6>(&ops, grads, [g.r, g.k, g.v, g.w, g.u, g.state]);
    }
}

#[derive(Debug)]
struct Wkv7Backward;

impl<B: WkvOps> Backward<B, 7> for Wkv7Backward {
    type State = Saved<B, 7>;

    fn backward(self, ops: Ops<Self::State, 7>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (dy, ds) = pair(ops.state.split(grad));
        let [r, w, k, v, a, b, state] = ops.state.inputs.clone();
        let g = B::wkv7_backward(r, w, k, v, a, b, state, dy, ds);
        register::<B, 7>(&ops, grads, [g.r, g.w, g.k, g.v, g.a, g.b, g.state]);
    }
}

impl<B: WkvOps, C: CheckpointStrategy> WkvOps for Autodiff<B, C> {
    fn wkv4(
        w: FloatTensor<Self>,
        u: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        state: Wkv4StatePrim<Self>,
    ) -> (FloatTensor<Self>, Wkv4StatePrim<Self>) {
        let inputs = [w, u, k, v, state.aa, state.bb, state.pp];
        let outputs = track::<B, C, _, 7>(Wkv4Backward, inputs, |[w, u, k, v, aa, bb, pp]| {
            let (y, s) = B::wkv4(w, u, k, v, Wkv4StatePrim { aa, bb, pp });
            vec![y, s.aa, s.bb, s.pp]
        });
        let [y, aa, bb, pp] = fixed(outputs);
        (y, Wkv4StatePrim { aa, bb, pp })
    }

    fn wkv5(
        r: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w: FloatTensor<Self>,
        u: FloatTensor<Self>,
        state: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        pair(track::<B, C, _, 6>(
            Wkv5Backward,
            [r, k, v, w, u, state],
            |[r, k, v, w, u, s]| {
                let (y, s) = B::wkv5(r, k, v, w, u, s);
                vec![y, s]
            },
        ))
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
        pair(track::<B, C, _, 7>(
            Wkv7Backward,
            [r, w, k, v, a, b, state],
            |[r, w, k, v, a, b, s]| {
                let (y, s) = B::wkv7(r, w, k, v, a, b, s);
                vec![y, s]
            },
        ))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use crate::wkv::reference;
    use burn::backend::Dispatch;
    use burn::tensor::{Device, Tensor, TensorData};

    /// The devices whose hand-written backward is checked: flex and libtorch on the CPU
    /// (tensor ops), wgpu and vulkan (CubeCL kernels) and libtorch-cuda (CUDA kernels), those
    /// [`DeviceSpec::available`](crate::DeviceSpec::available) lists, plus libtorch's CPU
    /// through the CPU emulation of the CUDA kernels (the `bool`), each with the name its checks
    /// carry ("... on NAME: ...", by which the parity log groups them). The oracle is always
    /// autodiff of the reference body on flex.
    fn devices() -> Vec<(String, Device, bool)> {
        use crate::DeviceSpec;
        let specs = DeviceSpec::available();
        let mut devices: Vec<_> = specs
            .iter()
            .filter(|spec| **spec != DeviceSpec::NdArray)
            .map(|spec| (spec.to_string(), spec.device().unwrap(), false))
            .collect();
        if specs.contains(&DeviceSpec::LibTorch) {
            let device = DeviceSpec::LibTorch.device().unwrap();
            devices.push(("libtorch-emulated-cuda".to_string(), device, true));
        }
        devices
    }

    /// Runs `f`, through the emulated CUDA kernels when `emulated`.
    fn on<R>(emulated: bool, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "tch")]
        if emulated {
            return crate::wkv::backends::tch::emulator::with_emulation(f);
        }
        assert!(!emulated, "emulation needs the tch feature");
        f()
    }

    /// The forward outputs and every input gradient of one call, on the host.
    type Results = Vec<Vec<f32>>;

    /// Deterministic values in `[lo, hi)`.
    fn values(count: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        let mut rng = crate::random::Lcg::new(seed);
        (0..count).map(|_| rng.uniform(lo, hi)).collect()
    }

    /// Gradients of every input of a random RWKV-7 WKV call, through the hand-written backward
    /// (`custom`) or through autodiff of the reference body.
    fn wkv7_grads(
        device: &Device,
        custom: bool,
        len: usize,
        n: usize,
        decay: (f32, f32),
    ) -> Results {
        let device = device.clone().autodiff();
        let (batch, heads) = (2, 2);
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
        // (S a) b^T sums n terms: shrink a and b with n to keep the state bounded.
        let ab = 0.3 * 8.0 / n as f32;
        let a = tensor(&seq, 5, -ab, 0.0);
        let b = tensor(&seq, 6, 0.0, ab);
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
        let loss = weighted_sum(y.clone(), 8) + weighted_sum(s.clone(), 9);
        let grads = loss.backward();
        let mut out = vec![host(y), host(s)];
        out.extend(
            [r, w, k, v, a, b, s0]
                .iter()
                .map(|x| host(x.grad(&grads).expect("every input gets a gradient"))),
        );
        out
    }

    /// Gradients of every input of a random RWKV-5/6 WKV call (per-token decays, as RWKV-6).
    fn wkv5_grads(
        device: &Device,
        custom: bool,
        len: usize,
        n: usize,
        decay: (f32, f32),
    ) -> Results {
        let device = device.clone().autodiff();
        let (batch, heads) = (2, 2);
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
            let (y, s) = reference::wkv5::<Dispatch>(r1, k1, v1, w1, u.clone().into_dispatch(), s1);
            (Tensor::from_dispatch(y), Tensor::from_dispatch(s))
        };
        let loss = weighted_sum(y.clone(), 17) + weighted_sum(s.clone(), 18);
        let grads = loss.backward();
        let mut out = vec![host(y), host(s)];
        out.extend(
            [r, k, v, w, s0]
                .iter()
                .map(|x| host(x.grad(&grads).expect("every input gets a gradient"))),
        );
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

    fn assert_close(names: &[&str], ours: &[Vec<f32>], oracle: &[Vec<f32>], case: &str) {
        assert_eq!(names.len(), oracle.len());
        for ((name, x), y) in names.iter().zip(ours).zip(oracle) {
            assert_eq!(x.len(), y.len(), "{name}");
            let what = format!("{case}, {name}");
            if let Some(m) = crate::parity::compare(x, y, 1e-4, 1e-4, &what) {
                panic!("{what}[{}]: {} vs {}", m.index, m.got, m.expected);
            }
        }
    }

    /// Gradients of every input of a random RWKV-4 WKV call: `w`, `u`, `k`, `v` and the
    /// initial `aa`, `bb`, `pp`. `spread` scales `k` and the decays, to make the running
    /// maximum switch between its arguments.
    fn wkv4_grads(device: &Device, custom: bool, len: usize, spread: f32) -> Results {
        use crate::wkv::{Wkv4State, Wkv4StatePrim};
        let device = device.clone().autodiff();
        let (batch, channels) = (2, 16);
        let tensor = |shape: &[usize], seed, lo, hi| {
            let count = shape.iter().product();
            Tensor::<3>::from_data(
                TensorData::new(values(count, seed, lo, hi), shape.to_vec()),
                &device,
            )
            .require_grad()
        };
        let vector = |seed, lo, hi| {
            Tensor::<1>::from_data(
                TensorData::new(values(channels, seed, lo, hi), [channels]),
                &device,
            )
            .require_grad()
        };
        let rows = |seed, lo, hi| {
            Tensor::<2>::from_data(
                TensorData::new(values(batch * channels, seed, lo, hi), [batch, channels]),
                &device,
            )
            .require_grad()
        };
        let w = vector(21, -spread, -0.01);
        let u = vector(22, -1.0, 1.0);
        let k = tensor(&[batch, len, channels], 23, -spread, spread);
        let v = tensor(&[batch, len, channels], 24, -1.0, 1.0);
        let (aa, bb, pp) = (rows(25, -1.0, 1.0), rows(26, 0.5, 2.0), rows(27, -2.0, 2.0));
        let state = Wkv4State {
            aa: aa.clone(),
            bb: bb.clone(),
            pp: pp.clone(),
        };
        let (y, s) = if custom {
            crate::wkv::wkv4(w.clone(), u.clone(), k.clone(), v.clone(), state)
        } else {
            let (y, s) = reference::wkv4::<Dispatch>(
                w.clone().into_dispatch(),
                u.clone().into_dispatch(),
                k.clone().into_dispatch(),
                v.clone().into_dispatch(),
                Wkv4StatePrim {
                    aa: state.aa.into_dispatch(),
                    bb: state.bb.into_dispatch(),
                    pp: state.pp.into_dispatch(),
                },
            );
            (
                Tensor::from_dispatch(y),
                Wkv4State {
                    aa: Tensor::from_dispatch(s.aa),
                    bb: Tensor::from_dispatch(s.bb),
                    pp: Tensor::from_dispatch(s.pp),
                },
            )
        };
        let loss = weighted_sum(y.clone().unsqueeze(), 28)
            + weighted_sum(s.aa.clone().unsqueeze(), 29)
            + weighted_sum(s.bb.clone().unsqueeze(), 30)
            + weighted_sum(s.pp.clone().unsqueeze(), 31);
        let grads = loss.backward();
        let g = |x: Option<Vec<f32>>| x.expect("every input gets a gradient");
        vec![
            host(y),
            host(s.aa),
            host(s.bb),
            host(s.pp),
            g(w.grad(&grads).map(host)),
            g(u.grad(&grads).map(host)),
            g(k.grad(&grads).map(host)),
            g(v.grad(&grads).map(host)),
            g(aa.grad(&grads).map(host)),
            g(bb.grad(&grads).map(host)),
            g(pp.grad(&grads).map(host)),
        ]
    }

    #[test]
    fn wkv4_backward_matches_autodiff_of_the_reference() {
        let names = [
            "y", "aa'", "bb'", "pp'", "dw", "du", "dk", "dv", "daa", "dbb", "dpp",
        ];
        for (len, spread) in [(1, 1.0), (29, 1.0), (64, 8.0), (4096, 1.0)] {
            let oracle = wkv4_grads(&Device::flex(), false, len, spread);
            for (label, device, emulated) in devices() {
                let ours = on(emulated, || wkv4_grads(&device, true, len, spread));
                let what = format!("wkv4 backward on {label}: T = {len}");
                assert_close(&names, &ours, &oracle, &what);
            }
        }
    }

    #[test]
    fn wkv5_backward_matches_autodiff_of_the_reference() {
        let names = ["y", "state'", "dr", "dk", "dv", "dw", "dstate", "du"];
        for (len, n, decay) in [
            (1, 8, (0.5, 1.0)),
            (37, 8, (0.9, 1.0)),
            (64, 8, (0.0, 0.3)),
            (20, 64, (0.5, 1.0)),
            (4096, 8, (0.95, 1.0)),
        ] {
            let oracle = wkv5_grads(&Device::flex(), false, len, n, decay);
            for (label, device, emulated) in devices() {
                let ours = on(emulated, || wkv5_grads(&device, true, len, n, decay));
                let what = format!("wkv5 backward on {label}: T = {len}, N = {n}");
                assert_close(&names, &ours, &oracle, &what);
            }
        }
    }

    #[test]
    fn wkv7_backward_matches_autodiff_of_the_reference() {
        let names = ["y", "state'", "dr", "dw", "dk", "dv", "da", "db", "dstate"];
        for (len, n, decay) in [
            (1, 8, (0.5, 1.0)),
            (37, 8, (0.9, 1.0)),
            (64, 8, (0.01, 0.3)),
            (20, 64, (0.5, 1.0)),
            (4096, 8, (0.95, 1.0)),
        ] {
            let oracle = wkv7_grads(&Device::flex(), false, len, n, decay);
            for (label, device, emulated) in devices() {
                let ours = on(emulated, || wkv7_grads(&device, true, len, n, decay));
                let what = format!("wkv7 backward on {label}: T = {len}, N = {n}");
                assert_close(&names, &ours, &oracle, &what);
            }
        }
    }
}
