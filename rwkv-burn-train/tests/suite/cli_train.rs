//! `rwkv-train train` end to end: metrics, an official-format model that loads back.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn train_writes_metrics_and_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    let corpus =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/corpus/kjv-genesis-exodus.txt");
    std::fs::write(&data, &std::fs::read(corpus).unwrap()[..20_000]).unwrap();
    let out = dir.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args([
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args([
            "--version",
            "6",
            "--layers",
            "1",
            "--embd",
            "64",
            "--ctx",
            "16",
            "--batch",
            "2",
        ])
        .args(["--steps", "6", "--eval-every", "3", "--warmup", "2"])
        .args(["--precision", "bf16"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 7, "{metrics}");
    let device = rwkv_burn::DeviceSpec::available()[0].device().unwrap();
    let (config, _) = rwkv_burn::load_model(out.join("model.safetensors"), &device).unwrap();
    assert_eq!(
        (config.version, config.n_layer, config.vocab_size),
        (rwkv_burn::Version::V6, 1, 256)
    );

    // Bad input is an error, not a panic.
    let bad = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args([
            "train",
            "--data",
            "/nonexistent.txt",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent.txt"));
}

#[test]
fn prepare_jsonl_then_train_on_binidx() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("docs.jsonl");
    let mut lines = String::new();
    for i in 0..200 {
        lines.push_str(&format!(
            "{{\"text\": \"Document number {i} says hello to the world.\"}}\n"
        ));
    }
    std::fs::write(&jsonl, lines).unwrap();
    let prefix = dir.path().join("docs");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "prepare",
        "--input",
        jsonl.to_str().unwrap(),
        "--out",
        prefix.to_str().unwrap(),
    ]);
    let data = rwkv_burn_train::binidx::Binidx::open(&prefix).unwrap();
    assert_eq!(data.len(), 200);
    let tokens = data.all_tokens();
    assert_eq!(
        tokens.iter().filter(|&&t| t == 0).count(),
        200,
        "one end-of-text per document"
    );
    let out = dir.path().join("run");
    run(&[
        "train",
        "--data",
        prefix.with_extension("idx").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--layers",
        "1",
        "--embd",
        "64",
        "--ctx",
        "16",
        "--batch",
        "2",
        "--steps",
        "3",
        "--eval-every",
        "3",
    ]);
    assert!(out.join("model.safetensors").is_file());

    // Malformed input is reported with its line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"ok\"}\n{oops\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args([
            "prepare",
            "--input",
            bad.to_str().unwrap(),
            "--out",
            prefix.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

/// Loss column of metrics.csv, by step.
fn losses(metrics: &std::path::Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let mut cols = l.split(',');
            (
                cols.next().unwrap().parse().unwrap(),
                cols.next().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_killed_run_resumes_to_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    let corpus =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/corpus/kjv-genesis-exodus.txt");
    std::fs::write(&data, &std::fs::read(corpus).unwrap()[..40_000]).unwrap();
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--layers",
            "1",
            "--embd",
            "64",
            "--ctx",
            "16",
            "--batch",
            "2",
            "--steps",
            "300",
            "--eval-every",
            "5",
            "--seed",
            "9",
            // Two optimizer groups (decayed matrices, the rest) must both resume.
            "--weight-decay",
            "0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = dir.path().join("whole");
    let status = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args(args(&whole))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // Kill a second run once it has written a checkpoint past step 20.
    let killed = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args(args(&killed))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let latest = killed.join("checkpoints/latest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let step = std::fs::read_to_string(&latest)
            .ok()
            .and_then(|s| s.trim().strip_prefix("step-")?.parse::<usize>().ok());
        if step.is_some_and(|s| s >= 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let mut resumed = args(&killed);
    resumed.push("--resume".into());
    let status = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args(&resumed)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(
        losses(&killed.join("metrics.csv")),
        losses(&whole.join("metrics.csv"))
    );
    // Only the newest checkpoints are kept.
    let kept = std::fs::read_dir(killed.join("checkpoints"))
        .unwrap()
        .count();
    assert_eq!(kept, 3, "two checkpoints and the latest pointer");

    // Resuming with other settings is refused.
    let mut other = args(&killed);
    other.extend(["--resume".into(), "--lr".into(), "0.1".into()]);
    let refused = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args(&other)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("same settings"));
}

/// State tuning and LoRA runs resume from their checkpoints (the tuned state or adapters and
/// their optimizer moments) to the losses of an uninterrupted run. The kill is simulated
/// exactly: the finished run's folder with its last checkpoint removed is what a run killed
/// after the earlier checkpoint leaves.
#[test]
fn tuning_runs_resume_to_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    std::fs::write(&base, rwkv_burn_infer::embedded::DEFAULT_MODEL).unwrap();
    let data = dir.path().join("text.txt");
    let corpus =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/corpus/kjv-genesis-exodus.txt");
    std::fs::write(&data, &std::fs::read(corpus).unwrap()[..20_000]).unwrap();
    for (mode, lr) in [("state", "0.5"), ("lora", "0.01")] {
        let whole = dir.path().join(format!("whole-{mode}"));
        let args = |out: &std::path::Path| -> Vec<String> {
            [
                "train",
                "--tune",
                mode,
                "--init-from",
                base.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--ctx",
                "32",
                "--batch",
                "2",
                "--steps",
                "6",
                "--eval-every",
                "3",
                "--lr",
                lr,
                "--warmup",
                "1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let run = |args: &[String]| {
            let out = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{mode}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&args(&whole));
        let killed = dir.path().join(format!("killed-{mode}"));
        std::fs::create_dir_all(killed.join("checkpoints/step-00000003")).unwrap();
        for entry in std::fs::read_dir(whole.join("checkpoints/step-00000003")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(
                entry.path(),
                killed
                    .join("checkpoints/step-00000003")
                    .join(entry.file_name()),
            )
            .unwrap();
        }
        std::fs::write(killed.join("checkpoints/latest"), "step-00000003").unwrap();
        let rows: Vec<&str> = std::fs::read_to_string(whole.join("metrics.csv"))
            .unwrap()
            .lines()
            .take(4)
            .map(|l| Box::leak(l.to_string().into_boxed_str()) as &str)
            .collect();
        std::fs::write(killed.join("metrics.csv"), rows.join("\n") + "\n").unwrap();
        let mut resumed = args(&killed);
        resumed.push("--resume".into());
        run(&resumed);
        assert_eq!(
            losses(&killed.join("metrics.csv")),
            losses(&whole.join("metrics.csv")),
            "{mode}"
        );
        let outputs: &[&str] = match mode {
            "state" => &["state.safetensors", "time_state.pth"],
            _ => &["adapter.safetensors"],
        };
        let device = rwkv_burn::DeviceSpec::available()[0].device().unwrap();
        let (config, _) = rwkv_burn_infer::embedded::load_default(&device).unwrap();
        for file in outputs {
            // The tensors (a header's metadata may list its keys in any order).
            let tensors = |dir: &std::path::Path| match *file {
                "adapter.safetensors" => rwkv_burn::safetensors_io::read(&dir.join(file)).unwrap(),
                _ => rwkv_burn::State::load(dir.join(file), &config, &device)
                    .unwrap()
                    .to_official(),
            };
            assert!(
                tensors(&killed) == tensors(&whole),
                "{mode}: {file} differs"
            );
        }
    }
}

/// `--grad-cp` recomputes instead of keeping: the same losses, step for step.
#[test]
fn gradient_checkpointing_changes_no_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    let corpus =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/corpus/kjv-genesis-exodus.txt");
    std::fs::write(&data, &std::fs::read(corpus).unwrap()[..20_000]).unwrap();
    let run = |extra: &[&str], out: &std::path::Path| {
        let status = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
            .args(["train", "--data", data.to_str().unwrap(), "--out"])
            .arg(out)
            .args([
                "--layers", "2", "--embd", "64", "--ctx", "32", "--batch", "2",
            ])
            .args(["--steps", "4", "--eval-every", "2"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        losses(&out.join("metrics.csv"))
    };
    let plain = run(&[], &dir.path().join("plain"));
    let checkpointed = run(&["--grad-cp"], &dir.path().join("cp"));
    assert_eq!(plain, checkpointed);
}

/// A half type the device cannot compute in is refused before anything is written: Burn's
/// ndarray backend stores no bf16 at all (as NVIDIA's Vulkan driver has no bf16 arithmetic,
/// where kernels computing in it failed to compile and poisoned the device).
#[test]
fn a_precision_the_device_cannot_compute_in_is_refused() {
    if !rwkv_burn::DeviceSpec::NdArray.is_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    std::fs::write(
        &data,
        "In the beginning God created the heaven and the earth.\n".repeat(50),
    )
    .unwrap();
    let out = dir.path().join("run");
    let output = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args(["train", "--data", data.to_str().unwrap(), "--out"])
        .arg(&out)
        .args([
            "--version",
            "7",
            "--layers",
            "1",
            "--embd",
            "64",
            "--ctx",
            "16",
        ])
        .args(["--batch", "2", "--steps", "2", "--device", "ndarray"])
        .args(["--precision", "bf16"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--precision bf16: ndarray cannot compute in BF16"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.join("metrics.csv").exists());
}
