//! WKV operators at the 0.1B-class shape (768 channels; 12 heads of 64), on each compiled
//! device. For RWKV-5/6 the token-by-token and chunked reference forms run side by side; on
//! devices with WKV kernels (wgpu, libtorch-cuda), kernels run against the reference body.

use burn::backend::Flex;
use burn::tensor::{Device, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rwkv_burn::DeviceSpec;
use rwkv_burn::wkv::{Wkv4State, Wkv4StatePrim, reference, wkv4, wkv5, wkv7};

const CHANNELS: usize = 768;
const HEADS: usize = 12;
const HEAD: usize = 64;
const LENGTHS: [usize; 2] = [64, 512];

fn random(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn heads(len: usize, seed: u32, device: &Device) -> Tensor<4> {
    tensor(random(len * CHANNELS, seed), [1, len, HEADS, HEAD], device)
}

fn bench_wkv4(c: &mut Criterion) {
    let mut group = c.benchmark_group("wkv4");
    group.sample_size(10);
    for spec in DeviceSpec::available() {
        let device = spec.device().unwrap();
        for len in LENGTHS {
            let w = tensor(random(CHANNELS, 1), [CHANNELS], &device).exp().neg();
            let u = tensor(random(CHANNELS, 2), [CHANNELS], &device);
            let k = tensor(random(len * CHANNELS, 3), [1, len, CHANNELS], &device);
            let v = tensor(random(len * CHANNELS, 4), [1, len, CHANNELS], &device);
            group.throughput(Throughput::Elements(len as u64));
            group.bench_with_input(BenchmarkId::new(spec.name(), len), &len, |b, _| {
                b.iter(|| {
                    let state = Wkv4State {
                        aa: Tensor::zeros([1, CHANNELS], &device),
                        bb: Tensor::zeros([1, CHANNELS], &device),
                        pp: Tensor::full([1, CHANNELS], -1e30, &device),
                    };
                    let (y, _) = wkv4(w.clone(), u.clone(), k.clone(), v.clone(), state);
                    // Read back so lazy backends cannot skip the work.
                    y.into_data()
                })
            });
        }
    }
    group.finish();
}

/// RWKV-5/6: the token-by-token reference against the chunked one, on flex.
fn bench_wkv5_forms(c: &mut Criterion) {
    let mut group = c.benchmark_group("wkv5_flex");
    group.sample_size(10);
    let device = Device::flex();
    let prim = |t: Tensor<4>| t.try_into_primitive::<Flex>().unwrap();
    for len in LENGTHS {
        let (r, k, v) = (
            heads(len, 1, &device),
            heads(len, 2, &device),
            heads(len, 3, &device),
        );
        let w = heads(len, 4, &device).abs().clamp(0.01, 0.999);
        let u = tensor(random(CHANNELS, 5), [HEADS, HEAD], &device)
            .try_into_primitive::<Flex>()
            .unwrap();
        let s0 = || Tensor::<4>::zeros([1, HEADS, HEAD, HEAD], &device);
        group.throughput(Throughput::Elements(len as u64));
        group.bench_with_input(BenchmarkId::new("sequential", len), &len, |b, _| {
            b.iter(|| {
                let (y, _) = reference::wkv5_sequential::<Flex>(
                    prim(r.clone()),
                    prim(k.clone()),
                    prim(v.clone()),
                    prim(w.clone()),
                    u.clone(),
                    prim(s0()),
                );
                Tensor::<4>::from_primitive::<Flex>(y).into_data()
            })
        });
        for chunk in [16, 32, 64] {
            group.bench_with_input(
                BenchmarkId::new(format!("chunked{chunk}"), len),
                &len,
                |b, _| {
                    b.iter(|| {
                        let (y, _) = reference::wkv5_chunked::<Flex>(
                            prim(r.clone()),
                            prim(k.clone()),
                            prim(v.clone()),
                            prim(w.clone()),
                            u.clone(),
                            prim(s0()),
                            chunk,
                        );
                        Tensor::<4>::from_primitive::<Flex>(y).into_data()
                    })
                },
            );
        }
    }
    group.finish();
}

fn bench_wkv7(c: &mut Criterion) {
    let mut group = c.benchmark_group("wkv7");
    group.sample_size(10);
    for spec in DeviceSpec::available() {
        let device = spec.device().unwrap();
        for len in LENGTHS {
            let t = |seed| heads(len, seed, &device);
            let w = t(4).abs().clamp(0.01, 0.999);
            group.throughput(Throughput::Elements(len as u64));
            group.bench_with_input(BenchmarkId::new(spec.name(), len), &len, |b, _| {
                b.iter(|| {
                    let s0 = Tensor::<4>::zeros([1, HEADS, HEAD, HEAD], &device);
                    let (y, _) = wkv7(
                        t(1),
                        w.clone(),
                        t(2),
                        t(3),
                        t(5).mul_scalar(0.1),
                        t(6).mul_scalar(0.1),
                        s0,
                    );
                    y.into_data()
                })
            });
        }
    }
    group.finish();
}

/// One training step of the RWKV-7 WKV (forward and backward) on flex under autodiff: the
/// hand-written backward (one graph node per call) against autodiff through the reference
/// body (a graph of several nodes per token).
fn bench_wkv7_backward(c: &mut Criterion) {
    use burn::backend::Dispatch;
    let mut group = c.benchmark_group("wkv7_backward_flex");
    group.sample_size(10);
    let device = Device::flex().autodiff();
    for len in LENGTHS {
        let inputs = || {
            let t = |seed| heads(len, seed, &device);
            [
                t(1),
                t(4).abs().clamp(0.01, 0.999),
                t(2),
                t(3),
                t(5).mul_scalar(0.1),
                t(6).mul_scalar(0.1),
                Tensor::<4>::zeros([1, HEADS, HEAD, HEAD], &device),
            ]
            .map(Tensor::require_grad)
        };
        group.throughput(Throughput::Elements(len as u64));
        group.bench_with_input(BenchmarkId::new("custom", len), &len, |b, _| {
            b.iter(|| {
                let [r, w, k, v, a, bb, s0] = inputs();
                let (y, s) = wkv7(r.clone(), w, k, v, a, bb, s0);
                let grads = (y.sum() + s.sum()).backward();
                r.grad(&grads).unwrap().into_data()
            })
        });
        group.bench_with_input(BenchmarkId::new("autodiff_reference", len), &len, |b, _| {
            b.iter(|| {
                let [r, w, k, v, a, bb, s0] = inputs();
                let [r1, w, k, v, a, bb, s0] =
                    [r.clone(), w, k, v, a, bb, s0].map(Tensor::into_dispatch);
                let (y, s) = reference::wkv7::<Dispatch>(r1, w, k, v, a, bb, s0);
                let (y, s) = (Tensor::<4>::from_dispatch(y), Tensor::<4>::from_dispatch(s));
                let grads = (y.sum() + s.sum()).backward();
                r.grad(&grads).unwrap().into_data()
            })
        });
    }
    group.finish();
}

/// WKV kernels against the reference body on the same device, for every device that runs
/// kernels (wgpu and vulkan: CubeCL; libtorch-cuda when a GPU is present: CUDA; flex: its
/// loops over slices): RWKV-7, RWKV-5/6 and RWKV-4, forward, and forward + backward under
/// autodiff. `RWKV_BENCH_LENGTHS=64,512` narrows the lengths (the reference body is slow on
/// lavapipe); `RWKV_DEVICES` the devices.
fn bench_kernels(c: &mut Criterion) {
    use burn::backend::Dispatch;
    let lengths: Vec<usize> = std::env::var("RWKV_BENCH_LENGTHS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 512, 4096]);
    let kernel_devices = [
        DeviceSpec::Flex,
        DeviceSpec::Wgpu,
        DeviceSpec::Vulkan,
        DeviceSpec::LibTorchCuda(0),
    ];
    let mut group = c.benchmark_group("wkv_kernels");
    group.sample_size(10);
    for spec in DeviceSpec::available() {
        if !kernel_devices.contains(&spec) {
            continue;
        }
        for train in [false, true] {
            let base = spec.device().unwrap();
            let device = if train { base.autodiff() } else { base };
            for &len in &lengths {
                let inputs = || {
                    let t = |seed| heads(len, seed, &device);
                    [
                        t(1),
                        t(4).abs().clamp(0.01, 0.999),
                        t(2),
                        t(3),
                        t(5).mul_scalar(0.1),
                        t(6).mul_scalar(0.1),
                        Tensor::<4>::zeros([1, HEADS, HEAD, HEAD], &device),
                    ]
                    .map(|x| if train { x.require_grad() } else { x })
                };
                // y and the state summed; with `train`, d/dr read back too.
                let finish = |r: Tensor<4>, y: Tensor<4>, s: Tensor<4>| {
                    let total = y.sum() + s.sum();
                    if train {
                        r.grad(&total.backward()).unwrap().into_data()
                    } else {
                        total.into_data()
                    }
                };
                let mode = if train { "fwd_bwd" } else { "fwd" };
                group.throughput(Throughput::Elements(len as u64));
                let id = |body| BenchmarkId::new(format!("{spec}/wkv7_{mode}/{body}"), len);
                group.bench_with_input(id("kernel"), &len, |b, _| {
                    b.iter(|| {
                        let [r, w, k, v, a, bb, s0] = inputs();
                        let (y, s) = wkv7(r.clone(), w, k, v, a, bb, s0);
                        finish(r, y, s)
                    })
                });
                group.bench_with_input(id("reference"), &len, |b, _| {
                    b.iter(|| {
                        let [r, w, k, v, a, bb, s0] = inputs();
                        let [r1, w, k, v, a, bb, s0] =
                            [r.clone(), w, k, v, a, bb, s0].map(Tensor::into_dispatch);
                        let (y, s) = reference::wkv7::<Dispatch>(r1, w, k, v, a, bb, s0);
                        finish(r, Tensor::from_dispatch(y), Tensor::from_dispatch(s))
                    })
                });

                // RWKV-5/6: r, k, v, decay w (per token), bonus u.
                let inputs5 = || {
                    let t = |seed| heads(len, seed, &device);
                    let u = tensor(random(CHANNELS, 5), [HEADS, HEAD], &device);
                    let x = [
                        t(1),
                        t(2),
                        t(3),
                        t(4).abs().clamp(0.01, 0.999),
                        Tensor::<4>::zeros([1, HEADS, HEAD, HEAD], &device),
                    ];
                    let x = x.map(|x| if train { x.require_grad() } else { x });
                    (x, if train { u.require_grad() } else { u })
                };
                let id = |body| BenchmarkId::new(format!("{spec}/wkv5_{mode}/{body}"), len);
                group.bench_with_input(id("kernel"), &len, |b, _| {
                    b.iter(|| {
                        let ([r, k, v, w, s0], u) = inputs5();
                        let (y, s) = wkv5(r.clone(), k, v, w, u, s0);
                        finish(r, y, s)
                    })
                });
                group.bench_with_input(id("reference"), &len, |b, _| {
                    b.iter(|| {
                        let ([r, k, v, w, s0], u) = inputs5();
                        let [r1, k, v, w, s0] = [r.clone(), k, v, w, s0].map(Tensor::into_dispatch);
                        let u = u.into_dispatch();
                        let (y, s) = reference::wkv5::<Dispatch>(r1, k, v, w, u, s0);
                        finish(r, Tensor::from_dispatch(y), Tensor::from_dispatch(s))
                    })
                });

                // RWKV-4: per-channel decay and bonus, k and v [1, T, C], scaled state.
                let inputs4 = || {
                    let grad = |x: Tensor<3>| if train { x.require_grad() } else { x };
                    let w = tensor(random(CHANNELS, 1), [CHANNELS], &device).exp().neg();
                    let u = tensor(random(CHANNELS, 2), [CHANNELS], &device);
                    let k = grad(tensor(
                        random(len * CHANNELS, 3),
                        [1, len, CHANNELS],
                        &device,
                    ));
                    let v = grad(tensor(
                        random(len * CHANNELS, 4),
                        [1, len, CHANNELS],
                        &device,
                    ));
                    let state = Wkv4State {
                        aa: Tensor::zeros([1, CHANNELS], &device),
                        bb: Tensor::zeros([1, CHANNELS], &device),
                        pp: Tensor::full([1, CHANNELS], -1e30, &device),
                    };
                    (w, u, k, v, state)
                };
                let finish4 = |k: Tensor<3>, y: Tensor<3>, s: Wkv4State| {
                    let total = y.sum() + s.aa.sum() + s.bb.sum();
                    if train {
                        k.grad(&total.backward()).unwrap().into_data()
                    } else {
                        total.into_data()
                    }
                };
                let id = |body| BenchmarkId::new(format!("{spec}/wkv4_{mode}/{body}"), len);
                group.bench_with_input(id("kernel"), &len, |b, _| {
                    b.iter(|| {
                        let (w, u, k, v, state) = inputs4();
                        let (y, s) = wkv4(w, u, k.clone(), v, state);
                        finish4(k, y, s)
                    })
                });
                group.bench_with_input(id("reference"), &len, |b, _| {
                    b.iter(|| {
                        let (w, u, k, v, state) = inputs4();
                        let prim = Wkv4StatePrim {
                            aa: state.aa.into_dispatch(),
                            bb: state.bb.into_dispatch(),
                            pp: state.pp.into_dispatch(),
                        };
                        let [w1, u1] = [w, u].map(Tensor::into_dispatch);
                        let [k1, v1] = [k.clone(), v].map(Tensor::into_dispatch);
                        let (y, s) = reference::wkv4::<Dispatch>(w1, u1, k1, v1, prim);
                        let s = Wkv4State {
                            aa: Tensor::from_dispatch(s.aa),
                            bb: Tensor::from_dispatch(s.bb),
                            pp: Tensor::from_dispatch(s.pp),
                        };
                        finish4(k, Tensor::from_dispatch(y), s)
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_wkv4,
    bench_wkv5_forms,
    bench_wkv7,
    bench_wkv7_backward,
    bench_kernels
);
criterion_main!(benches);
