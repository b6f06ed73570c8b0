//! Assembles an [`Rwkv`] from a checkpoint: the one place that knows the official key names
//! of model weights.

use super::checkpoint::Checkpoint;
use super::error::LoadError;
use crate::config::{RwkvConfig, Version};
use crate::model::v4::{ChannelMix4, TimeMix4};
use crate::model::{Block, ChannelMix, Rwkv, TimeMix, layer_norm, linear};
use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::{Device, Tensor, TensorData};

/// Reads tensors by official name, checking each shape against the config.
struct Weights<'a> {
    checkpoint: &'a Checkpoint,
    device: &'a Device,
}

impl Weights<'_> {
    fn read(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, LoadError> {
        let (values, shape) = self.checkpoint.read_f32(name)?;
        // Vectors are stored as [C], [1, C] or [1, 1, C] depending on the producer.
        let squeezed: Vec<usize> = match expected.len() {
            1 => shape.iter().copied().filter(|&d| d != 1).collect(),
            _ => shape.clone(),
        };
        let fits = squeezed == expected || (expected == [1] && squeezed.is_empty());
        if !fits {
            return Err(LoadError::WrongShape {
                path: self.checkpoint.path().to_path_buf(),
                name: name.to_string(),
                got: shape,
                expected: expected.to_vec(),
            });
        }
        Ok(values)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor<1>, LoadError> {
        let values = self.read(name, &[len])?;
        Ok(Tensor::from_data(
            TensorData::new(values, [len]),
            self.device,
        ))
    }

    fn param(&self, name: &str, len: usize) -> Result<Param<Tensor<1>>, LoadError> {
        self.vector(name, len).map(Param::from_tensor)
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor<2>, LoadError> {
        let values = self.read(name, &[rows, cols])?;
        Ok(Tensor::from_data(
            TensorData::new(values, [rows, cols]),
            self.device,
        ))
    }

    /// A torch `nn.Linear` weight `[out, in]`, transposed on the host into Burn's `[in, out]`.
    fn linear(&self, name: &str, out: usize, input: usize) -> Result<Linear, LoadError> {
        let values = self.read(name, &[out, input])?;
        let mut transposed = vec![0f32; values.len()];
        for (o, row) in values.chunks_exact(input).enumerate() {
            for (i, v) in row.iter().enumerate() {
                transposed[i * out + o] = *v;
            }
        }
        Ok(linear(Tensor::from_data(
            TensorData::new(transposed, [input, out]),
            self.device,
        )))
    }

    fn layer_norm(&self, prefix: &str, dim: usize) -> Result<LayerNorm, LoadError> {
        Ok(layer_norm(
            self.vector(&format!("{prefix}.weight"), dim)?,
            self.vector(&format!("{prefix}.bias"), dim)?,
        ))
    }
}

/// Builds the model described by `config` from the checkpoint's tensors.
pub fn build(
    checkpoint: &Checkpoint,
    config: &RwkvConfig,
    device: &Device,
) -> Result<Rwkv, LoadError> {
    let w = Weights { checkpoint, device };
    let (c, v) = (config.n_embd, config.vocab_size);
    let emb = Embedding {
        weight: Param::from_tensor(w.matrix("emb.weight", v, c)?),
    };
    let ln0 = w.layer_norm("blocks.0.ln0", c)?;
    let blocks = (0..config.n_layer)
        .map(|i| block(&w, config, i))
        .collect::<Result<Vec<_>, _>>()?;
    let ln_out = w.layer_norm("ln_out", c)?;
    let head = w.linear("head.weight", v, c)?;
    Ok(Rwkv::new(emb, ln0, blocks, ln_out, head))
}

fn block(w: &Weights, config: &RwkvConfig, i: usize) -> Result<Block, LoadError> {
    let (c, a, f) = (config.n_embd, config.dim_att, config.dim_ffn);
    let p = format!("blocks.{i}");
    let (att, ffn) = match config.version {
        Version::V4 => (
            TimeMix::V4(TimeMix4 {
                time_decay: w.param(&format!("{p}.att.time_decay"), a)?,
                time_first: w.param(&format!("{p}.att.time_first"), a)?,
                time_mix_k: w.param(&format!("{p}.att.time_mix_k"), c)?,
                time_mix_v: w.param(&format!("{p}.att.time_mix_v"), c)?,
                time_mix_r: w.param(&format!("{p}.att.time_mix_r"), c)?,
                key: w.linear(&format!("{p}.att.key.weight"), a, c)?,
                value: w.linear(&format!("{p}.att.value.weight"), a, c)?,
                receptance: w.linear(&format!("{p}.att.receptance.weight"), a, c)?,
                output: w.linear(&format!("{p}.att.output.weight"), c, a)?,
            }),
            ChannelMix::V4(ChannelMix4 {
                time_mix_k: w.param(&format!("{p}.ffn.time_mix_k"), c)?,
                time_mix_r: w.param(&format!("{p}.ffn.time_mix_r"), c)?,
                key: w.linear(&format!("{p}.ffn.key.weight"), f, c)?,
                receptance: w.linear(&format!("{p}.ffn.receptance.weight"), c, c)?,
                value: w.linear(&format!("{p}.ffn.value.weight"), c, f)?,
            }),
        ),
        version => {
            return Err(LoadError::UnsupportedVersion {
                path: w.checkpoint.path().to_path_buf(),
                version,
            });
        }
    };
    Ok(Block {
        ln1: w.layer_norm(&format!("{p}.ln1"), c)?,
        ln2: w.layer_norm(&format!("{p}.ln2"), c)?,
        att,
        ffn,
    })
}
