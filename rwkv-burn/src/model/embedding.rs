//! The token embedding: a `[V, C]` table looked up by token id.
//!
//! A GPU device holds each tensor in one buffer of bounded size
//! ([`crate::device::max_buffer_bytes`]): WebGPU's default and lavapipe's storage-buffer limit
//! are 128 MiB, less than a World model's f32 table (65536 x 768 x 4 = 192 MiB; 512 MiB at
//! 2048 channels). Such a table is held in row blocks that each fit, and a lookup reads every
//! block at its ids clamped into range and keeps the rows whose ids fall in it: `blocks`
//! gathers of `[B, T, C]` and as many masked adds, for a handful of blocks.

use burn::module::{Module, Param};
use burn::tensor::{DType, Int, Tensor};

/// The token embedding.
#[derive(Module, Debug)]
pub struct TokenEmbedding {
    /// Row blocks of the `[V, C]` table, in order; one block (the whole table) unless it
    /// exceeds the device's largest buffer.
    pub blocks: Vec<Param<Tensor<2>>>,
}

impl TokenEmbedding {
    /// The whole table as one parameter.
    pub fn whole(weight: Param<Tensor<2>>) -> Self {
        Self {
            blocks: vec![weight],
        }
    }

    /// The table, when it is one parameter (every CPU device; GPU devices whose buffers hold
    /// it): what training and export read.
    pub fn weight(&self) -> Option<&Param<Tensor<2>>> {
        match self.blocks.as_slice() {
            [weight] => Some(weight),
            _ => None,
        }
    }

    /// `[V, C]`.
    pub fn dims(&self) -> [usize; 2] {
        let rows = self.blocks.iter().map(|b| b.dims()[0]).sum();
        [rows, self.blocks.first().map_or(0, |b| b.dims()[1])]
    }

    /// The element type the table is held in.
    pub fn dtype(&self) -> DType {
        self.blocks.first().map_or(DType::F32, |b| b.val().dtype())
    }

    /// The rows of `tokens` `[B, T]`: `[B, T, C]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        if let Some(weight) = self.weight() {
            return burn::tensor::module::embedding(weight.val(), tokens);
        }
        let mut out: Option<Tensor<3>> = None;
        let mut start = 0i64;
        for block in &self.blocks {
            let rows = block.dims()[0] as i64;
            let local = tokens.clone().sub_scalar(start).clamp(0, rows - 1);
            let inside = tokens
                .clone()
                .greater_equal_elem(start)
                .bool_and(tokens.clone().lower_elem(start + rows));
            let found = burn::tensor::module::embedding(block.val(), local);
            let mask = inside.float().cast(found.dtype()).unsqueeze_dim::<3>(2);
            let part = found * mask;
            out = Some(match out {
                None => part,
                Some(sum) => sum + part,
            });
            start += rows;
        }
        out.expect("an embedding has a block")
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{build_limited, token_tensor};
    use crate::test_util::{assert_close, test_devices};
    use crate::{State, WeightFormat};

    /// A model whose embedding, head and channel-mix matrices are split into blocks (a device
    /// with 24 KiB buffers) computes what the whole model computes, on every device.
    #[test]
    fn split_tensors_compute_what_whole_ones_do() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
        let checkpoint =
            crate::load::Checkpoint::open(dir.join("rwkv7/weights.safetensors")).unwrap();
        let config = crate::load::detect_config(&checkpoint).unwrap();
        let tokens: Vec<u32> = vec![188, 48, 38, 49, 205, 0, 255, 94, 90];
        for device in test_devices() {
            let run = |limit| {
                let (model, _) =
                    build_limited(&checkpoint, &config, &device, WeightFormat::F32, limit).unwrap();
                let mut state = State::zeros(&config, 1, &device);
                let logits = model.forward(token_tensor(&tokens, 1, &device), &mut state);
                (model, logits.into_data().try_to_vec::<f32>().unwrap())
            };
            let (whole, want) = run(None);
            let (split, got) = run(Some(24 << 10));
            assert_eq!(whole.emb.blocks.len(), 1);
            // 256 x 64 f32 rows: 96 rows a block.
            let rows: Vec<_> = split.emb.blocks.iter().map(|b| b.dims()[0]).collect();
            assert_eq!(rows, [96, 96, 64]);
            assert!(split.head.linear().is_none());
            assert_eq!(split.head.out_features(), 256);
            assert_eq!(split.vocab_size(), 256);
            assert_close(&got, &want, 1e-4, "split vs whole logits");
        }
    }
}
