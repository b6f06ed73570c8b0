//! Chat fine-tuning data: `prepare` renders conversations with a loss mask, training takes
//! them whole, and the loss of a padded batch is the mean cross-entropy over the assistant's
//! tokens only.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};
use rwkv_burn::State;
use rwkv_burn_train::loss::batch_loss;
use rwkv_burn_train::sft::{Sample, padded_batch, sample};
use serde_json::json;
use std::process::Command;

fn bytes() -> Box<dyn rwkv_burn::tokenizer::Tokenizer> {
    rwkv_burn::tokenizer::choose(Some("bytes"), 0).unwrap()
}

/// Log-probabilities of every next token of `sample` alone (no padding), from a zero state.
fn log_probs(model: &rwkv_burn::Rwkv, sample: &Sample, device: &Device) -> Vec<f64> {
    let config = model.config();
    let n = sample.tokens.len() - 1;
    let inputs = rwkv_burn::model::token_tensor(&sample.tokens[..n], 1, device);
    let logits: Tensor<3> = model.forward(inputs, &mut State::zeros(&config, 1, device));
    let vocab = config.vocab_size;
    let lp: Vec<f32> = log_softmax(logits.reshape([n, vocab]), 1)
        .into_data()
        .try_to_vec()
        .unwrap();
    (0..n)
        .map(|t| f64::from(lp[t * vocab + sample.tokens[t + 1] as usize]))
        .collect()
}

#[test]
fn a_padded_batch_costs_the_mean_over_assistant_tokens() {
    let device = rwkv_burn::DeviceSpec::available()[0].device().unwrap();
    let (_, model) = rwkv_burn_infer::embedded::load_default(&device).unwrap();
    let long = sample(
        &json!({"messages": [
            {"role": "user", "content": "Who made the heaven?"},
            {"role": "assistant", "content": "God made the heaven and the earth."},
        ]}),
        bytes().as_ref(),
        1,
    )
    .unwrap();
    let short = sample(
        &json!({"messages": [
            {"role": "user", "content": "And?"},
            {"role": "assistant", "content": "Light."},
        ]}),
        bytes().as_ref(),
        2,
    )
    .unwrap();
    let batch = padded_batch(&[&long, &short], &device);
    let logits = model.forward(
        batch.inputs.clone(),
        &mut State::zeros(&model.config(), 2, &device),
    );
    let ours = f64::from(batch_loss(logits, &batch).into_scalar::<f32>());
    // By hand: each conversation alone, the assistant's tokens only, one mean over both.
    let mut total = 0.0;
    let mut count = 0usize;
    for s in [&long, &short] {
        for (t, lp) in log_probs(&model, s, &device).into_iter().enumerate() {
            if s.mask[t + 1] {
                total -= lp;
                count += 1;
            }
        }
    }
    let expected = total / count as f64;
    assert_eq!(
        count,
        " God made the heaven and the earth.\n\n Light.\n\n".len()
    );
    assert!(
        (ours - expected).abs() <= 1e-5 * expected.abs(),
        "{ours} vs {expected}"
    );
}

#[test]
fn prepare_writes_conversations_with_a_mask_and_training_takes_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("chat.jsonl");
    let mut lines = String::new();
    for i in 0..24 {
        lines.push_str(
            &json!({"messages": [
                {"role": "system", "content": "You count."},
                {"role": "user", "content": format!("What comes after {i}?")},
                {"role": "assistant", "content": format!("{}.", i + 1)},
            ]})
            .to_string(),
        );
        lines.push('\n');
    }
    lines.push_str(&json!({"text": "And God saw the light."}).to_string());
    lines.push('\n');
    std::fs::write(&jsonl, &lines).unwrap();
    let prefix = dir.path().join("chat");
    let train_cli = || Command::new(env!("CARGO_BIN_EXE_rwkv-train"));
    let out = train_cli()
        .args(["prepare", "--input"])
        .arg(&jsonl)
        .arg("--out")
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mask = std::fs::read(dir.path().join("chat.mask")).unwrap();
    let docs = rwkv_burn_train::binidx::Binidx::open(&prefix)
        .unwrap()
        .documents();
    assert_eq!(docs.len(), 25);
    assert_eq!(mask.len(), docs.iter().map(Vec::len).sum::<usize>());
    // The first conversation: only " 1.\n\n" is trained.
    let first: Vec<u8> = docs[0]
        .iter()
        .zip(&mask)
        .filter(|(_, m)| **m == 1)
        .map(|(&t, _)| t as u8)
        .collect();
    assert_eq!(first, b" 1.\n\n");

    let run = dir.path().join("run");
    let model = dir.path().join("base.safetensors");
    std::fs::write(&model, rwkv_burn_infer::embedded::DEFAULT_MODEL).unwrap();
    let out = train_cli()
        .args(["train", "--data"])
        .arg(&prefix)
        .arg("--init-from")
        .arg(&model)
        .arg("--out")
        .arg(&run)
        .args([
            "--ctx",
            "128",
            "--batch",
            "4",
            "--steps",
            "4",
            "--eval-every",
            "2",
        ])
        .args(["--lr", "1e-4", "--warmup", "0", "--valid-fraction", "0.2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("on 20 samples, validating on 5 samples"),
        "{stderr}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 5, "{metrics}");

    // Bad conversations are refused with the file and line named, and nothing is written.
    for (line, needle) in [
        (json!({"messages": [{"role": "user"}]}), "no \"content\""),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
            "unknown role \"wizard\"",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}),
            "(Assistant) is empty",
        ),
    ] {
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, format!("{}\n{line}\n", lines.lines().next().unwrap())).unwrap();
        let out = train_cli()
            .args(["prepare", "--input"])
            .arg(&bad)
            .arg("--out")
            .arg(dir.path().join("bad"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("bad.jsonl") && stderr.contains("line 2") && stderr.contains(needle),
            "{stderr}"
        );
        assert!(!dir.path().join("bad.bin").exists());
        assert!(!dir.path().join("bad.mask").exists());
    }
}
