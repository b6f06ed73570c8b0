//! `rwkv-train` against hostile use: numbers out of range, malformed batch files, outputs that
//! name inputs. Each must end with a typed error (status 1, a message naming the flag or the
//! file), never a panic.

use burn::tensor::TensorData;
use rwkv_burn::safetensors_io::{NamedTensor, write};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

/// Runs `rwkv-train args`, expecting status 1 and a message containing `needle`.
fn refused(args: &[&str], needle: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked"),
        "rwkv-train {args:?} panicked: {stderr}"
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "rwkv-train {args:?}: {stderr}"
    );
    assert!(stderr.contains(needle), "rwkv-train {args:?}: {stderr}");
}

#[test]
fn train_numbers_out_of_range_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    std::fs::write(
        &data,
        "a small text to train on, long enough for a few windows",
    )
    .unwrap();
    let data = data.to_str().unwrap();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--ctx", "0"], "--ctx is 0"),
        (&["--layers", "0"], "--layers is 0"),
        (&["--embd", "0"], "--embd is 0"),
        (&["--batch", "0"], "--batch is 0"),
        (&["--steps", "0"], "--steps is 0"),
        (&["--accumulate", "0"], "--accumulate is 0"),
        (&["--eval-every", "0"], "--eval-every is 0"),
        (&["--keep-last", "0"], "--keep-last is 0"),
        (&["--layers", "100000"], "--layers is 100000"),
        (&["--ctx", "18446744073709551615"], "--ctx is"),
        (&["--lr", "nan"], "--lr is NaN"),
        (&["--lr=-1"], "--lr is -1"),
        (&["--lr-final", "inf"], "--lr-final is inf"),
        (&["--weight-decay=-0.5"], "--weight-decay is -0.5"),
        (&["--grad-clip", "nan"], "--grad-clip is NaN"),
        (&["--valid-fraction", "0.9"], "--valid-fraction is 0.9"),
        (&["--batch", "65536", "--ctx", "1048576"], "tokens a step"),
        (&["--version", "9"], "unknown RWKV version 9"),
        (&["--embd", "100"], "multiple of the head size"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["train", "--data", data, "--out", out];
        args.extend_from_slice(extra);
        refused(&args, needle);
    }
    // Nothing was started: no run folder.
    assert!(!Path::new(out).exists());
}

#[test]
fn malformed_batch_files_are_refused_with_the_tensor_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("rwkv7/weights.safetensors");
    let model = model.to_str().unwrap();
    let write_batch = |name: &str, inputs: TensorData, targets: TensorData| {
        let path = dir.path().join(name);
        write(
            &path,
            &[
                NamedTensor::new("train_input_ids", inputs),
                NamedTensor::new("train_targets", targets),
            ],
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    };
    let ids = |values: Vec<i64>, shape: Vec<usize>| TensorData::new(values, shape);
    let cases = [
        (
            write_batch(
                "empty.safetensors",
                ids(vec![], vec![0, 4]),
                ids(vec![], vec![0, 4]),
            ),
            "at least one sequence",
        ),
        (
            write_batch(
                "rank3.safetensors",
                ids(vec![1; 8], vec![2, 2, 2]),
                ids(vec![1; 8], vec![2, 2, 2]),
            ),
            "must be [B, T]",
        ),
        (
            write_batch(
                "big-ids.safetensors",
                ids(vec![1, i64::MAX, 2, 3], vec![1, 4]),
                ids(vec![1, 2, 3, 4], vec![1, 4]),
            ),
            "train_input_ids",
        ),
        (
            write_batch(
                "negative.safetensors",
                ids(vec![1, 2, 3, 4], vec![1, 4]),
                ids(vec![1, -7, 3, 4], vec![1, 4]),
            ),
            "train_targets",
        ),
        (
            write_batch(
                "shapes.safetensors",
                ids(vec![1, 2, 3, 4], vec![1, 4]),
                ids(vec![1, 2, 3], vec![1, 3]),
            ),
            "differ in shape",
        ),
    ];
    for (batch, needle) in &cases {
        refused(&["loss", "--model", model, "--batch", batch], needle);
    }
    // A file that is not safetensors at all names the file.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    let junk = junk.to_str().unwrap();
    refused(
        &["loss", "--model", model, "--batch", junk],
        "junk.safetensors",
    );
}

#[test]
fn outputs_that_name_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    std::fs::copy(fixtures().join("rwkv7/weights.safetensors"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let model = model.to_str().unwrap();
    refused(
        &["export", "--model", model, "--out", model],
        "model.safetensors",
    );
    let batch = fixtures().join("rwkv7_train/expected.safetensors");
    let batch = batch.to_str().unwrap();
    refused(
        &["grad", "--model", model, "--batch", batch, "--out", model],
        "model.safetensors",
    );
    let folder = dir.path().join("folder.safetensors");
    std::fs::create_dir(&folder).unwrap();
    refused(
        &[
            "export",
            "--model",
            model,
            "--out",
            folder.to_str().unwrap(),
        ],
        "a directory",
    );
    assert_eq!(
        std::fs::read(model).unwrap(),
        before,
        "the input was changed"
    );
}
