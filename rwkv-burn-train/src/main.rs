//! The `rwkv-train` command-line tool.

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor};
use clap::{Args, Parser, Subcommand};
use rwkv_burn::files::{self, Inputs};
use rwkv_burn::{DeviceSpec, Rwkv, load_model, safetensors_io};
use rwkv_burn_infer::tool;
use rwkv_burn_infer::{note, outln};
use rwkv_burn_train::run::{MetricsRow, RunDir, curves, parse_metrics};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Train RWKV models with Burn: prepare data, train from scratch or continue a checkpoint,
/// compute losses and gradients of a batch, and export to the official formats.
#[derive(Parser)]
#[command(name = "rwkv-train", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the mean next-token cross-entropy of a batch, from a zero state.
    Loss(BatchArgs),
    /// Save the loss of a batch and the gradient of every parameter (`grad.<official key>`,
    /// each in the checkpoint's own shape) as safetensors.
    Grad(GradArgs),
    /// Train a model from scratch (RWKV-LM initialisation) or continue a checkpoint on a text
    /// file or binidx dataset; writes official-format safetensors and a metrics CSV.
    Train(Box<TrainArgs>),
    /// Tokenize text (a plain file, or JSON lines with a "text" field) into a binidx dataset.
    Prepare(PrepareArgs),
    /// Draw the loss curve of a run's metrics.csv as a PNG.
    Plot(PlotArgs),
    /// Write a model in the official layout, as safetensors or as a `.pth` that the official
    /// `rwkv` package and `torch.load(weights_only=True)` accept (chosen by the extension).
    Export(ExportArgs),
    /// Fold LoRA adapters (`train --tune lora`) into their model's weights and write the
    /// result as an ordinary official checkpoint (`.pth` or safetensors, by the extension).
    Merge(MergeArgs),
}

#[derive(Args)]
struct MergeArgs {
    /// The model the adapters were trained on.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// The adapters: `adapter.safetensors` of a LoRA run, or the run's folder.
    #[arg(long, value_name = "ADAPTER")]
    lora: PathBuf,
    /// The file to write: `*.safetensors` or `*.pth`.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Precision of the written weights: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: rwkv_burn::export::StorageDType,
    /// Device the weights pass through (flex, ndarray, ... as compiled in).
    #[arg(long, default_value = "flex")]
    device: DeviceSpec,
}

fn merge(args: MergeArgs) -> Result<()> {
    if rwkv_burn::export::ExportFormat::from_path(&args.out).is_none() {
        bail!(
            "{}: name the output *.safetensors or *.pth",
            args.out.display()
        );
    }
    let lora = match args.lora.is_dir() {
        true => args.lora.join(rwkv_burn_train::run::ADAPTER),
        false => args.lora.clone(),
    };
    files::check_output(
        &args.out,
        &Inputs::new().protect(&args.model).protect(&lora),
    )?;
    let device = args.device.device()?;
    let (config, mut model, names) = rwkv_burn::load::load_model_named(&args.model, &device)?;
    let spec = rwkv_burn::adapters::load(&mut model, &lora)?;
    let merged = rwkv_burn::adapters::merge(&mut model)?;
    let tensors = rwkv_burn::export::official_tensors(&model, &names);
    rwkv_burn::export::write_official(&args.out, &tensors, args.dtype)?;
    note!(
        "merged {merged} adapters (rank {}, alpha {}) into {} ({}, {} layers) and wrote {}",
        spec.rank,
        spec.alpha,
        args.model.display(),
        config.version,
        config.n_layer,
        args.out.display()
    );
    Ok(())
}

#[derive(Args)]
struct PlotArgs {
    /// metrics.csv written by `train`.
    #[arg(long, value_name = "CSV")]
    metrics: PathBuf,
    /// The PNG to write.
    #[arg(long, value_name = "PNG")]
    out: PathBuf,
}

#[derive(Args)]
struct ExportArgs {
    /// A checkpoint (`.pth`, `.safetensors`, a Hugging Face folder) or a `train` output folder,
    /// whose latest checkpoint is exported.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// The file to write: `*.safetensors` or `*.pth`.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Precision of the written weights: f32, f16 or bf16 (official releases use bf16).
    #[arg(long, default_value = "f32")]
    dtype: rwkv_burn::export::StorageDType,
    /// Device the weights pass through on their way (flex, ndarray, ... as compiled in).
    #[arg(long, default_value = "flex")]
    device: DeviceSpec,
}

/// `--tune` of `train`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Tune {
    /// Every weight of the model.
    Full,
    /// The initial WKV state only; the model frozen.
    State,
    /// LoRA adapters; the model frozen.
    Lora,
}

/// `--precision` of `train`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Precision {
    /// Everything in f32.
    F32,
    /// bfloat16 compute, f32 master weights.
    Bf16,
    /// IEEE half compute, f32 master weights.
    F16,
}

impl Precision {
    /// The compute dtype of a mixed-precision run (`None`: plain f32).
    fn compute_dtype(self) -> Option<burn::tensor::FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(burn::tensor::FloatDType::BF16),
            Precision::F16 => Some(burn::tensor::FloatDType::F16),
        }
    }
}

fn export(args: ExportArgs) -> Result<()> {
    if rwkv_burn::export::ExportFormat::from_path(&args.out).is_none() {
        bail!(
            "{}: name the output *.safetensors or *.pth",
            args.out.display()
        );
    }
    let source = RunDir::resolve_model(&args.model)?;
    files::check_output(
        &args.out,
        // The checkpoint read (a run folder's latest model, not the folder: exporting into
        // the run's folder is fine).
        &Inputs::new().protect(&source),
    )?;
    let device = args.device.device()?;
    let (config, model, names) = rwkv_burn::load::load_model_named(&source, &device)?;
    let tensors = rwkv_burn::export::official_tensors(&model, &names);
    rwkv_burn::export::write_official(&args.out, &tensors, args.dtype)?;
    note!(
        "exported {} ({}, {} layers × {}) to {} as {:?}",
        source.display(),
        config.version,
        config.n_layer,
        config.n_embd,
        args.out.display(),
        args.dtype
    );
    Ok(())
}

fn plot(args: PlotArgs) -> Result<()> {
    files::check_output(&args.out, &Inputs::new().protect(&args.metrics))?;
    let bytes = files::read_input(&args.metrics, MAX_TEXT_BYTES).context("reading the metrics")?;
    let text = String::from_utf8_lossy(&bytes);
    let (train, valid) = curves(&parse_metrics(&text));
    if train.is_empty() {
        bail!("{}: no metrics lines", args.metrics.display());
    }
    rwkv_burn_train::plot::write_loss_curve(&args.out, &train, &valid)?;
    Ok(())
}

#[derive(Args)]
struct PrepareArgs {
    /// Input: `.jsonl`, one document per line: `{"text": ...}`, or a conversation
    /// `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`, rendered
    /// with the G1 chat template and trained on the assistant's turns only (a loss mask is
    /// written to PREFIX.mask, and training takes each conversation whole); any other file
    /// is one document.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Tokenizer: `bytes` (byte-level), `world` (the embedded RWKV World vocabulary), or a
    /// vocabulary file (`rwkv_vocab_v20230424.txt`, `20B_tokenizer.json`).
    #[arg(long, default_value = "bytes")]
    vocab: String,
    /// Output prefix: writes PREFIX.bin and PREFIX.idx.
    #[arg(long, value_name = "PREFIX")]
    out: PathBuf,
}

#[derive(Args)]
struct TrainArgs {
    /// Text file, or binidx dataset (PREFIX, PREFIX.bin or PREFIX.idx), to train on; its last
    /// --valid-fraction is held out for validation.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Tokenizer: `bytes` (byte-level, vocabulary 256), `world` (the embedded RWKV World
    /// vocabulary; models of 65536 tokens), or a vocabulary file. A fresh model's vocabulary
    /// is the tokenizer's, rounded up to a multiple of 64.
    #[arg(long, default_value = "bytes")]
    vocab: String,
    /// Continue from this checkpoint instead of a fresh model.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["preset", "version", "layers", "embd"])]
    init_from: Option<PathBuf>,
    /// What to train: `full` (every weight), `lora` (LoRA adapters on the projections, the
    /// model frozen; writes DIR/adapter.safetensors, for `rwkv --lora` and `rwkv-train
    /// merge`) or `state` (only the initial WKV state of every layer, the model frozen, as
    /// RWKV-PEFT's `--peft state`; RWKV-5 or later). Both need --init-from. State tuning writes DIR/state.safetensors (for `rwkv --state-in` and
    /// `rwkv serve --state-dir`) and DIR/time_state.pth (RWKV-PEFT's layout, for Ai00,
    /// web-rwkv and ChatRWKV). It wants a much larger --lr than full training (RWKV-PEFT
    /// uses about 1).
    #[arg(long, value_enum, default_value_t = Tune::Full)]
    tune: Tune,
    /// Rank of the LoRA adapters (`--tune lora`).
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
    /// LoRA alpha: the adapters' term is scaled by alpha / rank.
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f32,
    /// Projections that get adapters: att (every time-mix projection), ffn (every
    /// channel-mix projection), head, or single kinds such as att.key, ffn.value; comma
    /// separated.
    #[arg(long, default_value = "att,ffn")]
    lora_targets: String,
    /// Gradient checkpointing: recompute the cheap (memory-bound) operations' outputs in the
    /// backward pass instead of keeping them (Burn's balanced checkpointing), trading time
    /// for memory.
    #[arg(long)]
    grad_cp: bool,
    /// Shape of a released model (e.g. 7-0.1b) instead of --version/--layers/--embd.
    #[arg(long, conflicts_with_all = ["layers", "embd"])]
    preset: Option<String>,
    /// RWKV generation of a fresh model: 4, 5, 6 or 7.
    #[arg(long, default_value_t = 7)]
    version: u8,
    /// Blocks of a fresh model.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Width of a fresh model (a multiple of the head size 64 for versions 5-7).
    #[arg(long, default_value_t = 128)]
    embd: usize,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 128)]
    ctx: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = 1e-4)]
    lr_final: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Decoupled (AdamW) weight decay, applied as RWKV-LM does to the weight matrices only
    /// (embedding, projections, head); RWKV-LM's recipes use 0 to 0.1.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Micro-batches accumulated into each optimizer step.
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// How training windows are drawn: `epoch` (RWKV-LM's: every window once per epoch, in a
    /// scrambled order) or `random`.
    #[arg(long, default_value = "epoch", value_parser = ["epoch", "random"])]
    sampling: String,
    /// Turn off RWKV-LM's L2Wrap logit regulariser.
    #[arg(long)]
    no_l2wrap: bool,
    /// Precision of the forward and backward passes: f32, or bf16/f16 mixed precision (f32
    /// master weights and optimizer; activations in the half type; WKV state and loss in f32).
    /// LoRA and state tuning hold their frozen base in the half type (no f32 copy), the
    /// adapters or state in f32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Clip the global norm of all gradients together to this (0 = off), as RWKV-LM does.
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f32,
    /// Fraction of the text held out for validation.
    #[arg(long, default_value_t = 0.05)]
    valid_fraction: f32,
    /// Validate, and save the model to DIR/model.safetensors, every this many steps.
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Random seed (initialisation and batch sampling).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device to run on (flex, ndarray, ... as compiled in); autodiff is added.
    #[arg(long, default_value = "flex")]
    device: DeviceSpec,
    /// Output folder: model.safetensors (official format), metrics.csv, loss.png (the loss
    /// curve), and checkpoints/ (model, optimizer state and sampler position at every
    /// validation).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint: give the same command again with
    /// --resume. The continued run computes exactly what the uninterrupted one would have.
    #[arg(long)]
    resume: bool,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 2)]
    keep_last: usize,
}

impl TrainArgs {
    /// Checks every number before anything is sized by it.
    fn check(&self) -> Result<(), String> {
        use rwkv_burn::config::{MAX_LAYERS, MAX_WIDTH};
        let counts = [
            ("--layers", self.layers, 1, MAX_LAYERS),
            ("--embd", self.embd, 1, MAX_WIDTH),
            ("--ctx", self.ctx, 1, 1 << 20),
            ("--batch", self.batch, 1, 1 << 16),
            ("--steps", self.steps, 1, 1 << 40),
            ("--warmup", self.warmup, 0, 1 << 40),
            ("--accumulate", self.accumulate, 1, 1 << 16),
            ("--eval-every", self.eval_every, 1, 1 << 40),
            ("--keep-last", self.keep_last, 1, 1 << 20),
        ];
        for (flag, value, lo, hi) in counts {
            if !(lo..=hi).contains(&value) {
                return Err(format!("{flag} is {value}; it must be {lo} to {hi}"));
            }
        }
        let tokens = self.batch as u128 * self.ctx as u128 * self.accumulate as u128;
        if tokens > 1 << 32 {
            return Err(format!(
                "--batch x --ctx x --accumulate is {tokens} tokens a step; at most 2^32"
            ));
        }
        // Each value with the text it was given as (an f32 shown as f64 would read 0.8999999761).
        let reals = [
            ("--lr", self.lr, self.lr.to_string(), 0.0, 1.0),
            (
                "--lr-final",
                self.lr_final,
                self.lr_final.to_string(),
                0.0,
                1.0,
            ),
            (
                "--weight-decay",
                f64::from(self.weight_decay),
                self.weight_decay.to_string(),
                0.0,
                10.0,
            ),
            (
                "--grad-clip",
                f64::from(self.grad_clip),
                self.grad_clip.to_string(),
                0.0,
                1e6,
            ),
            (
                "--valid-fraction",
                f64::from(self.valid_fraction),
                self.valid_fraction.to_string(),
                0.0,
                0.5,
            ),
        ];
        for (flag, value, shown, lo, hi) in reals {
            if !value.is_finite() || !(lo..=hi).contains(&value) {
                return Err(format!("{flag} is {shown}; it must be {lo} to {hi}"));
            }
        }
        Ok(())
    }

    /// Everything that determines the run's numbers, to refuse resuming with other settings.
    fn fingerprint(&self) -> String {
        format!(
            "data={} vocab={} init={:?} preset={:?} v={} layers={} embd={} ctx={} batch={} steps={} lr={} lr_final={} warmup={} wd={} clip={} valid={} eval={} seed={}",
            self.data.display(),
            self.vocab,
            self.init_from,
            self.preset,
            self.version,
            self.layers,
            self.embd,
            self.ctx,
            self.batch,
            self.steps,
            self.lr,
            self.lr_final,
            self.warmup,
            self.weight_decay,
            self.grad_clip,
            self.valid_fraction,
            self.eval_every,
            self.seed
        ) + &match self.precision {
            Precision::F32 => String::new(),
            other => format!(" precision={other:?}"),
        } + &match self.tune {
            Tune::Full => String::new(),
            Tune::State => " tune=state".to_string(),
            Tune::Lora => format!(
                " tune=lora r={} alpha={} targets={}",
                self.lora_rank, self.lora_alpha, self.lora_targets
            ),
        } + match self.grad_cp {
            false => "",
            true => " grad_cp",
        }
    }
}

#[derive(Args)]
struct BatchArgs {
    /// Checkpoint: an official .pth, a safetensors file, or a Hugging Face model folder.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// safetensors file holding `train_input_ids` and `train_targets`, both [B, T] integers.
    #[arg(long, value_name = "BATCH.safetensors")]
    batch: PathBuf,
    /// Device to run on (flex, ndarray, ... as compiled in).
    #[arg(long, default_value = "flex")]
    device: DeviceSpec,
}

#[derive(Args)]
struct GradArgs {
    #[command(flatten)]
    batch: BatchArgs,
    /// Output file: `loss` [1] and `grad.<key>` for every parameter.
    #[arg(long, value_name = "OUT.safetensors")]
    out: PathBuf,
}

/// Reads `train_input_ids` and `train_targets` and checks them against the model.
fn read_batch(
    path: &Path,
    model: &Rwkv,
    device: &Device,
) -> Result<(Tensor<2, Int>, Tensor<2, Int>)> {
    let tensors = safetensors_io::read(path)?;
    let ids = |name: &str| -> Result<Tensor<2, Int>> {
        let t = tensors
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("{}: no tensor '{name}'", path.display()))?;
        let shape = t.data.shape().to_vec();
        let [batch, len] = shape[..] else {
            bail!("{}: '{name}' must be [B, T], is {shape:?}", path.display());
        };
        if batch == 0 || len == 0 {
            bail!(
                "{}: '{name}' is {shape:?}; a batch needs at least one sequence of one token",
                path.display()
            );
        }
        let values = t
            .data
            .clone()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
        let as_u32: Vec<u32> = values
            .iter()
            .map(|&v| u32::try_from(v).unwrap_or(u32::MAX))
            .collect();
        model
            .check_tokens(&as_u32)
            .with_context(|| format!("'{name}'"))?;
        Ok(rwkv_burn::model::token_tensor(&as_u32, batch, device))
    };
    let (inputs, targets) = (ids("train_input_ids")?, ids("train_targets")?);
    if inputs.dims() != targets.dims() {
        bail!(
            "train_input_ids {:?} and train_targets {:?} differ in shape",
            inputs.dims(),
            targets.dims()
        );
    }
    Ok((inputs, targets))
}

fn loss(args: BatchArgs) -> Result<()> {
    let device = args.device.device()?;
    let (_, model) = load_model(&args.model, &device)?;
    let (inputs, targets) = read_batch(&args.batch, &model, &device)?;
    let value =
        rwkv_burn_train::loss::next_token_loss(&model, inputs, targets).into_scalar::<f32>();
    outln!("{value}")?;
    Ok(())
}

fn grad(args: GradArgs) -> Result<()> {
    files::check_output(
        &args.out,
        &Inputs::new()
            .protect(&args.batch.model)
            .protect(&args.batch.batch),
    )?;
    let device = args.batch.device.device()?.autodiff();
    let (_, model, names) = rwkv_burn::load::load_model_named(&args.batch.model, &device)?;
    let (inputs, targets) = read_batch(&args.batch.batch, &model, &device)?;
    let out = rwkv_burn_train::grad::loss_and_grads(&model, &names, inputs, targets);
    safetensors_io::write(&args.out, &out.into_named())?;
    Ok(())
}

fn fresh_config(args: &TrainArgs, vocab: usize) -> Result<rwkv_burn::RwkvConfig> {
    let mut config = match &args.preset {
        Some(name) => {
            rwkv_burn::presets::preset(name).with_context(|| format!("unknown preset {name}"))?
        }
        None => {
            let version = match args.version {
                4 => rwkv_burn::Version::V4,
                5 => rwkv_burn::Version::V5 { minor: 2 },
                6 => rwkv_burn::Version::V6,
                7 => rwkv_burn::Version::V7,
                other => bail!("unknown RWKV version {other} (4, 5, 6 or 7)"),
            };
            let config = rwkv_burn::presets::config_for(version, args.layers, args.embd);
            if let Some(n) = config.head_size
                && !args.embd.is_multiple_of(n)
            {
                bail!(
                    "--embd {} must be a multiple of the head size {n}",
                    args.embd
                );
            }
            config
        }
    };
    config.vocab_size = vocab;
    Ok(config)
}

fn train(args: TrainArgs) -> Result<()> {
    use rwkv_burn_train::run::{ADAPTER, MODEL, STATE, TIME_STATE};
    use rwkv_burn_train::state_tuning::{InitialState, StateTuning};
    use rwkv_burn_train::trainer::TrainConfig;

    args.check().map_err(anyhow::Error::msg)?;
    if args.tune != Tune::Full && args.init_from.is_none() {
        bail!("--tune state and --tune lora tune a trained model: give it with --init-from");
    }
    let lora = match args.tune {
        Tune::Lora => Some(rwkv_burn::adapters::LoraSpec::new(
            args.lora_rank,
            args.lora_alpha,
            rwkv_burn::adapters::Targets::parse(&args.lora_targets)?,
        )?),
        _ => None,
    };
    let mut device = args.device.device()?.autodiff();
    // Burn computes in a type only where the device has its arithmetic: NVIDIA's Vulkan driver
    // stores bf16 but its shaders cannot add or multiply it (SPV_KHR_bfloat16), and CubeCL's
    // SPIR-V kernels in bf16 failed to compile there ("NVVM compilation failed", H200,
    // 2026-12-04), poisoning the device.
    if let Some(dtype) = args.precision.compute_dtype()
        && !device.supports_dtype(dtype)
    {
        bail!(
            "--precision {}: {} cannot compute in {dtype:?} (no arithmetic in that type on \
             this device); use --precision f32{}",
            format!("{:?}", args.precision).to_lowercase(),
            args.device,
            if device.supports_dtype(burn::tensor::FloatDType::F16) {
                " or f16"
            } else {
                ""
            }
        );
    }
    if args.grad_cp {
        device = device.gradient_checkpointing();
    }
    let tokenizer = tokenizer(&args.vocab)?;
    let fingerprint = args.fingerprint();
    let run = RunDir::new(&args.out);
    // A resumed run restarts from its latest complete checkpoint.
    let resume = match args.resume {
        true => Some(run.resume(&fingerprint)?),
        false => None,
    };
    let (config, model, names) = match (&resume, &args.init_from) {
        // A resumed full run continues the checkpoint's model; state tuning keeps its base.
        (Some(resume), _) if args.tune == Tune::Full => {
            rwkv_burn::load::load_model_named(resume.model_path(), &device)?
        }
        (_, Some(path)) => rwkv_burn::load::load_model_named(path, &device)?,
        (_, None) => {
            let vocab = rwkv_burn::tokenizer::model_vocab(tokenizer.as_ref());
            let config = fresh_config(&args, vocab)?;
            let (model, names) = rwkv_burn::init::training_model(&config, args.seed, &device)?;
            (config, model, names)
        }
    };
    let corpus = read_data(&args, tokenizer.as_ref(), config.vocab_size)?;
    let train_config = TrainConfig {
        steps: args.steps,
        batch: args.batch,
        ctx: args.ctx,
        lr: args.lr,
        lr_final: args.lr_final,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
        seed: args.seed,
        eval_every: args.eval_every,
        accumulate: args.accumulate,
        sampling: if args.sampling == "random" {
            rwkv_burn_train::data::Sampling::Random
        } else {
            rwkv_burn_train::data::Sampling::Epoch
        },
        l2wrap: !args.no_l2wrap,
        compute_dtype: args.precision.compute_dtype(),
    };
    let session = Session {
        args: &args,
        run: &run,
        fingerprint: &fingerprint,
        corpus: &corpus,
        device: &device,
    };
    match args.tune {
        Tune::Full => {
            note!(
                "training {} ({} layers, width {}, {} parameters) on {}, validating on {}",
                config.version,
                config.n_layer,
                config.n_embd,
                burn::module::Module::num_params(&model),
                corpus.train_size(),
                corpus.valid_size()
            );
            session.train(model, &names, train_config, resume, &mut |model, dir| {
                rwkv_burn::export::save_official(model, &names, &dir.join(MODEL))?;
                Ok(vec![MODEL])
            })?;
            note!("saved {}", run.model_path().display());
        }
        Tune::Lora => {
            let spec = lora.expect("checked above");
            // A frozen base needs no f32 master copy: with --precision bf16/f16 it is held
            // in that type (half the memory), the adapters in f32.
            let model = match args.precision.compute_dtype() {
                Some(dtype) => model.cast(dtype),
                None => model,
            };
            let mut model = burn::module::Module::freeze(model);
            let adapted = match &resume {
                Some(resume) => {
                    rwkv_burn::adapters::load(&mut model, &resume.file(ADAPTER))?;
                    rwkv_burn::adapters::adapter_tensors(&model).len() / 2
                }
                None => rwkv_burn::adapters::attach_fresh(&mut model, &spec, args.seed)?,
            };
            let trained: usize = rwkv_burn::adapters::adapter_tensors(&model)
                .iter()
                .map(|t| t.data.num_elements())
                .sum();
            note!(
                "training LoRA adapters (rank {}, alpha {}, {} projections, {} values) of {} ({} layers, width {}, frozen) on {}, validating on {}",
                spec.rank,
                spec.alpha,
                adapted,
                trained,
                config.version,
                config.n_layer,
                config.n_embd,
                corpus.train_size(),
                corpus.valid_size()
            );
            let names = rwkv_burn::weights::ParamNames::default();
            session.train(model, &names, train_config, resume, &mut |model, dir| {
                rwkv_burn::adapters::save(model, &spec, &dir.join(ADAPTER))
                    .map_err(|e| rwkv_burn_train::run::RunError::Output(e.to_string()))?;
                Ok(vec![ADAPTER])
            })?;
            note!("saved {}", run.root().join(ADAPTER).display());
        }
        Tune::State => {
            let start = match &resume {
                Some(resume) => {
                    let state = rwkv_burn::State::load(resume.file(STATE), &config, &device)?;
                    InitialState::from_state(&state, &config)?
                }
                None => InitialState::zeros(&config, &device)?,
            };
            let model = match args.precision.compute_dtype() {
                Some(dtype) => model.cast(dtype),
                None => model,
            };
            let tuning = StateTuning::new(model, start);
            note!(
                "tuning the initial state ({} values) of {} ({} layers, width {}, frozen) on {}, validating on {}",
                burn::module::Module::num_params(&tuning.state),
                config.version,
                config.n_layer,
                config.n_embd,
                corpus.train_size(),
                corpus.valid_size()
            );
            // The optimizer sees the state only: no weight is decayed.
            let names = rwkv_burn::weights::ParamNames::default();
            session.train(tuning, &names, train_config, resume, &mut |tuning, dir| {
                let state = tuning.state.to_state(&config);
                state.save(dir.join(STATE))?;
                let peft = rwkv_burn::time_state::to_time_state(&state, &config, 0)?;
                rwkv_burn::export::write_official(
                    &dir.join(TIME_STATE),
                    &peft,
                    rwkv_burn::export::StorageDType::F32,
                )?;
                Ok(vec![STATE, TIME_STATE])
            })?;
            note!(
                "saved {} and {}",
                run.root().join(STATE).display(),
                run.root().join(TIME_STATE).display()
            );
        }
    }
    Ok(())
}

/// A run's data: windows of a token stream, or whole samples with loss masks.
enum Data {
    Windows(rwkv_burn_train::data::TokenCorpus),
    Samples(rwkv_burn_train::sft::SampleCorpus),
}

impl Data {
    fn train_size(&self) -> String {
        match self {
            Data::Windows(c) => format!("{} tokens", c.train.len()),
            Data::Samples(c) => format!("{} samples", c.train.len()),
        }
    }

    fn valid_size(&self) -> String {
        match self {
            Data::Windows(c) => format!("{} tokens", c.valid.len()),
            Data::Samples(c) => format!("{} samples", c.valid.len()),
        }
    }
}

/// `--data`: a binidx dataset (with a loss mask from `prepare`: whole samples) or text.
fn read_data(
    args: &TrainArgs,
    tokenizer: &dyn rwkv_burn::tokenizer::Tokenizer,
    vocab: usize,
) -> Result<Data> {
    use rwkv_burn_train::sft::{SampleCorpus, mask_path};
    let (_, idx_path) = rwkv_burn_train::binidx::paths(&args.data);
    if !idx_path.is_file() {
        let text = files::read_input(&args.data, MAX_TEXT_BYTES).context("reading the data")?;
        let tokens = tokenizer.encode(&text)?;
        let corpus = rwkv_burn_train::data::TokenCorpus::split(
            tokens,
            args.valid_fraction,
            args.ctx,
            vocab,
        )?;
        return Ok(Data::Windows(corpus));
    }
    let binidx = rwkv_burn_train::binidx::Binidx::open(&args.data)?;
    let mask = mask_path(&args.data);
    if !mask.is_file() {
        let corpus = rwkv_burn_train::data::TokenCorpus::split(
            binidx.all_tokens(),
            args.valid_fraction,
            args.ctx,
            vocab,
        )?;
        return Ok(Data::Windows(corpus));
    }
    let bytes = files::read_input(&mask, MAX_TEXT_BYTES)
        .with_context(|| format!("reading {}", mask.display()))?;
    let samples = SampleCorpus::samples_from_files(binidx.documents(), &bytes)
        .with_context(|| mask.display().to_string())?;
    let corpus = SampleCorpus::split(samples, args.valid_fraction, args.ctx, vocab)
        .with_context(|| args.data.display().to_string())?;
    Ok(Data::Samples(corpus))
}

/// What every kind of training run shares: its settings, folder, data and device.
struct Session<'a> {
    args: &'a TrainArgs,
    run: &'a RunDir,
    fingerprint: &'a str,
    corpus: &'a Data,
    device: &'a burn::tensor::Device,
}

/// Writes a run's outputs into a checkpoint folder and names them.
type Outputs<'a, M> =
    dyn FnMut(&M, &Path) -> Result<Vec<&'static str>, rwkv_burn_train::run::RunError> + 'a;

impl Session<'_> {
    /// Runs `tuned` to the last step with a progress bar, metrics.csv, the loss curve and a
    /// checkpoint (`outputs`, optimizer, sampler) at every validation.
    fn train<M: rwkv_burn_train::trainer::Tunable>(
        &self,
        tuned: M,
        names: &rwkv_burn::weights::ParamNames,
        train_config: rwkv_burn_train::trainer::TrainConfig,
        resume: Option<rwkv_burn_train::run::Resume>,
        outputs: &mut Outputs<'_, M>,
    ) -> Result<M> {
        use indicatif::{ProgressBar, ProgressStyle};
        use rwkv_burn_train::trainer::Trainer;
        let args = self.args;
        let run = self.run;
        // Metrics up to the checkpoint survive a resume; later lines are recomputed.
        let (mut metrics, kept) = run.start_metrics(resume.as_ref())?;
        let bar = ProgressBar::new(args.steps as u64).with_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .expect("valid template"),
        );
        let mut trainer = match resume {
            Some(resume) => {
                note!("resuming at step {}", resume.step);
                Trainer::resume(
                    train_config,
                    names,
                    resume.optimizer,
                    resume.sampler_state,
                    resume.step,
                )?
            }
            None => Trainer::new(train_config, names)?,
        };
        bar.set_position(trainer.step as u64);
        let first_step = trainer.step;
        let start = std::time::Instant::now();
        let tokens_per_step = (args.batch * args.ctx * args.accumulate.max(1)) as f64;
        let mut failure: Option<anyhow::Error> = None;
        let mut last_valid = None;
        // The rows so far (kept rows of a resumed run included), redrawn at every checkpoint.
        let history = std::cell::RefCell::new(kept);
        let mut report = |r: &rwkv_burn_train::trainer::StepReport| {
            let done = (r.step - first_step) as f64;
            let row = MetricsRow::new(r, tokens_per_step * done / start.elapsed().as_secs_f64());
            if let Some(v) = r.valid_loss {
                last_valid = Some(v);
            }
            bar.set_message(format!(
                "loss {:.4} valid {} lr {:.2e} {:.0} tok/s",
                r.loss,
                last_valid.map_or("-".into(), |v| format!("{v:.4}")),
                r.lr,
                row.tokens_per_s
            ));
            bar.inc(1);
            if let Err(e) = metrics.write(&row) {
                failure.get_or_insert(e.into());
            }
            history.borrow_mut().push(row);
        };
        let mut save_failure: Option<anyhow::Error> = None;
        let mut checkpoint = |tuned: &M, trainer: &Trainer| {
            let mut write = |dir: &Path| outputs(tuned, dir);
            let saved = run.save_checkpoint(&mut write, trainer, self.fingerprint, args.keep_last);
            if let Err(e) = saved {
                save_failure.get_or_insert(e.into());
            }
            let (train, valid) = curves(&history.borrow());
            let curve = rwkv_burn_train::plot::write_loss_curve(&run.curve_path(), &train, &valid);
            if let Err(e) = curve {
                save_failure.get_or_insert(e.into());
            }
        };
        let data: &dyn rwkv_burn_train::data::TrainData = match self.corpus {
            Data::Windows(corpus) => corpus,
            Data::Samples(corpus) => corpus,
        };
        let tuned = trainer.run(tuned, data, self.device, &mut report, &mut checkpoint);
        bar.finish();
        if let Some(e) = failure.or(save_failure) {
            return Err(e);
        }
        Ok(tuned)
    }
}

/// `--vocab` of `prepare` and `train`.
fn tokenizer(vocab: &str) -> Result<Box<dyn rwkv_burn::tokenizer::Tokenizer>> {
    Ok(rwkv_burn::tokenizer::choose(Some(vocab), 0)?)
}

fn prepare(args: PrepareArgs) -> Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    let tokenizer = tokenizer(&args.vocab)?;
    let (bin, idx) = rwkv_burn_train::binidx::paths(&args.out);
    let protected = Inputs::new().protect(&args.input);
    files::check_output(&bin, &protected)?;
    files::check_output(&idx, &protected)?;
    files::check_output(&rwkv_burn_train::sft::mask_path(&args.out), &protected)?;
    let bytes = files::read_input(&args.input, MAX_TEXT_BYTES).context("reading the input")?;
    if bytes.is_empty() {
        bail!("{}: the file is empty", args.input.display());
    }
    let jsonl = args.input.extension().is_some_and(|e| e == "jsonl");
    let mut documents = Vec::new();
    // Per document, which tokens the loss counts; kept only if a conversation needs it.
    let mut masks: Vec<Vec<bool>> = Vec::new();
    if jsonl {
        let text = std::str::from_utf8(&bytes)
            .with_context(|| format!("{}: not UTF-8", args.input.display()))?;
        let bar = ProgressBar::new(text.lines().count() as u64).with_style(
            ProgressStyle::with_template("tokenizing {bar:30} {pos}/{len} documents")
                .expect("valid template"),
        );
        for (n, line) in text.lines().enumerate() {
            bar.inc(1);
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(line).with_context(|| {
                format!("{}: line {}: invalid JSON", args.input.display(), n + 1)
            })?;
            let sample = rwkv_burn_train::sft::sample(&value, tokenizer.as_ref(), n + 1)
                .with_context(|| args.input.display().to_string())?;
            documents.push(sample.tokens);
            masks.push(sample.mask);
        }
        bar.finish_and_clear();
    } else {
        documents.push(tokenizer.encode(&bytes)?);
    }
    if documents.is_empty() {
        bail!("{}: no documents", args.input.display());
    }
    let mask_path = rwkv_burn_train::sft::mask_path(&args.out);
    let conversations = masks.iter().flatten().any(|&m| !m);
    if conversations {
        let bytes: Vec<u8> = masks.iter().flatten().map(|&m| u8::from(m)).collect();
        safetensors_io::write_atomic(&mask_path, &bytes)?;
    } else if mask_path.is_file() {
        // A mask left by an earlier dataset under this name would not fit these tokens.
        std::fs::remove_file(&mask_path)
            .with_context(|| format!("removing {}", mask_path.display()))?;
    }
    rwkv_burn_train::binidx::write(&args.out, &documents)?;
    let tokens: usize = documents.iter().map(Vec::len).sum();
    note!(
        "wrote {} documents, {tokens} tokens to {}.bin/.idx{}",
        documents.len(),
        args.out.display(),
        if conversations {
            " and the loss mask (assistant turns) to .mask"
        } else {
            ""
        }
    );
    Ok(())
}

/// Text, JSON lines and metrics files larger than this are refused: their tokens alone would
/// take four times as much memory.
const MAX_TEXT_BYTES: u64 = 1 << 30;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tool::remove_temporaries_on_signal();
    let result = match cli.command {
        Command::Loss(args) => loss(args),
        Command::Grad(args) => grad(args),
        Command::Train(args) => train(*args),
        Command::Prepare(args) => prepare(args),
        Command::Plot(args) => plot(args),
        Command::Export(args) => export(args),
        Command::Merge(args) => merge(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => tool::exit_code(&err),
    }
}
