//! What each weight format costs in quality (README, "Weight formats"): the perplexity of the
//! embedded model on its held-out text (the last 5% of `kjv-genesis-exodus.txt`, which its
//! training never saw), and the mean KL divergence and top-1 agreement of the logits against
//! f32 on a random model of the RWKV-7 0.1B shape over 512 tokens. One JSON line per format,
//! and for q8/q4 a second one with decode's 8-bit inputs where the CPU uses them.
//!
//! `cargo run --release -p rwkv-burn-benches --bin weight-quality`

use burn::tensor::{Device, Tensor, TensorData};
use rwkv_burn::model::{build_with, token_tensor};
use rwkv_burn::{Rwkv, RwkvConfig, State, WeightFormat};

/// Log-probabilities `[T, V]` of every position, the tokens fed in chunks of `chunk`.
fn log_probs(
    model: &Rwkv,
    config: &RwkvConfig,
    ids: &[u32],
    chunk: usize,
    device: &Device,
) -> Vec<Vec<f32>> {
    let mut state = State::zeros(config, 1, device);
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(chunk) {
        let logits: Tensor<3> = model.forward(token_tensor(chunk, 1, device), &mut state);
        let logp = burn::tensor::activation::log_softmax(logits, 2);
        let data: TensorData = logp.into_data();
        let values = data.try_to_vec::<f32>().expect("f32 logits");
        out.extend(values.chunks(config.vocab_size).map(<[f32]>::to_vec));
    }
    out
}

fn main() {
    let device = Device::flex();
    let held_out = rwkv_burn_benches::held_out_text();
    let (embedded, config) = rwkv_burn_benches::embedded_model();
    let (source, random_config, tokens) = rwkv_burn_benches::random_model();
    let (f32_model, _) = build_with(&source, &random_config, &device, WeightFormat::F32).unwrap();
    let reference = log_probs(&f32_model, &random_config, &tokens, 128, &device);
    drop(f32_model);

    for format in WeightFormat::ALL {
        // Chunks of 128 (prefill: f32 inputs), and for q8/q4 where this CPU rounds decode's
        // inputs to 8 bits (AVX-512 VNNI), one token at a time as decode runs.
        let (embedded_model, _) = build_with(&embedded, &config, &device, format).unwrap();
        let (model, _) = build_with(&source, &random_config, &device, format).unwrap();
        let mut runs = vec![(128, "f32")];
        if model.rounds_inputs() {
            runs.push((1, "int8"));
        }
        for (chunk, inputs) in runs {
            let logp = log_probs(&embedded_model, &config, &held_out, chunk, &device);
            // Position t predicts token t + 1.
            let nll: f64 = (0..held_out.len() - 1)
                .map(|t| -f64::from(logp[t][held_out[t + 1] as usize]))
                .sum::<f64>()
                / (held_out.len() - 1) as f64;
            let logp = log_probs(&model, &random_config, &tokens, chunk, &device);
            let (mut kl, mut agree) = (0f64, 0usize);
            for (p, q) in reference.iter().zip(&logp) {
                kl += p
                    .iter()
                    .zip(q)
                    .map(|(&lp, &lq)| f64::from(lp).exp() * f64::from(lp - lq))
                    .sum::<f64>();
                let top = |v: &[f32]| {
                    v.iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map(|(i, _)| i)
                };
                agree += usize::from(top(p) == top(q));
            }
            println!(
                "{{\"weights\": \"{format}\", \"inputs\": \"{inputs}\", \"embedded_held_out_bytes\": {}, \
                 \"embedded_perplexity\": {:.5}, \"random_7_0_1b_mean_kl\": {:.3e}, \
                 \"random_7_0_1b_top1_agreement\": {:.4}, \"random_7_0_1b_bytes_per_token\": {}}}",
                held_out.len(),
                nll.exp(),
                kl / reference.len() as f64,
                agree as f64 / reference.len() as f64,
                model.bytes_per_token()
            );
        }
    }
}
