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

/// A fixture's tensors with `edit` applied, written to a file in `dir`.
fn edited(
    dir: &Path,
    version: &str,
    name: &str,
    edit: impl Fn(NamedTensor) -> Option<NamedTensor>,
) -> std::path::PathBuf {
    let tensors: Vec<_> = read(&fixtures().join(version).join("weights.safetensors"))
        .unwrap()
        .into_iter()
        .filter_map(edit)
        .collect();
    let path = dir.join(name);
    write(&path, &tensors).unwrap();
    path
}

/// A tensor of `shape` filled with zeros.
fn zeros(name: String, shape: Vec<usize>) -> NamedTensor {
    let n = shape.iter().product();
    NamedTensor::new(name, TensorData::new(vec![0f32; n], shape))
}

#[test]
fn degenerate_dimensions_are_refused_before_building() {
    let dir = tempfile::tempdir().unwrap();
    // Zero-width embedding, attention and feed-forward, for every version.
    for version in ["rwkv4", "rwkv5", "rwkv6", "rwkv7"] {
        for (label, leaf) in [
            ("embedding", "emb.weight"),
            ("attention", "att.key.weight"),
            ("ffn", "ffn.key.weight"),
        ] {
            let path = edited(
                dir.path(),
                version,
                &format!("{version}-{label}0.st"),
                |t| {
                    if t.name.ends_with(leaf) {
                        let mut shape = t.data.shape().to_vec();
                        shape[if leaf == "emb.weight" { 1 } else { 0 }] = 0;
                        Some(zeros(t.name, shape))
                    } else {
                        Some(t)
                    }
                },
            );
            let err = load_err(&path);
            assert!(
                matches!(
                    err,
                    LoadError::BadDimensions { .. } | LoadError::WrongShape { .. }
                ),
                "{version} {label}: {err}"
            );
        }
    }
    // A zero LoRA rank (RWKV-7's decay adapter), in every layer.
    let path = edited(dir.path(), "rwkv7", "rank0.st", |t| {
        let shape = t.data.shape().to_vec();
        if t.name.ends_with("att.w1") {
            Some(zeros(t.name, vec![shape[0], 0]))
        } else if t.name.ends_with("att.w2") {
            Some(zeros(t.name, vec![0, shape[1]]))
        } else {
            Some(t)
        }
    });
    let err = load_err(&path);
    assert!(matches!(err, LoadError::BadDimensions { .. }), "{err}");
    assert!(err.to_string().contains("decay"), "{err}");
    // A scalar RWKV-7 `v1` (it once indexed the last dimension of a rank-0 shape).
    let path = edited(dir.path(), "rwkv7", "v1-scalar.st", |t| {
        if t.name.ends_with("att.v1") {
            Some(NamedTensor::new(
                t.name,
                TensorData::new(vec![1f32], [0usize; 0]),
            ))
        } else {
            Some(t)
        }
    });
    let err = load_err(&path);
    assert!(matches!(err, LoadError::WrongShape { .. }), "{err}");
    // Blocks that disagree on a shape, and a missing block between others.
    let path = edited(dir.path(), "rwkv4", "disagree.st", |t| {
        if t.name == "blocks.1.att.time_decay" {
            Some(zeros(t.name, vec![7]))
        } else {
            Some(t)
        }
    });
    let err = load_err(&path);
    assert!(
        matches!(&err, LoadError::WrongShape { name, .. } if name == "blocks.1.att.time_decay"),
        "{err}"
    );
    let path = edited(dir.path(), "rwkv4", "gap.st", |t| {
        match t.name.strip_prefix("blocks.1.") {
            Some(rest) => Some(NamedTensor::new(format!("blocks.3.{rest}"), t.data)),
            None => Some(t),
        }
    });
    let err = load_err(&path);
    assert!(matches!(err, LoadError::BadDimensions { .. }), "{err}");
    // A block index past any sane model.
    let path = edited(dir.path(), "rwkv4", "huge-index.st", |t| {
        if t.name == "blocks.1.att.key.weight" {
            Some(NamedTensor::new(
                format!("blocks.{}.att.key.weight", usize::MAX),
                t.data,
            ))
        } else {
            Some(t)
        }
    });
    let err = load_err(&path);
    assert!(matches!(err, LoadError::BadDimensions { .. }), "{err}");
}

/// Every version runs at the smallest widths `validate` lets through: width, head size,
/// feed-forward, vocabulary and adapter ranks of 1.
#[test]
fn width_one_models_run() {
    use burn::tensor::{Int, Tensor};
    use rwkv_burn::config::LoraRanks;
    use rwkv_burn::{RwkvConfig, State};
    for (_, device) in devices() {
        for version in [
            Version::V4,
            Version::V5 { minor: 2 },
            Version::V6,
            Version::V7,
        ] {
            let config = RwkvConfig {
                version,
                n_layer: 2,
                n_embd: 1,
                dim_att: 1,
                dim_ffn: 1,
                vocab_size: 1,
                head_size: (version != Version::V4).then_some(1),
                lora: match version {
                    Version::V6 => LoraRanks {
                        decay: 1,
                        mix: 1,
                        ..LoraRanks::default()
                    },
                    Version::V7 => LoraRanks {
                        decay: 1,
                        a: 1,
                        value: 1,
                        gate: 1,
                        ..LoraRanks::default()
                    },
                    _ => LoraRanks::default(),
                },
            };
            config.validate().unwrap();
            let weights = rwkv_burn::init::RandomWeights::new(1);
            let model = rwkv_burn::model::build(&weights, &config, &device).unwrap();
            let mut state = State::zeros(&config, 1, &device);
            let tokens = Tensor::<2, Int>::from_data([[0, 0, 0]], &device);
            let logits = model.forward(tokens, &mut state);
            assert_eq!(logits.dims(), [1, 3, 1], "{version}");
            let values = logits.into_data().try_to_vec::<f32>().unwrap();
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{version}: {values:?}"
            );
        }
    }
}

#[test]
fn non_finite_weights_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    for (label, bad) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let path = edited(dir.path(), "rwkv7", &format!("{label}.st"), |t| {
            if t.name == "blocks.1.att.key.weight" {
                let shape = t.data.shape().to_vec();
                let mut values = t.data.try_to_vec::<f32>().unwrap();
                values[5] = bad;
                Some(NamedTensor::new(t.name, TensorData::new(values, shape)))
            } else {
                Some(t)
            }
        });
        let err = load_err(&path);
        assert!(
            matches!(&err, LoadError::NonFinite { name, index: 5, .. } if name == "blocks.1.att.key.weight"),
            "{err}"
        );
        let checkpoint = rwkv_burn::load::Checkpoint::open(&path).unwrap();
        assert!(matches!(
            checkpoint.check_finite(&mut |_| {}),
            Err(LoadError::NonFinite { .. })
        ));
        let (_, device) = devices().remove(0);
        rwkv_burn::load::load_checkpoint(&checkpoint.allow_non_finite(), &device).unwrap();
    }
}

#[cfg(unix)]
#[test]
fn special_files_are_not_read_as_checkpoints() {
    let err = load_err(Path::new("/dev/zero"));
    assert!(matches!(err, LoadError::NotACheckpoint { .. }), "{err}");
}

mod state_files {
    use super::*;
    use rwkv_burn::{State, StateError};

    fn model_and_state(dir: &Path) -> (rwkv_burn::RwkvConfig, Vec<NamedTensor>) {
        let (_, device) = devices().remove(0);
        let path = fixtures().join("rwkv7/weights.safetensors");
        let (config, _) = load_model(&path, &device).unwrap();
        let state = State::zeros(&config, 1, &device);
        let file = dir.join("good.st");
        state.save(&file).unwrap();
        (config, read(&file).unwrap())
    }

    fn refused(
        dir: &Path,
        name: &str,
        tensors: &[NamedTensor],
        config: &rwkv_burn::RwkvConfig,
    ) -> StateError {
        let (_, device) = devices().remove(0);
        let path = dir.join(name);
        write(&path, tensors).unwrap();
        let err = State::load(&path, config, &device).expect_err("should be refused");
        assert!(err.to_string().contains(name), "not named: {err}");
        err
    }

    #[test]
    fn extra_layers_wrong_types_and_nan_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (config, good) = model_and_state(dir.path());
        let mut extra = good.clone();
        extra.push(NamedTensor::new(
            format!("state.{}.att_x", config.n_layer),
            TensorData::new(vec![0f32; config.n_embd], [config.n_embd]),
        ));
        let err = refused(dir.path(), "extra.st", &extra, &config);
        assert!(err.to_string().contains("not part of"), "{err}");

        let ints: Vec<_> = good
            .iter()
            .map(|t| {
                if t.name == "state.0.att_x" {
                    NamedTensor::new(
                        t.name.clone(),
                        TensorData::new(vec![0i64; config.n_embd], [config.n_embd]),
                    )
                } else {
                    t.clone()
                }
            })
            .collect();
        let err = refused(dir.path(), "ints.st", &ints, &config);
        assert!(err.to_string().contains("floating point"), "{err}");

        let nan: Vec<_> = good
            .iter()
            .map(|t| {
                if t.name == "state.1.ffn_x" {
                    NamedTensor::new(
                        t.name.clone(),
                        TensorData::new(vec![f32::NAN; config.n_embd], [config.n_embd]),
                    )
                } else {
                    t.clone()
                }
            })
            .collect();
        let err = refused(dir.path(), "nan.st", &nan, &config);
        assert!(err.to_string().contains("NaN"), "{err}");

        let empty_batch: Vec<_> = good
            .iter()
            .map(|t| {
                let mut shape = vec![0];
                shape.extend_from_slice(t.data.shape());
                NamedTensor::new(t.name.clone(), TensorData::new(Vec::<f32>::new(), shape))
            })
            .collect();
        refused(dir.path(), "empty-batch.st", &empty_batch, &config);
    }
}
