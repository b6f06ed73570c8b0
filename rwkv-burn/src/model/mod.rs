//! The RWKV model: embedding, a stack of blocks, output norm and head.

mod block;
mod layers;
#[cfg(feature = "flex")]
mod matvec;
mod token_shift;
pub mod v4;
pub mod v5;
pub mod v6;
pub mod v7;

pub use block::{Block, ChannelMix, TimeMix};
pub(crate) use layers::is_flex;
pub use layers::{layer_norm, linear, ln_x};
#[cfg(feature = "flex")]
pub(crate) use matvec::weight_rows;

use crate::config::RwkvConfig;
use crate::state::State;
use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::{Int, Tensor};
use layers::{on_worker, project};

/// An RWKV language model, on whatever device its tensors live.
///
/// Build one with [`load_model`](crate::load_model) or [`Rwkv::new`].
#[derive(Module, Debug)]
pub struct Rwkv {
    /// Token embedding `[V, C]`.
    pub emb: Embedding,
    /// LayerNorm applied to the embedding (the official `blocks.0.ln0`).
    pub ln0: LayerNorm,
    /// The residual blocks.
    pub blocks: Vec<Block>,
    /// Final LayerNorm.
    pub ln_out: LayerNorm,
    /// Output projection to vocabulary logits.
    pub head: Linear,
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
        emb: Embedding,
        ln0: LayerNorm,
        blocks: Vec<Block>,
        ln_out: LayerNorm,
        head: Linear,
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
        on_worker(&tokens.device(), || {
            let hidden = self.hidden(tokens, state);
            project(&self.head, self.ln_out.forward(hidden))
        })
    }

    /// Logits of the last position only (`[B, V]`): what decoding needs, without paying for
    /// the head at every position.
    pub fn forward_last(&self, tokens: Tensor<2, Int>, state: &mut State) -> Tensor<2> {
        on_worker(&tokens.device(), || {
            let hidden = self.hidden(tokens, state);
            let [batch, len, channels] = hidden.dims();
            let last = hidden
                .slice([0..batch, len - 1..len, 0..channels])
                .reshape([batch, channels]);
            project(&self.head, self.ln_out.forward(last))
        })
    }

    /// The residual stream after the last block (`[B, T, C]`), before `ln_out` and the head.
    pub fn forward_hidden(&self, tokens: Tensor<2, Int>, state: &mut State) -> Tensor<3> {
        on_worker(&tokens.device(), || self.hidden(tokens, state))
    }

    fn hidden(&self, tokens: Tensor<2, Int>, state: &mut State) -> Tensor<3> {
        assert_eq!(
            state.layers.len(),
            self.blocks.len(),
            "state has {} layers, model has {}",
            state.layers.len(),
            self.blocks.len()
        );
        let mut x = self.ln0.forward(self.emb.forward(tokens));
        let mut v_first = None;
        for (block, layer_state) in self.blocks.iter().zip(state.layers.iter_mut()) {
            x = block.forward(x, layer_state, &mut v_first);
        }
        x
    }

    /// Vocabulary size (rows of the embedding).
    pub fn vocab_size(&self) -> usize {
        self.emb.weight.dims()[0]
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
        let [vocab_size, n_embd] = self.emb.weight.dims();
        let (dim_att, dim_ffn, head_size) = match self.blocks.first() {
            Some(block) => (
                block.att.dim_att(),
                block.ffn.dim_ffn(),
                block.att.head_size(),
            ),
            None => (n_embd, 0, None),
        };
        RwkvConfig {
            version: self
                .blocks
                .first()
                .map_or(crate::Version::V4, |b| b.att.version()),
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
                .fold(Default::default(), crate::config::LoraRanks::max),
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
