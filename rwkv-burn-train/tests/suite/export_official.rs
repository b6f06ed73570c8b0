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

/// The official package's logits of every position for a `.pth` (`tests/official_logits.py`).
fn official_logits(python: &Path, pth: &Path, version: &str, tokens: &[u32]) -> Vec<Vec<f32>> {
    let result = Command::new(python)
        .arg(workspace().join("rwkv-burn-train/tests/official_logits.py"))
        .arg(pth)
        .arg(version)
        .arg(serde_json::to_string(&tokens).unwrap())
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "official package on {}: {}",
        pth.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    serde_json::from_slice(&result.stdout).unwrap()
}

/// Every official logit within `1e-4 + 1e-4·|official|` of ours (rows of the vocabulary).
fn assert_logits_match(official: &[Vec<f32>], ours: &[Vec<f32>], what: &str) {
    assert_eq!(official.len(), ours.len(), "{what}");
    for (t, (a, b)) in official.iter().zip(ours).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}");
        for (j, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 + 1e-4 * x.abs(),
                "{what}: position {t}, logit {j}: official {x}, ours {y}"
            );
        }
    }
}

/// `model`'s logits of `tokens` from `state`, one row per position.
fn logits_from(model: &rwkv_burn::Rwkv, state: &mut State, tokens: &[u32]) -> Vec<Vec<f32>> {
    let device = rwkv_burn::DeviceSpec::Flex.device().unwrap();
    let input = rwkv_burn::model::token_tensor(tokens, 1, &device);
    let values: Vec<f32> = model
        .forward(input, state)
        .into_data()
        .try_to_vec()
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
        let official = official_logits(&python, &out, version, &tokens);
        assert_logits_match(
            &official,
            &our_logits(&out, &tokens),
            &source.display().to_string(),
        );
    }
}

/// A state-tuning file (`blocks.{i}.att.time_state`) means the same to us as to the official
/// package: it reads the tensors from the model file and transposes them into its RWKV-5/6
/// state (`rwkv/model.py`, `args.time_state`); we load them as a state file. Same logits.
#[test]
fn time_state_files_start_where_the_official_package_starts() {
    use burn::tensor::{Tensor, TensorData};
    use rwkv_burn::export::{StorageDType, official_tensors, write_official};
    use rwkv_burn::state::WkvState;
    let python = match official_python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = [3u32, 17, 1, 200, 5, 42];
    let device = rwkv_burn::DeviceSpec::Flex.device().unwrap();
    for version in ["5", "6"] {
        let source = fixtures().join(format!("rwkv{version}/weights.safetensors"));
        let (config, model, names) = rwkv_burn::load::load_model_named(&source, &device).unwrap();
        // Distinct values everywhere, so a transposed or misplaced matrix shows.
        let mut state = State::zeros(&config, 1, &device);
        for (layer_index, layer) in state.layers.iter_mut().enumerate() {
            if let WkvState::Matrix(kv) = &layer.wkv {
                let dims = kv.dims();
                let count: usize = dims.iter().product();
                let values: Vec<f32> = (0..count)
                    .map(|i| ((i * 7 + layer_index * 13) as f32 * 0.37).sin() * 0.5)
                    .collect();
                layer.wkv =
                    WkvState::Matrix(Tensor::from_data(TensorData::new(values, dims), &device));
            }
        }
        let peft = rwkv_burn::time_state::to_time_state(&state, &config, 0).unwrap();
        let state_path = dir.path().join(format!("state{version}.pth"));
        write_official(&state_path, &peft, StorageDType::F32).unwrap();
        let mut tensors = official_tensors(&model, &names);
        tensors.extend(peft);
        let model_path = dir.path().join(format!("model{version}.pth"));
        write_official(&model_path, &tensors, StorageDType::F32).unwrap();
        let official = official_logits(&python, &model_path, version, &tokens);
        let mut loaded = State::load(&state_path, &config, &device).unwrap();
        let ours = logits_from(&model, &mut loaded, &tokens);
        assert_logits_match(
            &official,
            &ours,
            &format!("RWKV-{version} with a time_state"),
        );
        let zero_start = our_logits(&source, &tokens);
        let moved = ours
            .iter()
            .flatten()
            .zip(zero_start.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(moved > 1e-2, "the state changed the logits ({moved})");
    }
}

/// LoRA adapters merged into a `.pth` (`rwkv-train merge`) run in the official package to
/// the logits our model computes with the adapters applied unmerged, on every version.
#[test]
fn merged_lora_pth_runs_in_the_official_package_like_the_adapted_model() {
    use rwkv_burn::adapters::{self, LoraSpec, Targets};
    let python = match official_python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = [3u32, 17, 1, 200, 5, 42];
    let device = rwkv_burn::DeviceSpec::Flex.device().unwrap();
    for version in ["4", "5", "6", "7"] {
        let source = fixtures().join(format!("rwkv{version}/weights.safetensors"));
        let (_, mut model, _) = rwkv_burn::load::load_model_named(&source, &device).unwrap();
        let spec = LoraSpec::new(4, 8.0, Targets::parse("att,ffn").unwrap()).unwrap();
        adapters::attach_fresh(&mut model, &spec, 1).unwrap();
        // Fresh adapters start with B = 0; trained ones do not.
        super::lora::nonzero_b(&mut model, &device);
        let adapter = dir.path().join(format!("adapter{version}.safetensors"));
        adapters::save(&model, &spec, &adapter).unwrap();
        let merged = dir.path().join(format!("merged{version}.pth"));
        let status = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
            .args(["merge", "--model"])
            .arg(&source)
            .arg("--lora")
            .arg(&adapter)
            .arg("--out")
            .arg(&merged)
            .status()
            .unwrap();
        assert!(status.success());
        let official = official_logits(&python, &merged, version, &tokens);
        let mut state = State::zeros(&model.config(), 1, &device);
        let ours = logits_from(&model, &mut state, &tokens);
        assert_logits_match(
            &official,
            &ours,
            &format!("RWKV-{version} merged vs adapted"),
        );
    }
}
