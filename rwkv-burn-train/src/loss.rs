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
