//! Parity with the official `rwkv` package (RWKV-4, 5.2, 6, 7) and Hugging Face transformers.

use crate::common::{Expected, assert_matches, devices, fixtures, token_tensor};
use burn::tensor::{Device, Tensor};
use rwkv_burn::{Rwkv, RwkvConfig, State, load_model};

fn logits_vec(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Runs `tokens` from a zero state in the given chunk lengths; returns all logits and the
/// final state.
fn run_chunks(
    model: &Rwkv,
    config: &RwkvConfig,
    tokens: &[i64],
    chunks: &[usize],
    device: &Device,
) -> (Vec<f32>, State) {
    let mut state = State::zeros(config, 1, device);
    let mut logits = Vec::new();
    let mut start = 0;
    for &len in chunks {
        let chunk = token_tensor(&tokens[start..start + len], 1, device);
        logits.extend(logits_vec(model.forward(chunk, &mut state)));
        start += len;
    }
    assert_eq!(start, tokens.len());
    (logits, state)
}

fn check_official(version_dir: &str, weights: &str) {
    check_official_on(version_dir, weights, &devices());
}

/// The `.pth` fixture against the package. It is `torch.save` of the dict in
/// `weights.safetensors` (the fixtures' README), whose test runs on every device: where every
/// parameter loads bit-identical from both, the `.pth` reader is all that differs, so flex
/// alone checks it end to end (the step mode on lavapipe made each of these tests a minute of
/// CI). Where they differ, it runs on every device as well.
fn check_pth(version_dir: &str) {
    let dir = fixtures().join(version_dir);
    let every = devices();
    let flex: Vec<_> = every
        .iter()
        .filter(|(spec, _)| *spec == rwkv_burn::DeviceSpec::Flex)
        .cloned()
        .collect();
    let Some((_, device)) = flex.first() else {
        return check_official_on(version_dir, "weights.pth", &every);
    };
    let params = |file: &str| {
        let (_, model, names) = rwkv_burn::load::load_model_named(dir.join(file), device).unwrap();
        rwkv_burn::export::official_tensors(&model, &names)
            .into_iter()
            .map(|t| (t.name, t.data.shape().to_vec(), t.data.as_bytes().to_vec()))
            .collect::<Vec<_>>()
    };
    let same = params("weights.pth") == params("weights.safetensors");
    check_official_on(
        version_dir,
        "weights.pth",
        if same { &flex } else { &every },
    );
}

fn check_official_on(
    version_dir: &str,
    weights: &str,
    devices: &[(rwkv_burn::DeviceSpec, Device)],
) {
    let dir = fixtures().join(version_dir);
    check_model(
        &dir,
        &dir.join(weights),
        "expected.safetensors",
        devices,
        true,
    );
}

/// The model at `model` (a file or folder) against `dir`'s `expected` file, in full, step and
/// chunked modes and its final state, on `devices`. Chunks and dimensions come from
/// `dir/meta.json` (at its top level, or under `dims` for the format fixtures). Without
/// `gpu_steps`, wgpu devices run the full sequence only (their step mode takes about a minute
/// a model on lavapipe; the CPU devices run every mode).
pub fn check_model(
    dir: &std::path::Path,
    model_path: &std::path::Path,
    expected: &str,
    devices: &[(rwkv_burn::DeviceSpec, Device)],
    gpu_steps: bool,
) {
    let expected = Expected::open(dir.join(expected));
    let tokens = expected.tokens("tokens");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let chunks: Vec<usize> = meta["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as usize)
        .collect();
    let dims = if meta["dims"].is_object() {
        &meta["dims"]
    } else {
        &meta
    };
    let label = model_path
        .strip_prefix(fixtures())
        .unwrap_or(model_path)
        .display()
        .to_string();
    for (spec, device) in devices {
        let (config, model) = load_model(model_path, device).unwrap();
        let dims = |key: &str| dims[key].as_u64().unwrap() as usize;
        assert_eq!(
            (
                config.n_layer,
                config.n_embd,
                config.dim_ffn,
                config.vocab_size
            ),
            (
                dims("n_layer"),
                dims("n_embd"),
                dims("dim_ffn"),
                dims("vocab_size")
            )
        );
        let what = |mode: &str| format!("{label} on {spec}: {mode}");

        let (full, state) = run_chunks(&model, &config, &tokens, &[tokens.len()], device);
        assert_matches(&full, &expected.f32("logits_full"), &what("logits_full"));
        let state = state.sequence_official(0);
        let expected_state = expected.names().filter(|n| n.starts_with("state.")).count();
        assert_eq!(state.len(), expected_state, "{}", what("state tensors"));
        for tensor in state {
            let got = tensor.data.try_to_vec::<f32>().unwrap();
            assert_matches(&got, &expected.f32(&tensor.name), &what(&tensor.name));
        }

        if !gpu_steps
            && matches!(
                spec,
                rwkv_burn::DeviceSpec::Wgpu | rwkv_burn::DeviceSpec::Vulkan
            )
        {
            continue;
        }
        let (step, _) = run_chunks(&model, &config, &tokens, &vec![1; tokens.len()], device);
        assert_matches(&step, &expected.f32("logits_step"), &what("logits_step"));

        let (chunked, _) = run_chunks(&model, &config, &tokens, &chunks, device);
        assert_matches(
            &chunked,
            &expected.f32("logits_chunked"),
            &what("logits_chunked"),
        );
    }
}

#[test]
fn rwkv4_pth_matches_the_package() {
    check_pth("rwkv4");
}

#[test]
fn rwkv4_safetensors_matches_the_package() {
    check_official("rwkv4", "weights.safetensors");
}

#[test]
fn rwkv5_pth_matches_the_package() {
    check_pth("rwkv5");
}

#[test]
fn rwkv5_safetensors_matches_the_package() {
    check_official("rwkv5", "weights.safetensors");
}

#[test]
fn rwkv6_pth_matches_the_package() {
    check_pth("rwkv6");
}

#[test]
fn rwkv6_safetensors_matches_the_package() {
    check_official("rwkv6", "weights.safetensors");
}

#[test]
fn rwkv7_pth_matches_the_package() {
    check_pth("rwkv7");
}

#[test]
fn rwkv7_safetensors_matches_the_package() {
    check_official("rwkv7", "weights.safetensors");
}

#[test]
fn hugging_face_folder_matches_transformers() {
    let dir = fixtures().join("hf_rwkv4");
    let expected = Expected::open(dir.join("expected.safetensors"));
    let tokens = expected.tokens("input_ids");
    for (spec, device) in devices() {
        let (config, model) = load_model(&dir, &device).unwrap();
        let what = |mode: &str| format!("hf_rwkv4 on {spec}: {mode}");

        let (full, state) = run_chunks(&model, &config, &tokens, &[tokens.len()], &device);
        assert_matches(&full, &expected.f32("logits"), &what("logits"));
        let (step, _) = run_chunks(&model, &config, &tokens, &vec![1; tokens.len()], &device);
        assert_matches(&step, &expected.f32("logits_step"), &what("logits_step"));

        // transformers keeps state.{s} as [hidden, layer] with s = ffn_x, att_x, aa, bb, pp.
        let official = state.sequence_official(0);
        for (s, field) in ["ffn_x", "att_x", "att_aa", "att_bb", "att_pp"]
            .iter()
            .enumerate()
        {
            let hf = expected.f32(&format!("state.{s}"));
            for layer in 0..config.n_layer {
                let want: Vec<f32> = (0..config.n_embd)
                    .map(|c| hf[c * config.n_layer + layer])
                    .collect();
                let name = format!("state.{layer}.{field}");
                let got = official
                    .iter()
                    .find(|t| t.name == name)
                    .unwrap()
                    .data
                    .clone()
                    .try_to_vec::<f32>()
                    .unwrap();
                assert_matches(&got, &want, &what(&name));
            }
        }

        // A [2, 16] batch in one call.
        let batch_ids = expected.tokens("train_input_ids");
        let mut state = State::zeros(&config, 2, &device);
        let logits = model.forward(token_tensor(&batch_ids, 2, &device), &mut state);
        assert_eq!(logits.dims(), [2, 16, 256]);
        assert_matches(
            &logits_vec(logits),
            &expected.f32("train_logits"),
            &what("train_logits"),
        );
    }
}

#[test]
fn rwkv7_training_batch_matches_the_reference() {
    let expected = Expected::open(fixtures().join("rwkv7_train/expected.safetensors"));
    let weights = fixtures().join("rwkv7/weights.safetensors");
    let ids = expected.tokens("train_input_ids");
    for (spec, device) in devices() {
        let (config, model) = load_model(&weights, &device).unwrap();
        let mut state = State::zeros(&config, 2, &device);
        let logits = model.forward(token_tensor(&ids, 2, &device), &mut state);
        assert_eq!(logits.dims(), [2, 16, 256]);
        assert_matches(
            &logits_vec(logits),
            &expected.f32("train_logits"),
            &format!("rwkv7_train on {spec}: train_logits"),
        );
    }
}

#[test]
fn export_writes_every_official_key_and_reloads_to_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (_, device) = devices().remove(0);
    for version in ["rwkv4", "rwkv5", "rwkv6", "rwkv7"] {
        let source = fixtures().join(version).join("weights.safetensors");
        let (config, model, names) = rwkv_burn::load::load_model_named(&source, &device).unwrap();
        let out = dir.path().join(format!("{version}.safetensors"));
        rwkv_burn::export::save_official(&model, &names, &out).unwrap();
        // Same keys, shapes and values as the official file.
        let original = rwkv_burn::safetensors_io::read(&source).unwrap();
        let exported = rwkv_burn::safetensors_io::read(&out).unwrap();
        assert_eq!(
            original
                .iter()
                .map(|t| (&t.name, t.data.shape()))
                .collect::<Vec<_>>(),
            exported
                .iter()
                .map(|t| (&t.name, t.data.shape()))
                .collect::<Vec<_>>(),
            "{version}"
        );
        assert_eq!(original, exported, "{version}: values");
        let (_, reloaded) = load_model(&out, &device).unwrap();
        let tokens = token_tensor(&[1, 2, 3, 4], 1, &device);
        let a = model.forward(tokens.clone(), &mut State::zeros(&config, 1, &device));
        let b = reloaded.forward(tokens, &mut State::zeros(&config, 1, &device));
        assert_eq!(logits_vec(a), logits_vec(b), "{version}");
    }
}

/// Every tensor of a checkpoint as f32, by name.
fn checkpoint_tensors(path: &std::path::Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let checkpoint = rwkv_burn::load::Checkpoint::open(path).unwrap();
    let mut names: Vec<String> = checkpoint.names().map(str::to_owned).collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let (values, shape) = checkpoint.read_f32(&name).unwrap();
            (name, shape, values)
        })
        .collect()
}

#[test]
fn export_to_pth_and_half_precision_reloads_exactly() {
    use rwkv_burn::export::{StorageDType, official_tensors, write_official};
    let dir = tempfile::tempdir().unwrap();
    let (_, device) = devices().remove(0);
    for version in ["rwkv4", "rwkv7"] {
        let source = fixtures().join(version).join("weights.safetensors");
        let (_, model, names) = rwkv_burn::load::load_model_named(&source, &device).unwrap();
        let tensors = official_tensors(&model, &names);
        let original = checkpoint_tensors(&source);
        for (dtype, ext) in [
            (StorageDType::F32, "pth"),
            (StorageDType::BF16, "pth"),
            (StorageDType::F16, "pth"),
            (StorageDType::BF16, "safetensors"),
        ] {
            let out = dir.path().join(format!("{version}-{dtype:?}.{ext}"));
            write_official(&out, &tensors, dtype).unwrap();
            let round = |x: f32| match dtype {
                StorageDType::F32 => x,
                StorageDType::F16 => half::f16::from_f32(x).to_f32(),
                StorageDType::BF16 => half::bf16::from_f32(x).to_f32(),
            };
            let reread = checkpoint_tensors(&out);
            assert_eq!(reread.len(), original.len(), "{version} {dtype:?} {ext}");
            for ((name, shape, values), (rname, rshape, rvalues)) in original.iter().zip(&reread) {
                assert_eq!((name, shape), (rname, rshape), "{version} {dtype:?} {ext}");
                let expected: Vec<f32> = values.iter().map(|&x| round(x)).collect();
                assert_eq!(&expected, rvalues, "{version} {dtype:?} {ext}: {name}");
            }
            // The reloaded model is a working model of the same version.
            load_model(&out, &device).unwrap();
        }
    }
}

/// A model initialised for training (no checkpoint behind it) names and shapes every tensor
/// as the official checkpoint of the same configuration does, so its exports load in tools
/// that check shapes (RWKV-LM's `load_state_dict`, rwkv.cpp's converter).
#[test]
fn fresh_models_have_the_official_shapes() {
    let device = burn::tensor::Device::flex();
    for version in ["rwkv4", "rwkv5", "rwkv6", "rwkv7"] {
        let source = fixtures().join(version).join("weights.pth");
        let (config, _, official) = rwkv_burn::load::load_model_named(&source, &device).unwrap();
        let (_, fresh) = rwkv_burn::init::training_model(&config, 1, &device).unwrap();
        let shapes = |names: &rwkv_burn::weights::ParamNames| {
            let mut v: Vec<(String, Vec<usize>)> = names
                .0
                .iter()
                .map(|p| (p.name.clone(), p.stored_shape.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(shapes(&fresh), shapes(&official), "{version}");
    }
}

#[test]
fn export_refuses_an_unknown_extension() {
    let err = rwkv_burn::export::write_official(
        std::path::Path::new("model.bin"),
        &[],
        rwkv_burn::export::StorageDType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("model.bin") && err.contains(".pth"), "{err}");
}

#[test]
fn half_precision_compute_stays_close_to_f32() {
    use burn::tensor::FloatDType;
    let (_, device) = devices().remove(0);
    for version in ["rwkv4", "rwkv5", "rwkv6", "rwkv7"] {
        let (config, model) = load_model(
            fixtures().join(version).join("weights.safetensors"),
            &device,
        )
        .unwrap();
        let tokens = token_tensor(&[1, 2, 3, 4, 60, 7, 200, 9], 1, &device);
        let exact =
            logits_vec(model.forward(tokens.clone(), &mut State::zeros(&config, 1, &device)));
        let scale = exact.iter().fold(0f32, |m, x| m.max(x.abs()));
        for dtype in [FloatDType::BF16, FloatDType::F16] {
            // Only CubeCL devices lack a half type's arithmetic (NVIDIA's Vulkan: bf16 is
            // storage only; kernels computing in it failed to compile there and poisoned the
            // device); `rwkv-train --precision` refuses such a type.
            if !device.supports_dtype(dtype) {
                assert!(rwkv_burn::device::is_cubecl(&device), "{dtype:?}");
                eprintln!("{version}: no {dtype:?} arithmetic on this device, not run");
                continue;
            }
            let mut state = State::zeros(&config, 1, &device);
            let logits = model
                .clone()
                .cast(dtype)
                .forward(tokens.clone(), &mut state);
            assert_eq!(logits.dtype(), dtype.into(), "{version}");
            let half = logits_vec(logits.cast(FloatDType::F32));
            let worst = exact
                .iter()
                .zip(&half)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            // bf16 keeps 8 significant bits: a few ulps of the largest logit after two layers.
            assert!(
                worst <= 0.05 * scale,
                "{version} {dtype:?}: worst {worst} vs scale {scale}"
            );
            // The recurrent state stays f32, so a half-precision run can hand it to an f32 one.
            assert_eq!(state.layers[0].att_x.dtype(), burn::tensor::DType::F32);
        }
    }
}
