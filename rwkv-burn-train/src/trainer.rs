//! The training loop: RWKV-LM's AdamW (weight decay on matrices only), linear warmup then
//! cosine decay of the learning rate, global-norm gradient clipping, periodic validation, and
//! checkpoints that resume exactly.

use crate::data::{Sampling, TrainData, WindowSampler};
use crate::loss::batch_loss;
use burn::module::Module;
use burn::optim::lr_scheduler::LrSchedulerConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Device, FloatDType, Int, Tensor};
use rwkv_burn::weights::ParamNames;
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
    /// Decoupled weight decay, applied to the weight matrices only (as RWKV-LM does).
    pub weight_decay: f32,
    /// Largest global norm of all gradients together (0 = no clipping).
    pub grad_clip: f32,
    /// Seed of the window sampler.
    pub seed: u64,
    /// Validate every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Micro-batches whose gradients are summed into each step (1 = none).
    pub accumulate: usize,
    /// How windows are drawn.
    pub sampling: Sampling,
    /// RWKV-LM's L2Wrap: push the largest logit of every position towards zero with weight
    /// `1e-4 / (B * T)`, which keeps logits from drifting upwards in long training.
    pub l2wrap: bool,
    /// Precision of the forward and backward passes: `None` for f32, or bf16/f16 (mixed
    /// precision: f32 master weights and optimizer, activations and matmuls in the half type,
    /// WKV state math and the loss in f32).
    pub compute_dtype: Option<FloatDType>,
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
            accumulate: 1,
            sampling: Sampling::Epoch,
            l2wrap: true,
            compute_dtype: None,
        }
    }
}

impl TrainConfig {
    /// The learning-rate schedule as Burn schedulers: linear warmup from `lr / 10` to `lr`
    /// over `warmup` steps, then cosine annealing to `lr_final` at the last step.
    pub fn lr_scheduler(&self) -> Result<ModuleLrScheduler, TrainerError> {
        // The cosine's last point (lr_final) falls on the run's last step.
        let decay_steps = self.steps.saturating_sub(self.warmup + 1).max(1);
        let cosine =
            CosineAnnealingLrSchedulerConfig::new(self.lr, decay_steps).with_min_lr(self.lr_final);
        let scheduler = if self.warmup == 0 {
            cosine.init()
        } else {
            SequentialLrSchedulerConfig::new(
                vec![
                    LrSchedulerConfig::Linear(LinearLrSchedulerConfig::new(
                        self.lr / 10.0,
                        self.lr,
                        self.warmup,
                    )),
                    LrSchedulerConfig::Cosine(cosine),
                ],
                vec![self.warmup],
            )
            .init()
        };
        scheduler.map_err(|e| {
            TrainerError::Schedule(format!(
                "lr {} and lr_final {} with {} warmup steps: {e}",
                self.lr, self.lr_final, self.warmup
            ))
        })
    }
}

/// RWKV-LM's L2Wrap as a loss term: its gradient is `1e-4 / (B * T) * max` on each position's
/// largest logit (the forward value is negligible and not reported).
fn l2wrap(logits: burn::tensor::Tensor<3>) -> burn::tensor::Tensor<1> {
    let [batch, len, _] = logits.dims();
    let factor = 1e-4 / (batch * len) as f32;
    let max = logits.max_dim(2);
    (max.clone() * max).sum().mul_scalar(factor / 2.0)
}

/// What one step reports.
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

/// What a run trains: a module whose parameters the optimizer updates, and how it turns a
/// batch of tokens into logits. The whole model ([`Rwkv`]) or, with the model frozen, its
/// initial state ([`crate::state_tuning::StateTuning`]).
pub trait Tunable: Module {
    /// Logits `[B, T, V]` of `inputs` `[B, T]`, each sequence starting from the state this
    /// run starts from; the forward and backward in `compute_dtype` (`None`: f32).
    fn logits(&self, inputs: Tensor<2, Int>, compute_dtype: Option<FloatDType>) -> Tensor<3>;
}

impl Tunable for Rwkv {
    fn logits(&self, inputs: Tensor<2, Int>, compute_dtype: Option<FloatDType>) -> Tensor<3> {
        let [batch, _] = inputs.dims();
        let mut state = State::zeros(&self.config(), batch, &inputs.device());
        forward_in(self, inputs, &mut state, compute_dtype)
    }
}

/// `model`'s logits (f32) in `compute_dtype`: a model held in f32 (the master copy of full
/// training) is cast for the pass; a frozen base already held in that type (LoRA and state
/// tuning keep it so, to halve its memory) is used as it is.
pub fn forward_in(
    model: &Rwkv,
    inputs: Tensor<2, Int>,
    state: &mut State,
    compute_dtype: Option<FloatDType>,
) -> Tensor<3> {
    let held = model.emb.dtype();
    match compute_dtype {
        // A half-held base computes in its type whatever is asked; the logits come back f32.
        None if held != burn::tensor::DType::F32 => {
            model.forward(inputs, state).cast(FloatDType::F32)
        }
        None => model.forward(inputs, state),
        Some(dtype) if held == dtype.into() => model.forward(inputs, state).cast(FloatDType::F32),
        Some(dtype) => model
            .clone()
            .cast(dtype)
            .forward(inputs, state)
            .cast(FloatDType::F32),
    }
}

/// Mean next-token loss over the validation data (no gradients): over every window's
/// positions, or over the positions a sample's mask counts.
pub fn validation_loss<M: Tunable>(
    model: &M,
    data: &dyn TrainData,
    batch: usize,
    ctx: usize,
    device: &Device,
) -> f32 {
    let inner = model.valid();
    let device = device.clone().without_autodiff();
    let mut total = 0.0f64;
    let mut count = 0f64;
    for b in data.validation(batch, ctx, &device) {
        let [rows, _] = b.inputs.dims();
        let weight = match &b.weights {
            Some(w) => f64::from(w.clone().sum().into_scalar::<f32>()),
            None => rows as f64,
        };
        let loss = batch_loss(inner.logits(b.inputs.clone(), None), &b).into_scalar::<f32>();
        total += f64::from(loss) * weight;
        count += weight;
    }
    (total / count.max(1.0)) as f32
}

/// The state of a run besides the model: optimizer moments, learning-rate schedule, sampler
/// position, step count. Saved next to the model, it lets a run continue exactly where it
/// stopped.
pub struct Trainer {
    /// The run's settings.
    pub config: TrainConfig,
    optimizer: ModuleOptimizer,
    scheduler: ModuleLrScheduler,
    sampler: WindowSampler,
    /// Steps completed.
    pub step: usize,
}

/// A trainer could not be set up or restored.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// Burn's schedulers refused the learning-rate settings (e.g. `lr` above 1 or
    /// `lr_final` above `lr`).
    #[error("invalid learning-rate schedule: {0}")]
    Schedule(String),
    /// The saved optimizer state does not fit this model.
    #[error("cannot restore the optimizer state: {0}")]
    Resume(String),
}

impl Trainer {
    /// A run at step 0 of the model whose parameters `names` lists.
    pub fn new(config: TrainConfig, names: &ParamNames) -> Result<Self, TrainerError> {
        let sampler = WindowSampler::with_mode(config.sampling, config.seed);
        Ok(Self {
            optimizer: crate::optimizer::adamw(names, config.weight_decay),
            scheduler: config.lr_scheduler()?,
            sampler,
            step: 0,
            config,
        })
    }

    /// A run restored from [`Trainer::optimizer_bytes`], [`Trainer::sampler_state`] and the
    /// step count.
    pub fn resume(
        config: TrainConfig,
        names: &ParamNames,
        optimizer: Vec<u8>,
        sampler_state: u64,
        step: usize,
    ) -> Result<Self, TrainerError> {
        let mut trainer = Self::new(config, names)?;
        trainer.optimizer = trainer
            .optimizer
            .from_bytes(Bytes::from_bytes_vec(optimizer))
            .map_err(|e| TrainerError::Resume(format!("{e:?}")))?;
        trainer.sampler = WindowSampler::from_state(trainer.config.sampling, sampler_state);
        // The schedule is a function of the step count: replaying it restores it exactly.
        for _ in 0..step {
            trainer.scheduler.step();
        }
        trainer.step = step;
        Ok(trainer)
    }

    /// The optimizer state (burnpack bytes).
    pub fn optimizer_bytes(&self) -> Vec<u8> {
        self.optimizer
            .into_bytes()
            .expect("optimizer state serialises")
            .to_vec()
    }

    /// The sampler's position.
    pub fn sampler_state(&self) -> u64 {
        self.sampler.state()
    }

    /// Trains `model` (on an autodiff device) from the current step to `config.steps`.
    /// `report` hears every step; `checkpoint` gets the model and trainer after every
    /// validation, to save them.
    pub fn run<M: Tunable>(
        &mut self,
        mut model: M,
        corpus: &dyn TrainData,
        device: &Device,
        report: &mut dyn FnMut(&StepReport),
        checkpoint: &mut dyn FnMut(&M, &Trainer),
    ) -> M {
        let config = self.config.clone();
        let micro = config.accumulate.max(1);
        while self.step < config.steps {
            let mut accumulator = GradientsAccumulator::new();
            let mut value = 0.0;
            for _ in 0..micro {
                let batch = corpus.batch(&mut self.sampler, config.batch, config.ctx, device);
                let logits = model.logits(batch.inputs.clone(), config.compute_dtype);
                let loss = batch_loss(logits.clone(), &batch);
                value += loss.clone().into_scalar::<f32>() / micro as f32;
                let objective = if config.l2wrap {
                    loss + l2wrap(logits)
                } else {
                    loss
                };
                let objective = objective.div_scalar(micro as f32);
                let grads = GradientsParams::from_grads(objective.backward(), &model);
                accumulator.accumulate(&model, grads);
            }
            let grads = accumulator.grads();
            let (grads, _) = if config.grad_clip > 0.0 {
                crate::optimizer::clip_global_norm(&model, grads, config.grad_clip)
            } else {
                (grads, 0.0)
            };
            let lr = self.scheduler.step();
            model = self.optimizer.step(lr.clone(), model, grads);
            let lr = lr.base();
            self.step += 1;
            let last = self.step == config.steps;
            let validate =
                last || (config.eval_every > 0 && self.step.is_multiple_of(config.eval_every));
            let valid_loss =
                validate.then(|| validation_loss(&model, corpus, config.batch, config.ctx, device));
            report(&StepReport {
                step: self.step,
                loss: value,
                lr,
                valid_loss,
            });
            if validate {
                checkpoint(&model, self);
            }
        }
        model
    }
}

/// Trains `model` (on an autodiff device) from scratch and returns it; `report` hears every step.
pub fn train<M: Tunable>(
    model: M,
    names: &ParamNames,
    corpus: &dyn TrainData,
    config: &TrainConfig,
    device: &Device,
    report: &mut dyn FnMut(&StepReport),
) -> Result<M, TrainerError> {
    Ok(Trainer::new(config.clone(), names)?.run(model, corpus, device, report, &mut |_, _| {}))
}
