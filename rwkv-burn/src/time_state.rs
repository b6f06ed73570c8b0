//! RWKV-PEFT's state-tuning files: one `blocks.{i}.att.time_state` tensor `[H, N, N]` per
//! layer, the tuned initial WKV memory of the layer (what Ai00, web-rwkv and ChatRWKV's
//! `STATE_NAME` load).
//!
//! Orientation, read in the sources: RWKV-PEFT's state-tuned attention
//! (`rwkvt/rwkv7/att.py`, `RWKV_Tmix_x070_State`) hands `time_state` to its WKV kernel as the
//! kernel's initial state, whose rows are values and columns keys (the Triton kernel's update
//! `state * w + v^T k`; the fla path transposes it into fla's `[key, value]` first). That is
//! the official RWKV-7 layout, so RWKV-7 files are taken as they are. For RWKV-5/6 the
//! official package (`rwkv/model.py`, `args.time_state`) transposes the file into its
//! `[key, value]` state, and so do we.
//!
//! Token shift is not part of the file: RWKV-PEFT's state-tuned blocks shift in zeros, so
//! `att_x` and `ffn_x` start at zero (what a fresh sequence has).

use crate::config::{RwkvConfig, Version};
use crate::safetensors_io::NamedTensor;
use crate::state::{State, StateError};
use burn::tensor::{Device, TensorData};

/// The name of layer `layer`'s tuned state in RWKV-PEFT's files.
pub fn name(layer: usize) -> String {
    format!("blocks.{layer}.att.time_state")
}

/// Whether named tensors are RWKV-PEFT's layout (rather than the official `state.{i}.*`).
pub fn holds(tensors: &[NamedTensor]) -> bool {
    tensors
        .iter()
        .any(|t| t.name.starts_with("blocks.") && t.name.ends_with(".att.time_state"))
}

/// Whether the file's matrices are the transpose of the version's official state.
fn transposed(version: Version) -> bool {
    !matches!(version, Version::V7)
}

/// Swaps the last two dimensions of f32 values of shape `shape` (`[..., N, N]`).
fn transpose_last(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = shape[shape.len() - 1];
    let m = shape[shape.len() - 2];
    let mut out = vec![0.0; values.len()];
    for (src, dst) in values.chunks_exact(n * m).zip(out.chunks_exact_mut(n * m)) {
        for i in 0..m {
            for j in 0..n {
                dst[j * m + i] = src[i * n + j];
            }
        }
    }
    out
}

/// Sequence `index` of `state` as RWKV-PEFT's tensors (token shift, which the format has no
/// place for, is dropped).
///
/// # Errors
/// [`StateError::NoMatrixState`] for RWKV-4, whose memory is not a matrix.
///
/// # Panics
/// If `index` is not below the batch size.
pub fn to_time_state(
    state: &State,
    config: &RwkvConfig,
    index: usize,
) -> Result<Vec<NamedTensor>, StateError> {
    if config.head_size.is_none() {
        return Err(StateError::NoMatrixState(config.version));
    }
    let mut out = Vec::with_capacity(config.n_layer);
    for t in state.sequence_official(index) {
        let Some(layer) = t
            .name
            .strip_prefix("state.")
            .and_then(|rest| rest.strip_suffix(".att_kv"))
        else {
            continue;
        };
        let layer: usize = layer.parse().expect("official state names");
        let shape = t.data.shape().to_vec();
        let values = t
            .data
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 state");
        let values = match transposed(config.version) {
            true => transpose_last(&values, &shape),
            false => values,
        };
        out.push(NamedTensor::new(
            name(layer),
            TensorData::new(values, shape),
        ));
    }
    Ok(out)
}

/// The state RWKV-PEFT's tensors describe: each layer's WKV memory from its `time_state`
/// (`[H, N, N]`, or with a leading batch dimension), token shift zero. Exactly the model's
/// layers, floating point, finite; errors name the file's tensors.
pub fn from_time_state(
    config: &RwkvConfig,
    tensors: &[NamedTensor],
    device: &Device,
) -> Result<State, StateError> {
    if config.head_size.is_none() {
        return Err(StateError::NoMatrixState(config.version));
    }
    let official_name = |name: &str| -> Option<String> {
        let layer = name
            .strip_prefix("blocks.")?
            .strip_suffix(".att.time_state")?;
        let layer: usize = layer.parse().ok()?;
        // `blocks.01` is not layer 1's name.
        (name == self::name(layer)).then(|| format!("state.{layer}.att_kv"))
    };
    let mut official = Vec::with_capacity(tensors.len() * 3);
    let mut batch = 1;
    for t in tensors {
        let Some(renamed) = official_name(&t.name) else {
            return Err(StateError::Unexpected {
                name: t.name.clone(),
                layers: config.n_layer,
                version: config.version,
            });
        };
        let shape = t.data.shape().to_vec();
        let data = match t.data.dtype().is_float() && shape.len() >= 2 {
            true => {
                if shape.len() == 4 {
                    batch = shape[0];
                }
                let values = t
                    .data
                    .clone()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .map_err(|_| StateError::DType {
                        name: t.name.clone(),
                        dtype: t.data.dtype(),
                    })?;
                let values = match transposed(config.version) {
                    true => transpose_last(&values, &shape),
                    false => values,
                };
                TensorData::new(values, shape)
            }
            // Left for `from_official` to refuse, under the file's name.
            false => t.data.clone(),
        };
        official.push(NamedTensor::new(renamed, data));
    }
    for layer in 0..config.n_layer {
        for field in ["att_x", "ffn_x"] {
            official.push(NamedTensor::new(
                format!("state.{layer}.{field}"),
                TensorData::new(vec![0f32; batch * config.n_embd], [batch, config.n_embd]),
            ));
        }
    }
    State::from_official(config, &official, device).map_err(rename)
}

/// An error of [`State::from_official`] about `state.{i}.att_kv`, under the file's name.
fn rename(error: StateError) -> StateError {
    let back = |name: String| -> String {
        match name
            .strip_prefix("state.")
            .and_then(|rest| rest.strip_suffix(".att_kv"))
            .and_then(|layer| layer.parse::<usize>().ok())
        {
            Some(layer) => self::name(layer),
            None => name,
        }
    };
    match error {
        StateError::Missing(name) => StateError::Missing(back(name)),
        StateError::Shape {
            name,
            got,
            expected,
        } => StateError::Shape {
            name: back(name),
            got,
            expected,
        },
        StateError::DType { name, dtype } => StateError::DType {
            name: back(name),
            dtype,
        },
        StateError::NonFinite { name, index, value } => StateError::NonFinite {
            name: back(name),
            index,
            value,
        },
        StateError::Unexpected {
            name,
            layers,
            version,
        } => StateError::Unexpected {
            name: back(name),
            layers,
            version,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::config_for;
    use crate::test_util::test_devices;
    use burn::tensor::Tensor;

    /// A state whose WKV memories hold distinct values, so a transposition shows.
    fn distinct(config: &RwkvConfig, device: &Device) -> State {
        let mut state = State::zeros(config, 1, device);
        for (i, layer) in state.layers.iter_mut().enumerate() {
            if let crate::state::WkvState::Matrix(kv) = &layer.wkv {
                let dims = kv.dims();
                let count: usize = dims.iter().product();
                let values: Vec<f32> = (0..count).map(|v| (v + 1000 * i) as f32).collect();
                layer.wkv = crate::state::WkvState::Matrix(Tensor::from_data(
                    TensorData::new(values, dims),
                    device,
                ));
            }
        }
        state
    }

    #[test]
    fn round_trips_and_transposes_for_five_and_six_only() {
        let device = test_devices().remove(0);
        for version in [Version::V5 { minor: 2 }, Version::V6, Version::V7] {
            let config = config_for(version, 2, 128);
            let state = distinct(&config, &device);
            let file = to_time_state(&state, &config, 0).unwrap();
            assert_eq!(file.len(), 2);
            assert_eq!(file[1].name, "blocks.1.att.time_state");
            assert_eq!(file[0].data.shape().to_vec(), vec![2, 64, 64]);
            let ours = state.sequence_official(0);
            let kv = ours.iter().find(|t| t.name == "state.0.att_kv").unwrap();
            let ours: Vec<f32> = kv.data.try_to_vec().unwrap();
            let theirs: Vec<f32> = file[0].data.try_to_vec().unwrap();
            // Element [h=0, 1, 2] of the official state.
            let official = ours[64 + 2];
            let at = |i: usize, j: usize| theirs[i * 64 + j];
            match version {
                Version::V7 => assert_eq!(at(1, 2), official),
                _ => assert_eq!(at(2, 1), official),
            }
            assert!(holds(&file));
            let back = from_time_state(&config, &file, &device).unwrap();
            assert_eq!(back.to_official(), state.to_official(), "{version}");
        }
    }

    #[test]
    fn refuses_other_models_and_damaged_tensors() {
        let device = test_devices().remove(0);
        let config = config_for(Version::V7, 2, 128);
        let file = to_time_state(&State::zeros(&config, 1, &device), &config, 0).unwrap();
        // A third layer: a state for a deeper model.
        let mut deeper = file.clone();
        deeper.push(NamedTensor::new(name(2), file[0].data.clone()));
        assert!(matches!(
            from_time_state(&config, &deeper, &device),
            Err(StateError::Unexpected { name, .. }) if name == "blocks.2.att.time_state"
        ));
        // A missing layer.
        assert!(matches!(
            from_time_state(&config, &file[..1], &device),
            Err(StateError::Missing(name)) if name == "blocks.1.att.time_state"
        ));
        // Another width.
        let mut wider = file.clone();
        wider[0] = NamedTensor::new(
            name(0),
            TensorData::new(vec![0f32; 3 * 64 * 64], [3, 64, 64]),
        );
        assert!(matches!(
            from_time_state(&config, &wider, &device),
            Err(StateError::Shape { name, .. }) if name == "blocks.0.att.time_state"
        ));
        // A NaN.
        let mut nan = file.clone();
        let mut values = vec![0f32; 2 * 64 * 64];
        values[5] = f32::NAN;
        nan[1] = NamedTensor::new(name(1), TensorData::new(values, [2, 64, 64]));
        assert!(matches!(
            from_time_state(&config, &nan, &device),
            Err(StateError::NonFinite { name, index: 5, .. }) if name == "blocks.1.att.time_state"
        ));
        // Integers.
        let mut ints = file.clone();
        ints[0] = NamedTensor::new(
            name(0),
            TensorData::new(vec![0i64; 2 * 64 * 64], [2, 64, 64]),
        );
        assert!(matches!(
            from_time_state(&config, &ints, &device),
            Err(StateError::DType { name, .. }) if name == "blocks.0.att.time_state"
        ));
        // RWKV-4 has no matrix memory.
        let v4 = config_for(Version::V4, 2, 128);
        assert!(matches!(
            from_time_state(&v4, &file, &device),
            Err(StateError::NoMatrixState(Version::V4))
        ));
    }

    /// RWKV-PEFT writes `.pth`; both containers load through [`State::load`].
    #[test]
    fn state_files_load_from_pth_and_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let device = test_devices().remove(0);
        for version in [Version::V6, Version::V7] {
            let config = config_for(version, 2, 128);
            let state = distinct(&config, &device);
            let tensors = to_time_state(&state, &config, 0).unwrap();
            for file in ["state.pth", "state.safetensors"] {
                let path = dir.path().join(file);
                crate::export::write_official(&path, &tensors, crate::export::StorageDType::F32)
                    .unwrap();
                let back = State::load(&path, &config, &device).unwrap();
                assert_eq!(back.to_official(), state.to_official(), "{file}");
            }
        }
        let deeper = config_for(Version::V7, 3, 128);
        let err = State::load(dir.path().join("state.pth"), &deeper, &device).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("state.pth") && text.contains("blocks.2.att.time_state"),
            "{text}"
        );
    }
}
