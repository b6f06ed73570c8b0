//! The `rwkv-train` command-line tool.

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::{Args, Parser, Subcommand};
use rwkv_burn::{DeviceSpec, Rwkv, load_model, safetensors_io};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Train and evaluate RWKV models with Burn. The training loop itself is not implemented yet;
/// this tool computes the training objective and its gradients on a batch.
#[derive(Parser)]
#[command(name = "rwkv-train", version, about, long_about = None)]
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
        let [b, len] = shape[..] else {
            bail!("{}: '{name}' must be [B, T], is {shape:?}", path.display());
        };
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
        Ok(Tensor::from_data(TensorData::new(values, [b, len]), device))
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
    println!("{value}");
    Ok(())
}

fn grad(args: GradArgs) -> Result<()> {
    let device = args.batch.device.device()?.autodiff();
    let (_, model, names) = rwkv_burn::load::load_model_named(&args.batch.model, &device)?;
    let (inputs, targets) = read_batch(&args.batch.batch, &model, &device)?;
    let out = rwkv_burn_train::grad::loss_and_grads(&model, &names, inputs, targets);
    safetensors_io::write(&args.out, &out.into_named())
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Loss(args) => loss(args),
        Command::Grad(args) => grad(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
