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
    /// Whether this build can run the version.
    pub fn is_supported(self) -> bool {
        matches!(self, Version::V4)
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
}
