//! RWKV-LM's optimizer setup: AdamW (betas 0.9/0.99, eps 1e-8) with weight decay only on the
//! weight matrices, and gradient clipping by the norm of all gradients together.
//!
//! Burn's own `GradientClipping::Norm` clips each tensor by its own norm; RWKV-LM (through
//! PyTorch Lightning's `gradient_clip_val`) scales every gradient by one factor computed from
//! the global norm, which keeps the direction of the whole update. That is done here.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use rwkv_burn::weights::ParamNames;

/// Whether RWKV-LM decays a parameter: a `.weight` with at least two dimensions larger than
/// one (embedding, head and projection matrices; not norms, mixes, decays or LoRA factors).
pub fn decays(name: &str, stored_shape: &[usize]) -> bool {
    name.ends_with(".weight") && stored_shape.iter().filter(|&&d| d > 1).count() >= 2
}

/// AdamW over every parameter of `names`, with `weight_decay` applied to the matrices only.
pub fn adamw(names: &ParamNames, weight_decay: f32) -> ModuleOptimizer {
    let config = || {
        AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.99)
            .with_epsilon(1e-8)
    };
    let plain = config().with_weight_decay(0.0).init();
    if weight_decay == 0.0 {
        return plain;
    }
    let decayed: Vec<ParamId> = names
        .0
        .iter()
        .filter(|p| decays(&p.name, &p.stored_shape))
        .map(|p| p.id)
        .collect();
    let decaying = config().with_weight_decay(weight_decay).build();
    plain.with_group(ParamGroup::from_ids(decayed), decaying, None)
}

/// Sums the squares of every gradient of the model's float parameters.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let sum = grad.square().sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + sum,
                None => sum,
            });
        }
    }
}

/// Scales every gradient by one factor.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f32,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, grad.mul_scalar(self.factor));
        }
    }
}

/// Clips the gradients of `model` so their global L2 norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`), returning them and the norm before clipping.
pub fn clip_global_norm<M: Module>(
    model: &M,
    mut grads: GradientsParams,
    max_norm: f32,
) -> (GradientsParams, f32) {
    let mut norm = SquaredNorm {
        grads: &grads,
        total: None,
    };
    model.visit(&mut norm);
    let Some(total) = norm.total else {
        return (grads, 0.0);
    };
    let total = total.into_scalar::<f32>().sqrt();
    let factor = max_norm / (total + 1e-6);
    if max_norm > 0.0 && factor < 1.0 {
        model.visit(&mut Scale {
            grads: &mut grads,
            factor,
        });
    }
    (grads, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use rwkv_burn::{DeviceSpec, Rwkv, Version, presets::config_for};

    /// A gradient of `value` everywhere for every parameter.
    struct Fill<'a> {
        grads: &'a mut GradientsParams,
        value: f32,
    }

    impl ModuleVisitor for Fill<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let like = param.val().inner();
            self.grads
                .register(param.id, like.zeros_like().add_scalar(self.value));
        }
    }

    /// Every parameter's values, by official name.
    fn values(model: &Rwkv, names: &ParamNames) -> Vec<(String, TensorData)> {
        rwkv_burn::export::official_tensors(model, names)
            .into_iter()
            .map(|t| (t.name, t.data))
            .collect()
    }

    fn model() -> (Rwkv, ParamNames) {
        let device = DeviceSpec::available()[0].device().unwrap().autodiff();
        let mut config = config_for(Version::V7, 1, 64);
        config.vocab_size = 256;
        rwkv_burn::init::training_model(&config, 5, &device).unwrap()
    }

    #[test]
    fn weight_decay_shrinks_the_matrices_and_nothing_else() {
        let (model, names) = model();
        let before = values(&model, &names);
        let mut grads = GradientsParams::new();
        model.visit(&mut Fill {
            grads: &mut grads,
            value: 0.0,
        });
        // With zero gradients Adam's update is zero: only the decay moves a parameter.
        let (lr, wd) = (0.1, 0.5);
        let mut optimizer = adamw(&names, wd);
        let model = optimizer.step(lr, model, grads);
        let after = values(&model, &names);
        let shapes: std::collections::HashMap<_, _> = names
            .0
            .iter()
            .map(|p| (p.name.clone(), p.stored_shape.clone()))
            .collect();
        let mut decayed = 0;
        for ((name, old), (_, new)) in before.iter().zip(&after) {
            let scale = if decays(name, &shapes[name]) {
                decayed += 1;
                1.0 - (lr * wd as f64) as f32
            } else {
                1.0
            };
            let expected: Vec<f32> = old.iter::<f32>().map(|x| x * scale).collect();
            let got: Vec<f32> = new.iter::<f32>().collect();
            for (e, g) in expected.iter().zip(&got) {
                assert!(
                    (e - g).abs() <= 1e-6 * (1.0 + e.abs()),
                    "{name}: {e} vs {g}"
                );
            }
        }
        assert!(decayed >= 3, "emb, head and the projections decay");
    }

    #[test]
    fn clipping_scales_all_gradients_to_the_global_norm() {
        let (model, _) = model();
        let mut grads = GradientsParams::new();
        model.visit(&mut Fill {
            grads: &mut grads,
            value: 1.0,
        });
        let count = model.num_params() as f32;
        let (grads, norm) = clip_global_norm(&model, grads, 2.0);
        assert!(
            (norm - count.sqrt()).abs() < 1e-3 * norm,
            "{norm} vs {}",
            count.sqrt()
        );
        let (_, clipped) = clip_global_norm(&model, grads, f32::INFINITY);
        assert!((clipped - 2.0).abs() < 1e-4, "{clipped}");
    }

    #[test]
    fn decays_only_weight_matrices() {
        assert!(decays("emb.weight", &[65536, 768]));
        assert!(decays("blocks.0.att.key.weight", &[768, 768]));
        assert!(decays("head.weight", &[65536, 768]));
        assert!(!decays("blocks.0.ln1.weight", &[768]));
        assert!(!decays("blocks.0.att.time_mix_k", &[1, 1, 768]));
        assert!(!decays("blocks.0.att.w1", &[768, 64]));
        assert!(!decays("blocks.0.att.time_maa_w1", &[768, 160]));
        assert!(!decays("blocks.0.att.ln_x.weight", &[768]));
    }
}
