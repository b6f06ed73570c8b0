//! Version and dimensions, read off the tensors (never asked of the user).

use super::checkpoint::Checkpoint;
use super::error::LoadError;
use crate::config::{LoraRanks, RwkvConfig, Version};

/// Number of blocks: one past the highest `blocks.{i}.` index.
pub fn count_layers(checkpoint: &Checkpoint) -> usize {
    checkpoint
        .names()
        .filter_map(|name| {
            name.strip_prefix("blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |i| i + 1)
}

/// The RWKV generation, detected the way the official package does (extended to RWKV-7,
/// which the package selects by an environment variable instead).
pub fn detect_version(checkpoint: &Checkpoint) -> Result<Version, LoadError> {
    let has = |needle: &str| checkpoint.names().any(|n| n.contains(needle));
    if !has("emb.weight") || count_layers(checkpoint) == 0 {
        return Err(LoadError::NotACheckpoint {
            path: checkpoint.path().to_path_buf(),
            reason: "no RWKV tensors (emb.weight, blocks.N.*) in it".into(),
        });
    }
    if has("att.r_k") || has("att.x_r") {
        return Ok(Version::V7);
    }
    if has("time_maa") {
        return Ok(Version::V6);
    }
    if has("ln_x") {
        let mut minor = 0;
        if has("gate.weight") {
            minor = 1;
            let decay_2d = checkpoint
                .shape("blocks.0.att.time_decay")
                .is_some_and(|s| s.len() == 2 && s[1] > 1);
            if decay_2d {
                minor = 2;
            }
        }
        return Ok(Version::V5 { minor });
    }
    if has("att.time_first") {
        return Ok(Version::V4);
    }
    Err(LoadError::UnknownArchitecture {
        path: checkpoint.path().to_path_buf(),
        detail: "blocks have none of the tensors that mark an RWKV version".into(),
    })
}

/// Every dimension of a supported model.
pub fn detect_config(checkpoint: &Checkpoint) -> Result<RwkvConfig, LoadError> {
    let version = detect_version(checkpoint)?;
    if !version.is_supported() {
        return Err(LoadError::UnsupportedVersion {
            path: checkpoint.path().to_path_buf(),
            version,
        });
    }
    let matrix = |name: &str| -> Result<[usize; 2], LoadError> {
        match checkpoint.shape(name) {
            Some(&[rows, cols]) => Ok([rows, cols]),
            Some(other) => Err(LoadError::WrongShape {
                path: checkpoint.path().to_path_buf(),
                name: name.to_string(),
                got: other.to_vec(),
                expected: vec![0, 0],
            }),
            None => Err(LoadError::MissingTensor {
                path: checkpoint.path().to_path_buf(),
                name: name.to_string(),
            }),
        }
    };
    let [vocab_size, n_embd] = matrix("emb.weight")?;
    let [dim_att, _] = matrix("blocks.0.att.key.weight")?;
    let [dim_ffn, _] = matrix("blocks.0.ffn.key.weight")?;
    // The per-head bonus is [H, N] in every matrix-state version.
    let head_size = match version {
        Version::V4 => None,
        Version::V7 => Some(matrix("blocks.0.att.r_k")?[1]),
        _ => Some(matrix("blocks.0.att.time_faaaa")?[1]),
    };
    if let Some(n) = head_size
        && (n == 0 || dim_att % n != 0)
    {
        return Err(LoadError::UnknownArchitecture {
            path: checkpoint.path().to_path_buf(),
            detail: format!("head size {n} does not divide the attention width {dim_att}"),
        });
    }
    let cols = |name: &str| matrix(name).map(|[_, cols]| cols);
    let lora = match version {
        Version::V6 => LoraRanks {
            mix: cols("blocks.0.att.time_maa_w1")? / 5,
            decay: cols("blocks.0.att.time_decay_w1")?,
            ..LoraRanks::default()
        },
        Version::V7 => {
            // Layer 0 does not use its value residual; a checkpoint may lack it there.
            let value = (0..count_layers(checkpoint))
                .find_map(|i| {
                    checkpoint
                        .shape(&format!("blocks.{i}.att.v1"))
                        .map(|s| s[s.len() - 1])
                })
                .unwrap_or(0);
            LoraRanks {
                decay: cols("blocks.0.att.w1")?,
                a: cols("blocks.0.att.a1")?,
                value,
                gate: cols("blocks.0.att.g1")?,
                ..LoraRanks::default()
            }
        }
        _ => LoraRanks::default(),
    };
    Ok(RwkvConfig {
        version,
        n_layer: count_layers(checkpoint),
        n_embd,
        dim_att,
        dim_ffn,
        vocab_size,
        head_size,
        lora,
    })
}
