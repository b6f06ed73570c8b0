//! Hugging Face RWKV folders: `config.json` plus `model.safetensors` (or `pytorch_model.bin`),
//! with transformers' key names mapped onto the official ones.

use super::checkpoint::{Checkpoint, Format};
use crate::weights::LoadError;
use serde::Deserialize;
use std::path::Path;

/// Weight files a transformers `save_pretrained` writes, in the order we try them.
const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// The fields of transformers' `RwkvConfig` we check the tensors against.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    /// `rwkv` for RWKV-4; other values name other generations.
    pub model_type: Option<String>,
    /// Blocks.
    pub num_hidden_layers: Option<usize>,
    /// Residual width.
    pub hidden_size: Option<usize>,
    /// Vocabulary.
    pub vocab_size: Option<usize>,
    /// Whether the head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// Whether a key uses transformers' naming.
pub fn is_hf_name(key: &str) -> bool {
    key.starts_with("rwkv.")
}

/// transformers' name of a tensor -> the official one (`rwkv.blocks.0.attention.time_mix_key`
/// -> `blocks.0.att.time_mix_k`). Names it does not know pass through unchanged.
pub fn official_name(key: &str) -> String {
    let key = key.strip_prefix("rwkv.").unwrap_or(key);
    let key = match key.strip_prefix("embeddings.") {
        Some(rest) => format!("emb.{rest}"),
        None => key.to_string(),
    };
    key.split('.')
        .map(|part| match part {
            "pre_ln" => "ln0",
            "attention" => "att",
            "feed_forward" => "ffn",
            "time_mix_key" => "time_mix_k",
            "time_mix_value" => "time_mix_v",
            "time_mix_receptance" => "time_mix_r",
            "time_mix_gate" => "time_mix_g",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A weights file in the official naming: transformers' keys renamed when it uses them.
pub(super) fn official_names(checkpoint: Checkpoint) -> Checkpoint {
    if checkpoint.names().any(is_hf_name) {
        checkpoint.renamed(official_name)
    } else {
        checkpoint
    }
}

/// Opens a Hugging Face model folder.
pub(super) fn open_folder(dir: &Path) -> Result<Checkpoint, LoadError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(LoadError::NotACheckpoint {
            path: dir.to_path_buf(),
            reason: "a directory without config.json".into(),
        });
    }
    let config = read_config(&config_path)?;
    let weights = WEIGHT_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| LoadError::NotACheckpoint {
            path: dir.to_path_buf(),
            reason: format!("no weights file ({})", WEIGHT_FILES.join(" or ")),
        })?;
    let mut checkpoint = Checkpoint::open_file(&weights)?
        .renamed(official_name)
        .with_format(Format::HuggingFace, &weights);
    if checkpoint.shape("head.weight").is_none() && config.tie_word_embeddings {
        checkpoint.alias("emb.weight", "head.weight");
    }
    check_config(&config, &config_path, &checkpoint)?;
    Ok(checkpoint)
}

fn read_config(path: &Path) -> Result<HfConfig, LoadError> {
    // A config.json is a few kilobytes; the limit keeps a huge or endless one out of memory.
    let text = crate::files::read_input(path, 16 << 20).map_err(|e| LoadError::BadConfig {
        path: path.to_path_buf(),
        detail: e.reason(),
    })?;
    serde_json::from_slice(&text).map_err(|e| LoadError::BadConfig {
        path: path.to_path_buf(),
        detail: format!("invalid config.json: {e}"),
    })
}

/// The folder's config must agree with its tensors; a disagreement means mixed-up files.
fn check_config(config: &HfConfig, path: &Path, checkpoint: &Checkpoint) -> Result<(), LoadError> {
    let emb = checkpoint.shape("emb.weight");
    let layers = crate::model::count_layers(checkpoint.names());
    let checks = [
        (
            "vocab_size",
            config.vocab_size,
            emb.and_then(|s| s.first().copied()),
        ),
        (
            "hidden_size",
            config.hidden_size,
            emb.and_then(|s| s.get(1).copied()),
        ),
        ("num_hidden_layers", config.num_hidden_layers, Some(layers)),
    ];
    for (field, declared, found) in checks {
        if let (Some(declared), Some(found)) = (declared, found)
            && declared != found
        {
            return Err(LoadError::BadConfig {
                path: path.to_path_buf(),
                detail: format!("config.json says {field} = {declared}, the weights have {found}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::official_name;

    #[test]
    fn maps_transformers_names_to_official_ones() {
        let cases = [
            ("rwkv.embeddings.weight", "emb.weight"),
            ("rwkv.blocks.0.pre_ln.bias", "blocks.0.ln0.bias"),
            (
                "rwkv.blocks.3.attention.time_mix_key",
                "blocks.3.att.time_mix_k",
            ),
            (
                "rwkv.blocks.3.attention.time_first",
                "blocks.3.att.time_first",
            ),
            (
                "rwkv.blocks.1.feed_forward.time_mix_receptance",
                "blocks.1.ffn.time_mix_r",
            ),
            (
                "rwkv.blocks.1.feed_forward.value.weight",
                "blocks.1.ffn.value.weight",
            ),
            ("rwkv.ln_out.weight", "ln_out.weight"),
            ("head.weight", "head.weight"),
        ];
        for (hf, official) in cases {
            assert_eq!(official_name(hf), official);
        }
    }
}
