//! Next-token cross-entropy, the objective of RWKV language-model training.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};
use rwkv_burn::{Rwkv, State};

/// Mean cross-entropy of `logits` `[B, T, V]` against `targets` `[B, T]` over all `B * T`
/// positions (RWKV-LM's and the fixtures' definition).
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [batch, len, vocab] = logits.dims();
    let log_probs = log_softmax(logits.reshape([batch * len, vocab]), 1);
    let picked = log_probs.gather(1, targets.reshape([batch * len, 1]));
    picked.mean().neg()
}

/// Mean cross-entropy of `logits` `[B, T, V]` against `targets` `[B, T]` over the positions
/// whose weight (`[B, T]`, 0 or 1) is 1: `sum(w * ce) / sum(w)`. Positions of weight 0
/// (padding, the user's turns of a chat sample) contribute nothing, to the value or the
/// gradient.
pub fn weighted_cross_entropy(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    weights: Tensor<2>,
) -> Tensor<1> {
    let [batch, len, vocab] = logits.dims();
    let log_probs = log_softmax(logits.reshape([batch * len, vocab]), 1);
    let picked = log_probs
        .gather(1, targets.reshape([batch * len, 1]))
        .reshape([batch * len]);
    let weights = weights.reshape([batch * len]);
    let count = weights.clone().sum().clamp_min(1.0);
    (picked * weights).sum().neg() / count
}

/// The loss of a training batch: [`weighted_cross_entropy`] when it has weights, else
/// [`cross_entropy`].
pub fn batch_loss(logits: Tensor<3>, batch: &crate::data::Batch) -> Tensor<1> {
    match &batch.weights {
        Some(weights) => weighted_cross_entropy(logits, batch.targets.clone(), weights.clone()),
        None => cross_entropy(logits, batch.targets.clone()),
    }
}

/// The loss of a batch from a zero state: inputs and targets `[B, T]`.
pub fn next_token_loss(model: &Rwkv, inputs: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [batch, _] = inputs.dims();
    let mut state = State::zeros(&model.config(), batch, &inputs.device());
    cross_entropy(model.forward(inputs, &mut state), targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// The weighted loss is the mean cross-entropy of the weighted positions, by hand.
    #[test]
    fn weighted_loss_counts_only_weighted_positions() {
        let device = Device::default();
        let values: Vec<f32> = (0..2 * 3 * 4).map(|i| ((i * 5 % 7) as f32) * 0.3).collect();
        let logits = Tensor::<3>::from_data(TensorData::new(values.clone(), [2, 3, 4]), &device);
        let targets = [1i64, 3, 0, 2, 2, 1];
        let weights = [0f32, 1.0, 1.0, 0.0, 0.0, 1.0];
        let by_hand = {
            let mut total = 0.0f64;
            for position in 0..6 {
                let row = &values[position * 4..position * 4 + 4];
                let max = row.iter().cloned().fold(f32::MIN, f32::max);
                let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
                let log_p = f64::from(row[targets[position] as usize] - max) - sum.ln();
                total -= f64::from(weights[position]) * log_p;
            }
            total / 3.0
        };
        let loss = weighted_cross_entropy(
            logits,
            Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [2, 3]), &device),
            Tensor::<2>::from_data(TensorData::new(weights.to_vec(), [2, 3]), &device),
        )
        .into_scalar::<f32>();
        assert!(
            (f64::from(loss) - by_hand).abs() < 1e-5,
            "{loss} vs {by_hand}"
        );
    }

    #[test]
    fn uniform_logits_cost_log_vocab() {
        let device = Device::default();
        let logits = Tensor::<3>::zeros([2, 3, 8], &device);
        let targets = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, 1, 2, 3, 4, 7], [2, 3]),
            &device,
        );
        let loss = cross_entropy(logits, targets).into_scalar::<f32>();
        assert!((loss - 8f32.ln()).abs() < 1e-6, "{loss}");
    }
}
