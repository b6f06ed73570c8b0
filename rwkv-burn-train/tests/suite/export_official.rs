//! `rwkv-train export` writes `.pth` files that the official `rwkv` package (0.8.32, the one
//! the fixtures come from) loads with `torch.load(weights_only=True)` and runs to the logits
//! this crate computes. Needs Python with torch and rwkv (`scripts/setup-torch.sh`); without
//! them the test prints why and passes, as the torch wheel is a multi-GB optional download.

use rwkv_burn::{State, load_model};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> PathBuf {
    std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/fixtures"))
}

/// A Python that can import torch and rwkv, or the reason there is none.
fn official_python() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = std::env::var_os("RWKV_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".cache/rwkv-burn/torch-venv/bin/python")),
        )
        .collect();
    for python in &candidates {
        let ok = Command::new(python)
            .args(["-c", "import torch, rwkv"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(python.clone());
        }
    }
    Err(format!(
        "no Python with torch and rwkv among {candidates:?}; run scripts/setup-torch.sh"
    ))
}

fn our_logits(model: &Path, tokens: &[u32]) -> Vec<Vec<f32>> {
    let device = rwkv_burn::DeviceSpec::Flex.device().unwrap();
    let (config, model) = load_model(model, &device).unwrap();
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let input = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(ids, [1, tokens.len()]),
        &device,
    );
    let logits = model.forward(input, &mut State::zeros(&config, 1, &device));
    let values = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    values
        .chunks(values.len() / tokens.len())
        .map(<[f32]>::to_vec)
        .collect()
}

#[test]
fn exported_pth_runs_in_the_official_package_to_the_same_logits() {
    let python = match official_python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = [3u32, 17, 1, 200, 5, 42, 9, 0];
    let models = [
        ("4", fixtures().join("rwkv4/weights.safetensors")),
        ("5", fixtures().join("rwkv5/weights.safetensors")),
        ("6", fixtures().join("rwkv6/weights.safetensors")),
        ("7", fixtures().join("rwkv7/weights.safetensors")),
        // The model this project trained and ships.
        (
            "7",
            workspace().join("rwkv-burn-infer/assets/default-model.safetensors"),
        ),
    ];
    for (i, (version, source)) in models.iter().enumerate() {
        let out = dir.path().join(format!("model{i}.pth"));
        let status = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
            .arg("export")
            .arg("--model")
            .arg(source)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "export of {}", source.display());
        let result = Command::new(&python)
            .arg(workspace().join("rwkv-burn-train/tests/official_logits.py"))
            .arg(&out)
            .arg(version)
            .arg(serde_json::to_string(&tokens).unwrap())
            .output()
            .unwrap();
        assert!(
            result.status.success(),
            "official package on {}: {}",
            source.display(),
            String::from_utf8_lossy(&result.stderr)
        );
        let official: Vec<Vec<f32>> = serde_json::from_slice(&result.stdout).unwrap();
        let ours = our_logits(&out, &tokens);
        assert_eq!(official.len(), ours.len());
        for (t, (a, b)) in official.iter().zip(&ours).enumerate() {
            assert_eq!(a.len(), b.len());
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-4 + 1e-4 * x.abs(),
                    "{}: position {t}, logit {j}: official {x}, ours {y}",
                    source.display()
                );
            }
        }
    }
}
