//! The precision a model's projection matrices are held in, and the arithmetic of each format:
//! rounding to half precision and block quantization. Device-independent: the CPU room
//! (`crate::cpu::packed`) lays these bytes out for its kernels, and every other device computes
//! with the values [`WeightFormat::round_trip`] gives.
//!
//! What each format holds, per matrix row (the contraction runs along a row of the official
//! `[out, in]` layout, so blocks never straddle two outputs):
//!
//! | format | bits per weight | values |
//! |---|---|---|
//! | `f32` | 32 | as stored |
//! | `bf16` | 16 | rounded to nearest even bfloat16 |
//! | `f16` | 16 | rounded to nearest even IEEE half |
//! | `q8` | 8.5 | blocks of 32: `q · d`, `q` in -127..=127, `d = max|x| / 127` as f16 (ggml's Q8_0) |
//! | `q4` | 4.5 | blocks of 32: `(q - 8) · d`, `q` in 0..=15, `d = m / -8` with `m` the value of largest magnitude, as f16 (ggml's Q4_0) |
//!
//! The two block formats are ggml's, so that GGUF files' Q8_0/Q4_0 tensors map onto them
//! without re-quantizing and their quality figures compare with llama.cpp's directly.

use half::{bf16, f16};
use std::fmt;
use std::str::FromStr;

use super::Role;

/// Values per quantization block (ggml's `QK8_0` and `QK4_0`).
pub const BLOCK: usize = 32;

/// The precision of a model's projection matrices (time-mix and channel-mix projections and
/// the head). Everything else (embedding, norms, mixes, decays, low-rank factors) and every
/// activation and state stays f32: the formats change what is read per token, not what is
/// computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightFormat {
    /// IEEE single precision (what training uses).
    #[default]
    F32,
    /// bfloat16, the element type of official RWKV releases.
    Bf16,
    /// IEEE half precision.
    F16,
    /// 8-bit blocks of 32 with an f16 scale (ggml's Q8_0).
    Q8,
    /// 4-bit blocks of 32 with an f16 scale (ggml's Q4_0); the head is held in `q8`.
    Q4,
}

impl WeightFormat {
    /// Every format, in the order `--help` lists them.
    pub const ALL: [WeightFormat; 5] = [Self::F32, Self::Bf16, Self::F16, Self::Q8, Self::Q4];

    /// The name on the command line and in file metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
        }
    }

    /// Bytes a row of `cols` weights takes, scales included.
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            Self::F32 => cols * 4,
            Self::Bf16 | Self::F16 => cols * 2,
            Self::Q8 => cols + cols / BLOCK * 2,
            Self::Q4 => cols / 2 + cols / BLOCK * 2,
        }
    }

    /// Bytes the values of `n` weights take, scales not included (a block format's `n` is
    /// whole blocks).
    pub fn level_bytes(self, n: usize) -> usize {
        match self {
            Self::F32 => n * 4,
            Self::Bf16 | Self::F16 => n * 2,
            Self::Q8 => n,
            Self::Q4 => n / 2,
        }
    }

    /// The Burn element type a device can hold this format in as a plain tensor (bf16, f16),
    /// where it has no packed kernels for it.
    pub fn tensor_dtype(self) -> Option<burn::tensor::DType> {
        match self {
            Self::Bf16 => Some(burn::tensor::DType::BF16),
            Self::F16 => Some(burn::tensor::DType::F16),
            _ => None,
        }
    }

    /// Whether the format packs values in blocks along a row.
    pub fn is_block(self) -> bool {
        matches!(self, Self::Q8 | Self::Q4)
    }

    /// The format a tensor of `role` whose rows hold `cols` weights is held in when the model
    /// asks for `self`: only projections change format; a block format needs whole blocks
    /// (every released shape has them; a row of another width stays f32); the head of a
    /// `q4` model is `q8`, since the logits are the most sensitive product (llama.cpp likewise
    /// gives its output matrix more bits).
    pub fn for_tensor(self, role: Role, cols: usize) -> WeightFormat {
        if !matches!(role, Role::Matrix | Role::Output | Role::Head) {
            return Self::F32;
        }
        let format = match (self, role) {
            (Self::Q4, Role::Head) => Self::Q8,
            (format, _) => format,
        };
        if format.is_block() && (cols == 0 || !cols.is_multiple_of(BLOCK)) {
            Self::F32
        } else {
            format
        }
    }

    /// The values a matrix of rows of `cols` weights computes with in this format: each value
    /// rounded, or each block quantized and dequantized. Used where a device computes in f32
    /// on the format's values, and by tests as the reference.
    ///
    /// # Panics
    /// If `values` is not a whole number of rows, or of blocks for a block format (see
    /// [`for_tensor`](Self::for_tensor)).
    pub fn round_trip(self, values: &[f32], cols: usize) -> Vec<f32> {
        assert!(cols > 0 && values.len().is_multiple_of(cols));
        match self {
            Self::F32 => values.to_vec(),
            Self::Bf16 => values.iter().map(|v| bf16::from_f32(*v).to_f32()).collect(),
            Self::F16 => values.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
            Self::Q8 | Self::Q4 => {
                assert!(cols.is_multiple_of(BLOCK));
                let mut out = Vec::with_capacity(values.len());
                for block in values.chunks_exact(BLOCK) {
                    let (d, q) = self.quantize_block(block);
                    let d = d.to_f32();
                    out.extend(q.iter().map(|&q| self.level(q) * d));
                }
                out
            }
        }
    }

    /// A block's scale and its levels, one per value (`q8`: -127..=127; `q4`: 0..=15).
    pub fn quantize_block(self, block: &[f32]) -> (f16, [i8; BLOCK]) {
        let mut q = [0i8; BLOCK];
        match self {
            Self::Q8 => {
                let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = f16::from_f32(max / 127.0);
                // The levels are taken against the rounded scale, so that `q · d` is the
                // nearest level of what the kernels multiply by.
                let inv = if d.to_f32() > 0.0 {
                    1.0 / d.to_f32()
                } else {
                    0.0
                };
                for (q, v) in q.iter_mut().zip(block) {
                    *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                }
                (d, q)
            }
            Self::Q4 => {
                let m = block
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = f16::from_f32(m / -8.0);
                let inv = if d.to_f32() != 0.0 {
                    1.0 / d.to_f32()
                } else {
                    0.0
                };
                for (q, v) in q.iter_mut().zip(block) {
                    *q = (v * inv + 8.5).floor().clamp(0.0, 15.0) as i8;
                }
                (d, q)
            }
            _ => panic!("{self} is not a block format"),
        }
    }

    /// The multiple of the scale that level `q` stands for.
    pub fn level(self, q: i8) -> f32 {
        match self {
            Self::Q4 => f32::from(q) - 8.0,
            _ => f32::from(q),
        }
    }
}

/// A block format's file bytes checked against a `[out, input]` matrix: `levels`
/// ([`WeightFormat::level_bytes`] of the values) and `scales` (little-endian f16, one per
/// block). Returns the scales as f32.
///
/// # Errors
/// A description of what does not fit (lengths, a width that is not whole blocks, a scale
/// that is not finite, a q8 level of -128), for the loader to report with the file's name.
pub(crate) fn checked_block_scales(
    format: WeightFormat,
    levels: &[u8],
    scales: &[u8],
    [out, input]: [usize; 2],
) -> Result<Vec<f32>, String> {
    if !format.is_block() || input == 0 || !input.is_multiple_of(BLOCK) {
        return Err(format!(
            "{format} blocks cannot hold rows of {input} values"
        ));
    }
    let n = out
        .checked_mul(input)
        .ok_or_else(|| format!("[{out}, {input}] is too large"))?;
    if levels.len() != format.level_bytes(n) || scales.len() != n / BLOCK * 2 {
        return Err(format!(
            "{format} [{out}, {input}] needs {} bytes of levels and {} of scales, the file has {} and {}",
            format.level_bytes(n),
            n / BLOCK * 2,
            levels.len(),
            scales.len()
        ));
    }
    let scales: Vec<f32> = scales
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    if let Some(i) = scales.iter().position(|d| !d.is_finite()) {
        return Err(format!("block {i} has the scale {}", scales[i]));
    }
    if format == WeightFormat::Q8 && levels.contains(&0x80) {
        return Err("a q8 level is -128 (levels are -127 to 127)".into());
    }
    Ok(scales)
}

impl WeightFormat {
    /// The multiples of the scale that one block's stored bytes stand for, in value order:
    /// q8's bytes are signed levels; q4's low nibbles are the block's first 16 values and its
    /// high nibbles the last 16 (ggml's Q4_0), each less 8.
    ///
    /// # Panics
    /// If `bytes` is not one block's [`level_bytes`](Self::level_bytes) of a block format.
    pub fn block_multiples(self, bytes: &[u8]) -> [i8; BLOCK] {
        assert_eq!(bytes.len(), self.level_bytes(BLOCK));
        let mut out = [0i8; BLOCK];
        match self {
            Self::Q8 => {
                for (o, b) in out.iter_mut().zip(bytes) {
                    *o = *b as i8;
                }
            }
            Self::Q4 => {
                for (j, b) in bytes.iter().enumerate() {
                    out[j] = (b & 15) as i8 - 8;
                    out[j + BLOCK / 2] = (b >> 4) as i8 - 8;
                }
            }
            _ => panic!("{self} is not a block format"),
        }
        out
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A weight format name that is not one of [`WeightFormat::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown weight format '{given}' (one of: {})", WeightFormat::ALL.map(WeightFormat::name).join(", "))]
pub struct UnknownFormat {
    /// What was given.
    pub given: String,
}

impl FromStr for WeightFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownFormat {
                given: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_list_the_valid_ones() {
        for format in WeightFormat::ALL {
            assert_eq!(format.name().parse::<WeightFormat>().unwrap(), format);
        }
        let err = "q5".parse::<WeightFormat>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown weight format 'q5' (one of: f32, bf16, f16, q8, q4)"
        );
    }

    /// Each block's error is at most half a level (plus the scale's own f16 rounding), except
    /// q4's values on the far side of the block's extreme: its levels run from -8 to 7 steps,
    /// so a value between 7 and 8 steps away on that side clips by up to one step (as in
    /// ggml's Q4_0).
    #[test]
    fn block_round_trips_stay_within_half_a_level() {
        let mut rng = crate::random::Lcg::new(5);
        let values = rng.vec(BLOCK * 64, 0.3);
        for format in [WeightFormat::Q8, WeightFormat::Q4] {
            let back = format.round_trip(&values, BLOCK * 8);
            for (block, got) in values.chunks(BLOCK).zip(back.chunks(BLOCK)) {
                let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = match format {
                    WeightFormat::Q8 => max / 127.0,
                    _ => max / 8.0,
                };
                for (v, g) in block.iter().zip(got) {
                    let clipped = format == WeightFormat::Q4 && v.abs() > 7.0 * step;
                    let bound = if clipped { step } else { 0.5 * step };
                    assert!(
                        (v - g).abs() <= bound * 1.01 + max * 1e-3,
                        "{format}: {v} -> {g} (step {step})"
                    );
                }
            }
        }
        assert_eq!(WeightFormat::Q8.round_trip(&[0.0; 32], 32), vec![0.0; 32]);
        assert_eq!(WeightFormat::Q4.round_trip(&[0.0; 32], 32), vec![0.0; 32]);
    }

    #[test]
    fn only_projections_change_format_and_blocks_need_whole_rows() {
        use WeightFormat::*;
        assert_eq!(Q8.for_tensor(Role::Matrix, 64), Q8);
        assert_eq!(Q8.for_tensor(Role::Matrix, 48), F32);
        assert_eq!(Q4.for_tensor(Role::Head, 64), Q8);
        assert_eq!(Q4.for_tensor(Role::Output, 64), Q4);
        assert_eq!(Bf16.for_tensor(Role::Matrix, 48), Bf16);
        assert_eq!(Bf16.for_tensor(Role::Embedding, 64), F32);
        assert_eq!(Q8.for_tensor(Role::LoraUp, 64), F32);
        assert_eq!(Q8.row_bytes(64), 68);
        assert_eq!(Q4.row_bytes(64), 36);
    }
}
