//! Load a checkpoint, run a few token ids through it, and print the most likely next tokens.
//!
//! ```text
//! cargo run --release -p rwkv-burn-examples --example logits -- ../shared/fixtures/rwkv4/weights.pth 1 2 3
//! ```

use anyhow::{Context, Result};
use burn::tensor::Device;
use rwkv_burn::{State, load_model};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().context("usage: logits MODEL TOKEN...")?;
    let tokens: Vec<u32> = args
        .map(|a| a.parse().with_context(|| format!("not a token id: {a}")))
        .collect::<Result<_>>()?;

    let device = Device::flex();
    let (config, model) = load_model(&path, &device)?;
    println!(
        "{} with {} layers, width {}, vocabulary {}",
        config.version, config.n_layer, config.n_embd, config.vocab_size
    );
    model.check_tokens(&tokens)?;

    let input = rwkv_burn::model::token_tensor(&tokens, 1, &device);
    let mut state = State::zeros(&config, 1, &device);
    let logits = model.forward_last(input, &mut state);

    let probs = burn::tensor::activation::softmax(logits, 1);
    let values = probs.into_data().try_to_vec::<f32>().expect("f32 logits");
    let mut ranked: Vec<(usize, f32)> = values.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (token, p) in ranked.into_iter().take(5) {
        println!("token {token:>6}  p = {p:.4}");
    }
    Ok(())
}
