//! The training loop: AdamW with RWKV-LM's betas, linear warmup then cosine decay of the
//! learning rate, gradient clipping, periodic validation.

use crate::data::{TokenCorpus, WindowSampler, sequential_batches};
use crate::loss::cross_entropy;
use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Device;
use rwkv_burn::{Rwkv, State};

/// Settings of a training run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub ctx: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub lr_final: f64,
    /// Steps of linear warmup from `lr / 10`.
    pub warmup: usize,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Largest gradient norm (0 = no clipping).
    pub grad_clip: f32,
    /// Seed of the window sampler.
    pub seed: u64,
    /// Validate every this many steps (0 = only at the end).
    pub eval_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch: 8,
            ctx: 128,
            lr: 6e-4,
            lr_final: 6e-5,
            warmup: 50,
            weight_decay: 0.0,
            grad_clip: 1.0,
            seed: 0,
            eval_every: 100,
        }
    }
}

impl TrainConfig {
    /// Learning rate of `step` (0-based): warmup, then cosine to `lr_final`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            let t = (step + 1) as f64 / self.warmup as f64;
            return self.lr * (0.1 + 0.9 * t);
        }
        let span = (self.steps - self.warmup).max(1) as f64;
        let t = ((step - self.warmup) as f64 / span).min(1.0);
        self.lr_final + 0.5 * (self.lr - self.lr_final) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// What one step or validation reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// 1-based step number.
    pub step: usize,
    /// Training loss of this step's batch.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Validation loss, on steps that validate.
    pub valid_loss: Option<f32>,
}

/// Mean next-token loss over the validation tokens (no gradients).
pub fn validation_loss(
    model: &Rwkv,
    tokens: &[u32],
    batch: usize,
    ctx: usize,
    device: &Device,
) -> f32 {
    let inner = model.valid();
    let device = device.clone().without_autodiff();
    let mut total = 0.0f64;
    let mut count = 0usize;
    for b in sequential_batches(tokens, batch, ctx, &device) {
        let [rows, _] = b.inputs.dims();
        let mut state = State::zeros(&inner.config(), rows, &device);
        let loss =
            cross_entropy(inner.forward(b.inputs, &mut state), b.targets).into_scalar::<f32>();
        total += f64::from(loss) * rows as f64;
        count += rows;
    }
    (total / count.max(1) as f64) as f32
}

/// Trains `model` (on an autodiff device) and returns it; `report` hears every step.
pub fn train(
    model: Rwkv,
    corpus: &TokenCorpus,
    config: &TrainConfig,
    device: &Device,
    report: &mut dyn FnMut(&StepReport),
) -> Rwkv {
    train_with_checkpoints(model, corpus, config, device, report, &mut |_, _| {})
}

/// Like [`train`], also handing the model to `checkpoint` after every validation, so a long run
/// can save its progress.
pub fn train_with_checkpoints(
    mut model: Rwkv,
    corpus: &TokenCorpus,
    config: &TrainConfig,
    device: &Device,
    report: &mut dyn FnMut(&StepReport),
    checkpoint: &mut dyn FnMut(&Rwkv, usize),
) -> Rwkv {
    let mut adamw = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.99)
        .with_epsilon(1e-8)
        .with_weight_decay(config.weight_decay);
    if config.grad_clip > 0.0 {
        adamw = adamw.with_grad_clipping(Some(GradientClippingConfig::Norm(config.grad_clip)));
    }
    let mut optimizer = adamw.init();
    let mut sampler = WindowSampler::new(config.seed);
    let model_config = model.config();
    for step in 0..config.steps {
        let batch = sampler.batch(&corpus.train, config.batch, config.ctx, device);
        let mut state = State::zeros(&model_config, config.batch, device);
        let loss = cross_entropy(model.forward(batch.inputs, &mut state), batch.targets);
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = config.lr_at(step);
        model = optimizer.step(lr, model, grads);
        let last = step + 1 == config.steps;
        let validate = last || (config.eval_every > 0 && (step + 1) % config.eval_every == 0);
        let valid_loss = validate
            .then(|| validation_loss(&model, &corpus.valid, config.batch, config.ctx, device));
        report(&StepReport {
            step: step + 1,
            loss: value,
            lr,
            valid_loss,
        });
        if validate {
            checkpoint(&model, step + 1);
        }
    }
    model
}
