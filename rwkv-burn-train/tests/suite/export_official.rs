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
        let result = Command::new(&python)
            .arg(workspace().join("rwkv-burn-train/tests/official_logits.py"))
            .arg(&model_path)
            .arg(version)
            .arg(serde_json::to_string(&tokens).unwrap())
            .output()
            .unwrap();
        assert!(
            result.status.success(),
            "official package: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let official: Vec<Vec<f32>> = serde_json::from_slice(&result.stdout).unwrap();
        let mut loaded = State::load(&state_path, &config, &device).unwrap();
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let input = Tensor::<2, burn::tensor::Int>::from_data(
            TensorData::new(ids, [1, tokens.len()]),
            &device,
        );
        let ours: Vec<f32> = model
            .forward(input, &mut loaded)
            .into_data()
            .try_to_vec()
            .unwrap();
        let vocab = ours.len() / tokens.len();
        let zero_start = our_logits(&source, &tokens);
        let mut moved = 0.0f32;
        for (t, row) in official.iter().enumerate() {
            for (j, x) in row.iter().enumerate() {
                let y = ours[t * vocab + j];
                assert!(
                    (x - y).abs() <= 1e-4 + 1e-4 * x.abs(),
                    "RWKV-{version}: position {t}, logit {j}: official {x}, ours {y}"
                );
                moved = moved.max((y - zero_start[t][j]).abs());
            }
        }
        assert!(moved > 1e-2, "the state changed the logits ({moved})");
    }
}

/// LoRA adapters merged into a `.pth` (`rwkv-train merge`) run in the official package to
/// the logits our model computes with the adapters applied unmerged, on every version.
#[test]
fn merged_lora_pth_runs_in_the_official_package_like_the_adapted_model() {
    use burn::tensor::{Tensor, TensorData};
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
        for (i, (_, projection)) in model.named_projections_mut().into_iter().enumerate() {
            if let Some(lora) = &mut projection.lora {
                let [r, out] = lora.b.dims();
                let values: Vec<f32> = (0..r * out)
                    .map(|j| ((j * 13 + i * 5) as f32 * 0.77).sin() * 0.05)
                    .collect();
                let id = lora.b.id;
                lora.b = burn::module::Param::from_tensor(Tensor::from_data(
                    TensorData::new(values, [r, out]),
                    &device,
                ));
                lora.b.id = id;
            }
        }
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
        let result = Command::new(&python)
            .arg(workspace().join("rwkv-burn-train/tests/official_logits.py"))
            .arg(&merged)
            .arg(version)
            .arg(serde_json::to_string(&tokens).unwrap())
            .output()
            .unwrap();
        assert!(
            result.status.success(),
            "official package: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let official: Vec<Vec<f32>> = serde_json::from_slice(&result.stdout).unwrap();
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let input = Tensor::<2, burn::tensor::Int>::from_data(
            TensorData::new(ids, [1, tokens.len()]),
            &device,
        );
        let mut state = State::zeros(&model.config(), 1, &device);
        let ours: Vec<f32> = model
            .forward(input, &mut state)
            .into_data()
            .try_to_vec()
            .unwrap();
        let vocab = ours.len() / tokens.len();
        for (t, row) in official.iter().enumerate() {
            for (j, x) in row.iter().enumerate() {
                let y = ours[t * vocab + j];
                assert!(
                    (x - y).abs() <= 1e-4 + 1e-4 * x.abs(),
                    "RWKV-{version}: position {t}, logit {j}: official {x}, ours (adapted) {y}"
                );
            }
        }
    }
}
