//! Every kind of bad checkpoint gives a typed error naming the file, never a panic.

use crate::common::{devices, fixtures};
use burn::tensor::TensorData;
use rwkv_burn::safetensors_io::{NamedTensor, read, write};
use rwkv_burn::{LoadError, Version, load_model};
use std::path::Path;

fn load_err(path: &Path) -> LoadError {
    let (_, device) = devices().remove(0);
    let err = load_model(path, &device).expect_err("loading should fail");
    let shown = err.to_string();
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        shown.contains(&*name),
        "error does not name the file: {shown}"
    );
    err
}

fn v4_tensors() -> Vec<NamedTensor> {
    read(&fixtures().join("rwkv4/weights.safetensors")).unwrap()
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(&dir.path().join("nope.pth"));
    assert!(matches!(err, LoadError::NotFound { .. }), "{err}");
}

#[test]
fn not_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("notes.pth", b"hello, this is text".as_slice()),
        ("empty.safetensors", b"".as_slice()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = load_err(&path);
        assert!(matches!(err, LoadError::NotACheckpoint { .. }), "{err}");
    }
    // A valid safetensors file without any RWKV tensor in it.
    let path = dir.path().join("other.safetensors");
    write(
        &path,
        &[NamedTensor::new("x", TensorData::new(vec![1f32], [1]))],
    )
    .unwrap();
    let err = load_err(&path);
    assert!(matches!(err, LoadError::NotACheckpoint { .. }), "{err}");
    // A folder that is not a Hugging Face model.
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::NotACheckpoint { .. }), "{err}");
}

#[test]
fn truncated_files() {
    let dir = tempfile::tempdir().unwrap();
    for source in ["weights.pth", "weights.safetensors"] {
        let bytes = std::fs::read(fixtures().join("rwkv4").join(source)).unwrap();
        for keep in [bytes.len() / 2, bytes.len() - 1, 200] {
            let path = dir.path().join(format!("cut{keep}-{source}"));
            std::fs::write(&path, &bytes[..keep]).unwrap();
            let err = load_err(&path);
            assert!(
                matches!(err, LoadError::Truncated { .. }),
                "{source} cut at {keep}: {err}"
            );
        }
    }
}

#[test]
fn missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.safetensors");
    let tensors: Vec<_> = v4_tensors()
        .into_iter()
        .filter(|t| t.name != "blocks.1.ffn.value.weight")
        .collect();
    write(&path, &tensors).unwrap();
    let err = load_err(&path);
    assert!(
        matches!(&err, LoadError::MissingTensor { name, .. } if name == "blocks.1.ffn.value.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shape.safetensors");
    let tensors: Vec<_> = v4_tensors()
        .into_iter()
        .map(|t| {
            if t.name == "blocks.1.att.output.weight" {
                NamedTensor::new(t.name, TensorData::new(vec![0f32; 64 * 32], [64, 32]))
            } else {
                t
            }
        })
        .collect();
    write(&path, &tensors).unwrap();
    let err = load_err(&path);
    assert!(
        matches!(&err, LoadError::WrongShape { name, .. } if name == "blocks.1.att.output.weight"),
        "{err}"
    );
}

#[test]
fn half_precision_checkpoint_loads_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.safetensors");
    let tensors: Vec<_> = v4_tensors()
        .into_iter()
        .map(|t| NamedTensor::new(t.name, t.data.convert::<half::bf16>()))
        .collect();
    write(&path, &tensors).unwrap();
    let (_, device) = devices().remove(0);
    let (config, _) = load_model(&path, &device).unwrap();
    assert_eq!(config.n_layer, 2);
}

#[test]
fn pre_release_eagle_is_refused_clearly() {
    // Without gate weights the official package reads an RWKV-5 checkpoint as 5.0, a
    // pre-release layout this build recognises but does not run.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eagle-5.0.safetensors");
    let tensors: Vec<_> = read(&fixtures().join("rwkv5/weights.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|t| !t.name.contains("gate.weight") && !t.name.contains("time_mix_g"))
        .collect();
    write(&path, &tensors).unwrap();
    let err = load_err(&path);
    assert!(
        matches!(
            &err,
            LoadError::UnsupportedVersion {
                version: Version::V5 { minor: 0 },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not supported"), "{err}");
}
