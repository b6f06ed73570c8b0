//! `rwkv-train train --tune state`: the embedded model, frozen, is taught a fixed reply to a
//! fixed prompt (a chat conversation, trained on the reply) by its initial state alone; the
//! tuned state lowers the held-out loss, makes greedy decoding give the reply, loads from
//! both written layouts, and the model's weights stay bit-identical.

use burn::tensor::{Device, Tensor};
use rwkv_burn::{Rwkv, RwkvConfig, State};
use rwkv_burn_train::loss::cross_entropy;
use rwkv_burn_train::state_tuning::{InitialState, StateTuning};
use std::process::Command;

const QUESTION: &str = "What is the secret word?";
const ANSWER: &str = "Marmalade.";
/// The conversation as the chat template renders it: the prompt, then the reply.
const PROMPT: &str = "User: What is the secret word?\n\nAssistant:";
const REPLY: &str = " Marmalade.";

fn lesson(times: usize) -> String {
    format!("{PROMPT}{REPLY}\n\n").repeat(times)
}

fn ids(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Mean loss of the reply and the blank line after it (what chat training counts), after the
/// prompt, starting from `state`.
fn reply_loss(model: &Rwkv, state: &State, device: &Device) -> f32 {
    let all = ids(&lesson(1));
    let first = PROMPT.len();
    let inputs = rwkv_burn::model::token_tensor(&all[..all.len() - 1], 1, device);
    let logits = model.forward(inputs, &mut state.clone());
    let [_, len, vocab] = logits.dims();
    let logits = logits.slice([0..1, first - 1..len, 0..vocab]);
    let targets = rwkv_burn::model::token_tensor(&all[first..], 1, device);
    cross_entropy(logits, targets).into_scalar::<f32>()
}

/// `count` bytes of greedy decoding after `prompt`, from `state`.
fn greedy(model: &Rwkv, state: &State, prompt: &str, count: usize, device: &Device) -> String {
    let mut state = state.clone();
    let mut input: Vec<u32> = ids(prompt);
    let mut out = Vec::new();
    for _ in 0..count {
        let tokens = rwkv_burn::model::token_tensor(&input, 1, device);
        let logits: Tensor<3> = model.forward(tokens, &mut state);
        let [_, len, vocab] = logits.dims();
        let last = logits
            .slice([0..1, len - 1..len, 0..vocab])
            .reshape([vocab]);
        let next = last.argmax(0).into_scalar::<i64>() as u32;
        out.push(next as u8);
        input = vec![next];
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn embedded(device: &Device) -> (RwkvConfig, Rwkv) {
    rwkv_burn_infer::embedded::load_default(device).unwrap()
}

#[test]
fn a_tuned_state_teaches_the_frozen_model_a_reply() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("base.safetensors");
    std::fs::write(&model_path, rwkv_burn_infer::embedded::DEFAULT_MODEL).unwrap();
    let jsonl = dir.path().join("lesson.jsonl");
    let line = serde_json::json!({"messages": [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": ANSWER},
    ]});
    std::fs::write(&jsonl, format!("{line}\n").repeat(40)).unwrap();
    let data = dir.path().join("lesson");
    let prepared = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args(["prepare", "--input"])
        .arg(&jsonl)
        .arg("--out")
        .arg(&data)
        .output()
        .unwrap();
    assert!(prepared.status.success());
    let out = dir.path().join("run");
    // RWKV-PEFT tunes states at learning rates near 1: a state is not a weight matrix.
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
            .args(["train", "--tune", "state", "--init-from"])
            .arg(&model_path)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args([
                "--ctx", "64", "--batch", "4", "--steps", "60", "--warmup", "0",
            ])
            .args(["--lr", "1", "--lr-final", "0.1", "--eval-every", "30"])
            .args(["--valid-fraction", "0.1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let output = run(&[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !out.join("model.safetensors").exists(),
        "state tuning writes no model"
    );
    let device = rwkv_burn::DeviceSpec::available()[0].device().unwrap();
    let (config, model) = embedded(&device);
    let zero = State::zeros(&config, 1, &device);
    let tuned = State::load(out.join("state.safetensors"), &config, &device).unwrap();
    let peft = State::load(out.join("time_state.pth"), &config, &device).unwrap();
    assert_eq!(
        tuned.to_official(),
        peft.to_official(),
        "both layouts hold one state"
    );
    // The held-out conversations' loss, as the run measured it (over the reply), against
    // the model's own from a zero state.
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let last = metrics.lines().last().unwrap();
    let after: f32 = last.split(',').nth(3).unwrap().parse().unwrap();
    let before = reply_loss(&model, &zero, &device);
    assert!(
        (reply_loss(&model, &tuned, &device) - after).abs() < 1e-3,
        "the run's validation loss is the reply's loss from the tuned state"
    );
    assert!(
        after < 0.5 * before,
        "held-out loss {before} -> {after}: not halved"
    );
    assert_eq!(greedy(&model, &tuned, PROMPT, REPLY.len(), &device), REPLY);
    assert_ne!(
        greedy(&model, &zero, PROMPT, REPLY.len(), &device),
        REPLY,
        "the base model did not know it"
    );

    // A state-tuning run refuses RWKV-4 and needs a model to tune.
    let refused = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args(["train", "--tune", "state", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--init-from"));
}

/// Only the state changes: every weight of the frozen model is bit-identical after tuning.
#[test]
fn tuning_leaves_the_weights_bit_identical() {
    use rwkv_burn_train::data::TokenCorpus;
    use rwkv_burn_train::trainer::{TrainConfig, train};
    let device = rwkv_burn::DeviceSpec::available()[0]
        .device()
        .unwrap()
        .autodiff();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.safetensors");
    std::fs::write(&path, rwkv_burn_infer::embedded::DEFAULT_MODEL).unwrap();
    let (config, model, names) = rwkv_burn::load::load_model_named(&path, &device).unwrap();
    let before = rwkv_burn::export::official_tensors(&model, &names);
    let corpus = TokenCorpus::split(ids(&lesson(50)), 0.1, 32, config.vocab_size).unwrap();
    let settings = TrainConfig {
        steps: 3,
        batch: 2,
        ctx: 32,
        lr: 0.05,
        warmup: 0,
        eval_every: 3,
        ..TrainConfig::default()
    };
    let start = InitialState::zeros(&config, &device).unwrap();
    let tuning = StateTuning::new(model, start);
    let tuned = train(
        tuning,
        &rwkv_burn::weights::ParamNames::default(),
        &corpus,
        &settings,
        &device,
        &mut |_| {},
    )
    .unwrap();
    let after = rwkv_burn::export::official_tensors(&tuned.model, &names);
    assert_eq!(before, after);
    let state = tuned.state.to_state(&config);
    let zero = State::zeros(&config, 1, &device);
    assert_ne!(state.to_official(), zero.to_official(), "the state moved");
}
