//! The `rwkv` command-line tool.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rwkv_burn::{DeviceSpec, load_model, safetensors_io};
use rwkv_burn_infer::logits::{RunMode, run_logits};
use std::path::PathBuf;
use std::process::ExitCode;

/// Run RWKV language models (official .pth, safetensors, Hugging Face folders) with Burn.
#[derive(Parser)]
#[command(name = "rwkv", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compute the logits of a token sequence from a fresh state and save them with the final
    /// state (official names) as safetensors.
    Logits(LogitsArgs),
}

#[derive(Args)]
struct LogitsArgs {
    /// Checkpoint: an official .pth, a safetensors file, or a Hugging Face model folder.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Token ids, comma-separated (e.g. 1,2,3).
    #[arg(long, value_name = "IDS", value_delimiter = ',', required = true, num_args = 1..)]
    tokens: Vec<u32>,
    /// Feed one token per call (RNN mode) instead of one sequence-mode call.
    #[arg(long, conflicts_with = "chunks")]
    step: bool,
    /// Feed the tokens in chunks of these lengths, carrying the state (e.g. 9,1,14).
    #[arg(long, value_name = "LENS", value_delimiter = ',', num_args = 1..)]
    chunks: Option<Vec<usize>>,
    /// Device to run on.
    #[arg(long, default_value = "flex", value_parser = parse_device, help = device_help())]
    device: DeviceSpec,
    /// Output file: `logits` F32 [T, V] and `state.{i}.{name}` in the official layout.
    #[arg(long, value_name = "OUT.safetensors")]
    out: PathBuf,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    let spec: DeviceSpec = s
        .parse()
        .map_err(|e: rwkv_burn::device::DeviceError| e.to_string())?;
    spec.device().map_err(|e| e.to_string())?;
    Ok(spec)
}

fn device_help() -> String {
    let names: Vec<_> = DeviceSpec::available().iter().map(|d| d.name()).collect();
    format!("Device to run on; this build has: {}", names.join(", "))
}

fn logits(args: LogitsArgs) -> Result<()> {
    let device = args.device.device()?;
    let (config, model) = load_model(&args.model, &device)?;
    let mode = match (args.step, args.chunks) {
        (true, _) => RunMode::Step,
        (false, Some(chunks)) => RunMode::Chunks(chunks),
        (false, None) => RunMode::Sequence,
    };
    let run = run_logits(&model, &config, &args.tokens, &mode, &device)?;
    safetensors_io::write(&args.out, &run.into_named())
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Logits(args) => logits(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
