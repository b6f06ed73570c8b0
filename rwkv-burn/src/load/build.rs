//! Assembles an [`Rwkv`] from named tensors: the one place that knows the official key names
//! and shapes of model weights. The tensors come from a [`WeightSource`]: a checkpoint file,
//! or a generator of random weights for tests and benchmarks.

use super::checkpoint::Checkpoint;
use super::error::LoadError;
use crate::config::{RwkvConfig, Version};
use crate::model::v4::{ChannelMix4, TimeMix4};
use crate::model::v5::TimeMix5;
use crate::model::v6::{ChannelMix6, TimeMix6};
use crate::model::v7::{ChannelMix7, Lora, TimeMix7};
use crate::model::{Block, ChannelMix, Rwkv, TimeMix, layer_norm, linear, ln_x};
use burn::module::{Param, ParamId};
use burn::nn::{Embedding, GroupNorm, LayerNorm, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use std::cell::RefCell;
use std::path::Path;

/// What a tensor does in the model; a source that invents weights picks values by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The token embedding.
    Embedding,
    /// A projection stored `[out, in]` like `nn.Linear`.
    Matrix,
    /// A low-rank adapter factor, stored `[in, out]`.
    Lora,
    /// A token-shift mixing coefficient, in [0, 1] for trained models.
    Mix,
    /// A decay parameter (before the version's `exp(-exp(.))` or sigmoid mapping).
    Decay,
    /// The current-token bonus (`time_first`, `time_faaaa`, `r_k`).
    Bonus,
    /// A normalisation scale.
    NormScale,
    /// A normalisation shift.
    NormShift,
    /// An additive bias of a data-dependent gate (RWKV-7 `a0`, `v0`, key scales).
    Bias,
}

/// Where [`build`] gets its tensors.
pub trait WeightSource {
    /// The file the weights come from, for error messages.
    fn path(&self) -> &Path;
    /// Whether a tensor exists (for tensors some checkpoints carry and others do not).
    fn contains(&self, name: &str) -> bool;
    /// Whether [`read`](Self::read) reports shapes a file stored. Sources that make values up
    /// (random and freshly initialised models) say no, and their tensors get the shapes of
    /// official checkpoints, so that exports of them load in every RWKV tool.
    fn stores_shapes(&self) -> bool {
        true
    }
    /// The values (row-major f32) and stored shape of a tensor; `expected` is the shape the
    /// model needs, which the caller checks the stored shape against.
    fn read(
        &self,
        name: &str,
        expected: &[usize],
        role: Role,
    ) -> Result<(Vec<f32>, Vec<usize>), LoadError>;
}

impl WeightSource for Checkpoint {
    fn path(&self) -> &Path {
        Checkpoint::path(self)
    }

    fn contains(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }

    fn read(&self, name: &str, _: &[usize], _: Role) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        self.read_f32(name)
    }
}

/// How a parameter's Burn layout relates to its official (stored) layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Same values in the same order; only the shape may differ (`[C]` vs `[1, 1, C]`).
    Same,
    /// A torch `nn.Linear` weight: Burn keeps `[in, out]`, the checkpoint `[out, in]`.
    Transposed,
}

/// A model parameter with its official name and stored shape.
#[derive(Debug, Clone)]
pub struct NamedParam {
    /// The official key, e.g. `blocks.0.att.key.weight`.
    pub name: String,
    /// The parameter's id in the model.
    pub id: ParamId,
    /// The shape in the checkpoint (the official layout).
    pub stored_shape: Vec<usize>,
    /// Rank of the parameter tensor in the model.
    pub rank: usize,
    /// How to go from the model's layout to the official one.
    pub layout: Layout,
}

/// Every parameter of a built model under its official name, in checkpoint-reading order:
/// what gradients and exports are named by.
#[derive(Debug, Clone, Default)]
pub struct ParamNames(pub Vec<NamedParam>);

/// Reads tensors by official name, checking each shape against the config, and records the
/// name of every parameter it creates.
struct Weights<'a> {
    source: &'a dyn WeightSource,
    version: Version,
    device: &'a Device,
    names: RefCell<Vec<NamedParam>>,
}

impl Weights<'_> {
    /// Values and stored shape of a tensor whose model shape is `expected`.
    fn read(
        &self,
        name: &str,
        expected: &[usize],
        role: Role,
    ) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let (values, mut shape) = self.source.read(name, expected, role)?;
        if !self.source.stores_shapes() {
            shape = official_shape(self.version, role, expected);
        }
        // Vectors are stored as [C], [1, C] or [1, 1, C] depending on the producer.
        let squeezed: Vec<usize> = match expected.len() {
            1 => shape.iter().copied().filter(|&d| d != 1).collect(),
            _ => shape.clone(),
        };
        let fits = squeezed == expected || (expected == [1] && squeezed.is_empty());
        if !fits {
            return Err(LoadError::WrongShape {
                path: self.source.path().to_path_buf(),
                name: name.to_string(),
                got: shape,
                expected: expected.to_vec(),
            });
        }
        Ok((values, shape))
    }

    /// A parameter id derived from the official name, so the same parameter gets the same id
    /// in every load: optimizer state saved by id then resumes onto a reloaded model.
    fn stable_id(name: &str) -> ParamId {
        let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        ParamId::from(hash)
    }

    fn record(&self, name: &str, id: ParamId, stored: Vec<usize>, rank: usize, layout: Layout) {
        self.names.borrow_mut().push(NamedParam {
            name: name.to_string(),
            id,
            stored_shape: stored,
            rank,
            layout,
        });
    }

    /// A parameter of any rank in the official layout.
    fn tensor<const D: usize>(
        &self,
        role: Role,
        name: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<D>>, LoadError> {
        let (values, stored) = self.read(name, &shape, role)?;
        let mut param = Param::from_tensor(Tensor::from_data(
            TensorData::new(values, shape),
            self.device,
        ));
        param.id = Self::stable_id(name);
        self.record(name, param.id, stored, D, Layout::Same);
        Ok(param)
    }

    fn param(&self, role: Role, name: &str, len: usize) -> Result<Param<Tensor<1>>, LoadError> {
        self.tensor(role, name, [len])
    }

    fn param2(
        &self,
        role: Role,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Param<Tensor<2>>, LoadError> {
        self.tensor(role, name, [rows, cols])
    }

    /// A matrix stored `[in, out]` and used as `x @ W` (LoRA factors): already Burn's layout.
    fn lora_linear(&self, name: &str, input: usize, out: usize) -> Result<Linear, LoadError> {
        Ok(Linear {
            weight: self.tensor(Role::Lora, name, [input, out])?,
            bias: None,
        })
    }

    /// A LoRA pair `{prefix}1 [C, D]`, `{prefix}2 [D, C]`.
    fn lora(&self, prefix: &str, channels: usize, rank: usize) -> Result<Lora, LoadError> {
        Ok(Lora {
            down: self.lora_linear(&format!("{prefix}1"), channels, rank)?,
            up: self.lora_linear(&format!("{prefix}2"), rank, channels)?,
        })
    }

    fn ln_x(&self, prefix: &str, dim: usize, heads: usize) -> Result<GroupNorm, LoadError> {
        let mut norm = ln_x(
            Tensor::zeros([dim], self.device),
            Tensor::zeros([dim], self.device),
            heads,
        );
        norm.gamma = Some(self.tensor(Role::NormScale, &format!("{prefix}.weight"), [dim])?);
        norm.beta = Some(self.tensor(Role::NormShift, &format!("{prefix}.bias"), [dim])?);
        Ok(norm)
    }

    /// A torch `nn.Linear` weight `[out, in]` as Burn's `[in, out]`. On flex the checkpoint's
    /// layout is kept and Burn gets a transposed view: decode's matrix-vector products then
    /// stream weight rows (`model/matvec.rs`). Elsewhere it is transposed on the host, as
    /// backends may copy strided operands on every product.
    fn linear(&self, name: &str, out: usize, input: usize) -> Result<Linear, LoadError> {
        let (values, stored) = self.read(name, &[out, input], Role::Matrix)?;
        let weight = match () {
            #[cfg(feature = "flex")]
            () if crate::model::is_flex(self.device) => {
                crate::model::weight_rows(&values, out, input, self.device)
            }
            () => {
                let mut transposed = vec![0f32; values.len()];
                for (o, row) in values.chunks_exact(input).enumerate() {
                    for (i, v) in row.iter().enumerate() {
                        transposed[i * out + o] = *v;
                    }
                }
                Tensor::from_data(TensorData::new(transposed, [input, out]), self.device)
            }
        };
        let mut layer = linear(weight);
        layer.weight.id = Self::stable_id(name);
        self.record(name, layer.weight.id, stored, 2, Layout::Transposed);
        Ok(layer)
    }

    fn layer_norm(&self, prefix: &str, dim: usize) -> Result<LayerNorm, LoadError> {
        let mut norm = layer_norm(
            Tensor::ones([dim], self.device),
            Tensor::zeros([dim], self.device),
        );
        norm.gamma = self.tensor(Role::NormScale, &format!("{prefix}.weight"), [dim])?;
        norm.beta = Some(self.tensor(Role::NormShift, &format!("{prefix}.bias"), [dim])?);
        Ok(norm)
    }
}

/// Builds the model described by `config` from a source's tensors.
pub fn build(
    source: &dyn WeightSource,
    config: &RwkvConfig,
    device: &Device,
) -> Result<Rwkv, LoadError> {
    build_named(source, config, device).map(|(model, _)| model)
}

/// The shape official checkpoints (RWKV-LM's `nn.Parameter`s) give a tensor of model shape
/// `expected`: token-shift mixes, decays and RWKV-7's biases are `[1, 1, C]`, except RWKV-4's
/// decay, which is `[C]` like norms; everything else keeps its shape. Tools such as RWKV-LM's
/// `load_state_dict` and rwkv.cpp's converter refuse other shapes.
fn official_shape(version: Version, role: Role, expected: &[usize]) -> Vec<usize> {
    match (expected, role) {
        ([_], Role::Decay) if version == Version::V4 => expected.to_vec(),
        ([len], Role::Mix | Role::Decay | Role::Bias) => vec![1, 1, *len],
        _ => expected.to_vec(),
    }
}

/// Like [`build`], also returning the official name of every parameter.
pub fn build_named(
    source: &dyn WeightSource,
    config: &RwkvConfig,
    device: &Device,
) -> Result<(Rwkv, ParamNames), LoadError> {
    let w = Weights {
        source,
        version: config.version,
        device,
        names: RefCell::new(Vec::new()),
    };
    let (c, v) = (config.n_embd, config.vocab_size);
    let emb = Embedding {
        weight: w.tensor(Role::Embedding, "emb.weight", [v, c])?,
    };
    let ln0 = w.layer_norm("blocks.0.ln0", c)?;
    let blocks = (0..config.n_layer)
        .map(|i| block(&w, config, i))
        .collect::<Result<Vec<_>, _>>()?;
    let ln_out = w.layer_norm("ln_out", c)?;
    let head = w.linear("head.weight", v, c)?;
    let model = Rwkv::new(emb, ln0, blocks, ln_out, head);
    Ok((model, ParamNames(w.names.into_inner())))
}

fn block(w: &Weights, config: &RwkvConfig, i: usize) -> Result<Block, LoadError> {
    let (c, f) = (config.n_embd, config.dim_ffn);
    let p = format!("blocks.{i}");
    let (att, ffn) = match config.version {
        Version::V4 => (
            TimeMix::V4(time_mix4(w, config, &p)?),
            ChannelMix::V4(channel_mix4(w, c, f, &p)?),
        ),
        Version::V5 { minor: 2 } => (
            TimeMix::V5(time_mix5(w, config, &p)?),
            ChannelMix::V4(channel_mix4(w, c, f, &p)?),
        ),
        Version::V6 => (
            TimeMix::V6(time_mix6(w, config, &p)?),
            ChannelMix::V6(ChannelMix6 {
                time_maa_k: w.param(Role::Mix, &format!("{p}.ffn.time_maa_k"), c)?,
                time_maa_r: w.param(Role::Mix, &format!("{p}.ffn.time_maa_r"), c)?,
                key: w.linear(&format!("{p}.ffn.key.weight"), f, c)?,
                receptance: w.linear(&format!("{p}.ffn.receptance.weight"), c, c)?,
                value: w.linear(&format!("{p}.ffn.value.weight"), c, f)?,
            }),
        ),
        Version::V7 => (
            TimeMix::V7(time_mix7(w, config, &p, i == 0)?),
            ChannelMix::V7(ChannelMix7 {
                x_k: w.param(Role::Mix, &format!("{p}.ffn.x_k"), c)?,
                key: w.linear(&format!("{p}.ffn.key.weight"), f, c)?,
                value: w.linear(&format!("{p}.ffn.value.weight"), c, f)?,
            }),
        ),
        version => {
            return Err(LoadError::UnsupportedVersion {
                path: w.source.path().to_path_buf(),
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

fn time_mix4(w: &Weights, config: &RwkvConfig, p: &str) -> Result<TimeMix4, LoadError> {
    let (c, a) = (config.n_embd, config.dim_att);
    Ok(TimeMix4 {
        time_decay: w.param(Role::Decay, &format!("{p}.att.time_decay"), a)?,
        time_first: w.param(Role::Bonus, &format!("{p}.att.time_first"), a)?,
        time_mix_k: w.param(Role::Mix, &format!("{p}.att.time_mix_k"), c)?,
        time_mix_v: w.param(Role::Mix, &format!("{p}.att.time_mix_v"), c)?,
        time_mix_r: w.param(Role::Mix, &format!("{p}.att.time_mix_r"), c)?,
        key: w.linear(&format!("{p}.att.key.weight"), a, c)?,
        value: w.linear(&format!("{p}.att.value.weight"), a, c)?,
        receptance: w.linear(&format!("{p}.att.receptance.weight"), a, c)?,
        output: w.linear(&format!("{p}.att.output.weight"), c, a)?,
    })
}

fn channel_mix4(w: &Weights, c: usize, f: usize, p: &str) -> Result<ChannelMix4, LoadError> {
    Ok(ChannelMix4 {
        time_mix_k: w.param(Role::Mix, &format!("{p}.ffn.time_mix_k"), c)?,
        time_mix_r: w.param(Role::Mix, &format!("{p}.ffn.time_mix_r"), c)?,
        key: w.linear(&format!("{p}.ffn.key.weight"), f, c)?,
        receptance: w.linear(&format!("{p}.ffn.receptance.weight"), c, c)?,
        value: w.linear(&format!("{p}.ffn.value.weight"), c, f)?,
    })
}

/// `(H, N)` of a matrix-state config.
fn heads(config: &RwkvConfig) -> (usize, usize) {
    let n = config
        .head_size
        .expect("matrix-state versions have a head size");
    (config.dim_att / n, n)
}

fn time_mix5(w: &Weights, config: &RwkvConfig, p: &str) -> Result<TimeMix5, LoadError> {
    let (c, a) = (config.n_embd, config.dim_att);
    let (h, n) = heads(config);
    Ok(TimeMix5 {
        time_mix_k: w.param(Role::Mix, &format!("{p}.att.time_mix_k"), c)?,
        time_mix_v: w.param(Role::Mix, &format!("{p}.att.time_mix_v"), c)?,
        time_mix_r: w.param(Role::Mix, &format!("{p}.att.time_mix_r"), c)?,
        time_mix_g: w.param(Role::Mix, &format!("{p}.att.time_mix_g"), c)?,
        time_decay: w.param2(Role::Decay, &format!("{p}.att.time_decay"), h, n)?,
        time_faaaa: w.param2(Role::Bonus, &format!("{p}.att.time_faaaa"), h, n)?,
        receptance: w.linear(&format!("{p}.att.receptance.weight"), a, c)?,
        key: w.linear(&format!("{p}.att.key.weight"), a, c)?,
        value: w.linear(&format!("{p}.att.value.weight"), a, c)?,
        gate: w.linear(&format!("{p}.att.gate.weight"), a, c)?,
        output: w.linear(&format!("{p}.att.output.weight"), c, a)?,
        ln_x: w.ln_x(&format!("{p}.att.ln_x"), a, h)?,
    })
}

fn time_mix6(w: &Weights, config: &RwkvConfig, p: &str) -> Result<TimeMix6, LoadError> {
    let (c, a) = (config.n_embd, config.dim_att);
    let (h, n) = heads(config);
    let (mix_rank, decay_rank) = (config.lora.mix, config.lora.decay);
    Ok(TimeMix6 {
        time_maa_x: w.param(Role::Mix, &format!("{p}.att.time_maa_x"), c)?,
        time_maa_w: w.param(Role::Mix, &format!("{p}.att.time_maa_w"), c)?,
        time_maa_k: w.param(Role::Mix, &format!("{p}.att.time_maa_k"), c)?,
        time_maa_v: w.param(Role::Mix, &format!("{p}.att.time_maa_v"), c)?,
        time_maa_r: w.param(Role::Mix, &format!("{p}.att.time_maa_r"), c)?,
        time_maa_g: w.param(Role::Mix, &format!("{p}.att.time_maa_g"), c)?,
        time_maa_w1: w.param2(Role::Lora, &format!("{p}.att.time_maa_w1"), c, mix_rank * 5)?,
        time_maa_w2: w.tensor(
            Role::Lora,
            &format!("{p}.att.time_maa_w2"),
            [5, mix_rank, c],
        )?,
        time_decay: w.param(Role::Decay, &format!("{p}.att.time_decay"), a)?,
        time_decay_w1: w.lora_linear(&format!("{p}.att.time_decay_w1"), c, decay_rank)?,
        time_decay_w2: w.lora_linear(&format!("{p}.att.time_decay_w2"), decay_rank, a)?,
        time_faaaa: w.param2(Role::Bonus, &format!("{p}.att.time_faaaa"), h, n)?,
        receptance: w.linear(&format!("{p}.att.receptance.weight"), a, c)?,
        key: w.linear(&format!("{p}.att.key.weight"), a, c)?,
        value: w.linear(&format!("{p}.att.value.weight"), a, c)?,
        gate: w.linear(&format!("{p}.att.gate.weight"), a, c)?,
        output: w.linear(&format!("{p}.att.output.weight"), c, a)?,
        ln_x: w.ln_x(&format!("{p}.att.ln_x"), a, h)?,
    })
}

fn time_mix7(
    w: &Weights,
    config: &RwkvConfig,
    p: &str,
    first_layer: bool,
) -> Result<TimeMix7, LoadError> {
    let c = config.n_embd;
    let (h, n) = heads(config);
    // Released checkpoints carry v0/v1/v2 in layer 0 too, unused there: take them if present.
    let has_value_residual = w.source.contains(&format!("{p}.att.v1"));
    let (v0, v_lora) = if has_value_residual || !first_layer {
        (
            Some(w.param(Role::Bias, &format!("{p}.att.v0"), c)?),
            Some(w.lora(&format!("{p}.att.v"), c, config.lora.value)?),
        )
    } else {
        (None, None)
    };
    Ok(TimeMix7 {
        x_r: w.param(Role::Mix, &format!("{p}.att.x_r"), c)?,
        x_w: w.param(Role::Mix, &format!("{p}.att.x_w"), c)?,
        x_k: w.param(Role::Mix, &format!("{p}.att.x_k"), c)?,
        x_v: w.param(Role::Mix, &format!("{p}.att.x_v"), c)?,
        x_a: w.param(Role::Mix, &format!("{p}.att.x_a"), c)?,
        x_g: w.param(Role::Mix, &format!("{p}.att.x_g"), c)?,
        w0: w.param(Role::Decay, &format!("{p}.att.w0"), c)?,
        w_lora: w.lora(&format!("{p}.att.w"), c, config.lora.decay)?,
        a0: w.param(Role::Bias, &format!("{p}.att.a0"), c)?,
        a_lora: w.lora(&format!("{p}.att.a"), c, config.lora.a)?,
        v0,
        v_lora,
        g_lora: w.lora(&format!("{p}.att.g"), c, config.lora.gate)?,
        k_k: w.param(Role::Bias, &format!("{p}.att.k_k"), c)?,
        k_a: w.param(Role::Bias, &format!("{p}.att.k_a"), c)?,
        r_k: w.param2(Role::Bonus, &format!("{p}.att.r_k"), h, n)?,
        receptance: w.linear(&format!("{p}.att.receptance.weight"), c, c)?,
        key: w.linear(&format!("{p}.att.key.weight"), c, c)?,
        value: w.linear(&format!("{p}.att.value.weight"), c, c)?,
        output: w.linear(&format!("{p}.att.output.weight"), c, c)?,
        ln_x: w.ln_x(&format!("{p}.att.ln_x"), c, h)?,
        first_layer,
    })
}
