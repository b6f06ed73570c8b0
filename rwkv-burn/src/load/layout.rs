//! Foreign layouts onto the official one: a layout's table (`hf.rs` for Hugging Face folders,
//! `gguf_rwkv.rs` for llama.cpp's GGUF) says, for each of its tensor names, which official
//! tensor it is and how its values are arranged; [`apply`] renames and rearranges a
//! checkpoint's tensors by it. Everything above (version detection, building, export) then
//! sees one naming.

use super::checkpoint::{Entry, Rearrange};
use crate::weights::LoadError;
use std::collections::BTreeMap;
use std::path::Path;

/// How a stored tensor's values become the official tensor's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Op {
    /// Same values, same shape.
    Same,
    /// A per-channel vector, officially `[1, 1, C]` (stored `[C]` or `[1, 1, C]`).
    PerChannel,
    /// A matrix stored transposed (`nn.Linear` factors of a LoRA, `x @ W` vs `W x`).
    Transpose,
    /// A flat `[H * N]` vector, officially `[H, N]` for head size `N`.
    Heads(usize),
    /// Same shape, every value times a power of two.
    Scaled(f32),
}

/// What a layout's table says of one of its tensor names.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Rule {
    /// It is official tensor `name`, arranged by `op`.
    To(String, Op),
    /// Equal parts along its first dimension are these per-channel official tensors, in
    /// order (a fused stack of token-shift mixes).
    Split(Vec<String>),
    /// A tensor the layout writes that no model reads (a placeholder), dropped.
    Drop,
}

/// Renames and rearranges `entries` (in the layout's naming) by `rule`; names the table does
/// not know pass through unchanged, so that building reports them as unused. Two stored
/// tensors meant for one official name, or a shape a rule cannot take, are errors naming the
/// stored tensor.
pub(super) fn apply(
    entries: BTreeMap<String, Entry>,
    rule: impl Fn(&str) -> Option<Rule>,
    path: &Path,
) -> Result<BTreeMap<String, Entry>, LoadError> {
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for (stored, entry) in entries {
        let got = entry.shape().to_vec();
        let wrong = |expected: Vec<usize>| LoadError::WrongShape {
            path: path.to_path_buf(),
            name: stored.clone(),
            got: got.clone(),
            expected,
        };
        let mapped: Vec<(String, Entry)> = match rule(&stored) {
            None => vec![(stored.clone(), entry)],
            Some(Rule::Drop) => continue,
            Some(Rule::To(name, op)) => {
                vec![(name, arrange(entry, op).map_err(wrong)?)]
            }
            Some(Rule::Split(names)) => {
                let count = names.len();
                let mut parts = Vec::with_capacity(count);
                for (index, name) in names.into_iter().enumerate() {
                    let part = entry
                        .clone()
                        .rearranged(Rearrange::Part { index, count })
                        .ok_or_else(|| wrong(vec![count, 0]))?;
                    let part = arrange(part, Op::PerChannel).map_err(wrong)?;
                    parts.push((name, part));
                }
                parts
            }
        };
        for (name, entry) in mapped {
            if let Some(first) = origin.get(&name) {
                return Err(LoadError::NotACheckpoint {
                    path: path.to_path_buf(),
                    reason: format!("'{first}' and '{stored}' both hold '{name}'"),
                });
            }
            origin.insert(name.clone(), stored.clone());
            out.insert(name, entry);
        }
    }
    Ok(out)
}

/// `entry` arranged by `op`, or the shape it should have had.
fn arrange(entry: Entry, op: Op) -> Result<Entry, Vec<usize>> {
    let shape = entry.shape().to_vec();
    let elements: usize = shape.iter().product();
    let (arranged, expected) = match op {
        Op::Same => return Ok(entry),
        Op::Scaled(1.0) => return Ok(entry),
        Op::Scaled(factor) => (entry.rearranged(Rearrange::Scale(factor)), shape.clone()),
        Op::PerChannel => {
            let one_axis = shape.iter().filter(|&&d| d != 1).count() <= 1;
            let want = vec![1, 1, elements];
            (
                one_axis.then(|| entry.reshaped(want.clone())).flatten(),
                want,
            )
        }
        Op::Transpose => (entry.rearranged(Rearrange::Transpose), vec![0, 0]),
        Op::Heads(n) => {
            let want = vec![elements / n.max(1), n];
            let fits = shape.len() == 1 && n > 0 && elements.is_multiple_of(n);
            (fits.then(|| entry.reshaped(want.clone())).flatten(), want)
        }
    };
    arranged.ok_or(expected)
}

/// Splits `prefix{index}.{rest}` into `(index, rest)`: the block of a per-layer name.
pub(super) fn block<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (index, rest) = name.strip_prefix(prefix)?.split_once('.')?;
    // Leading zeros or signs would let two names mean one block.
    if index.is_empty() || (index.len() > 1 && index.starts_with('0')) {
        return None;
    }
    Some((index.parse().ok()?, rest))
}
