//! Training text as tokens, split into training and validation parts, served as random
//! windows of `ctx + 1` tokens.

use burn::tensor::{Device, Int, Tensor, TensorData};

/// A tokenized corpus with a held-out tail for validation.
#[derive(Debug, Clone)]
pub struct TokenCorpus {
    /// Tokens trained on.
    pub train: Vec<u32>,
    /// Tokens only evaluated on (the last part of the corpus).
    pub valid: Vec<u32>,
}

/// Why a corpus cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DataError {
    /// Too little text for one window in each split.
    #[error("the corpus has {tokens} tokens; training with ctx {ctx} needs at least {needed}")]
    TooSmall {
        /// Tokens available.
        tokens: usize,
        /// Context length.
        ctx: usize,
        /// Tokens required.
        needed: usize,
    },
    /// A token the model's vocabulary does not have.
    #[error("token {token} is outside the model's vocabulary of {vocab}")]
    OutOfVocab {
        /// The id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
}

impl TokenCorpus {
    /// Splits `tokens`, keeping the last `valid_fraction` for validation.
    pub fn split(
        tokens: Vec<u32>,
        valid_fraction: f32,
        ctx: usize,
        vocab: usize,
    ) -> Result<Self, DataError> {
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(DataError::OutOfVocab { token, vocab });
        }
        let valid_len = ((tokens.len() as f32 * valid_fraction) as usize).max(ctx + 1);
        let needed = valid_len + 2 * (ctx + 1);
        if tokens.len() < needed {
            return Err(DataError::TooSmall {
                tokens: tokens.len(),
                ctx,
                needed,
            });
        }
        let mut train = tokens;
        let valid = train.split_off(train.len() - valid_len);
        Ok(Self { train, valid })
    }
}

/// A batch of inputs and next-token targets, both `[B, ctx]`.
pub struct Batch {
    /// Model inputs.
    pub inputs: Tensor<2, Int>,
    /// The token after each input.
    pub targets: Tensor<2, Int>,
}

/// Draws windows at positions from a seeded generator, so a run is reproducible.
#[derive(Debug, Clone)]
pub struct WindowSampler {
    state: u64,
}

impl WindowSampler {
    /// A sampler seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x5851_f42d_4c95_7f2d,
        }
    }

    /// A sampler continuing from a saved [`WindowSampler::state`].
    pub fn from_state(state: u64) -> Self {
        Self { state }
    }

    /// The position in the random stream, to save.
    pub fn state(&self) -> u64 {
        self.state
    }

    fn next_index(&mut self, bound: usize) -> usize {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.state >> 33) as usize) % bound.max(1)
    }

    /// `batch` random windows of `tokens`.
    pub fn batch(&mut self, tokens: &[u32], batch: usize, ctx: usize, device: &Device) -> Batch {
        let starts: Vec<usize> = (0..batch)
            .map(|_| self.next_index(tokens.len() - ctx))
            .collect();
        windows(tokens, &starts, ctx, device)
    }
}

/// Consecutive windows covering `tokens` from the start (for validation).
pub fn sequential_batches(tokens: &[u32], batch: usize, ctx: usize, device: &Device) -> Vec<Batch> {
    let starts: Vec<usize> = (0..(tokens.len() - 1) / ctx).map(|i| i * ctx).collect();
    starts
        .chunks(batch)
        .map(|chunk| windows(tokens, chunk, ctx, device))
        .collect()
}

fn windows(tokens: &[u32], starts: &[usize], ctx: usize, device: &Device) -> Batch {
    let pick = |offset: usize| -> Vec<i64> {
        starts
            .iter()
            .flat_map(|&s| {
                tokens[s + offset..s + offset + ctx]
                    .iter()
                    .map(|&t| i64::from(t))
            })
            .collect()
    };
    let shape = [starts.len(), ctx];
    Batch {
        inputs: Tensor::from_data(TensorData::new(pick(0), shape), device),
        targets: Tensor::from_data(TensorData::new(pick(1), shape), device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_validates() {
        let tokens: Vec<u32> = (0..1000).map(|i| i % 50).collect();
        let corpus = TokenCorpus::split(tokens.clone(), 0.1, 16, 50).unwrap();
        assert_eq!((corpus.train.len(), corpus.valid.len()), (900, 100));
        assert!(matches!(
            TokenCorpus::split(tokens.clone(), 0.1, 16, 10),
            Err(DataError::OutOfVocab { .. })
        ));
        assert!(matches!(
            TokenCorpus::split(tokens[..30].to_vec(), 0.1, 16, 50),
            Err(DataError::TooSmall { .. })
        ));
    }

    #[test]
    fn targets_are_inputs_shifted_by_one() {
        let device = Device::default();
        let tokens: Vec<u32> = (0..100).collect();
        let batch = WindowSampler::new(3).batch(&tokens, 4, 8, &device);
        let inputs = batch
            .inputs
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap();
        let targets = batch
            .targets
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap();
        for (i, t) in inputs.iter().zip(&targets) {
            assert_eq!(i + 1, *t);
        }
    }
}
