//! The RWKV model: embedding, a stack of blocks, output norm and head; and the table of
//! versions. Each version lives on one page, `vN.rs`: its time-mix and channel-mix, how they
//! are read from official names, the tensors that mark it, and its initialisation rule.
//! Adding a version is a new page, its entry in [`SPECS`], and its arms in [`TimeMix`] and
//! [`ChannelMix`].

mod block;
pub mod embedding;
pub mod layers;
pub mod lora;
pub mod projection;
mod token_shift;
pub mod v4;
pub mod v5;
pub mod v6;
pub mod v7;

pub use block::{Block, ChannelMix, TimeMix};
pub use embedding::TokenEmbedding;
pub use layers::{layer_norm, linear, ln_x};
pub use projection::Projection;

use crate::config::{LoraRanks, RwkvConfig, Version};
use crate::state::State;
use crate::weights::{
    InitParam, LoadError, ParamNames, Role, Shapes, TensorIndex, WeightFormat, WeightSource,
    Weights,
};
use burn::module::Module;
use burn::nn::LayerNorm;
use burn::tensor::{Device, Int, Tensor, TensorData};
use layers::load_layer_norm;

/// What the library needs to know about one RWKV version; each `vN.rs` defines its own.
pub(crate) struct Spec {
    /// The version it describes.
    pub version: Version,
    /// The version a checkpoint's tensors mark, if they mark this one (tried in [`SPECS`]
    /// order, so a version's markers may also appear in the versions after it).
    pub detect: fn(&Shapes) -> Option<Version>,
    /// Head size and adapter ranks, read off the tensors of a model of `n_layer` blocks.
    pub dims: fn(&Shapes, usize) -> Result<Dims, LoadError>,
    /// Block `layer`'s time-mix and channel-mix (`w` scoped to `blocks.{layer}`).
    pub load: LoadBlock,
    /// RWKV-LM's initial values for the tensors whose rule is the version's own; `None`
    /// leaves a tensor to the rules every version shares (`init::TrainingInit`).
    pub init: fn(&InitParam) -> Option<Vec<f32>>,
}

/// Builds block `layer`'s time-mix and channel-mix from its weights.
pub(crate) type LoadBlock =
    fn(&mut Weights, &RwkvConfig, usize) -> Result<(TimeMix, ChannelMix), LoadError>;

/// The dimensions only some versions have.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Dims {
    /// Channels per head (N) of the matrix-state versions.
    pub head_size: Option<usize>,
    /// Adapter ranks.
    pub lora: LoraRanks,
}

/// Every version, in the order their markers are tried.
const SPECS: [&Spec; 4] = [&v7::SPEC, &v6::SPEC, &v5::SPEC, &v4::SPEC];

/// The description of a version this build runs.
pub(crate) fn spec(version: Version) -> Option<&'static Spec> {
    SPECS.into_iter().find(|s| s.version == version)
}

/// `(H, N)` of a matrix-state config.
fn heads(config: &RwkvConfig) -> (usize, usize) {
    let n = config
        .head_size
        .expect("matrix-state versions have a head size");
    (config.dim_att / n, n)
}

/// Number of blocks: one past the highest `blocks.{i}.` index among `names`.
pub fn count_layers<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names
        .filter_map(|name| {
            name.strip_prefix("blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |i| i.saturating_add(1))
}

/// Checks that every block index below `n_layer` has tensors, and that a tensor name shared by
/// several blocks (`blocks.{i}.att.key.weight`) has the same shape in each: what a model of
/// identical blocks needs, read without knowing any version's names.
fn check_blocks(tensors: &dyn TensorIndex, n_layer: usize) -> Result<(), LoadError> {
    let mut seen = vec![false; n_layer];
    let mut shapes: std::collections::HashMap<&str, &[usize]> = Default::default();
    for name in tensors.names() {
        let Some(rest) = name.strip_prefix("blocks.") else {
            continue;
        };
        let Some((index, leaf)) = rest.split_once('.') else {
            continue;
        };
        let Ok(layer) = index.parse::<usize>() else {
            continue;
        };
        seen[layer] = true;
        let shape = tensors.shape(name).unwrap_or(&[]);
        match shapes.get(leaf) {
            Some(&want) if want != shape => {
                return Err(LoadError::WrongShape {
                    path: tensors.path().to_path_buf(),
                    name: name.to_string(),
                    got: shape.to_vec(),
                    expected: want.to_vec(),
                });
            }
            Some(_) => {}
            None => {
                shapes.insert(leaf, shape);
            }
        }
    }
    match seen.iter().position(|s| !s) {
        Some(missing) => Err(LoadError::BadDimensions {
            path: tensors.path().to_path_buf(),
            detail: format!(
                "block {missing} has no tensors, but there are blocks up to {}",
                n_layer - 1
            ),
        }),
        None => Ok(()),
    }
}

/// The RWKV generation of a set of tensors, detected the way the official package does
/// (extended to RWKV-7, which the package selects by an environment variable instead).
pub fn detect_version(tensors: &dyn TensorIndex) -> Result<Version, LoadError> {
    let shapes = Shapes(tensors);
    if !shapes.any("emb.weight") || count_layers(tensors.names()) == 0 {
        return Err(LoadError::NotACheckpoint {
            path: tensors.path().to_path_buf(),
            reason: "no RWKV tensors (emb.weight, blocks.N.*) in it".into(),
        });
    }
    SPECS
        .iter()
        .find_map(|spec| (spec.detect)(&shapes))
        .ok_or_else(|| {
            shapes.unknown("blocks have none of the tensors that mark an RWKV version".into())
        })
}

/// Every dimension of a supported model, read off its tensors (never asked of the user).
pub fn detect_config(tensors: &dyn TensorIndex) -> Result<RwkvConfig, LoadError> {
    read_config(tensors, detect_version(tensors)?)
}

/// Every dimension of a model of `version` (from [`detect_version`]), read off its tensors.
pub fn read_config(tensors: &dyn TensorIndex, version: Version) -> Result<RwkvConfig, LoadError> {
    let spec = spec(version).ok_or_else(|| LoadError::UnsupportedVersion {
        path: tensors.path().to_path_buf(),
        version,
    })?;
    let shapes = Shapes(tensors);
    let bad = |detail: String| LoadError::BadDimensions {
        path: tensors.path().to_path_buf(),
        detail,
    };
    let n_layer = count_layers(tensors.names());
    if n_layer > crate::config::MAX_LAYERS {
        return Err(bad(format!(
            "a block is numbered {}; at most {} blocks are supported",
            n_layer - 1,
            crate::config::MAX_LAYERS
        )));
    }
    check_blocks(tensors, n_layer)?;
    let [vocab_size, n_embd] = shapes.matrix("emb.weight")?;
    // Every version names its key projections `att.key` and `ffn.key`.
    let [dim_att, _] = shapes.matrix("blocks.0.att.key.weight")?;
    let [dim_ffn, _] = shapes.matrix("blocks.0.ffn.key.weight")?;
    let Dims { head_size, lora } = (spec.dims)(&shapes, n_layer)?;
    let config = RwkvConfig {
        version,
        n_layer,
        n_embd,
        dim_att,
        dim_ffn,
        vocab_size,
        head_size,
        lora,
    };
    config.validate().map_err(bad)?;
    Ok(config)
}

/// Builds the model described by `config` from a source's tensors.
pub fn build(
    source: &dyn WeightSource,
    config: &RwkvConfig,
    device: &Device,
) -> Result<Rwkv, LoadError> {
    build_named(source, config, device).map(|(model, _)| model)
}

/// Like [`build`], also returning the official name of every parameter.
pub fn build_named(
    source: &dyn WeightSource,
    config: &RwkvConfig,
    device: &Device,
) -> Result<(Rwkv, ParamNames), LoadError> {
    build_with(source, config, device, WeightFormat::F32)
}

/// Like [`build_named`], holding the projections in `format` (f32 keeps every weight a
/// trainable parameter; the other formats are for inference).
pub fn build_with(
    source: &dyn WeightSource,
    config: &RwkvConfig,
    device: &Device,
    format: WeightFormat,
) -> Result<(Rwkv, ParamNames), LoadError> {
    build_limited(source, config, device, format, None)
}

/// [`build_with`] for a device whose largest buffer holds at most `max_buffer` bytes (when
/// given; the device's own limit applies too, [`crate::device::max_buffer_bytes`]): larger
/// projections and embeddings are split into blocks of rows that fit, and any other tensor
/// that does not fit is refused by name. For a browser, whose adapter states its
/// `maxStorageBufferBindingSize` to the page rather than to the device.
pub fn build_limited(
    source: &dyn WeightSource,
    config: &RwkvConfig,
    device: &Device,
    format: WeightFormat,
    max_buffer: Option<u64>,
) -> Result<(Rwkv, ParamNames), LoadError> {
    config
        .validate()
        .map_err(|detail| LoadError::BadDimensions {
            path: source.path().to_path_buf(),
            detail,
        })?;
    let mut w = Weights::new(source, device).with_format(format);
    if let Some(bytes) = max_buffer {
        w = w.with_max_buffer(bytes);
    }
    let (c, v) = (config.n_embd, config.vocab_size);
    let emb = w.embedding("emb.weight", v, c)?;
    let ln0 = load_layer_norm(&mut w, "blocks.0.ln0", c)?;
    let blocks = (0..config.n_layer)
        .map(|i| Block::load(&mut w, config, i))
        .collect::<Result<Vec<_>, _>>()?;
    let ln_out = load_layer_norm(&mut w, "ln_out", c)?;
    let head = Projection::load(&mut w, Role::Head, "head.weight", v, c)?;
    w.check_unused()?;
    Ok((Rwkv::new(emb, ln0, blocks, ln_out, head), w.into_names()))
}

/// Token ids as the `[batch, len]` input of [`Rwkv::forward`], `len = ids.len() / batch`.
///
/// # Panics
/// If `batch` is zero or does not divide `ids.len()`.
pub fn token_tensor(ids: &[u32], batch: usize, device: &Device) -> Tensor<2, Int> {
    assert!(
        batch > 0 && ids.len().is_multiple_of(batch),
        "{} token ids do not split into {batch} sequences",
        ids.len()
    );
    let values: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    let len = values.len() / batch;
    Tensor::from_data(TensorData::new(values, [batch, len]), device)
}

/// An RWKV language model, on whatever device its tensors live.
///
/// Build one with [`load_model`](crate::load_model) or [`Rwkv::new`].
#[derive(Module, Debug)]
pub struct Rwkv {
    /// Token embedding `[V, C]`.
    pub emb: TokenEmbedding,
    /// LayerNorm applied to the embedding (the official `blocks.0.ln0`).
    pub ln0: LayerNorm,
    /// The residual blocks.
    pub blocks: Vec<Block>,
    /// Final LayerNorm.
    pub ln_out: LayerNorm,
    /// Output projection to vocabulary logits.
    pub head: Projection,
}

impl Rwkv {
    /// The same model with every float parameter cast to `dtype` (e.g. bf16 for mixed
    /// precision): activations then flow in `dtype`, while the recurrent state (token shift
    /// and WKV) stays f32 and the WKV math runs in f32. Under autodiff the cast is recorded, so
    /// gradients reach the original parameters: keep the f32 model as the master copy and cast
    /// it for each forward pass.
    pub fn cast(self, dtype: burn::tensor::FloatDType) -> Self {
        struct Cast(burn::tensor::FloatDType);
        impl burn::module::ModuleMapper for Cast {
            fn map_float<const D: usize>(
                &mut self,
                param: burn::module::Param<Tensor<D>>,
            ) -> burn::module::Param<Tensor<D>> {
                let dtype = self.0;
                param.map(|tensor| tensor.cast(dtype))
            }
        }
        self.map(&mut Cast(dtype))
    }

    /// Assembles a model from its parts.
    pub fn new(
        emb: TokenEmbedding,
        ln0: LayerNorm,
        blocks: Vec<Block>,
        ln_out: LayerNorm,
        head: Projection,
    ) -> Self {
        Self {
            emb,
            ln0,
            blocks,
            ln_out,
            head,
        }
    }

    /// Logits for every position: tokens `[B, T]` -> `[B, T, V]`, advancing `state` past the
    /// last token.
    ///
    /// Sequence mode and step mode are the same call (T = 1 for a step); splitting a sequence
    /// into chunks and carrying the state gives the same logits as one pass.
    ///
    /// # Panics
    /// If the state's batch size differs from B or a token id is outside the vocabulary (check
    /// ids with [`Rwkv::check_tokens`] when they come from users).
    pub fn forward(&self, tokens: Tensor<2, Int>, state: &mut State) -> Tensor<3> {
        crate::cpu::on_worker(&tokens.device(), || {
            let hidden = self.hidden(tokens, state);
            self.head.forward(self.ln_out.forward(hidden))
        })
    }

    /// Logits of the last position only (`[B, V]`): what decoding needs, without paying for
    /// the head at every position.
    pub fn forward_last(&self, tokens: Tensor<2, Int>, state: &mut State) -> Tensor<2> {
        crate::cpu::on_worker(&tokens.device(), || {
            let hidden = self.hidden(tokens, state);
            let [batch, len, channels] = hidden.dims();
            let last = hidden
                .slice([0..batch, len - 1..len, 0..channels])
                .reshape([batch, channels]);
            self.head.forward(self.ln_out.forward(last))
        })
    }

    fn hidden(&self, tokens: Tensor<2, Int>, state: &mut State) -> Tensor<3> {
        assert_eq!(
            state.layers.len(),
            self.blocks.len(),
            "state has {} layers, model has {}",
            state.layers.len(),
            self.blocks.len()
        );
        // The embedding may be held in its stored half type while the rest computes in f32
        // (see `Weights`); the activations take the norms' type (a half type under `cast`).
        let emb = self.emb.forward(tokens);
        let compute = self.ln0.gamma.val().dtype();
        let emb = if emb.dtype() == compute {
            emb
        } else {
            emb.cast(burn::tensor::FloatDType::from(compute))
        };
        let mut x = self.ln0.forward(emb);
        let mut v_first = None;
        for (block, layer_state) in self.blocks.iter().zip(state.layers.iter_mut()) {
            x = block.forward(x, layer_state, &mut v_first);
        }
        x
    }

    /// Every projection (the blocks' in order, then the head).
    pub fn projections(&self) -> Vec<&Projection> {
        let mut all: Vec<&Projection> = self
            .blocks
            .iter()
            .flat_map(|b| b.att.projections().into_iter().chain(b.ffn.projections()))
            .collect();
        all.push(&self.head);
        all
    }

    /// Every projection with its official name without `.weight` (`blocks.3.att.key`,
    /// `head`), in the order of [`Rwkv::projections`].
    pub fn named_projections_mut(&mut self) -> Vec<(String, &mut Projection)> {
        let mut all = Vec::new();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            for (leaf, p) in block.att.projections_mut() {
                all.push((format!("blocks.{i}.att.{leaf}"), p));
            }
            for (leaf, p) in block.ffn.projections_mut() {
                all.push((format!("blocks.{i}.ffn.{leaf}"), p));
            }
        }
        all.push(("head".to_string(), &mut self.head));
        all
    }

    /// Bytes one token reads from the weights: every projection once (in its format), the
    /// other parameters (f32) except the embedding, of which one row is read.
    pub fn bytes_per_token(&self) -> usize {
        let projections: usize = self.projections().iter().map(|p| p.weight_bytes()).sum();
        let dense: usize = self
            .projections()
            .iter()
            .filter_map(|p| p.linear())
            .map(|l| l.weight.val().shape().num_elements())
            .sum();
        let [vocab, channels] = self.emb.dims();
        let others = self.num_params() - dense - vocab * channels;
        projections + (others + channels) * size_of::<f32>()
    }

    /// For q8/q4 weights on the CPU: `true` multiplies by f32 inputs (products exact up to
    /// summation order), `false` (the default) lets CPUs with AVX-512 VNNI round each block
    /// of 32 inputs to 8 bits and multiply as integers, as ggml does (faster; the error
    /// bound is in [`PackedMatrix::set_exact_inputs`](crate::cpu::PackedMatrix::set_exact_inputs)).
    /// No effect on other formats or devices.
    pub fn set_exact_products(&self, exact: bool) {
        for projection in self.projections() {
            if let Some(packed) = projection.packed_matrix() {
                packed.set_exact_inputs(exact);
            }
        }
    }

    /// Whether any projection rounds its inputs to 8 bits (see
    /// [`set_exact_products`](Self::set_exact_products)).
    pub fn rounds_inputs(&self) -> bool {
        self.projections()
            .iter()
            .filter_map(|p| p.packed_matrix())
            .any(|p| p.rounds_inputs())
    }

    /// Vocabulary size (rows of the embedding).
    pub fn vocab_size(&self) -> usize {
        self.emb.dims()[0]
    }

    /// Checks token ids before they reach [`forward`](Self::forward), which would panic.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<(), TokenError> {
        let vocab = self.vocab_size();
        if tokens.is_empty() {
            return Err(TokenError::Empty);
        }
        match tokens.iter().position(|&t| t as usize >= vocab) {
            Some(position) => Err(TokenError::OutOfRange {
                token: tokens[position],
                position,
                vocab,
            }),
            None => Ok(()),
        }
    }

    /// Dimensions of this model.
    pub fn config(&self) -> RwkvConfig {
        let [vocab_size, n_embd] = self.emb.dims();
        let (dim_att, dim_ffn, head_size) = match self.blocks.first() {
            Some(block) => (
                block.att.dim_att(),
                block.ffn.dim_ffn(),
                block.att.head_size(),
            ),
            None => (n_embd, 0, None),
        };
        RwkvConfig {
            version: self.blocks.first().map_or(Version::V4, |b| b.att.version()),
            n_layer: self.blocks.len(),
            n_embd,
            dim_att,
            dim_ffn,
            vocab_size,
            head_size,
            lora: self
                .blocks
                .iter()
                .map(|b| b.att.lora_ranks())
                .fold(Default::default(), LoraRanks::max),
        }
    }
}

/// Token ids that the model cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No tokens at all.
    #[error("no tokens to run (the prompt is empty)")]
    Empty,
    /// An id at or past the vocabulary size.
    #[error(
        "token {token} at position {position} is out of range: the vocabulary has {vocab} ids (0..{vocab})"
    )]
    OutOfRange {
        /// The offending id.
        token: u32,
        /// Its index in the input.
        position: usize,
        /// The model's vocabulary size.
        vocab: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version table and [`Version::is_supported`] agree.
    #[test]
    fn the_table_covers_exactly_the_supported_versions() {
        let versions = [
            Version::V4,
            Version::V5 { minor: 0 },
            Version::V5 { minor: 1 },
            Version::V5 { minor: 2 },
            Version::V6,
            Version::V7,
        ];
        for version in versions {
            assert_eq!(spec(version).is_some(), version.is_supported(), "{version}");
        }
        assert_eq!(SPECS.len(), 4);
    }

    #[test]
    fn layers_are_counted_from_block_names() {
        let names = [
            "emb.weight",
            "blocks.0.ln0.weight",
            "blocks.11.att.key.weight",
            "blocks.x.y",
        ];
        assert_eq!(count_layers(names.into_iter()), 12);
        assert_eq!(count_layers(["head.weight"].into_iter()), 0);
    }
}
