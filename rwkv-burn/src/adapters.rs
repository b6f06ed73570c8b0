//! LoRA adapters on a model's projections (see [`LoraPair`]): which projections they adapt,
//! fresh ones to train, adapter files, loading them onto a model at inference, and merging
//! them into the weights.
//!
//! Files are safetensors holding RWKV-PEFT's names and shapes (`blocks.{i}.att.key.lora_A`
//! `[r, in]`, `...lora_B` `[out, r]`; its `LoraLinear` uses `x @ A^T @ B^T * alpha / r`)
//! and the rank, alpha and targets in the header's metadata (`lora_r`, `lora_alpha`,
//! `lora_targets`), so an adapter says how to apply itself.

use crate::model::Rwkv;
use crate::model::projection::LoraPair;
use crate::safetensors_io::{self, IoError, NamedTensor};
use crate::weights::stable_id;
use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use std::path::{Path, PathBuf};

/// The largest adapter file read: a rank-64 adapter of every projection of a 13B model is
/// about 1 GiB in f32.
pub const MAX_ADAPTER_FILE_BYTES: u64 = 4 << 30;

/// The largest rank accepted (RWKV-PEFT's recipes use 8 to 128).
pub const MAX_RANK: usize = 4096;

/// What adapters go on: `att` (every time-mix projection), `ffn` (every channel-mix
/// projection), `head`, or one kind of projection (`att.key`, `ffn.value`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(Vec<String>);

impl Targets {
    /// Parses a comma-separated list.
    pub fn parse(list: &str) -> Result<Self, AdapterError> {
        let parts: Vec<String> = list
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(AdapterError::Target(list.to_string()));
        }
        for part in &parts {
            let known = matches!(part.as_str(), "att" | "ffn" | "head")
                || part
                    .strip_prefix("att.")
                    .or_else(|| part.strip_prefix("ffn."))
                    .is_some_and(|leaf| {
                        !leaf.is_empty() && leaf.chars().all(|c| c.is_ascii_lowercase())
                    });
            if !known {
                return Err(AdapterError::Target(part.clone()));
            }
        }
        Ok(Self(parts))
    }

    /// Whether the projection named `name` (`blocks.3.att.key`, `head`) is a target.
    pub fn covers(&self, name: &str) -> bool {
        let local = match name.strip_prefix("blocks.") {
            // `3.att.key` -> `att.key`
            Some(rest) => rest.split_once('.').map_or(rest, |(_, local)| local),
            None => name,
        };
        self.0.iter().any(|t| {
            local == t
                || local
                    .strip_prefix(t.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        })
    }

    /// The list as given (for metadata and messages).
    pub fn to_list(&self) -> String {
        self.0.join(",")
    }
}

/// The shape of the adapters of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// Rank `r`.
    pub rank: usize,
    /// `alpha`: the adapter's term is scaled by `alpha / r`.
    pub alpha: f32,
    /// Which projections.
    pub targets: Targets,
}

impl LoraSpec {
    /// Checks rank (1 to [`MAX_RANK`]) and alpha (finite, above 0).
    pub fn new(rank: usize, alpha: f32, targets: Targets) -> Result<Self, AdapterError> {
        if !(1..=MAX_RANK).contains(&rank) {
            return Err(AdapterError::Rank(rank));
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(AdapterError::Alpha(alpha));
        }
        Ok(Self {
            rank,
            alpha,
            targets,
        })
    }

    fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// Adapters that cannot be made, read or applied.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// Rank out of range.
    #[error("LoRA rank {0}: it must be 1 to {MAX_RANK}")]
    Rank(usize),
    /// Alpha not above zero.
    #[error("LoRA alpha {0}: it must be a number above 0")]
    Alpha(f32),
    /// An unknown target.
    #[error(
        "unknown LoRA target {0:?}: give att, ffn, head, or one projection such as att.key or ffn.value"
    )]
    Target(String),
    /// The targets match no projection of the model.
    #[error("the LoRA targets {0} match no projection of this model")]
    NoTarget(String),
    /// A problem with an adapter file's contents; names the file.
    #[error("{path}: {detail}")]
    File {
        /// The adapter file.
        path: PathBuf,
        /// What is wrong (names the tensor where one is at fault).
        detail: String,
    },
    /// Merging into a weight held packed (bf16/f16/8-bit on the CPU).
    #[error("cannot merge into {0}: its weight is held packed; load the model in f32 to merge")]
    Packed(String),
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Uniform values in `[-bound, bound)` from a seeded stream.
fn uniform(count: usize, bound: f32, seed: u64) -> Vec<f32> {
    let mut rng = crate::random::SplitMix64::new(seed);
    (0..count)
        .map(|_| {
            let unit = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * unit - 1.0) * bound
        })
        .collect()
}

/// A pair named `name` (for stable parameter ids) from `A [in, r]` and `B [r, out]`.
fn pair(name: &str, a: Tensor<2>, b: Tensor<2>, scale: f32) -> LoraPair {
    let mut a = Param::from_tensor(a);
    a.id = stable_id(&format!("{name}.lora_A"));
    let mut b = Param::from_tensor(b);
    b.id = stable_id(&format!("{name}.lora_B"));
    LoraPair { a, b, scale }
}

/// Attaches fresh adapters to every targeted projection, as RWKV-PEFT starts them: `A`
/// uniform in `±1/sqrt(in)` (torch's `kaiming_uniform_(a=sqrt(5))`), `B` zero, so the
/// model computes exactly what it did. Returns how many projections got one.
pub fn attach_fresh(model: &mut Rwkv, spec: &LoraSpec, seed: u64) -> Result<usize, AdapterError> {
    let mut count = 0;
    for (index, (name, projection)) in model.named_projections_mut().into_iter().enumerate() {
        if !spec.targets.covers(&name) {
            continue;
        }
        let (input, out) = (projection.in_features(), projection.out_features());
        let device = projection.device();
        let bound = 1.0 / (input as f32).sqrt();
        let a = uniform(input * spec.rank, bound, seed ^ ((index as u64 + 1) << 20));
        let a = Tensor::from_data(TensorData::new(a, [input, spec.rank]), &device);
        let b = Tensor::zeros([spec.rank, out], &device);
        projection.lora = Some(pair(&name, a, b, spec.scale()));
        count += 1;
    }
    if count == 0 {
        return Err(AdapterError::NoTarget(spec.targets.to_list()));
    }
    Ok(count)
}

/// The attached adapters in RWKV-PEFT's names and layout, f32.
pub fn adapter_tensors(model: &Rwkv) -> Vec<NamedTensor> {
    let mut model = model.clone();
    let mut out = Vec::new();
    for (name, projection) in model.named_projections_mut() {
        if let Some(lora) = &projection.lora {
            let a = lora.a.val().transpose().into_data().convert::<f32>();
            let b = lora.b.val().transpose().into_data().convert::<f32>();
            out.push(NamedTensor::new(format!("{name}.lora_A"), a));
            out.push(NamedTensor::new(format!("{name}.lora_B"), b));
        }
    }
    out
}

/// Writes the attached adapters (atomically) with `spec` in the metadata.
pub fn save(model: &Rwkv, spec: &LoraSpec, path: &Path) -> Result<(), AdapterError> {
    let rank = spec.rank.to_string();
    let alpha = spec.alpha.to_string();
    let targets = spec.targets.to_list();
    safetensors_io::write_with_metadata(
        path,
        &adapter_tensors(model),
        &[
            ("format", "rwkv-burn lora"),
            ("lora_r", &rank),
            ("lora_alpha", &alpha),
            ("lora_targets", &targets),
        ],
    )?;
    Ok(())
}

/// Reads an adapter file and attaches its adapters to `model` (replacing any attached).
/// Every tensor must name a projection of this model and fit its shape at the file's rank;
/// both halves of every pair must be there; values finite. Returns the file's settings.
pub fn load(model: &mut Rwkv, path: &Path) -> Result<LoraSpec, AdapterError> {
    let bad = |detail: String| AdapterError::File {
        path: path.to_path_buf(),
        detail,
    };
    let bytes = crate::files::read_input(path, MAX_ADAPTER_FILE_BYTES).map_err(IoError::from)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let field = |key: &str| {
        meta.get(key)
            .ok_or_else(|| bad(format!("no {key} in the metadata: not an adapter file?")))
    };
    let rank: usize = field("lora_r")?
        .parse()
        .map_err(|_| bad("lora_r is not a whole number".into()))?;
    let alpha: f32 = field("lora_alpha")?
        .parse()
        .map_err(|_| bad("lora_alpha is not a number".into()))?;
    let targets = Targets::parse(field("lora_targets")?).map_err(|e| bad(e.to_string()))?;
    let spec = LoraSpec::new(rank, alpha, targets).map_err(|e| bad(e.to_string()))?;
    let tensors = safetensors_io::read_limited(path, MAX_ADAPTER_FILE_BYTES)?;
    let mut by_name: std::collections::HashMap<String, TensorData> =
        tensors.into_iter().map(|t| (t.name, t.data)).collect();
    let mut attached = Vec::new();
    for (name, projection) in model.named_projections_mut() {
        let (input, out) = (projection.in_features(), projection.out_features());
        let a_name = format!("{name}.lora_A");
        let b_name = format!("{name}.lora_B");
        let (a, b) = match (by_name.remove(&a_name), by_name.remove(&b_name)) {
            (None, None) => continue,
            (Some(a), Some(b)) => (a, b),
            (Some(_), None) => return Err(bad(format!("'{b_name}' is missing"))),
            (None, Some(_)) => return Err(bad(format!("'{a_name}' is missing"))),
        };
        let values = |data: TensorData, name: &str, shape: [usize; 2]| {
            if data.shape().to_vec() != shape.to_vec() {
                return Err(bad(format!(
                    "'{name}' has shape {:?}; this model's projection needs {shape:?} (rank {rank}): an adapter for another model?",
                    data.shape().to_vec()
                )));
            }
            let v: Vec<f32> = data
                .convert::<f32>()
                .try_to_vec()
                .map_err(|_| bad(format!("'{name}' is not floating point")))?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!("'{name}' holds {} at index {i}", v[i])));
            }
            Ok(v)
        };
        let a = values(a, &a_name, [rank, input])?;
        let b = values(b, &b_name, [out, rank])?;
        let device = projection.device();
        // Stored transposed (torch Linear weights); ours are [in, r] and [r, out].
        let a = Tensor::<2>::from_data(TensorData::new(a, [rank, input]), &device).transpose();
        let b = Tensor::<2>::from_data(TensorData::new(b, [out, rank]), &device).transpose();
        attached.push((projection, pair(&name, a, b, spec.scale())));
    }
    if let Some(extra) = by_name.keys().min() {
        return Err(bad(format!(
            "'{extra}' names no projection of this model: an adapter for another model?"
        )));
    }
    if attached.is_empty() {
        return Err(bad("no adapters in the file".into()));
    }
    for (projection, lora) in attached {
        projection.lora = Some(lora);
    }
    Ok(spec)
}

/// Folds every attached adapter into its weight (`W + s * A @ B`) and removes it: the model
/// then computes the same without adapters, and exports as an ordinary checkpoint.
pub fn merge(model: &mut Rwkv) -> Result<usize, AdapterError> {
    let mut count = 0;
    for (name, projection) in model.named_projections_mut() {
        let Some(lora) = projection.lora.take() else {
            continue;
        };
        let Some(linear) = projection.linear_mut() else {
            return Err(AdapterError::Packed(name));
        };
        let weight = linear.weight.val() + lora.delta();
        let id = linear.weight.id;
        linear.weight = Param::initialized(id, weight);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_projections() {
        let t = Targets::parse("att, ffn.value").unwrap();
        assert!(t.covers("blocks.0.att.key"));
        assert!(t.covers("blocks.11.att.output"));
        assert!(t.covers("blocks.2.ffn.value"));
        assert!(!t.covers("blocks.2.ffn.key"));
        assert!(!t.covers("head"));
        assert!(Targets::parse("head").unwrap().covers("head"));
        for bad in ["", "mlp", "att.", "att.Key", "blocks.0.att"] {
            assert!(Targets::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rank_and_alpha_are_checked() {
        let t = Targets::parse("att").unwrap();
        assert!(matches!(
            LoraSpec::new(0, 8.0, t.clone()),
            Err(AdapterError::Rank(0))
        ));
        for alpha in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(LoraSpec::new(8, alpha, t.clone()).is_err(), "{alpha}");
        }
        assert!(LoraSpec::new(8, 16.0, t).is_ok());
    }
}
