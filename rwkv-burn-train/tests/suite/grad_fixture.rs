//! Gradients of the fixture training batches equal the reference implementations' (torch
//! autograd through transformers' RWKV-4 and rwkv7-hf's RWKV-7).

use burn::tensor::{Int, Tensor, TensorData};
use rwkv_burn::DeviceSpec;
use rwkv_burn::load::{hf::official_name, load_model_named};
use rwkv_burn::parity::compare;
use rwkv_burn::safetensors_io::{NamedTensor, read};
use rwkv_burn_train::grad::loss_and_grads;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

fn check(model_path: &Path, expected_path: &Path) {
    let expected = read(expected_path).unwrap();
    let get = |name: &str| {
        expected
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.data.clone())
    };
    let want_loss = get("loss").unwrap().try_to_vec::<f32>().unwrap()[0];
    // Expected gradients under official names (the HF fixture uses transformers' names).
    let want: Vec<(String, Vec<f32>)> = expected
        .iter()
        .filter_map(|t| {
            let name = t.name.strip_prefix("grad.")?;
            Some((
                official_name(name),
                t.data.clone().try_to_vec::<f32>().unwrap(),
            ))
        })
        .collect();
    for spec in DeviceSpec::available() {
        let device = spec.device().unwrap().autodiff();
        let (_, model, names) = load_model_named(model_path, &device).unwrap();
        let ids = |name: &str| {
            let data = get(name).unwrap();
            let shape = data.shape().to_vec();
            Tensor::<2, Int>::from_data(
                TensorData::new(data.try_to_vec::<i64>().unwrap(), [shape[0], shape[1]]),
                &device,
            )
        };
        let out = loss_and_grads(&model, &names, ids("train_input_ids"), ids("train_targets"));
        // Through the parity helper, so that a GPU run's log holds the worst error of each.
        let close = |got: &[f32], exp: &[f32], atol: f32, rtol: f32, what: String| {
            if let Some(m) = compare(got, exp, atol, rtol, &what) {
                panic!("{what}[{}] = {}, expected {}", m.index, m.got, m.expected);
            }
        };
        let what = |item: &str| format!("{} on {spec}: {item}", model_path.display());
        close(&[out.loss], &[want_loss], 0.0, 1e-4, what("loss"));
        assert_eq!(out.grads.len(), want.len(), "{spec}: gradient count");
        for (name, exp) in &want {
            let got: &NamedTensor = out
                .grads
                .iter()
                .find(|g| g.name == format!("grad.{name}"))
                .unwrap_or_else(|| panic!("{spec}: no gradient for {name}"));
            let got_values = got.data.clone().try_to_vec::<f32>().unwrap();
            assert_eq!(got_values.len(), exp.len(), "{spec}: {name} size");
            let scale = exp.iter().fold(0f32, |m, x| m.max(x.abs()));
            let tol = 1e-5 + 1e-3 * scale;
            close(&got_values, exp, tol, 0.0, what(&format!("grad.{name}")));
        }
    }
}

#[test]
fn hf_rwkv4_gradients_match_transformers() {
    let dir = fixtures().join("hf_rwkv4");
    check(&dir, &dir.join("expected.safetensors"));
}

#[test]
fn rwkv7_gradients_match_the_reference() {
    check(
        &fixtures().join("rwkv7/weights.safetensors"),
        &fixtures().join("rwkv7_train/expected.safetensors"),
    );
}
