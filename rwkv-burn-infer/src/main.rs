//! The `rwkv` command-line tool.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rwkv_burn::files::{self, Inputs};
use rwkv_burn::load::Checkpoint;
use rwkv_burn::presets::{PRESET_NAMES, preset};
use rwkv_burn::tokenizer::Tokenizer;
use rwkv_burn::{DeviceSpec, Rwkv, RwkvConfig, State, WeightFormat, safetensors_io};
use rwkv_burn_infer::chat::ChatSession;
use rwkv_burn_infer::chat_template::{Effort, Think};
use rwkv_burn_infer::generate::{GenerateOptions, Pipeline};
use rwkv_burn_infer::logits::{RunMode, run_logits};
use rwkv_burn_infer::sampler::SamplerConfig;
use rwkv_burn_infer::tool::{self, StdoutError, emit};
use rwkv_burn_infer::{bench, embedded, eval, note, outln};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Run RWKV language models (v4 to v7; official .pth, safetensors, Hugging Face folders) with
/// Burn, on the CPU or any compiled backend.
#[derive(Parser)]
#[command(name = "rwkv", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// CPU threads for the flex and ndarray devices, 1 to eight per core [default: one per
    /// core, or RAYON_NUM_THREADS]. libtorch follows OMP_NUM_THREADS instead.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
}

/// Sizes the thread pool every CPU product and WKV pass runs on (rayon's global pool, which
/// Burn's CPU backends use too); must run before any model work.
fn set_threads(threads: Option<usize>) -> Result<()> {
    let Some(threads) = threads else {
        return Ok(());
    };
    tool::check_threads(threads).map_err(anyhow::Error::msg)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("setting up the thread pool")
}

#[derive(Subcommand)]
enum Command {
    /// Continue a prompt, streaming the generated text to stdout.
    Generate(GenerateArgs),
    /// Talk with a model in the World chat format; the state carries over between turns.
    Chat(ChatArgs),
    /// Perplexity and bits per byte of a text file, streamed through the state.
    Eval(EvalArgs),
    /// Measure prefill and decode speed (a checkpoint, or a random model of a released shape).
    Bench(BenchArgs),
    /// Print a checkpoint's version, sizes and parameter count.
    Info(InfoArgs),
    /// Write a checkpoint with its projection matrices in another precision (bf16, f16, q8,
    /// q4), as safetensors that load in that format directly, with nothing converted.
    Quantize(QuantizeArgs),
    /// Write any checkpoint this tool reads (a Hugging Face folder, a GGUF file, ...) as an
    /// official RWKV checkpoint (.pth or .safetensors, official names and shapes), which the
    /// official `rwkv` package and the other RWKV tools load.
    Convert(ConvertArgs),
    /// Print the token ids of a file's bytes as a JSON array.
    Tokenize(TokenizeArgs),
    /// Write the bytes of token ids to stdout.
    Detokenize(DetokenizeArgs),
    /// Compute the logits of a token sequence from a fresh state and save them with the final
    /// state (official names) as safetensors.
    Logits(LogitsArgs),
    /// Serve the model over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions,
    /// /v1/models), plus /health and Prometheus /metrics. Requests decode together in one
    /// continuous batch; SIGTERM or Ctrl-C stops it gracefully.
    Serve(ServeArgs),
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Checkpoint: an official .pth, a safetensors file, a Hugging Face model folder
    /// (RWKV-4, or RWKV-7 in the fla-hub/rwkv7-hf layout, sharded or not), or a llama.cpp
    /// GGUF file (RWKV-6, RWKV-7; F32, F16, BF16, Q8_0, Q4_0).
    /// Default: the small byte-level RWKV-7 built into this binary.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Device to run on.
    #[arg(long, default_value = "flex", value_parser = parse_device, help = device_help())]
    device: DeviceSpec,
    /// Load weights that hold NaN or infinite values instead of refusing them (their logits
    /// will be NaN where the values reach).
    #[arg(long)]
    allow_non_finite: bool,
    /// Build the model even when the file holds tensors it does not read (refused by
    /// default: a newer variant or unmerged adapters would run wrong without a word).
    #[arg(long)]
    allow_unused_tensors: bool,
    /// Precision of the projection matrices: f32, bf16, f16, q8 (8-bit blocks of 32, ggml's
    /// Q8_0) or q4 (4-bit blocks, ggml's Q4_0; the head in q8). Everything else stays f32, and
    /// so does all arithmetic. Default: the precision the checkpoint stores them in (an
    /// official bf16 release runs in bf16), f32 for f32 files. Packed on flex; other devices
    /// compute with f32 copies of the format's values.
    #[arg(long, value_name = "FORMAT", value_parser = parse_weights)]
    weights: Option<WeightFormat>,
    /// With q8/q4 weights: multiply by the f32 inputs as they are. By default, CPUs with
    /// AVX-512 VNNI round each block of 32 inputs to 8 bits and multiply as integers (as
    /// ggml does): faster, with a small bounded error (see the README's weight formats).
    #[arg(long)]
    exact_products: bool,
    /// LoRA adapters to apply on top of the model without merging them
    /// (`adapter.safetensors` of `rwkv-train train --tune lora`, or its run folder). They
    /// compute in f32 beside weights of any precision.
    #[arg(long, value_name = "ADAPTER")]
    lora: Option<PathBuf>,
}

impl ModelArgs {
    /// The load checks these flags turn off.
    fn checks(&self) -> Checks {
        (self.allow_non_finite, self.allow_unused_tensors)
    }
}

#[derive(Args, Clone)]
struct VocabArgs {
    /// Tokenizer: `world` (embedded RWKV World vocabulary), `bytes` (byte-level), or a file
    /// (`rwkv_vocab_v20230424.txt`, `20B_tokenizer.json`). Default: chosen from the model's
    /// vocabulary size (65536 -> world, 256 -> bytes).
    #[arg(long, value_name = "VOCAB")]
    vocab: Option<String>,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// Most tokens to generate (at least 1).
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// Softmax temperature, 0 (greedy) to 1000.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Nucleus sampling mass, 0 to 1 (1 = off).
    #[arg(long, default_value_t = 0.85)]
    top_p: f32,
    /// Keep only the k most likely tokens, up to the vocabulary size (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Drop tokens below this fraction of the top probability, 0 (off) to 1.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalty on tokens already generated, -1000 to 1000.
    #[arg(long, default_value_t = 0.4, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Penalty per (decayed) repetition, -1000 to 1000.
    #[arg(long, default_value_t = 0.4, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Decay of the repetition counts per token, 0 to 1.
    #[arg(long, default_value_t = 0.996)]
    penalty_decay: f32,
    /// Token ids never to generate (comma-separated, below the vocabulary size).
    #[arg(long, value_delimiter = ',')]
    ban: Vec<u32>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Random seed: the same seed gives the same text on the same device.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prompt tokens per sequence-mode call, 1 to 65536 (bounds memory for long prompts).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
}

impl SamplingArgs {
    /// The options, checked as far as they can be before the model (and so its vocabulary
    /// size) is known; generation checks them again against the model.
    fn options(&self) -> Result<GenerateOptions> {
        let options = self.unchecked();
        options.validate(rwkv_burn::config::MAX_VOCAB)?;
        Ok(options)
    }

    fn unchecked(&self) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampler: SamplerConfig {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                min_p: self.min_p,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                penalty_decay: self.penalty_decay,
                banned: self.ban.clone(),
                seed: self.seed,
            },
            stop_strings: self.stop.clone(),
            prefill_chunk: self.prefill_chunk,
            ..GenerateOptions::default()
        }
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    vocab: VocabArgs,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file (a regular file of at most 1 GiB).
    #[arg(long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Start from this state file instead of a fresh state: one `--state-out` saved, or a
    /// tuned state (`rwkv-train train --tune state`; RWKV-PEFT's `time_state` `.pth` files).
    #[arg(long, value_name = "FILE")]
    state_in: Option<PathBuf>,
    /// Save the final state here (official names, safetensors). May equal --state-in; may not
    /// be the model or another input.
    #[arg(long, value_name = "FILE")]
    state_out: Option<PathBuf>,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    vocab: VocabArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Resume a conversation saved with --state-out, or start from a tuned state
    /// (`rwkv-train train --tune state`; RWKV-PEFT's `time_state` `.pth` files).
    #[arg(long, value_name = "FILE")]
    state_in: Option<PathBuf>,
    /// Save the conversation's state here after every turn.
    #[arg(long, value_name = "FILE")]
    state_out: Option<PathBuf>,
    /// Open the conversation with this `System:` text.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Let a G1 model think before answering: off, on, low/medium/high (on, asking for a
    /// shorter or longer reasoning) or fake (an empty reasoning: fast, in the thinking
    /// style). World-vocabulary models only.
    #[arg(long, default_value = "off", value_parser = parse_think)]
    think: Think,
}

fn parse_think(s: &str) -> Result<Think, String> {
    Ok(match s {
        "off" => Think::Off,
        "on" => Think::On(Effort::Default),
        "low" => Think::On(Effort::Low),
        "medium" => Think::On(Effort::Medium),
        "high" => Think::On(Effort::High),
        "fake" => Think::Fake,
        _ => {
            return Err(format!(
                "{s:?} is not one of off, on, low, medium, high, fake"
            ));
        }
    })
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    vocab: VocabArgs,
    /// The text file to score.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Tokens per sequence-mode call, 1 to 65536.
    #[arg(long, default_value_t = 512)]
    chunk: usize,
}

#[derive(Args)]
struct BenchArgs {
    /// Checkpoint to measure.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "preset",
        required_unless_present = "preset"
    )]
    model: Option<PathBuf>,
    /// Random model of a released shape instead of a checkpoint.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(PRESET_NAMES))]
    preset: Option<String>,
    /// Device to run on.
    #[arg(long, default_value = "flex", value_parser = parse_device, help = device_help())]
    device: DeviceSpec,
    /// Prompt length of the prefill measurement, 1 to 2^20.
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Tokens decoded per sequence, 1 to 2^20.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Batch size of the batched decode measurement, 1 to 1024.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Load weights that hold NaN or infinite values instead of refusing them.
    #[arg(long)]
    allow_non_finite: bool,
    /// Build the model even when the file holds tensors it does not read (refused by
    /// default: a newer variant or unmerged adapters would run wrong without a word).
    #[arg(long)]
    allow_unused_tensors: bool,
    /// Precision of the projection matrices: f32, bf16, f16, q8 (8-bit blocks of 32, ggml's
    /// Q8_0) or q4 (4-bit blocks, ggml's Q4_0; the head in q8). Everything else stays f32, and
    /// so does all arithmetic. Default: the precision the checkpoint stores them in (an
    /// official bf16 release runs in bf16), f32 for f32 files. Packed on flex; other devices
    /// compute with f32 copies of the format's values.
    #[arg(long, value_name = "FORMAT", value_parser = parse_weights)]
    weights: Option<WeightFormat>,
    /// With q8/q4 weights: multiply by the f32 inputs as they are. By default, CPUs with
    /// AVX-512 VNNI round each block of 32 inputs to 8 bits and multiply as integers (as
    /// ggml does): faster, with a small bounded error (see the README's weight formats).
    #[arg(long)]
    exact_products: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// With --preset: also write the random model as an official checkpoint (`.pth` or
    /// `.safetensors`), so other engines can be measured on the very same weights.
    #[arg(long, value_name = "PATH", requires = "preset")]
    save_model: Option<PathBuf>,
}

#[derive(Args)]
struct InfoArgs {
    /// Checkpoint: an official .pth, a safetensors file, a Hugging Face model folder
    /// (RWKV-4, or RWKV-7 in the fla-hub/rwkv7-hf layout, sharded or not), or a llama.cpp
    /// GGUF file (RWKV-6, RWKV-7; F32, F16, BF16, Q8_0, Q4_0).
    /// Default: the small byte-level RWKV-7 built into this binary.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Skip reading every weight for NaN and infinite values (the slow part for big models).
    #[arg(long)]
    allow_non_finite: bool,
}

#[derive(Args)]
struct QuantizeArgs {
    /// Checkpoint: an official .pth, a safetensors file, a Hugging Face model folder
    /// (RWKV-4, or RWKV-7 in the fla-hub/rwkv7-hf layout, sharded or not), or a llama.cpp
    /// GGUF file (RWKV-6, RWKV-7; F32, F16, BF16, Q8_0, Q4_0).
    /// Default: the small byte-level RWKV-7 built into this binary.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// The precision of the projections: f32, bf16, f16, q8 or q4 (see `--weights` of
    /// `generate`). bf16 and f16 files are official checkpoints; q8 and q4 matrices are stored
    /// as `NAME.q8` + `NAME.q8_scales` (`.q4` likewise), which only this tool reads.
    #[arg(long, value_name = "FORMAT", value_parser = parse_weights)]
    to: WeightFormat,
    /// Output file, `*.safetensors`. Not the model; written atomically.
    #[arg(long, value_name = "OUT.safetensors")]
    out: PathBuf,
    /// Load weights that hold NaN or infinite values instead of refusing them.
    #[arg(long)]
    allow_non_finite: bool,
    /// Build the model even when the file holds tensors it does not read (refused by
    /// default: a newer variant or unmerged adapters would run wrong without a word).
    #[arg(long)]
    allow_unused_tensors: bool,
}

#[derive(Args)]
struct ConvertArgs {
    /// The checkpoint: any file or folder `--model` takes.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Output file, `*.pth` or `*.safetensors`. Not the model; written atomically.
    #[arg(long, value_name = "OUT")]
    out: PathBuf,
    /// Element type of the output: f32, f16 or bf16. Default: the input's where it is bf16 or
    /// f16, else f32 (quantized GGUF blocks are dequantized: official tools read no blocks).
    #[arg(long, value_name = "DTYPE")]
    dtype: Option<rwkv_burn::export::StorageDType>,
    /// Load weights that hold NaN or infinite values instead of refusing them.
    #[arg(long)]
    allow_non_finite: bool,
    /// Convert even when the file holds tensors the model does not read (they are left out).
    #[arg(long)]
    allow_unused_tensors: bool,
}

#[derive(Args)]
struct TokenizeArgs {
    /// Tokenizer: `world`, `bytes`, or a vocabulary file.
    #[arg(long, value_name = "VOCAB")]
    vocab: String,
    /// File whose raw bytes are tokenized (need not be UTF-8 for the World tokenizer); a
    /// regular file of at most 1 GiB.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
}

#[derive(Args)]
struct DetokenizeArgs {
    /// Tokenizer: `world`, `bytes`, or a vocabulary file.
    #[arg(long, value_name = "VOCAB")]
    vocab: String,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    ids: Vec<u32>,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Token ids, comma-separated (e.g. 1,2,3).
    #[arg(long, value_name = "IDS", value_delimiter = ',', required = true, num_args = 1..)]
    tokens: Vec<u32>,
    /// Feed one token per call (RNN mode) instead of one sequence-mode call.
    #[arg(long, conflicts_with = "chunks")]
    step: bool,
    /// Feed the tokens in chunks of these lengths, carrying the state (e.g. 9,1,14).
    #[arg(long, value_name = "LENS", value_delimiter = ',', num_args = 1..)]
    chunks: Option<Vec<usize>>,
    /// Output file: `logits` F32 [T, V] and `state.{i}.{name}` in the official layout. Not the
    /// model; a fifo or device is written into, anything else but a regular file refused.
    #[arg(long, value_name = "OUT.safetensors")]
    out: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    vocab: VocabArgs,
    /// Address to listen on. The default answers this machine only; 0.0.0.0 opens it to the
    /// network (set --api-key then).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model's name in /v1/models and in responses [default: the file's name].
    #[arg(long, value_name = "NAME")]
    model_id: Option<String>,
    /// Most sequences generating together, 1 to 1024.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_batch: u64,
    /// Most requests (choices, with `n`) waiting for a place in the batch; more get 429 with
    /// Retry-After, 1 to 1000000.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_queue: u64,
    /// Most tokens one request may generate (its max_tokens), 1 to 1048576.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    max_tokens_limit: u64,
    /// Tokens generated when a request does not give max_tokens, 1 to 1048576 (at most
    /// --max-tokens-limit).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    default_max_tokens: u64,
    /// Most prompt tokens per request, 1 to 16777216.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    max_prompt_tokens: u64,
    /// Largest request body in bytes, 1024 to 1073741824; larger ones get 413.
    #[arg(long, default_value_t = 8 << 20, value_parser = clap::value_parser!(u64).range(1024..=1 << 30))]
    max_body_bytes: u64,
    /// Seconds one request may take, waiting included, 1 to 86400; then it ends with a 504
    /// (or an error event when streamed).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
    request_timeout: u64,
    /// Prompt tokens read per step of the batch, 1 to 65536: smaller keeps the other
    /// sequences' tokens flowing while a long prompt is read, larger reads it faster.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65536))]
    prefill_chunk: u64,
    /// Megabytes of prompt states kept for reuse (a conversation's next turn starts from the
    /// state after its previous prompt), 0 (off) to 1048576; least recently used evicted.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    cache_mb: u64,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health [default: the
    /// RWKV_API_KEY environment variable, if set].
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Let web pages from this origin call the server (CORS; repeatable; `*` for any). Off by
    /// default.
    #[arg(long, value_name = "ORIGIN")]
    cors_origin: Vec<String>,
    /// Folder of saved states that a request may start from with `"rwkv_state": "NAME"`:
    /// `NAME.safetensors` (as `generate --state-out` and `rwkv-train train --tune state`
    /// write them) or `NAME.pth` (RWKV-PEFT's state-tuning files).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

fn parse_weights(s: &str) -> Result<WeightFormat, String> {
    s.parse()
        .map_err(|e: rwkv_burn::weights::UnknownFormat| e.to_string())
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    let spec: DeviceSpec = s
        .parse()
        .map_err(|e: rwkv_burn::device::DeviceError| e.to_string())?;
    spec.device().map_err(|e| e.to_string())?;
    Ok(spec)
}

/// The devices this build has, for `--help`. Compiled in, not probed: asking libtorch whether a
/// GPU is present costs every invocation about half a second, `--help` included.
fn device_help() -> String {
    let names: Vec<_> = DeviceSpec::ALL
        .into_iter()
        .filter(|d| d.is_available())
        .map(|d| match d {
            DeviceSpec::LibTorchCuda(_) => "libtorch-cuda[:N] (NVIDIA GPU)",
            other => other.name(),
        })
        .collect();
    format!("Device to run on; this build has: {}", names.join(", "))
}

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

fn load(args: &ModelArgs) -> Result<(RwkvConfig, Rwkv, burn::tensor::Device)> {
    let device = args.device.device()?;
    let (config, mut model) = match &args.model {
        Some(path) => load_path(path, &device, args.checks(), args.weights)?,
        None => load_checkpoint(embedded::default_checkpoint()?, &device, args.weights)?,
    };
    if let Some(path) = &args.lora {
        // A run folder stands for its adapters.
        let file = match path.is_dir() {
            true => path.join("adapter.safetensors"),
            false => path.clone(),
        };
        let spec = rwkv_burn::adapters::load(&mut model, &file)?;
        note!(
            "applying LoRA adapters {} (rank {}, alpha {}, {})",
            file.display(),
            spec.rank,
            spec.alpha,
            spec.targets.to_list()
        );
    }
    model.set_exact_products(args.exact_products);
    Ok((config, model, device))
}

/// The load checks a command's flags turn off: `(--allow-non-finite, --allow-unused-tensors)`.
type Checks = (bool, bool);

/// Opens a checkpoint with the checks the flags leave on.
fn open_checked(path: &Path, (non_finite, unused): Checks) -> Result<Checkpoint> {
    let mut checkpoint = Checkpoint::open(path)?;
    if non_finite {
        checkpoint = checkpoint.allow_non_finite();
    }
    if unused {
        checkpoint = checkpoint.allow_unused();
    }
    Ok(checkpoint)
}

fn load_path(
    path: &Path,
    device: &burn::tensor::Device,
    checks: Checks,
    weights: Option<WeightFormat>,
) -> Result<(RwkvConfig, Rwkv)> {
    let bar = spinner(format!("loading {}", path.display()));
    let checkpoint = open_checked(path, checks)?;
    let loaded = load_checkpoint(checkpoint, device, weights);
    bar.finish_and_clear();
    loaded
}

/// Builds an opened checkpoint's model with its projections in `weights` (default: the
/// precision they are stored in), saying so where the device computes with f32 copies.
fn load_checkpoint(
    checkpoint: Checkpoint,
    device: &burn::tensor::Device,
    weights: Option<WeightFormat>,
) -> Result<(RwkvConfig, Rwkv)> {
    let format = weights.unwrap_or_else(|| rwkv_burn::load::stored_format(&checkpoint));
    let config = rwkv_burn::load::detect_config(&checkpoint)?;
    let (model, _) = rwkv_burn::model::build_with(&checkpoint, &config, device, format)?;
    warn_unpacked(device, format);
    Ok((config, model))
}

/// One line where `device` computes a compressed format from f32 copies of its values.
fn warn_unpacked(device: &burn::tensor::Device, format: WeightFormat) {
    if !rwkv_burn::load::holds_format(device, format) {
        note!(
            "note: this device computes {format} weights from f32 copies of their values \
             (the same results, without the memory saving; flex packs every format, libtorch \
             holds bf16/f16, wgpu q8/q4 as 8-bit blocks and f16 where the adapter has it)"
        );
    }
}

/// Input files a run reads larger than this are refused (prompts, texts to score or
/// tokenize): their token ids alone would take four times as much memory.
const MAX_TEXT_BYTES: u64 = 1 << 30;

/// The files a command reads, which no output may replace.
fn inputs(model: Option<&Path>, vocab: &VocabArgs) -> Inputs {
    let vocab_file = vocab
        .vocab
        .as_deref()
        .filter(|v| !matches!(*v, "world" | "bytes"))
        .map(Path::new);
    Inputs::new().protect_opt(model).protect_opt(vocab_file)
}

/// Checks `--state-out` before any work, protecting `--state-in` unless both name the same
/// file (resuming and saving one conversation).
fn check_state_out(
    state_out: Option<&Path>,
    state_in: Option<&Path>,
    inputs: Inputs,
) -> Result<()> {
    let Some(out) = state_out else {
        return Ok(());
    };
    let inputs = match state_in {
        Some(input) if !files::same_file(input, out) => inputs.protect(input),
        _ => inputs,
    };
    files::check_output(out, &inputs)?;
    Ok(())
}

/// A state file for one sequence.
fn load_state(path: &Path, config: &RwkvConfig, device: &burn::tensor::Device) -> Result<State> {
    let state = State::load(path, config, device)?;
    if state.batch_size() != 1 {
        bail!(
            "{}: the state holds {} sequences; generate and chat continue one",
            path.display(),
            state.batch_size()
        );
    }
    Ok(state)
}

/// The tokenizer `--vocab` names; without it, the one the model ships (a folder's vocabulary
/// file, a GGUF file's vocabulary), else the one its vocabulary size implies.
fn tokenizer(
    vocab: &VocabArgs,
    config: &RwkvConfig,
    model: &ModelArgs,
) -> Result<Box<dyn Tokenizer>> {
    if vocab.vocab.is_none()
        && let Some(path) = &model.model
        && let Some(tokenizer) = bundled_tokenizer(path)?
    {
        if tokenizer.vocab_size() > config.vocab_size {
            bail!(
                "{}: its vocabulary has {} ids, more than the model's {}; pass --vocab",
                path.display(),
                tokenizer.vocab_size(),
                config.vocab_size
            );
        }
        return Ok(tokenizer);
    }
    Ok(rwkv_burn::tokenizer::choose(
        vocab.vocab.as_deref(),
        config.vocab_size,
    )?)
}

/// The tokenizer a model folder or GGUF file carries (other files carry none).
fn bundled_tokenizer(path: &Path) -> Result<Option<Box<dyn Tokenizer>>> {
    let gguf = || {
        let mut head = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok_and(|_| &head == rwkv_burn::load::gguf::MAGIC)
    };
    if !path.is_dir() && !gguf() {
        return Ok(None);
    }
    Ok(Checkpoint::open(path)?.tokenizer()?)
}

/// Reads a prompt, with a progress bar while a long one is read into the state.
fn prefill_with_bar(
    pipeline: &Pipeline,
    ids: &[u32],
    state: &mut State,
    chunk: usize,
) -> Result<Vec<f32>> {
    let bar = if ids.len() > chunk {
        let bar = ProgressBar::new(ids.len() as u64).with_style(
            ProgressStyle::with_template("reading prompt {bar:30} {pos}/{len} tokens {per_sec}")
                .expect("valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let logits = pipeline.prefill(ids, state, chunk, &mut |done| {
        if let Some(bar) = &bar {
            bar.set_position(done as u64);
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(logits)
}

/// Streams generated text to stdout; the first write error stops generation and is kept.
struct TextOut(Option<StdoutError>);

impl TextOut {
    fn new() -> Self {
        Self(None)
    }

    fn write(&mut self, text: &str) -> bool {
        if self.0.is_none()
            && let Err(e) = emit(text.as_bytes())
        {
            self.0 = Some(e);
        }
        self.0.is_none()
    }

    /// The write error, if there was one.
    fn result(&mut self) -> Result<(), StdoutError> {
        self.0.take().map_or(Ok(()), Err)
    }
}

fn generate(args: GenerateArgs) -> Result<()> {
    let options = args.sampling.options()?;
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone().into_bytes(),
        (None, Some(path)) => {
            files::read_input(path, MAX_TEXT_BYTES).context("reading the prompt")?
        }
        (None, None) => bail!("give a prompt with --prompt or --prompt-file"),
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let protected =
        inputs(args.model.model.as_deref(), &args.vocab).protect_opt(args.prompt_file.as_deref());
    check_state_out(
        args.state_out.as_deref(),
        args.state_in.as_deref(),
        protected,
    )?;
    let (config, model, device) = load(&args.model)?;
    let tokenizer = tokenizer(&args.vocab, &config, &args.model)?;
    let ids = tokenizer.encode(&prompt)?;
    let pipeline = Pipeline::new(&model, tokenizer.as_ref(), device.clone());
    let mut state = match &args.state_in {
        Some(path) => load_state(path, &config, &device)?,
        None => State::zeros(&config, 1, &device),
    };
    let logits = prefill_with_bar(&pipeline, &ids, &mut state, options.prefill_chunk)?;
    let start = Instant::now();
    let mut out = TextOut::new();
    let result = pipeline.decode(logits, &mut state, &options, &mut |t| out.write(t))?;
    let seconds = start.elapsed().as_secs_f64();
    // The state is saved even when stdout closed early: it is what the text so far led to.
    if let Some(path) = &args.state_out {
        state.save(path)?;
    }
    out.result()?;
    emit(b"\n")?;
    note!(
        "[{} tokens in {:.2} s, {:.1} tokens/s; stopped: {:?}]",
        result.tokens.len(),
        seconds,
        result.tokens.len() as f64 / seconds.max(1e-9),
        result.stop
    );
    Ok(())
}

fn chat(args: ChatArgs) -> Result<()> {
    let options = args.sampling.options()?;
    check_state_out(
        args.state_out.as_deref(),
        args.state_in.as_deref(),
        inputs(args.model.model.as_deref(), &args.vocab),
    )?;
    let (config, model, device) = load(&args.model)?;
    let tokenizer = tokenizer(&args.vocab, &config, &args.model)?;
    let pipeline = Pipeline::new(&model, tokenizer.as_ref(), device.clone());
    let state = match &args.state_in {
        Some(path) => load_state(path, &config, &device)?,
        None => State::zeros(&config, 1, &device),
    };
    if args.think != Think::Off && config.vocab_size != rwkv_burn::tokenizer::WORLD_MODEL_VOCAB {
        bail!(
            "--think needs a World-vocabulary (G1) model; this one has {} tokens",
            config.vocab_size
        );
    }
    let mut session = ChatSession::new(&pipeline, state, options).with_think(args.think);
    if let Some(system) = &args.system {
        session = session.with_system(system);
    }
    note!(
        "Chatting with {} ({} layers). Empty line or Ctrl-D to quit.",
        config.version,
        config.n_layer
    );
    let stdin = std::io::stdin();
    loop {
        {
            use std::io::Write as _;
            let mut err = std::io::stderr();
            let _ = write!(err, "User: ").and_then(|()| err.flush());
        }
        let mut line = String::new();
        let read = stdin
            .lock()
            .read_line(&mut line)
            .context("reading standard input")?;
        if read == 0 || line.trim().is_empty() {
            break;
        }
        emit(rwkv_burn_infer::chat_template::assistant_start(args.think).as_bytes())?;
        let mut out = TextOut::new();
        session.turn(&line, &mut |t| out.write(t))?;
        if let Some(path) = &args.state_out {
            session.state.save(path)?;
        }
        out.result()?;
        emit(b"\n")?;
    }
    Ok(())
}

fn eval_cmd(args: EvalArgs) -> Result<()> {
    let max_chunk = rwkv_burn_infer::generate::MAX_PREFILL_CHUNK;
    if !(1..=max_chunk).contains(&args.chunk) {
        bail!("--chunk is {}; it must be 1 to {max_chunk}", args.chunk);
    }
    let text = files::read_input(&args.input, MAX_TEXT_BYTES).context("reading the text")?;
    let (config, model, device) = load(&args.model)?;
    let tokenizer = tokenizer(&args.vocab, &config, &args.model)?;
    let ids = tokenizer.encode(&text)?;
    if ids.len() < 2 {
        bail!(
            "{}: needs at least two tokens to score",
            args.input.display()
        );
    }
    let bar = ProgressBar::new(ids.len() as u64).with_style(
        ProgressStyle::with_template("scoring {bar:30} {pos}/{len} tokens {per_sec}")
            .expect("valid template"),
    );
    let result = eval::evaluate(&model, &ids, text.len(), args.chunk, &device, &mut |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    outln!(
        "tokens:         {}\nbytes:          {}\nloss (nats):    {:.4}\nperplexity:     {:.4}\nbits per byte:  {:.4}",
        result.tokens,
        result.bytes,
        result.mean_nll,
        result.perplexity,
        result.bits_per_byte
    )?;
    Ok(())
}

fn bench_cmd(args: BenchArgs) -> Result<()> {
    if args.save_model.is_some() && args.preset.is_none() {
        bail!("--save-model writes a --preset's random model; a --model is already a file");
    }
    if let Some(path) = &args.save_model {
        files::check_output(path, &Inputs::new())?;
    }
    let device = args.device.device()?;
    let (label, model) = match (&args.model, &args.preset) {
        (Some(path), _) => (
            path.display().to_string(),
            load_path(
                path,
                &device,
                (args.allow_non_finite, args.allow_unused_tensors),
                args.weights,
            )?
            .1,
        ),
        (None, Some(name)) => {
            let config = preset(name).context("unknown preset")?;
            let bar = spinner(format!("building a random {name} model"));
            let weights = rwkv_burn::init::RandomWeights::new(0);
            if let Some(path) = &args.save_model {
                // The file holds the f32 weights; a format is applied when it is loaded.
                let (model, names) = rwkv_burn::model::build_named(&weights, &config, &device)?;
                let tensors = rwkv_burn::export::official_tensors(&model, &names);
                rwkv_burn::export::write_official(
                    path,
                    &tensors,
                    rwkv_burn::export::StorageDType::F32,
                )?;
                note!("wrote {}", path.display());
            }
            let format = args.weights.unwrap_or_default();
            let (model, _) = rwkv_burn::model::build_with(&weights, &config, &device, format)?;
            warn_unpacked(&device, format);
            bar.finish_and_clear();
            (name.clone(), model)
        }
        (None, None) => bail!("give --model or --preset"),
    };
    model.set_exact_products(args.exact_products);
    let result = bench::run(&model, &device, args.prefill, args.decode, args.batch)?;
    let formats = weight_formats(&model);
    let bytes_per_token = model.bytes_per_token();
    // What batch-1 decode streams from the weights, the figure to set against the memory
    // bandwidth.
    let gb_per_s = bytes_per_token as f64 * result.decode_tokens_per_s / 1e9;
    if args.json {
        let mut value = serde_json::to_value(&result)?;
        value["model"] = label.into();
        value["device"] = args.device.name().into();
        value["threads"] = rayon::current_num_threads().into();
        value["weights"] = formats.into();
        value["inputs"] = if model.rounds_inputs() { "int8" } else { "f32" }.into();
        value["weight_bytes_per_token"] = bytes_per_token.into();
        value["decode_weight_gb_per_s"] = gb_per_s.into();
        outln!("{value}")?;
    } else {
        outln!(
            "model {label} on {} ({} CPU threads), weights {formats}{}\n\
             prefill ({} tokens):      {:>9.1} tokens/s\n\
             decode batch 1:           {:>9.1} tokens/s ({:.2} MB of weights a token, {:.1} GB/s)\n\
             decode batch {}:           {:>9.1} tokens/s\n\
             peak RSS:                 {:>9.1} MiB",
            args.device,
            rayon::current_num_threads(),
            if model.rounds_inputs() {
                " (8-bit inputs)"
            } else {
                ""
            },
            result.prefill_tokens,
            result.prefill_tokens_per_s,
            result.decode_tokens_per_s,
            bytes_per_token as f64 / 1e6,
            gb_per_s,
            result.batch,
            result.decode_batch_tokens_per_s,
            result.peak_rss_bytes as f64 / (1 << 20) as f64
        )?;
        if let Some(d) = &result.decode_step_dispatches {
            outln!(
                "GPU dispatches a decode step: {:>6} ({} kernels)",
                d.total,
                d.by_kernel.len()
            )?;
        }
    }
    Ok(())
}

/// Bytes of a checkpoint file, or of the files in a model folder.
fn path_bytes(path: &Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum(),
        Err(_) => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

/// The formats of a model's projections, e.g. `q4` or `q4 (head q8)`.
fn weight_formats(model: &Rwkv) -> String {
    let blocks = model.projections()[0].format();
    let head = model.head.format();
    if head == blocks {
        blocks.to_string()
    } else {
        format!("{blocks} (head {head})")
    }
}

fn quantize(args: QuantizeArgs) -> Result<()> {
    if args.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("--out {}: name the file *.safetensors", args.out.display());
    }
    files::check_output(&args.out, &Inputs::new().protect_opt(args.model.as_deref()))?;
    let checkpoint = match &args.model {
        Some(path) => open_checked(path, (args.allow_non_finite, args.allow_unused_tensors))?,
        None => embedded::default_checkpoint()?,
    };
    let bar = spinner(format!("converting to {}", args.to));
    // Packed formats exist on flex, whatever device the file will later run on.
    let device = DeviceSpec::Flex.device()?;
    let config = rwkv_burn::load::detect_config(&checkpoint)?;
    let (model, names) = rwkv_burn::model::build_with(&checkpoint, &config, &device, args.to)?;
    rwkv_burn::export::write_in_format(&model, &names, &args.out)?;
    bar.finish_and_clear();
    note!(
        "wrote {} ({} projections, {:.1} MB of weights a token)",
        args.out.display(),
        weight_formats(&model),
        model.bytes_per_token() as f64 / 1e6
    );
    Ok(())
}

fn convert(args: ConvertArgs) -> Result<()> {
    use rwkv_burn::export::StorageDType;
    if rwkv_burn::export::ExportFormat::from_path(&args.out).is_none() {
        bail!(
            "--out {}: name the file *.pth or *.safetensors",
            args.out.display()
        );
    }
    files::check_output(&args.out, &Inputs::new().protect(&args.model))?;
    let checkpoint = open_checked(
        &args.model,
        (args.allow_non_finite, args.allow_unused_tensors),
    )?;
    let dtype = args
        .dtype
        .unwrap_or(match rwkv_burn::load::stored_format(&checkpoint) {
            WeightFormat::Bf16 => StorageDType::BF16,
            WeightFormat::F16 => StorageDType::F16,
            _ => StorageDType::F32,
        });
    let bar = spinner(format!("converting {}", args.model.display()));
    let device = DeviceSpec::Flex.device()?;
    let config = rwkv_burn::load::detect_config(&checkpoint)?;
    let (model, names) = rwkv_burn::model::build_named(&checkpoint, &config, &device)?;
    let tensors = rwkv_burn::export::official_tensors(&model, &names);
    rwkv_burn::export::write_official(&args.out, &tensors, dtype)?;
    bar.finish_and_clear();
    note!(
        "wrote {} ({} tensors, {dtype:?}, {})",
        args.out.display(),
        tensors.len(),
        config.version
    );
    Ok(())
}

/// What `rwkv info` says of a GGUF file beyond the model: version, tensor types, metadata.
fn gguf_summary(gguf: &rwkv_burn::load::gguf::Gguf) -> String {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for tensor in &gguf.tensors {
        match kinds.iter_mut().find(|(k, _)| *k == tensor.kind.name()) {
            Some((_, n)) => *n += 1,
            None => kinds.push((tensor.kind.name(), 1)),
        }
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    let mut text = format!(
        "gguf:        version {}, architecture {}, {} tensors ({})\nmetadata:\n",
        gguf.version,
        gguf.architecture().unwrap_or("(none)"),
        gguf.tensors.len(),
        kinds.join(", ")
    );
    for (key, value) in &gguf.metadata {
        text += &format!("  {key} = {}\n", value.describe());
    }
    text
}

fn info(args: InfoArgs) -> Result<()> {
    let checkpoint = match &args.model {
        Some(path) => Checkpoint::open(path)?,
        None => embedded::default_checkpoint()?,
    };
    let version = rwkv_burn::load::detect_version(&checkpoint)?;
    let mut text = format!(
        "file:        {}\nformat:      {:?}\nversion:     {version}{}\n",
        checkpoint.path().display(),
        checkpoint.format(),
        if version.is_supported() {
            ""
        } else {
            " (not supported by this build)"
        }
    );
    if let Some(gguf) = checkpoint.gguf() {
        text += &gguf_summary(gguf);
    }
    if !version.is_supported() {
        emit(text.as_bytes())?;
        return Ok(());
    }
    // The checks loading runs: dimensions, then (unless skipped) every weight's values.
    let config = rwkv_burn::load::read_config(&checkpoint, version)?;
    if !args.allow_non_finite {
        let bar = ProgressBar::new(checkpoint.len() as u64).with_style(
            ProgressStyle::with_template("checking weights {bar:30} {pos}/{len} tensors")
                .expect("valid template"),
        );
        checkpoint.check_finite(&mut |done| bar.set_position(done as u64))?;
        bar.finish_and_clear();
    }
    // Every tensor of a checkpoint is a parameter of the model it holds.
    let parameters: usize = checkpoint
        .names()
        .filter_map(|name| checkpoint.shape(name))
        .map(|shape| shape.iter().product::<usize>())
        .sum();
    text += &format!(
        "layers:      {}\nembedding:   {}\nattention:   {}\nffn:         {}\nvocabulary:  {}\n",
        config.n_layer, config.n_embd, config.dim_att, config.dim_ffn, config.vocab_size
    );
    if let Some(n) = config.head_size {
        text += &format!("heads:       {} x {n}\n", config.n_head());
    }
    let file_bytes = match &args.model {
        Some(path) => path_bytes(path),
        None => embedded::DEFAULT_MODEL.len() as u64,
    };
    text += &format!(
        "parameters:  {parameters}\nfile bytes:  {file_bytes}\nstored as:   {}\n\
         runs as:     {} projections by default (--weights {}); everything else f32\n",
        checkpoint.dtypes(),
        rwkv_burn::load::stored_format(&checkpoint),
        WeightFormat::ALL.map(WeightFormat::name).join("|"),
    );
    text += &tensor_groups(&checkpoint);
    emit(text.as_bytes())?;
    Ok(())
}

/// The group of an official tensor name, for `rwkv info`'s table.
fn tensor_group(name: &str) -> &'static str {
    let leaf = name.rsplit('.').nth(1).unwrap_or("");
    let low_rank = |leaf: &str| {
        leaf.ends_with("w1")
            || leaf.ends_with("w2")
            || matches!(leaf, "a1" | "a2" | "v1" | "v2" | "g1" | "g2")
    };
    match name {
        "emb.weight" => "embedding",
        "head.weight" => "head",
        _ if name.contains(".att.") && name.ends_with(".weight") && !leaf.starts_with("ln") => {
            "time-mix matrices"
        }
        _ if name.contains(".ffn.") && name.ends_with(".weight") => "channel-mix matrices",
        _ if low_rank(name.rsplit('.').next().unwrap_or("")) => "low-rank factors",
        _ if name.contains("ln") => "norms",
        _ => "mixes, decays, other vectors",
    }
}

/// A table of the checkpoint's tensors by group: how many, how they are stored, their bytes.
fn tensor_groups(checkpoint: &Checkpoint) -> String {
    use std::collections::BTreeMap;
    const ORDER: [&str; 7] = [
        "embedding",
        "time-mix matrices",
        "channel-mix matrices",
        "head",
        "low-rank factors",
        "norms",
        "mixes, decays, other vectors",
    ];
    let mut groups: BTreeMap<&str, (usize, BTreeMap<String, usize>, u64)> = BTreeMap::new();
    for name in checkpoint.names() {
        let Some((stored, bytes)) = checkpoint.stored_as(name) else {
            continue;
        };
        let group = groups.entry(tensor_group(name)).or_default();
        group.0 += 1;
        *group.1.entry(stored).or_default() += 1;
        group.2 += bytes.unwrap_or(0);
    }
    let mut text = format!(
        "{:<30} {:>7} {:>14}  stored as\n",
        "tensors", "count", "bytes"
    );
    for name in ORDER {
        if let Some((count, stored, bytes)) = groups.get(name) {
            let stored: Vec<String> = stored
                .iter()
                .map(|(s, n)| {
                    if *n == *count {
                        s.clone()
                    } else {
                        format!("{s} x{n}")
                    }
                })
                .collect();
            text += &format!("{name:<30} {count:>7} {bytes:>14}  {}\n", stored.join(", "));
        }
    }
    text
}

fn tokenize(args: TokenizeArgs) -> Result<()> {
    let bytes = files::read_input(&args.input, MAX_TEXT_BYTES).context("reading the input")?;
    let tokenizer = rwkv_burn::tokenizer::choose(Some(&args.vocab), 0)?;
    let ids = tokenizer.encode(&bytes)?;
    outln!("{}", serde_json::to_string(&ids)?)?;
    Ok(())
}

fn detokenize(args: DetokenizeArgs) -> Result<()> {
    let tokenizer = rwkv_burn::tokenizer::choose(Some(&args.vocab), 0)?;
    let bytes = tokenizer.decode_bytes(&args.ids)?;
    emit(&bytes)?;
    Ok(())
}

fn logits(args: LogitsArgs) -> Result<()> {
    files::check_output(
        &args.out,
        &Inputs::new().protect_opt(args.model.model.as_deref()),
    )?;
    let (config, model, device) = load(&args.model)?;
    let mode = match (args.step, args.chunks) {
        (true, _) => RunMode::Step,
        (false, Some(chunks)) => RunMode::Chunks(chunks),
        (false, None) => RunMode::Sequence,
    };
    let run = run_logits(&model, &config, &args.tokens, &mode, &device)?;
    safetensors_io::write(&args.out, &run.into_named())?;
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    use rwkv_burn_infer::serve::{self, ServeOptions, api::Limits, worker::WorkerConfig};
    if args.default_max_tokens > args.max_tokens_limit {
        bail!(
            "--default-max-tokens ({}) is above --max-tokens-limit ({})",
            args.default_max_tokens,
            args.max_tokens_limit
        );
    }
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("RWKV_API_KEY").ok())
        .filter(|k| !k.is_empty());
    if let Some(dir) = &args.state_dir
        && !dir.is_dir()
    {
        bail!("--state-dir {}: not a folder", dir.display());
    }
    let (config, model, device) = load(&args.model)?;
    let tokenizer: std::sync::Arc<dyn Tokenizer> =
        tokenizer(&args.vocab, &config, &args.model)?.into();
    let pipeline = Pipeline::new(&model, tokenizer.as_ref(), device);
    let model_id = args
        .model_id
        .clone()
        .unwrap_or_else(|| match &args.model.model {
            Some(path) => path
                .file_stem()
                .map_or("rwkv".into(), |s| s.to_string_lossy().into_owned()),
            None => "rwkv-embedded".into(),
        });
    let options = ServeOptions {
        addr: std::net::SocketAddr::new(args.host, args.port),
        model_id,
        limits: Limits {
            max_tokens: args.max_tokens_limit as usize,
            max_prompt_tokens: args.max_prompt_tokens as usize,
            default_max_tokens: args.default_max_tokens as usize,
            vocab: config.vocab_size,
            world: config.vocab_size == rwkv_burn::tokenizer::WORLD_MODEL_VOCAB,
        },
        worker: WorkerConfig {
            max_batch: args.max_batch as usize,
            prefill_chunk: args.prefill_chunk as usize,
            cache_bytes: (args.cache_mb as usize) << 20,
        },
        max_queue: args.max_queue as usize,
        max_body_bytes: args.max_body_bytes as usize,
        request_timeout: std::time::Duration::from_secs(args.request_timeout),
        api_key,
        cors_origins: args.cors_origin.clone(),
        state_dir: args.state_dir.clone(),
    };
    serve::serve(&pipeline, tokenizer.clone(), options, |addr, shutdown| {
        // The first SIGINT/SIGTERM stops gracefully; a second one ends the process at once.
        let signals = std::sync::atomic::AtomicUsize::new(0);
        let _ = ctrlc::set_handler(move || {
            if signals.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                std::process::exit(tool::EXIT_INTERRUPTED);
            }
            note!("rwkv serve: shutting down");
            shutdown.trigger();
        });
        note!(
            "rwkv serve: {} ({} layers, vocabulary {}) listening on http://{addr}",
            config.version,
            config.n_layer,
            config.vocab_size
        );
    })?;
    note!("rwkv serve: stopped");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server handles its signals itself (a graceful stop instead of an exit).
    if !matches!(cli.command, Command::Serve(_)) {
        tool::remove_temporaries_on_signal();
    }
    if let Err(err) = set_threads(cli.threads) {
        return tool::exit_code(&err);
    }
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Chat(args) => chat(args),
        Command::Eval(args) => eval_cmd(args),
        Command::Bench(args) => bench_cmd(args),
        Command::Info(args) => info(args),
        Command::Quantize(args) => quantize(args),
        Command::Convert(args) => convert(args),
        Command::Tokenize(args) => tokenize(args),
        Command::Detokenize(args) => detokenize(args),
        Command::Logits(args) => logits(args),
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => tool::exit_code(&err),
    }
}
