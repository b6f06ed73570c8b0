//! A tiny model trained for a few hundred steps on real text learns more than byte
//! frequencies: its validation loss ends below the unigram cross-entropy of the same text.

use rwkv_burn::presets::config_for;
use rwkv_burn::tokenizer::{ByteTokenizer, Tokenizer};
use rwkv_burn::{DeviceSpec, Version};
use rwkv_burn_train::data::TokenCorpus;
use rwkv_burn_train::trainer::{TrainConfig, train, validation_loss};
use std::path::PathBuf;

/// Cross-entropy (nats) of `valid` under the byte frequencies of `train` (add-one smoothed):
/// the best a model that ignores context can do.
fn unigram_loss(train: &[u32], valid: &[u32]) -> f32 {
    let mut counts = vec![1.0f64; 256];
    for &t in train {
        counts[t as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    let nll: f64 = valid
        .iter()
        .map(|&t| -(counts[t as usize] / total).ln())
        .sum();
    (nll / valid.len() as f64) as f32
}

#[test]
fn validation_loss_falls_below_the_unigram_bound() {
    let text = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/corpus/kjv-genesis-exodus.txt"),
    )
    .unwrap();
    let tokens = ByteTokenizer.encode(&text[..80_000]).unwrap();
    let config = TrainConfig {
        steps: 200,
        batch: 4,
        ctx: 32,
        lr: 3e-3,
        lr_final: 3e-4,
        warmup: 20,
        eval_every: 0,
        ..TrainConfig::default()
    };
    let corpus = TokenCorpus::split(tokens, 0.05, config.ctx, 256).unwrap();
    let bound = unigram_loss(&corpus.train, &corpus.valid);
    let spec = DeviceSpec::available()[0];
    let device = spec.device().unwrap().autodiff();
    let mut model_config = config_for(Version::V7, 2, 64);
    model_config.vocab_size = 256;
    let (model, names) = rwkv_burn::init::training_model(&model_config, 0, &device).unwrap();
    let before = validation_loss(&model, &corpus, config.batch, config.ctx, &device);
    let mut losses = Vec::new();
    let model = train(model, &names, &corpus, &config, &device, &mut |r| {
        losses.push(r.loss)
    })
    .unwrap();
    let after = validation_loss(&model, &corpus, config.batch, config.ctx, &device);
    assert!(
        (before - 256f32.ln()).abs() < 0.05,
        "an untrained model is uniform: {before}"
    );
    assert!(
        after < bound - 0.2,
        "validation loss {after} should beat the unigram bound {bound} by 0.2 nats (started at {before})"
    );
    assert!(losses.iter().all(|l| l.is_finite()));
}

#[test]
fn the_same_seed_gives_the_same_losses() {
    let text = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/corpus/kjv-genesis-exodus.txt"),
    )
    .unwrap();
    let tokens = ByteTokenizer.encode(&text[..20_000]).unwrap();
    let config = TrainConfig {
        steps: 5,
        batch: 2,
        ctx: 16,
        eval_every: 0,
        ..TrainConfig::default()
    };
    let corpus = TokenCorpus::split(tokens, 0.05, config.ctx, 256).unwrap();
    let device = DeviceSpec::available()[0].device().unwrap().autodiff();
    let mut model_config = config_for(Version::V4, 1, 32);
    model_config.vocab_size = 256;
    let run = || {
        let (model, names) = rwkv_burn::init::training_model(&model_config, 3, &device).unwrap();
        let mut losses = Vec::new();
        train(model, &names, &corpus, &config, &device, &mut |r| {
            losses.push(r.loss)
        })
        .unwrap();
        losses
    };
    assert_eq!(run(), run());
}

#[test]
fn accumulating_two_half_batches_equals_one_full_batch() {
    let text = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/corpus/kjv-genesis-exodus.txt"),
    )
    .unwrap();
    let tokens = ByteTokenizer.encode(&text[..20_000]).unwrap();
    let base = TrainConfig {
        steps: 4,
        ctx: 16,
        lr: 3e-2,
        warmup: 1,
        eval_every: 0,
        ..TrainConfig::default()
    };
    let corpus = TokenCorpus::split(tokens, 0.05, base.ctx, 256).unwrap();
    let device = DeviceSpec::available()[0].device().unwrap().autodiff();
    let mut model_config = config_for(Version::V7, 1, 64);
    model_config.vocab_size = 256;
    let run = |config: TrainConfig| {
        let (model, names) = rwkv_burn::init::training_model(&model_config, 1, &device).unwrap();
        let mut losses = Vec::new();
        train(model, &names, &corpus, &config, &device, &mut |r| {
            losses.push(r.loss)
        })
        .unwrap();
        losses
    };
    let whole = run(TrainConfig {
        batch: 4,
        accumulate: 1,
        ..base.clone()
    });
    let halves = run(TrainConfig {
        batch: 2,
        accumulate: 2,
        ..base
    });
    for (a, b) in whole.iter().zip(&halves) {
        assert!((a - b).abs() < 1e-4, "{whole:?} vs {halves:?}");
    }
    // The updates are large enough that dropping half the gradient would show.
    let half_lr = run(TrainConfig {
        batch: 4,
        lr: 1.5e-2,
        ..base.clone()
    });
    assert!(
        (whole[3] - half_lr[3]).abs() > 1e-3,
        "{whole:?} vs {half_lr:?}"
    );
}

#[test]
fn bf16_mixed_precision_trains_like_f32() {
    let text = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/corpus/kjv-genesis-exodus.txt"),
    )
    .unwrap();
    let tokens = ByteTokenizer.encode(&text[..40_000]).unwrap();
    let base = TrainConfig {
        steps: 60,
        batch: 4,
        ctx: 32,
        lr: 3e-3,
        lr_final: 3e-4,
        warmup: 5,
        eval_every: 0,
        ..TrainConfig::default()
    };
    let corpus = TokenCorpus::split(tokens, 0.05, base.ctx, 256).unwrap();
    let device = DeviceSpec::available()[0].device().unwrap().autodiff();
    let mut model_config = config_for(Version::V7, 1, 64);
    model_config.vocab_size = 256;
    let run = |compute_dtype| {
        let (model, names) = rwkv_burn::init::training_model(&model_config, 2, &device).unwrap();
        let config = TrainConfig {
            compute_dtype,
            ..base.clone()
        };
        let mut losses = Vec::new();
        let model = train(model, &names, &corpus, &config, &device, &mut |r| {
            losses.push(r.loss)
        })
        .unwrap();
        let valid = validation_loss(&model, &corpus, base.batch, base.ctx, &device);
        (losses, valid)
    };
    let (exact, exact_valid) = run(None);
    let (half, half_valid) = run(Some(burn::tensor::FloatDType::BF16));
    // Same first batch and weights: the losses differ only by bf16 rounding.
    assert!(
        (exact[0] - half[0]).abs() < 0.02 * exact[0],
        "first loss {} vs {}",
        exact[0],
        half[0]
    );
    assert!(half.iter().all(|l| l.is_finite()));
    // It learns as the f32 run does (both well below the uniform 5.55 nats).
    assert!(
        half_valid < 256f32.ln() - 1.0 && (half_valid - exact_valid).abs() < 0.15,
        "validation loss bf16 {half_valid} vs f32 {exact_valid}"
    );
}

#[test]
fn the_schedule_warms_up_then_anneals_to_the_final_rate() {
    let config = TrainConfig {
        steps: 10,
        lr: 1e-3,
        lr_final: 1e-4,
        warmup: 4,
        ..TrainConfig::default()
    };
    let mut scheduler = config.lr_scheduler().unwrap();
    let lrs: Vec<f64> = (0..config.steps).map(|_| scheduler.step().base()).collect();
    assert!(
        (lrs[0] - 1e-4).abs() < 1e-12,
        "warmup starts at lr / 10: {lrs:?}"
    );
    assert!(lrs[..4].windows(2).all(|w| w[0] < w[1]), "{lrs:?}");
    assert!((lrs[4] - 1e-3).abs() < 1e-12, "decay starts at lr: {lrs:?}");
    assert!(lrs[4..].windows(2).all(|w| w[0] > w[1]), "{lrs:?}");
    assert!((lrs[9] - 1e-4).abs() < 1e-12, "ends at lr_final: {lrs:?}");
    // Settings Burn's schedulers refuse are an error, not a panic.
    let bad = TrainConfig {
        lr_final: 1e-2,
        ..config
    };
    assert!(bad.lr_scheduler().is_err());
}
