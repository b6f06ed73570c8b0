//! The loss of the Hugging Face fixture batch equals transformers' value.

use burn::tensor::{Int, Tensor, TensorData};
use rwkv_burn::DeviceSpec;
use rwkv_burn::safetensors_io::read;
use rwkv_burn_train::loss::next_token_loss;
use std::path::PathBuf;

#[test]
fn hf_batch_loss_matches_transformers() {
    let dir = std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
        .join("hf_rwkv4");
    let expected = read(&dir.join("expected.safetensors")).unwrap();
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
        let (_, model) = rwkv_burn::load_model(&dir, &device).unwrap();
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
        assert!(
            (loss - want).abs() <= 1e-5 + 1e-5 * want.abs(),
            "{spec}: {loss} vs {want}"
        );
    }
}
