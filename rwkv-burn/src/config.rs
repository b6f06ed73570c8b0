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

/// The most blocks a model may have (released models have at most 61).
pub const MAX_LAYERS: usize = 4096;
/// The widest residual stream, attention or feed-forward layer a model may have (released
/// models: 4096 and 16384).
pub const MAX_WIDTH: usize = 1 << 20;
/// The largest vocabulary a model may have (released models: 65536).
pub const MAX_VOCAB: usize = 1 << 21;

impl RwkvConfig {
    /// Number of heads (H = A / N), 0 for RWKV-4.
    pub fn n_head(&self) -> usize {
        self.head_size.map_or(0, |n| self.dim_att / n)
    }

    /// Checks that the dimensions describe a model that can be built and run: every width
    /// and the vocabulary at least 1 and below the limits above, a head size (matrix-state
    /// versions only) that divides the attention width, every adapter rank the version uses
    /// at least 1, and no tensor whose element count overflows. Loading runs it between
    /// detection and building, so a degenerate checkpoint is refused before any tensor is
    /// made; the error says which dimension is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("layer count", self.n_layer, MAX_LAYERS),
            ("embedding width", self.n_embd, MAX_WIDTH),
            ("attention width", self.dim_att, MAX_WIDTH),
            ("feed-forward width", self.dim_ffn, MAX_WIDTH),
            ("vocabulary", self.vocab_size, MAX_VOCAB),
        ];
        for (what, value, max) in sizes {
            if value == 0 || value > max {
                return Err(format!("the {what} is {value}; it must be 1 to {max}"));
            }
        }
        let matrix_state = !matches!(self.version, Version::V4);
        match (self.head_size, matrix_state) {
            (None, true) => return Err(format!("{} needs a head size", self.version)),
            (Some(_), false) => return Err(format!("{} has no heads", self.version)),
            (Some(n), true) if n == 0 || !self.dim_att.is_multiple_of(n) => {
                return Err(format!(
                    "the head size {n} does not divide the attention width {}",
                    self.dim_att
                ));
            }
            _ => {}
        }
        let ranks: &[(&str, usize)] = match self.version {
            Version::V6 => &[("decay", self.lora.decay), ("mix", self.lora.mix)],
            // Layer 0 has no value residual, so a one-layer model has no value adapter.
            Version::V7 if self.n_layer > 1 => &[
                ("decay", self.lora.decay),
                ("in-context learning rate", self.lora.a),
                ("value residual", self.lora.value),
                ("gate", self.lora.gate),
            ],
            Version::V7 => &[
                ("decay", self.lora.decay),
                ("in-context learning rate", self.lora.a),
                ("gate", self.lora.gate),
            ],
            _ => &[],
        };
        for &(what, rank) in ranks {
            if rank == 0 || rank > MAX_WIDTH {
                return Err(format!(
                    "the {what} adapter has rank {rank}; it must be 1 to {MAX_WIDTH}"
                ));
            }
        }
        // Every tensor's element count, and the largest activations a forward pass makes per
        // token, must be representable (the widths are bounded above, so only products of
        // two can overflow on 32-bit targets).
        let products = [
            self.vocab_size.checked_mul(self.n_embd),
            self.dim_ffn.checked_mul(self.n_embd),
            self.dim_att.checked_mul(self.n_embd),
            // RWKV-4 has no head matrices.
            self.head_size.map_or(Some(0), |n| {
                n.checked_mul(n)
                    .and_then(|nn| nn.checked_mul(self.n_head()))
            }),
            self.n_embd.checked_mul(5 * self.lora.mix.max(1)),
        ];
        if products
            .iter()
            .any(|p| p.is_none_or(|n| n > isize::MAX as usize / 4))
        {
            return Err("a tensor of these dimensions would not fit in memory".into());
        }
        Ok(())
    }
}
