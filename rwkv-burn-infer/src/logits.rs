//! Logits of a token sequence from a fresh state, in sequence, step or chunked mode: the
//! computation behind `rwkv logits`, which other tools use to check parity.

use burn::tensor::{Device, Tensor, TensorData};
use rwkv_burn::model::{TokenError, token_tensor};
use rwkv_burn::safetensors_io::NamedTensor;
use rwkv_burn::{Rwkv, RwkvConfig, State};

/// How the tokens are fed to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMode {
    /// One sequence-mode call over all tokens.
    Sequence,
    /// One token per call, state carried.
    Step,
    /// Calls over the given chunk lengths, state carried.
    Chunks(Vec<usize>),
}

/// Why a run cannot start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunError {
    /// The tokens do not fit the model.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Chunk lengths that do not cover the tokens exactly.
    #[error("chunk lengths add up to {sum}, but there are {tokens} tokens")]
    ChunkSum {
        /// Sum of the chunk lengths.
        sum: usize,
        /// Number of tokens.
        tokens: usize,
    },
    /// A chunk of length zero.
    #[error("chunk lengths must be positive")]
    EmptyChunk,
    /// Reading the logits back from the device failed.
    #[error("reading the logits back from the device failed: {0}")]
    Device(String),
}

impl RunMode {
    /// The chunk lengths this mode feeds for `len` tokens.
    pub fn chunk_lengths(&self, len: usize) -> Result<Vec<usize>, RunError> {
        match self {
            RunMode::Sequence => Ok(vec![len]),
            RunMode::Step => Ok(vec![1; len]),
            RunMode::Chunks(chunks) => {
                if chunks.contains(&0) {
                    return Err(RunError::EmptyChunk);
                }
                // Saturating: lengths from a user may add up past usize::MAX.
                let sum = chunks.iter().fold(0usize, |sum, &c| sum.saturating_add(c));
                if sum != len {
                    return Err(RunError::ChunkSum { sum, tokens: len });
                }
                Ok(chunks.clone())
            }
        }
    }
}

/// Logits `[T, V]` of every token, and the state after the last one.
pub struct LogitsRun {
    /// Row t holds the logits after token t.
    pub logits: TensorData,
    /// The state after the last token (batch of one).
    pub state: State,
}

impl LogitsRun {
    /// `logits` plus the state in the official names and layouts, ready to save.
    pub fn into_named(self) -> Vec<NamedTensor> {
        let mut out = vec![NamedTensor::new("logits", self.logits)];
        out.extend(self.state.sequence_official(0));
        out
    }
}

/// Runs `tokens` from a zero state.
pub fn run_logits(
    model: &Rwkv,
    config: &RwkvConfig,
    tokens: &[u32],
    mode: &RunMode,
    device: &Device,
) -> Result<LogitsRun, RunError> {
    let (logits, state) = run(model, config, tokens, mode, device)?;
    let logits = logits
        .try_into_data()
        .map_err(|e| RunError::Device(format!("{e:?}")))?;
    Ok(LogitsRun { logits, state })
}

/// [`run_logits`] for targets that cannot block on the device (the browser): the logits are
/// read back asynchronously.
pub async fn run_logits_async(
    model: &Rwkv,
    config: &RwkvConfig,
    tokens: &[u32],
    mode: &RunMode,
    device: &Device,
) -> Result<LogitsRun, RunError> {
    let (logits, state) = run(model, config, tokens, mode, device)?;
    let logits = logits
        .into_data_async()
        .await
        .map_err(|e| RunError::Device(format!("{e:?}")))?;
    Ok(LogitsRun { logits, state })
}

/// The model work of a run: the logits `[T, V]`, not yet read back, and the final state.
fn run(
    model: &Rwkv,
    config: &RwkvConfig,
    tokens: &[u32],
    mode: &RunMode,
    device: &Device,
) -> Result<(Tensor<2>, State), RunError> {
    model.check_tokens(tokens)?;
    let chunks = mode.chunk_lengths(tokens.len())?;
    let mut state = State::zeros(config, 1, device);
    let mut parts = Vec::with_capacity(chunks.len());
    let mut start = 0;
    for len in chunks {
        let input = token_tensor(&tokens[start..start + len], 1, device);
        let logits = model.forward(input, &mut state);
        parts.push(logits.reshape([len, config.vocab_size]));
        start += len;
    }
    Ok((Tensor::cat(parts, 0), state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lengths_are_validated() {
        assert_eq!(RunMode::Sequence.chunk_lengths(4), Ok(vec![4]));
        assert_eq!(RunMode::Step.chunk_lengths(3), Ok(vec![1, 1, 1]));
        assert_eq!(
            RunMode::Chunks(vec![2, 2]).chunk_lengths(5),
            Err(RunError::ChunkSum { sum: 4, tokens: 5 })
        );
        assert_eq!(
            RunMode::Chunks(vec![0, 5]).chunk_lengths(5),
            Err(RunError::EmptyChunk)
        );
        assert_eq!(
            RunMode::Chunks(vec![usize::MAX, 2]).chunk_lengths(5),
            Err(RunError::ChunkSum {
                sum: usize::MAX,
                tokens: 5
            })
        );
    }
}
