//! Benchmarks live in benches/. What the measurement binaries (`src/bin/`) share: the
//! embedded model and its held-out text, and the random model of the 7-0.1b shape with its
//! tokens.

use rwkv_burn::RwkvConfig;
use rwkv_burn::load::Checkpoint;
use std::path::PathBuf;

/// The checkout's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The embedded model's checkpoint and configuration.
pub fn embedded_model() -> (Checkpoint, RwkvConfig) {
    let checkpoint =
        Checkpoint::open(root().join("rwkv-burn-infer/assets/default-model.safetensors"))
            .expect("the embedded model");
    let config = rwkv_burn::load::detect_config(&checkpoint).expect("its config");
    (checkpoint, config)
}

/// The embedded model's held-out text as byte tokens: the last 5% of
/// `kjv-genesis-exodus.txt`, which its training never saw.
pub fn held_out_text() -> Vec<u32> {
    let text = std::fs::read(root().join("rwkv-burn-train/assets/corpus/kjv-genesis-exodus.txt"))
        .expect("the training corpus");
    text[text.len() * 95 / 100..]
        .iter()
        .map(|&b| u32::from(b))
        .collect()
}

/// The random 7-0.1b-shape model's weights (seed 0), configuration, and 512 random tokens
/// (seed 42).
pub fn random_model() -> (rwkv_burn::init::RandomWeights, RwkvConfig, Vec<u32>) {
    let config = rwkv_burn::presets::preset("7-0.1b").expect("preset");
    let mut rng = rwkv_burn::random::Lcg::new(42);
    let tokens = (0..512)
        .map(|_| (rng.next_u64() % config.vocab_size as u64) as u32)
        .collect();
    (rwkv_burn::init::RandomWeights::new(0), config, tokens)
}
