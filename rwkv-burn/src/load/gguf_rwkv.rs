//! llama.cpp's RWKV-6 and RWKV-7 GGUF layout (`convert_hf_to_gguf.py`'s `Rwkv6Model` and
//! `Rwkv7Model`, `src/llama-model.cpp`): its tensor names onto the official ones, its
//! hyperparameters checked against the tensors, and its World vocabulary.
//!
//! Tensor types: F32, F16 and BF16 are read as they are; Q8_0 and Q4_0 blocks are ggml's
//! layout of our `q8` and `q4` formats, so a quantized matrix is taken apart into levels
//! and scales (one copy) and runs packed as stored, with nothing re-quantized. Tensors that
//! llama.cpp stores transposed (the low-rank factors) or fused (the token-shift mixes) are
//! rearranged to f32 as they are read: they are the small ones.

use super::checkpoint::Checkpoint;
use super::gguf::{Gguf, Value};
use super::layout::{Op, Rule, apply, block};
use crate::weights::LoadError;

/// The architectures this build runs.
const ARCHITECTURES: [&str; 2] = ["rwkv6", "rwkv7"];

/// Names outside the blocks, both architectures.
fn global(name: &str) -> Option<&'static str> {
    Some(match name {
        "token_embd.weight" => "emb.weight",
        "token_embd_norm.weight" => "blocks.0.ln0.weight",
        "token_embd_norm.bias" => "blocks.0.ln0.bias",
        "output_norm.weight" => "ln_out.weight",
        "output_norm.bias" => "ln_out.bias",
        "output.weight" => "head.weight",
        _ => return None,
    })
}

/// Per-block names of both architectures: GGUF leaf -> official leaf, arrangement.
const COMMON: [(&str, &str, Op); 6] = [
    ("attn_norm.weight", "ln1.weight", Op::Same),
    ("attn_norm.bias", "ln1.bias", Op::Same),
    ("attn_norm_2.weight", "ln2.weight", Op::Same),
    ("attn_norm_2.bias", "ln2.bias", Op::Same),
    ("time_mix_ln.weight", "att.ln_x.weight", Op::Same),
    ("time_mix_ln.bias", "att.ln_x.bias", Op::Same),
];

/// RWKV-7's per-block names (`r_k` is `Op::Heads`, filled in with the head size).
const RWKV7: [(&str, &str, Op); 20] = [
    ("time_mix_w0.weight", "att.w0", Op::PerChannel),
    ("time_mix_w1.weight", "att.w1", Op::Transpose),
    ("time_mix_w2.weight", "att.w2", Op::Transpose),
    ("time_mix_a0.weight", "att.a0", Op::PerChannel),
    ("time_mix_a1.weight", "att.a1", Op::Transpose),
    ("time_mix_a2.weight", "att.a2", Op::Transpose),
    ("time_mix_v0.weight", "att.v0", Op::PerChannel),
    ("time_mix_v1.weight", "att.v1", Op::Transpose),
    ("time_mix_v2.weight", "att.v2", Op::Transpose),
    ("time_mix_g1.weight", "att.g1", Op::Transpose),
    ("time_mix_g2.weight", "att.g2", Op::Transpose),
    ("time_mix_k_k.weight", "att.k_k", Op::PerChannel),
    ("time_mix_k_a.weight", "att.k_a", Op::PerChannel),
    ("time_mix_r_k.weight", "att.r_k", Op::Heads(0)),
    (
        "time_mix_receptance.weight",
        "att.receptance.weight",
        Op::Same,
    ),
    ("time_mix_key.weight", "att.key.weight", Op::Same),
    ("time_mix_value.weight", "att.value.weight", Op::Same),
    ("time_mix_output.weight", "att.output.weight", Op::Same),
    ("channel_mix_lerp_k.weight", "ffn.x_k", Op::PerChannel),
    ("channel_mix_key.weight", "ffn.key.weight", Op::Same),
];

/// RWKV-7's fused mixes, in the order llama.cpp stacks them.
const RWKV7_FUSED: [&str; 6] = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"];

/// RWKV-6's per-block names (`time_mix_output` and `channel_mix_value` get `Op::Scaled`
/// where the file was rescaled).
const RWKV6: [(&str, &str, Op); 15] = [
    ("time_mix_lerp_x.weight", "att.time_maa_x", Op::PerChannel),
    ("time_mix_w1.weight", "att.time_maa_w1", Op::Transpose),
    ("time_mix_w2.weight", "att.time_maa_w2", Op::Transpose),
    ("time_mix_decay.weight", "att.time_decay", Op::PerChannel),
    (
        "time_mix_decay_w1.weight",
        "att.time_decay_w1",
        Op::Transpose,
    ),
    (
        "time_mix_decay_w2.weight",
        "att.time_decay_w2",
        Op::Transpose,
    ),
    ("time_mix_first.weight", "att.time_faaaa", Op::Same),
    (
        "time_mix_receptance.weight",
        "att.receptance.weight",
        Op::Same,
    ),
    ("time_mix_key.weight", "att.key.weight", Op::Same),
    ("time_mix_value.weight", "att.value.weight", Op::Same),
    ("time_mix_gate.weight", "att.gate.weight", Op::Same),
    (
        "channel_mix_lerp_k.weight",
        "ffn.time_maa_k",
        Op::PerChannel,
    ),
    (
        "channel_mix_lerp_r.weight",
        "ffn.time_maa_r",
        Op::PerChannel,
    ),
    ("channel_mix_key.weight", "ffn.key.weight", Op::Same),
    (
        "channel_mix_receptance.weight",
        "ffn.receptance.weight",
        Op::Same,
    ),
];

/// RWKV-6's fused mixes, in the order llama.cpp stacks them (w, k, v, r, g).
const RWKV6_FUSED: [&str; 5] = [
    "time_maa_w",
    "time_maa_k",
    "time_maa_v",
    "time_maa_r",
    "time_maa_g",
];

/// The hyperparameters of the file that size the mapping.
struct Hyper {
    arch: &'static str,
    head_size: usize,
    /// RWKV-6: llama.cpp divided block `i`'s output matrices by `2^(i / n)`.
    rescale_every: usize,
}

/// The tensors of a GGUF checkpoint under official names and shapes; its hyperparameters
/// checked against them.
pub(super) fn official(mut checkpoint: Checkpoint) -> Result<Checkpoint, LoadError> {
    let path = checkpoint.path().to_path_buf();
    let gguf = checkpoint.gguf().expect("a GGUF checkpoint").clone();
    let bad = |detail: String| LoadError::BadConfig {
        path: path.clone(),
        detail,
    };
    let arch = match gguf.architecture() {
        Some(arch) => ARCHITECTURES
            .into_iter()
            .find(|a| *a == arch)
            .ok_or_else(|| LoadError::UnknownArchitecture {
                path: path.clone(),
                detail: format!(
                    "GGUF architecture '{arch}' is not an RWKV model this build runs ({})",
                    ARCHITECTURES.join(", ")
                ),
            })?,
        None => return Err(bad("GGUF metadata has no general.architecture".into())),
    };
    let int = |key: &str| -> Result<Option<usize>, LoadError> {
        match gguf.get(&format!("{arch}.{key}")) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| bad(format!("{arch}.{key} is {}, not a count", value.describe()))),
        }
    };
    let head_size = int("wkv.head_size")?.ok_or_else(|| bad(format!("no {arch}.wkv.head_size")))?;
    if head_size == 0 || head_size > 4096 {
        return Err(bad(format!(
            "{arch}.wkv.head_size {head_size} is out of range"
        )));
    }
    let rescale_every = int("rescale_every_n_layers")?.unwrap_or(0);
    let hyper = Hyper {
        arch,
        head_size,
        rescale_every,
    };
    let mut entries = apply(checkpoint.take_entries(), |name| rule(&hyper, name), &path)?;
    if !entries.contains_key("head.weight")
        && let Some(emb) = entries.get("emb.weight").cloned()
    {
        // llama.cpp ties the output to the embedding when a file has no `output.weight`.
        entries.insert("head.weight".into(), emb);
    }
    checkpoint.set_entries(entries);
    check_hyperparameters(&gguf, arch, &checkpoint)?;
    Ok(checkpoint)
}

/// The rule for one GGUF tensor name.
fn rule(hyper: &Hyper, name: &str) -> Option<Rule> {
    if let Some(official) = global(name) {
        return Some(Rule::To(official.into(), Op::Same));
    }
    let (i, leaf) = block(name, "blk.")?;
    let to = |official: &str, op| Some(Rule::To(format!("blocks.{i}.{official}"), op));
    if let Some((_, official, op)) = COMMON.iter().find(|(l, ..)| *l == leaf) {
        return to(official, *op);
    }
    let fused = |names: &[&str], prefix: &str| {
        Some(Rule::Split(
            names
                .iter()
                .map(|n| format!("blocks.{i}.{prefix}{n}"))
                .collect(),
        ))
    };
    if hyper.arch == "rwkv7" {
        if leaf == "time_mix_lerp_fused.weight" {
            return fused(&RWKV7_FUSED, "att.");
        }
        // Layer 0 has no value residual; llama.cpp writes copies of a0/a1/a2 there.
        if i == 0 && leaf.starts_with("time_mix_v") && leaf.len() == "time_mix_v0.weight".len() {
            return Some(Rule::Drop);
        }
        if leaf == "channel_mix_value.weight" {
            return to("ffn.value.weight", Op::Same);
        }
        let (_, official, op) = RWKV7.iter().find(|(l, ..)| *l == leaf)?;
        let op = match op {
            Op::Heads(_) => Op::Heads(hyper.head_size),
            op => *op,
        };
        return to(official, op);
    }
    if leaf == "time_mix_lerp_fused.weight" {
        return fused(&RWKV6_FUSED, "att.");
    }
    let scaled = Op::Scaled(rescale(hyper.rescale_every, i));
    match leaf {
        "time_mix_output.weight" => to("att.output.weight", scaled),
        "channel_mix_value.weight" => to("ffn.value.weight", scaled),
        _ => {
            let (_, official, op) = RWKV6.iter().find(|(l, ..)| *l == leaf)?;
            to(official, *op)
        }
    }
}

/// The factor that undoes llama.cpp's division of block `layer`'s output matrices by
/// `2^(layer / every)` (RWKV-6 files with `rescale_every_n_layers`; the official package
/// does the same in fp16 and halves the residual instead). Capped where it would overflow;
/// the block count check refuses such files anyway.
fn rescale(every: usize, layer: usize) -> f32 {
    match every {
        0 => 1.0,
        n => 2f32.powi((layer / n).min(100) as i32),
    }
}

/// The metadata must agree with the tensors: a mismatch means a damaged or mixed-up file.
fn check_hyperparameters(
    gguf: &Gguf,
    arch: &str,
    checkpoint: &Checkpoint,
) -> Result<(), LoadError> {
    let shape = |name: &str| checkpoint.shape(name).map(<[usize]>::to_vec);
    let dim = |name: &str, i: usize| shape(name).and_then(|s| s.get(i).copied());
    let layers = crate::model::count_layers(checkpoint.names());
    let mut checks = vec![
        ("embedding_length", dim("emb.weight", 1)),
        ("block_count", Some(layers)),
        ("feed_forward_length", dim("blocks.0.ffn.key.weight", 0)),
    ];
    if arch == "rwkv7" {
        checks.extend([
            ("wkv.head_size", dim("blocks.0.att.r_k", 1)),
            ("attention.decay_lora_rank", dim("blocks.0.att.w1", 1)),
            ("attention.iclr_lora_rank", dim("blocks.0.att.a1", 1)),
            ("attention.gate_lora_rank", dim("blocks.0.att.g1", 1)),
            (
                "attention.value_residual_mix_lora_rank",
                dim("blocks.1.att.v1", 1),
            ),
        ]);
    } else {
        checks.extend([
            ("wkv.head_size", dim("blocks.0.att.time_faaaa", 1)),
            ("time_decay_extra_dim", dim("blocks.0.att.time_decay_w1", 1)),
            ("time_mix_extra_dim", dim("blocks.0.att.time_maa_w2", 1)),
        ]);
    }
    for (key, found) in checks {
        let key = format!("{arch}.{key}");
        let (Some(value), Some(found)) = (gguf.get(&key), found) else {
            continue;
        };
        if value.as_u64() != Some(found as u64) {
            return Err(LoadError::BadConfig {
                path: checkpoint.path().to_path_buf(),
                detail: format!(
                    "the GGUF metadata says {key} = {}, the tensors have {found}",
                    value.describe()
                ),
            });
        }
    }
    Ok(())
}

/// The World vocabulary a GGUF file carries (`tokenizer.ggml.model = "rwkv"`), as the bytes of
/// each id (`None` for id 0, control and unused entries): `None` when the file has no RWKV
/// vocabulary, an error naming the entry when one cannot be read.
pub fn world_vocab(gguf: &Gguf) -> Option<Result<Vec<Option<Vec<u8>>>, String>> {
    if gguf.get("tokenizer.ggml.model").and_then(Value::as_str) != Some("rwkv") {
        return None;
    }
    let Some(Value::Array(tokens)) = gguf.get("tokenizer.ggml.tokens") else {
        return Some(Err(
            "tokenizer.ggml.tokens is missing or not an array".into()
        ));
    };
    let types = match gguf.get("tokenizer.ggml.token_type") {
        Some(Value::Array(types)) => types.as_slice(),
        _ => &[],
    };
    let mut vocab = Vec::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        // llama's token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        let kind = types.get(id).and_then(Value::as_u64).unwrap_or(1);
        let Some(text) = token.as_str() else {
            return Some(Err(format!("token {id} is not a string")));
        };
        if id == 0 || kind == 3 || kind == 5 {
            vocab.push(None);
            continue;
        }
        match unescape(text) {
            Ok(bytes) => vocab.push(Some(bytes)),
            Err(e) => return Some(Err(format!("token {id} ({text:?}): {e}"))),
        }
    }
    Some(Ok(vocab))
}

/// The bytes of a token as llama.cpp's converter writes World tokens: Python's
/// `repr(bytes)[2:-1]` (`\t \n \r \\ \'` and `\xNN` escapes, everything else as itself).
fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'\'') => out.push(b'\''),
            Some(b'"') => out.push(b'"'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let value = std::str::from_utf8(&hex)
                    .ok()
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("a \\x escape without two hex digits")?;
                out.push(value);
            }
            Some(other) => return Err(format!("unknown escape \\{}", other as char)),
            None => return Err("a lone backslash at the end".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_python_bytes_reprs() {
        assert_eq!(unescape(r"\x00").unwrap(), vec![0]);
        assert_eq!(unescape(r"\n").unwrap(), b"\n");
        assert_eq!(unescape(r"a\\b").unwrap(), b"a\\b");
        assert_eq!(unescape(r#"'"\'"#).unwrap(), b"'\"'");
        assert_eq!(unescape(r"\xe4\xbd\xa0").unwrap(), "你".as_bytes());
        assert!(unescape(r"\x4").is_err());
        assert!(unescape(r"\q").is_err());
        assert!(unescape("\\").is_err());
    }

    #[test]
    fn rescale_undoes_powers_of_two() {
        assert_eq!(rescale(0, 30), 1.0);
        assert_eq!(rescale(6, 5), 1.0);
        assert_eq!(rescale(6, 6), 2.0);
        assert_eq!(rescale(6, 13), 4.0);
    }
}
