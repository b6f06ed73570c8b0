//! Element types a checkpoint may store, and their conversion to f32 (what the model computes
//! in).

use half::{bf16, f16};

/// A floating-point storage type found in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDType {
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single.
    F32,
    /// IEEE double.
    F64,
}

impl SourceDType {
    /// Maps a safetensors dtype; `None` for non-float types.
    pub fn from_safetensors(dtype: safetensors::Dtype) -> Option<Self> {
        match dtype {
            safetensors::Dtype::F16 => Some(Self::F16),
            safetensors::Dtype::BF16 => Some(Self::BF16),
            safetensors::Dtype::F32 => Some(Self::F32),
            safetensors::Dtype::F64 => Some(Self::F64),
            _ => None,
        }
    }

    /// Maps a PyTorch storage dtype; `None` for non-float types.
    pub fn from_pytorch(dtype: pytorch_reader::DType) -> Option<Self> {
        match dtype {
            pytorch_reader::DType::F16 => Some(Self::F16),
            pytorch_reader::DType::BF16 => Some(Self::BF16),
            pytorch_reader::DType::F32 => Some(Self::F32),
            pytorch_reader::DType::F64 => Some(Self::F64),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F16 | Self::BF16 => 2,
            Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    /// Converts little-endian bytes of this type to f32 (the caller checked the length).
    pub fn to_f32(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Self::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Self::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Self::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Self::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
        }
    }
}

/// Little-endian i64 values.
pub fn le_i64(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_types_convert_exactly() {
        let values = [1.0f32, -2.5, 0.0, 65504.0];
        let f16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(SourceDType::F16.to_f32(&f16_bytes), values);
        let bf16_bytes: Vec<u8> = values[..3]
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(SourceDType::BF16.to_f32(&bf16_bytes), values[..3]);
    }
}
