//! The `rwkv-train` command-line tool.

use anyhow::{Context, Result, bail};
use burn::tensor::{Int, Tensor, TensorData};
use clap::{Args, Parser, Subcommand};
use rwkv_burn::{DeviceSpec, load_model, safetensors_io};
use std::path::PathBuf;
use std::process::ExitCode;

/// Train and evaluate RWKV models with Burn. Training itself is not implemented yet; this
/// tool evaluates the training objective on a batch.
#[derive(Parser)]
#[command(name = "rwkv-train", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the mean next-token cross-entropy of a batch, from a zero state.
    Loss(LossArgs),
}

#[derive(Args)]
struct LossArgs {
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

fn loss(args: LossArgs) -> Result<()> {
    let device = args.device.device()?;
    let (_, model) = load_model(&args.model, &device)?;
    let tensors = safetensors_io::read(&args.batch)?;
    let ids = |name: &str| -> Result<Tensor<2, Int>> {
        let t = tensors
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("{}: no tensor '{name}'", args.batch.display()))?;
        let shape = t.data.shape().to_vec();
        let [b, len] = shape[..] else {
            bail!(
                "{}: '{name}' must be [B, T], is {shape:?}",
                args.batch.display()
            );
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
        Ok(Tensor::from_data(
            TensorData::new(values, [b, len]),
            &device,
        ))
    };
    let (inputs, targets) = (ids("train_input_ids")?, ids("train_targets")?);
    if inputs.dims() != targets.dims() {
        bail!(
            "train_input_ids {:?} and train_targets {:?} differ in shape",
            inputs.dims(),
            targets.dims()
        );
    }
    let value =
        rwkv_burn_train::loss::next_token_loss(&model, inputs, targets).into_scalar::<f32>();
    println!("{value}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Loss(args) => loss(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
