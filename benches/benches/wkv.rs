//! WKV operator throughput on each compiled CPU device, at the 0.1B-class width (768 channels).

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rwkv_burn::DeviceSpec;
use rwkv_burn::wkv::{Wkv4State, wkv4};

const CHANNELS: usize = 768;

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

fn bench_wkv4(c: &mut Criterion) {
    let mut group = c.benchmark_group("wkv4_reference");
    group.sample_size(10);
    for spec in DeviceSpec::available() {
        let device = spec.device().unwrap();
        for len in [64, 512] {
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

criterion_group!(benches, bench_wkv4);
criterion_main!(benches);
