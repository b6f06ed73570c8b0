//! Model hyper-parameters, as detected from a checkpoint's tensors.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The RWKV architecture generation of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Version {
    /// RWKV-4 ("Dove"/Pile models): vector-valued WKV with a running maximum.
    V4,
    /// RWKV-5 (Eagle), with the sub-version the official package detects (0, 1 or 2).
    V5 {
        /// 0, 1 or 2 for 5.0, 5.1 and 5.2.
        minor: u8,
    },
    /// RWKV-6 (Finch): data-dependent decay.
    V6,
    /// RWKV-7 (Goose): generalised delta rule.
    V7,
}

impl Version {
    /// Whether this build can run the version. RWKV-5.0 and 5.1 (pre-release Eagle
    /// checkpoints) are recognised but not run: no reference outputs exist to check them.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            Version::V4 | Version::V5 { minor: 2 } | Version::V6 | Version::V7
        )
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::V4 => write!(f, "RWKV-4"),
            Version::V5 { minor } => write!(f, "RWKV-5.{minor}"),
            Version::V6 => write!(f, "RWKV-6"),
            Version::V7 => write!(f, "RWKV-7"),
        }
    }
}

/// Every dimension of a model. Loaders fill it from the tensors, never from the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RwkvConfig {
    /// Architecture generation.
    pub version: Version,
    /// Number of blocks.
    pub n_layer: usize,
    /// Width of the residual stream (C).
    pub n_embd: usize,
    /// Width of the attention (time-mix) projections (A); equal to `n_embd` in released models.
    pub dim_att: usize,
    /// Width of the feed-forward (channel-mix) hidden layer (F).
    pub dim_ffn: usize,
    /// Vocabulary size (V).
    pub vocab_size: usize,
    /// Channels per head (N) for RWKV-5 and later; `None` for RWKV-4.
    pub head_size: Option<usize>,
    /// Ranks of the low-rank adapters of RWKV-6 and RWKV-7 (zero where a version has none).
    #[serde(default)]
    pub lora: LoraRanks,
}

/// Inner widths of the low-rank (LoRA-style) projections that RWKV-6 and RWKV-7 use to make
/// decay, mixing, learning rate, value residual and gate data-dependent (each version's page
/// in `model/` says which tensors carry them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoraRanks {
    /// Decay (RWKV-6 and 7).
    pub decay: usize,
    /// Token-shift mix, per mixed input (RWKV-6).
    pub mix: usize,
    /// In-context learning rate (RWKV-7).
    pub a: usize,
    /// Value residual (RWKV-7).
    pub value: usize,
    /// Output gate (RWKV-7).
    pub gate: usize,
}

impl LoraRanks {
    /// Field-wise maximum (layers may lack an unused adapter).
    pub fn max(self, other: Self) -> Self {
        Self {
            decay: self.decay.max(other.decay),
            mix: self.mix.max(other.mix),
            a: self.a.max(other.a),
            value: self.value.max(other.value),
            gate: self.gate.max(other.gate),
        }
    }
}

impl RwkvConfig {
    /// Number of heads (H = A / N), 0 for RWKV-4.
    pub fn n_head(&self) -> usize {
        self.head_size.map_or(0, |n| self.dim_att / n)
    }
}
