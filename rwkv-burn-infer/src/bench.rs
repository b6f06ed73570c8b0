//! Throughput measurements behind `rwkv bench`: prefill, decode at batch 1 and batch N, peak
//! memory.

use crate::generate::OptionsError;
use burn::tensor::Device;
use rwkv_burn::model::token_tensor;
use rwkv_burn::{Rwkv, State};
use serde::Serialize;
use std::time::Instant;

/// What `rwkv bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Prompt length of the prefill run.
    pub prefill_tokens: usize,
    /// Sequence-mode tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Tokens decoded per sequence.
    pub decode_tokens: usize,
    /// Step-mode tokens per second at batch 1 (logits read back every step).
    pub decode_tokens_per_s: f64,
    /// Batch size of the batched decode run.
    pub batch: usize,
    /// Step-mode tokens per second summed over the batch.
    pub decode_batch_tokens_per_s: f64,
    /// Peak resident memory of the process so far, in bytes (0 where unknown).
    pub peak_rss_bytes: u64,
    /// GPU kernel launches of one batch-1 decode step (its logits read back once), by kernel,
    /// on CubeCL devices (wgpu, Vulkan, WebGPU); `None` elsewhere. Counted in a step of its
    /// own after the timed ones, so the count costs the timing nothing.
    pub decode_step_dispatches: Option<rwkv_burn::dispatches::Dispatches>,
}

/// The largest prefill and decode lengths [`run`] takes.
pub const MAX_TOKENS: usize = 1 << 20;
/// The largest batch [`run`] takes.
pub const MAX_BATCH: usize = 1024;

/// Why a measurement could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A size out of range.
    #[error(transparent)]
    Size(#[from] OptionsError),
    /// The device failed (out of memory, a lost device, a failed read-back).
    #[error("the device failed: {0}")]
    Device(String),
}

/// Runs the measurements on `model` with deterministic pseudo-random tokens: `prefill`
/// tokens in one sequence-mode call, then `decode` steps at batch 1 and at `batch`.
pub fn run(
    model: &Rwkv,
    device: &Device,
    prefill: usize,
    decode: usize,
    batch: usize,
) -> Result<BenchResult, BenchError> {
    for (name, value, max) in [
        ("prefill", prefill, MAX_TOKENS),
        ("decode", decode, MAX_TOKENS),
        ("batch", batch, MAX_BATCH),
    ] {
        if !(1..=max).contains(&value) {
            return Err(OptionsError::new(name, value, format!("1 to {max}")).into());
        }
    }
    let config = model.config();
    let vocab = config.vocab_size as u64;
    let tokens = |n: usize, salt: u64| -> Vec<u32> {
        (0..n as u64)
            .map(|i| ((i * 7919 + salt) % vocab) as u32)
            .collect()
    };
    let input = |ids: Vec<u32>, b: usize| token_tensor(&ids, b, device);
    let read = |logits: burn::tensor::Tensor<2>| {
        logits
            .try_into_data()
            .map(drop)
            .map_err(|e| BenchError::Device(format!("{e:?}")))
    };

    // Warm-up: first calls allocate and (on some backends) compile.
    let mut state = State::zeros(&config, 1, device);
    read(model.forward_last(input(tokens(8, 1), 1), &mut state))?;

    let mut state = State::zeros(&config, 1, device);
    let start = Instant::now();
    read(model.forward_last(input(tokens(prefill, 3), 1), &mut state))?;
    let prefill_s = start.elapsed().as_secs_f64();

    let decode_rate = |b: usize| -> Result<(f64, State), BenchError> {
        let mut state = State::zeros(&config, b, device);
        read(model.forward_last(input(tokens(b, 5), b), &mut state))?;
        let start = Instant::now();
        for step in 0..decode {
            read(model.forward_last(input(tokens(b, 11 + step as u64), b), &mut state))?;
        }
        Ok(((decode * b) as f64 / start.elapsed().as_secs_f64(), state))
    };
    let (decode_tokens_per_s, mut state) = decode_rate(1)?;
    let (step, decode_step_dispatches) = rwkv_burn::dispatches::count(device, || {
        read(model.forward_last(input(tokens(1, 13), 1), &mut state))
    });
    step?;
    let (decode_batch_tokens_per_s, _) = decode_rate(batch)?;
    Ok(BenchResult {
        prefill_tokens: prefill,
        prefill_tokens_per_s: prefill as f64 / prefill_s,
        decode_tokens: decode,
        decode_tokens_per_s,
        batch,
        decode_batch_tokens_per_s,
        peak_rss_bytes: peak_rss(),
        decode_step_dispatches,
    })
}

/// `VmHWM` of `/proc/self/status` (Linux), else 0.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}
