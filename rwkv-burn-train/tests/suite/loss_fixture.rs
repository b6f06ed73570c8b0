//! The loss of the fixture training batches equals the reference implementations' value.

use burn::tensor::{Int, Tensor, TensorData};
use rwkv_burn::DeviceSpec;
use rwkv_burn::parity::compare;
use rwkv_burn::safetensors_io::read;
use rwkv_burn_train::loss::next_token_loss;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

#[test]
fn hf_batch_loss_matches_transformers() {
    let dir = fixtures().join("hf_rwkv4");
    check_loss(&dir, &dir.join("expected.safetensors"));
}

#[test]
fn rwkv7_batch_loss_matches_the_reference() {
    check_loss(
        &fixtures().join("rwkv7/weights.safetensors"),
        &fixtures().join("rwkv7_train/expected.safetensors"),
    );
}

fn check_loss(model_path: &std::path::Path, expected_path: &std::path::Path) {
    let expected = read(expected_path).unwrap();
    let get = |name: &str| {
        expected
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .data
            .clone()
    };
    let want = get("loss").try_to_vec::<f32>().unwrap()[0];
    for spec in DeviceSpec::available() {
        let device = spec.device().unwrap();
        let (_, model) = rwkv_burn::load_model(model_path, &device).unwrap();
        let ids = |name: &str| {
            let data = get(name);
            let shape = data.shape().to_vec();
            Tensor::<2, Int>::from_data(
                TensorData::new(data.try_to_vec::<i64>().unwrap(), [shape[0], shape[1]]),
                &device,
            )
        };
        let loss = next_token_loss(&model, ids("train_input_ids"), ids("train_targets"))
            .into_scalar::<f32>();
        // Through the parity helper, so that a GPU run's log holds the error.
        let what = format!("{} on {spec}: loss", model_path.display());
        if let Some(m) = compare(&[loss], &[want], 1e-5, 1e-5, &what) {
            panic!("{what}: {} vs {}", m.got, m.expected);
        }
    }
}
