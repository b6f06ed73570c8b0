//! Sequence, step and chunked modes agree for every version on random models larger than the
//! fixtures (4 layers, width 256, head size 64, 200 tokens), batch > 1 included.

use crate::common::{assert_matches, devices, token_tensor};
use burn::tensor::{Device, Tensor};
use rwkv_burn::init::random_model;
use rwkv_burn::presets::config_for;
use rwkv_burn::{Rwkv, RwkvConfig, State, Version};

const LEN: usize = 200;

fn run(
    model: &Rwkv,
    config: &RwkvConfig,
    ids: &[i64],
    chunks: &[usize],
    device: &Device,
) -> (Vec<f32>, Vec<f32>) {
    let batch = ids.len() / LEN;
    let mut state = State::zeros(config, batch, device);
    let mut parts = Vec::new();
    let mut start = 0;
    for &len in chunks {
        let chunk: Vec<i64> = (0..batch)
            .flat_map(|b| ids[b * LEN + start..b * LEN + start + len].to_vec())
            .collect();
        parts.push(model.forward(token_tensor(&chunk, batch, device), &mut state));
        start += len;
    }
    let logits = Tensor::cat(parts, 1)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let state: Vec<f32> = state
        .to_official()
        .into_iter()
        .flat_map(|t| t.data.try_to_vec::<f32>().unwrap())
        .collect();
    (logits, state)
}

fn check(version: Version) {
    let mut config = config_for(version, 4, 256);
    config.vocab_size = 1000;
    let batch = 2;
    let ids: Vec<i64> = (0..batch * LEN)
        .map(|i| ((i * 7919 + 13) % 1000) as i64)
        .collect();
    for (spec, device) in devices() {
        let model = random_model(&config, 42, &device).unwrap();
        let what = |mode: &str| format!("{version} on {spec}: {mode}");
        let (full, full_state) = run(&model, &config, &ids, &[LEN], &device);
        assert!(full.iter().all(|x| x.is_finite()), "{}", what("finite"));
        let (step, step_state) = run(&model, &config, &ids, &[1; LEN], &device);
        assert_matches(&step, &full, &what("step logits"));
        assert_matches(&step_state, &full_state, &what("step state"));
        let (chunked, chunked_state) = run(&model, &config, &ids, &[37, 1, 64, 98], &device);
        assert_matches(&chunked, &full, &what("chunked logits"));
        assert_matches(&chunked_state, &full_state, &what("chunked state"));
    }
}

#[test]
fn rwkv4_modes_agree() {
    check(Version::V4);
}

#[test]
fn rwkv5_modes_agree() {
    check(Version::V5 { minor: 2 });
}

#[test]
fn rwkv6_modes_agree() {
    check(Version::V6);
}

#[test]
fn rwkv7_modes_agree() {
    check(Version::V7);
}
