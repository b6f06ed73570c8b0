//! Loss and gradients of a batch, named and shaped like the official checkpoint: the
//! computation behind `rwkv-train grad`, which other tools use to check training parity.

use crate::loss::next_token_loss;
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use rwkv_burn::Rwkv;
use rwkv_burn::export::to_official;
use rwkv_burn::safetensors_io::NamedTensor;
use rwkv_burn::weights::{NamedParam, ParamNames};

/// The mean next-token loss of a batch and `d loss / d parameter` for every parameter.
#[derive(Debug, Clone)]
pub struct LossAndGrads {
    /// Mean cross-entropy over all `B * T` positions.
    pub loss: f32,
    /// `grad.<official key>`, each in the checkpoint's own shape.
    pub grads: Vec<NamedTensor>,
}

impl LossAndGrads {
    /// `loss` (shape `[1]`) followed by the gradients, ready to save.
    pub fn into_named(self) -> Vec<NamedTensor> {
        let mut out = vec![NamedTensor::new(
            "loss",
            TensorData::new(vec![self.loss], [1]),
        )];
        out.extend(self.grads);
        out
    }
}

/// Runs the batch from a zero state and back-propagates. The model must live on an autodiff
/// device (`device.autodiff()`); `names` comes from loading it with
/// [`load_model_named`](rwkv_burn::load::load_model_named).
pub fn loss_and_grads(
    model: &Rwkv,
    names: &ParamNames,
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
) -> LossAndGrads {
    let loss = next_token_loss(model, inputs, targets);
    let value = loss.clone().into_scalar::<f32>();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let grads = names
        .0
        .iter()
        .map(|param| NamedTensor::new(format!("grad.{}", param.name), official_grad(&grads, param)))
        .collect();
    LossAndGrads { loss: value, grads }
}

/// One parameter's gradient in the official layout; zeros for a parameter the loss does not
/// depend on (RWKV-7's layer-0 value residual).
fn official_grad(grads: &GradientsParams, param: &NamedParam) -> TensorData {
    let data = match param.rank {
        1 => grads.get::<1>(param.id).map(|g| g.into_data()),
        2 => grads.get::<2>(param.id).map(|g| g.into_data()),
        3 => grads.get::<3>(param.id).map(|g| g.into_data()),
        rank => panic!("parameter {} has unexpected rank {rank}", param.name),
    };
    match data {
        Some(data) => to_official(data, param),
        None => {
            let count: usize = param.stored_shape.iter().product();
            TensorData::new(vec![0f32; count], param.stored_shape.clone())
        }
    }
}
