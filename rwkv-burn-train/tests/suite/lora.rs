//! LoRA adapters: their gradients (against the chain rule through the merged model's
//! autodiff gradient, and against finite differences), merging (the merged model computes
//! what the adapted one does, on every fixture version, and runs in the official package),
//! adapter files, and `rwkv-train train --tune lora` / `merge` end to end.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rwkv_burn::adapters::{self, LoraSpec, Targets};
use rwkv_burn::{Rwkv, State};
use rwkv_burn_train::loss::next_token_loss;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

fn model_path(version: u8) -> PathBuf {
    fixtures().join(format!("rwkv{version}/weights.safetensors"))
}

fn spec(rank: usize, targets: &str) -> LoraSpec {
    LoraSpec::new(rank, 2.0 * rank as f32, Targets::parse(targets).unwrap()).unwrap()
}

/// Fresh adapters start with `B = 0`; give every `B` values too, so the term is not zero.
pub(crate) fn nonzero_b(model: &mut Rwkv, device: &Device) {
    for (index, (_, projection)) in model.named_projections_mut().into_iter().enumerate() {
        if let Some(lora) = &mut projection.lora {
            let [r, out] = lora.b.dims();
            let values: Vec<f32> = (0..r * out)
                .map(|i| ((i * 31 + index * 7) as f32 * 0.61).sin() * 0.05)
                .collect();
            let id = lora.b.id;
            lora.b =
                Param::from_tensor(Tensor::from_data(TensorData::new(values, [r, out]), device));
            lora.b.id = id;
        }
    }
}

fn tokens(device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let ids: Vec<u32> = vec![3, 17, 1, 200, 5, 42, 9, 0, 77, 128, 64];
    let n = ids.len() - 1;
    (
        rwkv_burn::model::token_tensor(&ids[..n], 1, device),
        rwkv_burn::model::token_tensor(&ids[1..], 1, device),
    )
}

fn logits(model: &Rwkv, device: &Device) -> Vec<f32> {
    let (inputs, _) = tokens(device);
    let mut state = State::zeros(&model.config(), 1, device);
    model
        .forward(inputs, &mut state)
        .into_data()
        .try_to_vec()
        .unwrap()
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// Merging folds the adapters into the weights: the merged model's logits equal the adapted
/// model's on every version (v4's, v5's and v6's gates and channel-mix receptance included);
/// an adapter file round-trips onto a freshly loaded model; another model's adapter is
/// refused with the tensor named.
#[test]
fn merged_models_compute_what_adapted_ones_do_on_every_version() {
    let device = rwkv_burn::DeviceSpec::available()[0].device().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for version in [4u8, 5, 6, 7] {
        let (_, mut model, _) =
            rwkv_burn::load::load_model_named(model_path(version), &device).unwrap();
        let plain = logits(&model, &device);
        let spec = spec(4, "att,ffn,head");
        let count = adapters::attach_fresh(&mut model, &spec, 9).unwrap();
        // Two layers' time-mix and channel-mix projections, and the head.
        let per_layer = match version {
            4 => 4 + 3,
            5 | 6 => 5 + 3,
            _ => 4 + 2,
        };
        assert_eq!(count, 2 * per_layer + 1, "v{version}");
        close(
            &logits(&model, &device),
            &plain,
            "fresh adapters change nothing",
        );
        nonzero_b(&mut model, &device);
        let adapted = logits(&model, &device);
        let moved = adapted
            .iter()
            .zip(&plain)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            moved > 1e-3,
            "v{version}: the adapters change the logits ({moved})"
        );

        let file = dir.path().join(format!("adapter{version}.safetensors"));
        adapters::save(&model, &spec, &file).unwrap();
        let (_, mut fresh, _) =
            rwkv_burn::load::load_model_named(model_path(version), &device).unwrap();
        assert_eq!(adapters::load(&mut fresh, &file).unwrap(), spec);
        close(&logits(&fresh, &device), &adapted, "loaded adapters");

        let merged_count = adapters::merge(&mut model).unwrap();
        assert_eq!(merged_count, count);
        close(
            &logits(&model, &device),
            &adapted,
            &format!("v{version} merged"),
        );

        if version == 7 {
            let (_, mut other, _) =
                rwkv_burn::load::load_model_named(model_path(6), &device).unwrap();
            let err = adapters::load(&mut other, &file).unwrap_err().to_string();
            assert!(
                err.contains("adapter7.safetensors") && err.contains("lora_"),
                "{err}"
            );
        }
    }
}

/// The adapters' gradients follow from the merged weight's: with `W' = W + s A B`,
/// `dL/dA = s dL/dW' B^T` and `dL/dB = s A^T dL/dW'`, where `dL/dW'` is plain autodiff
/// through the merged model (whose gradients match the fixtures' references); and they
/// match central finite differences of the loss.
#[test]
fn adapter_gradients_follow_the_merged_weights_and_finite_differences() {
    let device = rwkv_burn::DeviceSpec::available()[0]
        .device()
        .unwrap()
        .autodiff();
    let (_, model, names) = rwkv_burn::load::load_model_named(model_path(7), &device).unwrap();
    let mut adapted = model.clone().freeze();
    adapters::attach_fresh(&mut adapted, &spec(3, "att.key,ffn.value"), 4).unwrap();
    nonzero_b(&mut adapted, &device);
    let (inputs, targets) = tokens(&device);
    let loss = next_token_loss(&adapted, inputs.clone(), targets.clone());
    let grads = GradientsParams::from_grads(loss.backward(), &adapted);

    // The merged model: a freshly loaded (trainable) copy with the merged weights.
    let mut folded = adapted.valid();
    adapters::merge(&mut folded).unwrap();
    let folded: std::collections::HashMap<String, TensorData> = folded
        .named_projections_mut()
        .into_iter()
        .map(|(name, p)| (name, p.linear().unwrap().weight.val().into_data()))
        .collect();
    let (_, mut merged, _) = rwkv_burn::load::load_model_named(model_path(7), &device).unwrap();
    for (name, p) in merged.named_projections_mut() {
        let linear = p.linear_mut().unwrap();
        let id = linear.weight.id;
        linear.weight = Param::from_tensor(Tensor::from_data(folded[&name].clone(), &device));
        linear.weight.id = id;
    }
    let merged_grads = GradientsParams::from_grads(
        next_token_loss(&merged, inputs.clone(), targets.clone()).backward(),
        &merged,
    );
    let inner = device.clone().without_autodiff();
    let mut checked = 0;
    type Found = (String, Tensor<2>, Tensor<2>, f32, Tensor<2>, Tensor<2>);
    let mut by_name: Vec<Found> = Vec::new();
    let mut adapted_mut = adapted.clone();
    let mut merged_mut = merged.clone();
    let merged_weights: std::collections::HashMap<String, Tensor<2>> = merged_mut
        .named_projections_mut()
        .into_iter()
        .filter_map(|(name, p)| {
            let id = p.linear()?.weight.id;
            Some((name, merged_grads.get::<2>(id)?.inner()))
        })
        .collect();
    for (name, projection) in adapted_mut.named_projections_mut() {
        let Some(lora) = &projection.lora else {
            continue;
        };
        let ga = grads.get::<2>(lora.a.id).expect("A has a gradient").inner();
        let gb = grads.get::<2>(lora.b.id).expect("B has a gradient").inner();
        let gw = merged_weights[&name].clone();
        by_name.push((
            name,
            ga,
            gb,
            lora.scale,
            lora.a.val().inner(),
            lora.b.val().inner(),
        ));
        let (_, ga, gb, s, a, b) = by_name.last().unwrap().clone();
        let want_a = gw.clone().matmul(b.transpose()).mul_scalar(s);
        let want_b = a.transpose().matmul(gw).mul_scalar(s);
        let v = |t: Tensor<2>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
        close(&v(ga), &v(want_a), "dL/dA");
        close(&v(gb), &v(want_b), "dL/dB");
        checked += 1;
    }
    assert_eq!(checked, 2 * 2, "att.key and ffn.value of both layers");
    assert!(
        names
            .0
            .iter()
            .all(|p| grads.get::<2>(p.id).is_none() && grads.get::<1>(p.id).is_none()),
        "the frozen weights get no gradients"
    );

    // Finite differences of the loss in a few entries of one A and one B.
    let plain = adapted.valid();
    let loss_with = |edit: &dyn Fn(&mut Rwkv)| -> f64 {
        let mut m = plain.clone();
        edit(&mut m);
        let (inputs, targets) = tokens(&inner);
        f64::from(next_token_loss(&m, inputs, targets).into_scalar::<f32>())
    };
    let (name, ga, gb, _, _, _) = by_name[0].clone();
    for (which, grad) in [(0usize, ga), (1, gb)] {
        let g: Vec<f32> = grad.into_data().try_to_vec().unwrap();
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|&x, &y| g[y].abs().total_cmp(&g[x].abs()));
        for &index in &order[..3] {
            let shift = |delta: f32| {
                let name = name.clone();
                move |m: &mut Rwkv| {
                    for (n, p) in m.named_projections_mut() {
                        if n != name {
                            continue;
                        }
                        let lora = p.lora.as_mut().unwrap();
                        let param = if which == 0 { &mut lora.a } else { &mut lora.b };
                        let dims = param.dims();
                        let mut values: Vec<f32> = param.val().into_data().try_to_vec().unwrap();
                        values[index] += delta;
                        let id = param.id;
                        let device = param.val().device();
                        *param = Param::from_tensor(Tensor::from_data(
                            TensorData::new(values, dims),
                            &device,
                        ));
                        param.id = id;
                    }
                }
            };
            let eps = 1e-2;
            let numeric =
                (loss_with(&shift(eps)) - loss_with(&shift(-eps))) / (2.0 * f64::from(eps));
            let analytic = f64::from(g[index]);
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 3e-2 * analytic.abs(),
                "{name} {}[{index}]: finite difference {numeric}, gradient {analytic}",
                ["A", "B"][which]
            );
        }
    }
}

fn rwkv_train(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args(args)
        .output()
        .unwrap()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `train --tune lora` writes adapters that lower the loss and leave the model file alone;
/// `merge` folds them into a checkpoint that computes what the model with adapters does;
/// bad settings are refused before any work.
#[test]
fn lora_runs_write_adapters_that_merge() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.safetensors");
    std::fs::write(&base, rwkv_burn_infer::embedded::DEFAULT_MODEL).unwrap();
    let data = dir.path().join("text.txt");
    std::fs::write(
        &data,
        "The quick brown fox jumps over the lazy dog. ".repeat(200),
    )
    .unwrap();
    let run = dir.path().join("run");
    let out = rwkv_train(&[
        "train",
        "--tune",
        "lora",
        "--lora-rank",
        "4",
        "--lora-alpha",
        "8",
        "--init-from",
        s(&base),
        "--data",
        s(&data),
        "--out",
        s(&run),
        "--ctx",
        "32",
        "--batch",
        "2",
        "--steps",
        "6",
        "--eval-every",
        "3",
        "--warmup",
        "0",
        "--lr",
        "1e-2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 7, "{metrics}");
    assert!(!run.join("model.safetensors").exists());
    let adapter = run.join("adapter.safetensors");
    let device = rwkv_burn::DeviceSpec::available()[0].device().unwrap();
    let (_, mut adapted, _) = rwkv_burn::load::load_model_named(&base, &device).unwrap();
    let spec = adapters::load(&mut adapted, &adapter).unwrap();
    assert_eq!((spec.rank, spec.alpha), (4, 8.0));

    let merged = dir.path().join("merged.safetensors");
    let out = rwkv_train(&[
        "merge",
        "--model",
        s(&base),
        "--lora",
        s(&run),
        "--out",
        s(&merged),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, merged_model) = rwkv_burn::load_model(&merged, &device).unwrap();
    let (_, plain) = rwkv_burn::load_model(&base, &device).unwrap();
    let byte_tokens = |d: &Device| -> Vec<f32> {
        let ids: Vec<u32> = b"The quick brown".iter().map(|&b| u32::from(b)).collect();
        let inputs = rwkv_burn::model::token_tensor(&ids, 1, d);
        let run = |m: &Rwkv| -> Vec<f32> {
            let mut state = State::zeros(&m.config(), 1, d);
            m.forward(inputs.clone(), &mut state)
                .into_data()
                .try_to_vec()
                .unwrap()
        };
        let (a, b, p) = (run(&adapted), run(&merged_model), run(&plain));
        close(&b, &a, "merged vs adapted");
        let moved = a
            .iter()
            .zip(&p)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(moved > 1e-4, "training moved the adapters ({moved})");
        a
    };
    byte_tokens(&device);

    for (flag, value, needle) in [
        ("--lora-rank", "0", "rank 0"),
        ("--lora-alpha", "0", "alpha 0"),
        ("--lora-alpha=-1", "", "alpha -1"),
        ("--lora-targets", "mlp", "\"mlp\""),
    ] {
        let mut args = vec!["train", "--tune", "lora", flag];
        if !value.is_empty() {
            args.push(value);
        }
        let bad = dir.path().join("bad");
        args.extend([
            "--init-from",
            s(&base),
            "--data",
            s(&data),
            "--out",
            s(&bad),
        ]);
        let out = rwkv_train(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{flag} {value}: {stderr}"
        );
        assert!(!dir.path().join("bad").exists());
    }
}
