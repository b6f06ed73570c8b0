//! Hugging Face RWKV folders: `config.json` plus `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`, or `pytorch_model.bin`), with their key names mapped onto
//! the official ones: transformers' RWKV-4 (`rwkv.blocks.N.attention.*`), and RWKV-7 in the
//! layout flash-linear-attention (fla-hub) and rwkv7-hf share (`model.layers.N.attn.*`).
//! A vocabulary file in the folder chooses the tokenizer.

use super::checkpoint::{Checkpoint, Format};
use super::layout::{Op, Rule, apply, block};
use crate::weights::LoadError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Weight files a transformers `save_pretrained` writes, in the order we try them.
const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];
/// The index of a sharded safetensors folder.
const SHARD_INDEX: &str = "model.safetensors.index.json";
/// Vocabulary files a folder may ship, in the order we take them: RWKV World's (fla-hub and
/// rwkv7-hf folders), a tokenizers JSON (Pile-era models).
const VOCAB_FILES: [&str; 2] = ["rwkv_vocab_v20230424.txt", "tokenizer.json"];

/// The fields of a folder's `config.json` we check the tensors against (transformers'
/// `RwkvConfig`; fla's and rwkv7-hf's `RWKV7Config`). Absent or null fields are not checked.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    /// `rwkv` for RWKV-4, `rwkv7` for RWKV-7.
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
    /// Channel-mix width (RWKV-7).
    pub intermediate_size: Option<usize>,
    /// Head size (RWKV-7; fla derives the head count from it, and so do we, from `r_k`).
    pub head_dim: Option<usize>,
    /// Decay LoRA rank (RWKV-7).
    pub decay_low_rank_dim: Option<usize>,
    /// In-context learning rate LoRA rank (RWKV-7).
    pub a_low_rank_dim: Option<usize>,
    /// Value-residual LoRA rank (RWKV-7).
    pub v_low_rank_dim: Option<usize>,
    /// Output gate LoRA rank (RWKV-7).
    pub gate_low_rank_dim: Option<usize>,
}

/// RWKV-7 names outside the blocks (fla and rwkv7-hf).
fn rwkv7_global(name: &str) -> Option<&'static str> {
    Some(match name {
        "model.embeddings.weight" => "emb.weight",
        "model.norm.weight" => "ln_out.weight",
        "model.norm.bias" => "ln_out.bias",
        "lm_head.weight" => "head.weight",
        _ => return None,
    })
}

/// RWKV-7 per-block names (after `model.layers.N.`) -> official (after `blocks.N.`). The
/// LoRA modules are `Sequential(Linear(C, D, bias=False), act, Linear(D, C))`: `lora.0` is
/// the official factor 1 transposed, `lora.2` factor 2 transposed with the bias as `*0`.
const RWKV7: [(&str, &str, Op); 37] = [
    ("pre_norm.weight", "ln0.weight", Op::Same),
    ("pre_norm.bias", "ln0.bias", Op::Same),
    ("attn_norm.weight", "ln1.weight", Op::Same),
    ("attn_norm.bias", "ln1.bias", Op::Same),
    ("ffn_norm.weight", "ln2.weight", Op::Same),
    ("ffn_norm.bias", "ln2.bias", Op::Same),
    ("attn.x_r", "att.x_r", Op::PerChannel),
    ("attn.x_w", "att.x_w", Op::PerChannel),
    ("attn.x_k", "att.x_k", Op::PerChannel),
    ("attn.x_v", "att.x_v", Op::PerChannel),
    ("attn.x_a", "att.x_a", Op::PerChannel),
    ("attn.x_g", "att.x_g", Op::PerChannel),
    ("attn.w_lora.lora.0.weight", "att.w1", Op::Transpose),
    ("attn.w_lora.lora.2.weight", "att.w2", Op::Transpose),
    ("attn.w_lora.lora.2.bias", "att.w0", Op::PerChannel),
    ("attn.a_lora.lora.0.weight", "att.a1", Op::Transpose),
    ("attn.a_lora.lora.2.weight", "att.a2", Op::Transpose),
    ("attn.a_lora.lora.2.bias", "att.a0", Op::PerChannel),
    ("attn.v_lora.lora.0.weight", "att.v1", Op::Transpose),
    ("attn.v_lora.lora.2.weight", "att.v2", Op::Transpose),
    ("attn.v_lora.lora.2.bias", "att.v0", Op::PerChannel),
    ("attn.g_lora.lora.0.weight", "att.g1", Op::Transpose),
    ("attn.g_lora.lora.2.weight", "att.g2", Op::Transpose),
    ("attn.k_k", "att.k_k", Op::PerChannel),
    ("attn.k_a", "att.k_a", Op::PerChannel),
    ("attn.r_k", "att.r_k", Op::Same),
    ("attn.r_proj.weight", "att.receptance.weight", Op::Same),
    ("attn.k_proj.weight", "att.key.weight", Op::Same),
    ("attn.v_proj.weight", "att.value.weight", Op::Same),
    ("attn.o_proj.weight", "att.output.weight", Op::Same),
    ("attn.g_norm.weight", "att.ln_x.weight", Op::Same),
    ("attn.g_norm.bias", "att.ln_x.bias", Op::Same),
    ("ffn.x_k", "ffn.x_k", Op::PerChannel),
    ("ffn.key.weight", "ffn.key.weight", Op::Same),
    ("ffn.value.weight", "ffn.value.weight", Op::Same),
    // Older fla checkpoints ("version 1") keep the six mixes fused; see `rwkv7_rule`.
    ("attn.x_x", "", Op::Same),
    ("attn.lerp", "", Op::Same),
];

/// The official name of an RWKV-7 folder's tensor.
fn rwkv7_rule(name: &str) -> Option<Rule> {
    if let Some(official) = rwkv7_global(name) {
        return Some(Rule::To(official.into(), Op::Same));
    }
    let (i, leaf) = block(name, "model.layers.")?;
    if leaf == "attn.x_x" {
        // [6, C], rows r, w, k, v, a, g (fla's `RWKV7Attention` before the split).
        return Some(Rule::Split(
            ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"]
                .iter()
                .map(|x| format!("blocks.{i}.att.{x}"))
                .collect(),
        ));
    }
    let (_, official, op) = RWKV7.iter().find(|(l, o, _)| *l == leaf && !o.is_empty())?;
    Some(Rule::To(format!("blocks.{i}.{official}"), *op))
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

/// A weights file in the official naming: an RWKV-7 folder's layout (fla, rwkv7-hf) mapped
/// onto it, or transformers' RWKV-4 keys renamed, when it uses them. So a folder's
/// `model.safetensors` also loads on its own (a browser page is given one file, not a
/// folder), with the vocabulary chosen by size and nothing checked against a config.
pub(super) fn official_names(mut checkpoint: Checkpoint) -> Result<Checkpoint, LoadError> {
    if checkpoint
        .names()
        .any(|n| n.starts_with("model.") || n == "lm_head.weight")
    {
        let path = checkpoint.path().to_path_buf();
        let entries = apply(checkpoint.take_entries(), rwkv7_rule, &path)?;
        checkpoint.set_entries(entries);
        Ok(checkpoint)
    } else if checkpoint.names().any(is_hf_name) {
        Ok(checkpoint.renamed(official_name))
    } else {
        Ok(checkpoint)
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
    let mut checkpoint = if dir.join(SHARD_INDEX).is_file() {
        open_shards(dir)?
    } else {
        let weights = WEIGHT_FILES
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| LoadError::NotACheckpoint {
                path: dir.to_path_buf(),
                reason: format!(
                    "no weights file ({}, or {SHARD_INDEX})",
                    WEIGHT_FILES.join(" or ")
                ),
            })?;
        Checkpoint::open_file(&weights)?.with_format(Format::HuggingFace, &weights)
    };
    checkpoint = official_names(checkpoint)?;
    if checkpoint.shape("head.weight").is_none() && config.tie_word_embeddings {
        checkpoint.alias("emb.weight", "head.weight");
    }
    check_config(&config, &config_path, &checkpoint)?;
    checkpoint.set_vocab_file(
        VOCAB_FILES
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file()),
    );
    Ok(checkpoint)
}

/// `model.safetensors.index.json`: which shard holds each tensor.
#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// A sharded folder's tensors, each shard memory-mapped, checked against the index: every
/// tensor it lists in the shard it names, none twice, none unlisted.
fn open_shards(dir: &Path) -> Result<Checkpoint, LoadError> {
    let index_path = dir.join(SHARD_INDEX);
    let bad = |detail: String| LoadError::BadConfig {
        path: index_path.clone(),
        detail,
    };
    // An index lists one short line per tensor: a few hundred kilobytes for released models.
    let text = crate::files::read_input(&index_path, 64 << 20).map_err(|e| bad(e.reason()))?;
    let index: ShardIndex =
        serde_json::from_slice(&text).map_err(|e| bad(format!("invalid shard index: {e}")))?;
    let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tensor, shard) in &index.weight_map {
        shards
            .entry(shard.as_str())
            .or_default()
            .push(tensor.as_str());
    }
    let mut all = BTreeMap::new();
    let mut first: Option<Checkpoint> = None;
    for (shard, listed) in &shards {
        let plain = Path::new(shard)
            .file_name()
            .is_some_and(|f| f == std::ffi::OsStr::new(shard));
        if !plain {
            return Err(bad(format!(
                "shard '{shard}' is not a file name in the model folder"
            )));
        }
        let path = dir.join(shard);
        if !path.is_file() {
            return Err(bad(format!(
                "shard '{shard}' is missing from {}",
                dir.display()
            )));
        }
        let mut checkpoint = Checkpoint::open_file(&path)?;
        if checkpoint.format() != Format::Safetensors {
            return Err(bad(format!("shard '{shard}' is not a safetensors file")));
        }
        let entries = checkpoint.take_entries();
        for tensor in listed {
            if !entries.contains_key(*tensor) {
                return Err(bad(format!(
                    "the index puts '{tensor}' in '{shard}', which does not hold it"
                )));
            }
        }
        for (name, entry) in entries {
            if index.weight_map.get(&name).map(String::as_str) != Some(shard) {
                let detail = match index.weight_map.get(&name) {
                    Some(other) => format!("'{name}' is in both '{shard}' and '{other}'"),
                    None => format!("'{name}' in '{shard}' is not in the index"),
                };
                return Err(bad(detail));
            }
            all.insert(name, entry);
        }
        first.get_or_insert(checkpoint);
    }
    let Some(mut checkpoint) = first else {
        return Err(bad("the index lists no tensors".into()));
    };
    checkpoint.set_entries(all);
    Ok(checkpoint.with_format(Format::HuggingFace, dir))
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
    let dim = |name: &str, i: usize| checkpoint.shape(name).and_then(|s| s.get(i).copied());
    let layers = crate::model::count_layers(checkpoint.names());
    // RWKV-7's value-residual factor is absent from layer 0.
    let value_rank = (0..layers).find_map(|i| dim(&format!("blocks.{i}.att.v1"), 1));
    let checks = [
        ("vocab_size", config.vocab_size, dim("emb.weight", 0)),
        ("hidden_size", config.hidden_size, dim("emb.weight", 1)),
        ("num_hidden_layers", config.num_hidden_layers, Some(layers)),
        (
            "intermediate_size",
            config.intermediate_size,
            dim("blocks.0.ffn.key.weight", 0),
        ),
        ("head_dim", config.head_dim, dim("blocks.0.att.r_k", 1)),
        (
            "decay_low_rank_dim",
            config.decay_low_rank_dim,
            dim("blocks.0.att.w1", 1),
        ),
        (
            "a_low_rank_dim",
            config.a_low_rank_dim,
            dim("blocks.0.att.a1", 1),
        ),
        ("v_low_rank_dim", config.v_low_rank_dim, value_rank),
        (
            "gate_low_rank_dim",
            config.gate_low_rank_dim,
            dim("blocks.0.att.g1", 1),
        ),
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
