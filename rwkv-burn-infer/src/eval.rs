//! Perplexity and bits per byte of a text, streamed through the state so any length fits.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};
use rwkv_burn::model::{TokenError, token_tensor};
use rwkv_burn::{Rwkv, State};

/// How well a model predicts a text.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// Tokens predicted (all but the first).
    pub tokens: usize,
    /// Bytes of the text.
    pub bytes: usize,
    /// Mean negative log-likelihood per predicted token, in nats.
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Total bits over the text's bytes.
    pub bits_per_byte: f64,
}

/// Scores `tokens` (the encoding of `bytes` bytes of text) in chunks of `chunk` tokens.
/// `progress` hears how many tokens have been read.
pub fn evaluate(
    model: &Rwkv,
    tokens: &[u32],
    bytes: usize,
    chunk: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<EvalResult, TokenError> {
    model.check_tokens(tokens)?;
    if tokens.len() < 2 {
        return Err(TokenError::Empty);
    }
    let mut state = State::zeros(&model.config(), 1, device);
    let mut total_nll = 0.0f64;
    let mut previous: Option<Tensor<2>> = None; // log-probs after the last token of the last chunk
    for (index, part) in tokens.chunks(chunk.max(1)).enumerate() {
        let logits = model.forward(token_tensor(part, 1, device), &mut state);
        let [_, len, vocab] = logits.dims();
        let log_probs = log_softmax(logits.reshape([len, vocab]), 1);
        // Position 0 of this chunk is predicted by the previous chunk's last row.
        if let Some(prev) = previous.take() {
            let target = token_tensor(&part[..1], 1, device);
            total_nll -= f64::from(prev.gather(1, target).into_scalar::<f32>());
        }
        if len > 1 {
            let rows = log_probs.clone().slice([0..len - 1, 0..vocab]);
            let targets = token_tensor(&part[1..], len - 1, device);
            total_nll -= f64::from(rows.gather(1, targets).sum().into_scalar::<f32>());
        }
        previous = Some(log_probs.slice([len - 1..len, 0..vocab]));
        progress((index * chunk + part.len()).min(tokens.len()));
    }
    let predicted = tokens.len() - 1;
    let mean_nll = total_nll / predicted as f64;
    Ok(EvalResult {
        tokens: predicted,
        bytes,
        mean_nll,
        perplexity: mean_nll.exp(),
        bits_per_byte: total_nll / std::f64::consts::LN_2 / bytes.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    #[cfg(feature = "flex")]
    fn chunking_does_not_change_the_score() {
        let path = std::env::var_os("RWKV_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
            })
            .join("rwkv7/weights.safetensors");
        let device = Device::flex();
        let (_, model) = rwkv_burn::load_model(path, &device).unwrap();
        let tokens: Vec<u32> = (0..40).map(|i| (i * 37 % 256) as u32).collect();
        let whole = evaluate(&model, &tokens, 40, 100, &device, &mut |_| {}).unwrap();
        let pieces = evaluate(&model, &tokens, 40, 7, &device, &mut |_| {}).unwrap();
        assert!(
            (whole.mean_nll - pieces.mean_nll).abs() < 1e-4,
            "{whole:?} vs {pieces:?}"
        );
        assert_eq!(whole.tokens, 39);
        // A random model is near uniform over 256 tokens: about 8 bits per byte.
        assert!((whole.bits_per_byte - 8.0).abs() < 2.0, "{whole:?}");
    }
}
