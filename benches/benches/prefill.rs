//! Whole-model sequence-mode (prefill) throughput on random models of released shapes.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rwkv_burn::init::random_model;
use rwkv_burn::model::token_tensor;
use rwkv_burn::presets::preset;
use rwkv_burn::{DeviceSpec, State};

const LEN: usize = 128;

fn bench_prefill(c: &mut Criterion) {
    let mut group = c.benchmark_group("prefill");
    group.sample_size(10);
    group.throughput(Throughput::Elements(LEN as u64));
    let presets = std::env::var("RWKV_BENCH_PRESETS")
        .unwrap_or_else(|_| "4-169m,5-0.1b,6-0.1b,7-0.1b".into());
    for spec in DeviceSpec::available() {
        let device = spec.device().unwrap();
        for name in presets.split(',') {
            let config = preset(name).expect("known preset");
            let model = random_model(&config, 1, &device).unwrap();
            let ids: Vec<u32> = (0..LEN as u32).map(|i| (i * 31 + 7) % 5000).collect();
            let tokens = token_tensor(&ids, 1, &device);
            group.bench_with_input(BenchmarkId::new(spec.name(), name), name, |b, _| {
                b.iter(|| {
                    let mut state = State::zeros(&config, 1, &device);
                    model.forward_last(tokens.clone(), &mut state).into_data()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_prefill);
criterion_main!(benches);
