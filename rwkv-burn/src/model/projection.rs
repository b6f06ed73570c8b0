//! A projection `x @ W` of the model (time-mix and channel-mix matrices, the head), in the
//! precision the model was loaded with ([`WeightFormat`]).

use crate::cpu::PackedMatrix;
use crate::gpu::BlockMatrix;
use crate::weights::{LoadError, LoadedMatrix, Role, WeightFormat, Weights};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor};
use std::sync::Arc;

/// A bias-free projection: a Burn [`Linear`] with its weight `[in, out]` in f32 (training,
/// and every device), or on the CPU a [`PackedMatrix`] holding the checkpoint's `[out, in]`
/// rows in bf16, f16, or 8-/4-bit blocks. Packed weights are not parameters: a model that
/// holds them is for inference (load with [`WeightFormat::F32`] to train or export).
///
/// A projection may carry a LoRA adapter ([`LoraPair`]): then it computes
/// `x @ W + s * (x @ A) @ B`, whatever format `W` is held in.
#[derive(Module, Debug)]
pub struct Projection {
    dense: Option<Linear>,
    #[module(skip)]
    packed: Option<Arc<PackedMatrix>>,
    /// Blocks of output columns, for a weight larger than the device's largest buffer
    /// (`Weights::linear`); their products are concatenated.
    split: Vec<Linear>,
    /// 8-bit blocks on a CubeCL device (q8 and q4 files there).
    #[module(skip)]
    blocks: Option<Arc<BlockMatrix>>,
    /// The LoRA adapter, if one is attached ([`crate::adapters`]).
    pub lora: Option<LoraPair>,
}

/// A LoRA adapter of a projection (RWKV-PEFT's `LoraLinear`): `s * (x @ A) @ B` added to
/// the projection, `A [in, r]`, `B [r, out]`, `s = alpha / r`. RWKV-PEFT stores the pair as
/// torch `Linear` weights, `lora_A [r, in]` and `lora_B [out, r]`: our `A` and `B`
/// transposed.
#[derive(Module, Debug)]
pub struct LoraPair {
    /// `[in, r]`.
    pub a: Param<Tensor<2>>,
    /// `[r, out]`.
    pub b: Param<Tensor<2>>,
    /// `alpha / r`.
    #[module(skip)]
    pub scale: f32,
}

impl LoraPair {
    /// `s * (x @ A) @ B`, in `x`'s dtype.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let a = self.a.val().cast(dtype);
        let b = self.b.val().cast(dtype);
        x.matmul(a.unsqueeze())
            .matmul(b.unsqueeze())
            .mul_scalar(self.scale)
    }

    /// The change it makes to the weight: `s * A @ B`, `[in, out]`.
    pub fn delta(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }
}

impl Projection {
    /// A projection with an f32 (or Burn-dtype) weight.
    pub fn dense(linear: Linear) -> Self {
        Self {
            dense: Some(linear),
            packed: None,
            split: Vec::new(),
            blocks: None,
            lora: None,
        }
    }

    /// A projection whose weight is held in blocks of output columns, `[in, out_b]` each.
    pub fn split(blocks: Vec<Linear>) -> Self {
        Self {
            dense: None,
            packed: None,
            split: blocks,
            blocks: None,
            lora: None,
        }
    }

    /// A projection with a packed weight.
    pub fn packed(weight: PackedMatrix) -> Self {
        Self {
            dense: None,
            packed: Some(Arc::new(weight)),
            split: Vec::new(),
            blocks: None,
            lora: None,
        }
    }

    /// A projection held in 8-bit blocks on a CubeCL device.
    pub fn blocks(weight: BlockMatrix) -> Self {
        Self {
            dense: None,
            packed: None,
            split: Vec::new(),
            blocks: Some(Arc::new(weight)),
            lora: None,
        }
    }

    /// Reads the torch `nn.Linear` weight `leaf` (`[out, in]`) in the reader's precision.
    pub fn load(
        w: &mut Weights,
        role: Role,
        leaf: &str,
        out: usize,
        input: usize,
    ) -> Result<Self, LoadError> {
        Ok(match w.linear(role, leaf, out, input)? {
            LoadedMatrix::Dense(linear) => Self::dense(linear),
            LoadedMatrix::Packed(packed) => Self::packed(packed),
            LoadedMatrix::Split(blocks) => Self::split(blocks),
            LoadedMatrix::Blocks(blocks) => Self::blocks(blocks),
        })
    }

    /// The packed matrix, when the weight is held in a compressed format.
    pub fn packed_matrix(&self) -> Option<&PackedMatrix> {
        self.packed.as_deref()
    }

    /// The block matrix, when the weight is held in 8-bit blocks on a GPU.
    pub fn block_matrix(&self) -> Option<&BlockMatrix> {
        self.blocks.as_deref()
    }

    /// The device the weight lives on (packed weights: the CPU's flex).
    pub fn device(&self) -> burn::tensor::Device {
        if let Some(blocks) = &self.blocks {
            return blocks.device();
        }
        match (&self.dense, self.split.first()) {
            (Some(linear), _) | (None, Some(linear)) => linear.weight.val().device(),
            (None, None) => burn::tensor::Device::flex(),
        }
    }

    /// The Burn layer, when the weight is a parameter.
    pub fn linear(&self) -> Option<&Linear> {
        self.dense.as_ref()
    }

    /// The Burn layer, to change its weight (merging an adapter into it).
    pub fn linear_mut(&mut self) -> Option<&mut Linear> {
        self.dense.as_mut()
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        if let Some(blocks) = &self.blocks {
            return blocks.dims()[1];
        }
        match (&self.dense, &self.packed) {
            (Some(linear), _) => linear.weight.dims()[0],
            (None, Some(packed)) => packed.dims()[1],
            (None, None) => self.split.first().map_or(0, |b| b.weight.dims()[0]),
        }
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        if let Some(blocks) = &self.blocks {
            return blocks.dims()[0];
        }
        match (&self.dense, &self.packed) {
            (Some(linear), _) => linear.weight.dims()[1],
            (None, Some(packed)) => packed.dims()[0],
            (None, None) => self.split.iter().map(|b| b.weight.dims()[1]).sum(),
        }
    }

    /// The format the weight is held in.
    pub fn format(&self) -> WeightFormat {
        let of = |linear: &Linear| match linear.weight.val().dtype() {
            DType::BF16 => WeightFormat::Bf16,
            DType::F16 => WeightFormat::F16,
            _ => WeightFormat::F32,
        };
        if let Some(blocks) = &self.blocks {
            return blocks.format();
        }
        match (&self.dense, &self.packed) {
            (_, Some(packed)) => packed.format(),
            (Some(linear), None) => of(linear),
            (None, None) => self.split.first().map_or(WeightFormat::F32, of),
        }
    }

    /// Bytes one product reads from the weight (values and scales).
    pub fn weight_bytes(&self) -> usize {
        let bytes = |linear: &Linear| {
            let weight = linear.weight.val();
            weight.shape().num_elements() * weight.dtype().size()
        };
        if let Some(blocks) = &self.blocks {
            return blocks.bytes();
        }
        match (&self.dense, &self.packed) {
            (Some(linear), _) => bytes(linear),
            (None, Some(packed)) => packed.bytes(),
            (None, None) => self.split.iter().map(bytes).sum(),
        }
    }

    /// `x @ W` on the fastest path the device has (the CPU's lives in [`crate::cpu`]), plus
    /// the adapter's term when one is attached.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.lora {
            None => self.base(x),
            Some(lora) => self.base(x.clone()) + lora.forward(x),
        }
    }

    /// `x @ W`.
    fn base<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if let Some(blocks) = &self.blocks {
            return blocks.forward(x);
        }
        match (&self.dense, &self.packed) {
            (Some(linear), _) => {
                let weight = linear.weight.val();
                if let Some(y) = crate::gpu::few_rows(&x, &weight) {
                    y
                } else if weight.dtype() == x.dtype() {
                    crate::cpu::project(linear, x)
                } else {
                    // A bf16/f16 weight on a device without packed kernels: widened to the
                    // input's f32 for the product, so the arithmetic is f32 on the format's
                    // values (what the tests compare against).
                    let dtype = x.dtype();
                    x.matmul(weight.cast(dtype).unsqueeze())
                }
            }
            (None, Some(packed)) => crate::cpu::project_packed(packed, x),
            (None, None) => {
                let dtype = x.dtype();
                let parts = self
                    .split
                    .iter()
                    .map(|block| {
                        let weight = block.weight.val();
                        crate::gpu::few_rows(&x, &weight)
                            .unwrap_or_else(|| x.clone().matmul(weight.cast(dtype).unsqueeze()))
                    })
                    .collect();
                Tensor::cat(parts, D - 1)
            }
        }
    }
}
