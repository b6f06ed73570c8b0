//! How many of RWKV-7's channel-mix activations are exactly zero (README, "Weight formats",
//! the "beyond the peers" item): the channel-mix computes `value(relu(key(x))²)`, so a
//! zero activation makes a whole row of `ffn.value` (`[in, out]`) unused for that token, and a
//! decode kernel could skip it exactly. Counted over the embedded model's held-out text (a
//! trained model) and 512 random tokens through a random 7-0.1b-shape model, layer by layer.
//! One JSON line per model.
//!
//! `cargo run --release -p rwkv-burn-benches --bin ffn-sparsity`

use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};
use rwkv_burn::model::token_tensor;
use rwkv_burn::model::{ChannelMix, TimeMix};
use rwkv_burn::state::WkvState;
use rwkv_burn::{Rwkv, RwkvConfig, State};

/// `[B, T, C]` shifted one token later, `prev` first.
fn shifted(x: &Tensor<3>, prev: &Tensor<2>) -> Tensor<3> {
    let [b, t, c] = x.dims();
    let first = prev.clone().reshape([b, 1, c]);
    if t == 1 {
        return first;
    }
    Tensor::cat(vec![first, x.clone().slice([0..b, 0..t - 1, 0..c])], 1)
}

/// Per layer: (zero activations, all activations) of the channel-mix over `ids`, fed in
/// chunks of 128 as the model's own forward would run them.
fn zeros(model: &Rwkv, config: &RwkvConfig, ids: &[u32], device: &Device) -> Vec<(usize, usize)> {
    let mut state = State::zeros(config, 1, device);
    let mut counts = vec![(0usize, 0usize); model.blocks.len()];
    for chunk in ids.chunks(128) {
        let tokens: Tensor<2, Int> = token_tensor(chunk, 1, device);
        let mut x = model.ln0.forward(model.emb.forward(tokens));
        let mut v_first = None;
        for ((block, layer), count) in model
            .blocks
            .iter()
            .zip(state.layers.iter_mut())
            .zip(&mut counts)
        {
            let (TimeMix::V7(att), ChannelMix::V7(ffn), WkvState::Matrix(kv)) =
                (&block.att, &block.ffn, &mut layer.wkv)
            else {
                panic!("an RWKV-7 model");
            };
            let att_in = block.ln1.forward(x.clone());
            x = x + att.forward(att_in, &mut layer.att_x, kv, &mut v_first);
            let ffn_in = block.ln2.forward(x.clone());
            let prev = shifted(&ffn_in, &layer.ffn_x);
            let mixed = ffn_in.clone() + (prev - ffn_in.clone()) * ffn.x_k.val().unsqueeze::<3>();
            let k = relu(ffn.key.forward(mixed));
            let values = k.into_data().try_to_vec::<f32>().expect("f32");
            count.0 += values.iter().filter(|v| **v == 0.0).count();
            count.1 += values.len();
            x = x + ffn.forward(ffn_in, &mut layer.ffn_x);
        }
    }
    counts
}

fn report(label: &str, counts: &[(usize, usize)]) {
    let per_layer: Vec<String> = counts
        .iter()
        .map(|(z, n)| format!("{:.3}", *z as f64 / *n as f64))
        .collect();
    let (z, n) = counts.iter().fold((0, 0), |(a, b), (z, n)| (a + z, b + n));
    println!(
        "{{\"model\": \"{label}\", \"zero_fraction\": {:.4}, \"per_layer\": [{}]}}",
        z as f64 / n as f64,
        per_layer.join(", ")
    );
}

fn main() {
    let device = Device::flex();
    let held_out = rwkv_burn_benches::held_out_text();
    let (embedded, config) = rwkv_burn_benches::embedded_model();
    let (model, _) =
        rwkv_burn::model::build_with(&embedded, &config, &device, rwkv_burn::WeightFormat::F32)
            .expect("the embedded model");
    report(
        "embedded (trained)",
        &zeros(&model, &config, &held_out, &device),
    );

    let (source, random_config, tokens) = rwkv_burn_benches::random_model();
    let (model, _) = rwkv_burn::model::build_with(
        &source,
        &random_config,
        &device,
        rwkv_burn::WeightFormat::F32,
    )
    .expect("random model");
    report(
        "random 7-0.1b",
        &zeros(&model, &random_config, &tokens, &device),
    );
}
