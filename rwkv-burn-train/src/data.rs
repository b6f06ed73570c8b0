//! Training text as tokens, split into training and validation parts, served as random
//! windows of `ctx + 1` tokens.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rwkv_burn::random::Lcg;

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

/// A batch of inputs and next-token targets, both `[B, T]`.
pub struct Batch {
    /// Model inputs.
    pub inputs: Tensor<2, Int>,
    /// The token after each input.
    pub targets: Tensor<2, Int>,
    /// The loss weight of each position `[B, T]` (1 counted, 0 not: padding, or what a
    /// chat sample's user says); `None`: every position counts.
    pub weights: Option<Tensor<2>>,
}

/// Where a run's batches come from: windows of one token stream ([`TokenCorpus`]) or whole
/// samples with loss masks ([`crate::sft::SampleCorpus`]).
pub trait TrainData {
    /// The next training batch of `batch` rows, drawn by `sampler`.
    fn batch(
        &self,
        sampler: &mut WindowSampler,
        batch: usize,
        ctx: usize,
        device: &Device,
    ) -> Batch;
    /// Every validation batch, in order.
    fn validation(&self, batch: usize, ctx: usize, device: &Device) -> Vec<Batch>;
}

impl TrainData for TokenCorpus {
    fn batch(
        &self,
        sampler: &mut WindowSampler,
        batch: usize,
        ctx: usize,
        device: &Device,
    ) -> Batch {
        sampler.batch(&self.train, batch, ctx, device)
    }

    fn validation(&self, batch: usize, ctx: usize, device: &Device) -> Vec<Batch> {
        sequential_batches(&self.valid, batch, ctx, device)
    }
}

impl TrainData for crate::sft::SampleCorpus {
    fn batch(
        &self,
        sampler: &mut WindowSampler,
        batch: usize,
        _ctx: usize,
        device: &Device,
    ) -> Batch {
        let picked: Vec<&crate::sft::Sample> = sampler
            .items(self.train.len(), batch)
            .into_iter()
            .map(|i| &self.train[i])
            .collect();
        crate::sft::padded_batch(&picked, device)
    }

    fn validation(&self, batch: usize, _ctx: usize, device: &Device) -> Vec<Batch> {
        let all: Vec<&crate::sft::Sample> = self.valid.iter().collect();
        all.chunks(batch)
            .map(|chunk| crate::sft::padded_batch(chunk, device))
            .collect()
    }
}

/// How training windows are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// Uniformly random starts from a seeded generator.
    Random,
    /// RWKV-LM's epochs: the corpus cut into `ctx`-token windows, visited in a scrambled order
    /// (`i = (f * n^3) mod p` with a prime `p ≡ 2 mod 3`) so each window is seen exactly once
    /// per epoch of `p` samples.
    Epoch,
}

/// Draws windows reproducibly: the same seed (or saved state) gives the same windows.
#[derive(Debug, Clone)]
pub struct WindowSampler {
    mode: Sampling,
    /// The random generator's state, or the number of samples drawn for [`Sampling::Epoch`].
    state: u64,
}

impl WindowSampler {
    /// A sampler seeded by `seed` (the seed only matters for [`Sampling::Random`]).
    pub fn new(seed: u64) -> Self {
        Self::with_mode(Sampling::Random, seed)
    }

    /// A sampler of the given kind.
    pub fn with_mode(mode: Sampling, seed: u64) -> Self {
        let state = match mode {
            Sampling::Random => seed ^ 0x5851_f42d_4c95_7f2d,
            Sampling::Epoch => 0,
        };
        Self { mode, state }
    }

    /// A sampler continuing from a saved [`WindowSampler::state`].
    pub fn from_state(mode: Sampling, state: u64) -> Self {
        Self { mode, state }
    }

    /// The position in the random stream, to save.
    pub fn state(&self) -> u64 {
        self.state
    }

    fn next_index(&mut self, bound: usize) -> usize {
        let mut rng = Lcg::from_state(self.state);
        let bits = rng.next_u64();
        self.state = rng.state();
        ((bits >> 33) as usize) % bound.max(1)
    }

    /// `batch` of `count` items (whole samples): `Epoch` visits every item once an epoch, in
    /// an order shuffled anew each epoch (the state counts the items drawn); `Random` draws
    /// each independently.
    pub fn items(&mut self, count: usize, batch: usize) -> Vec<usize> {
        match self.mode {
            Sampling::Random => (0..batch).map(|_| self.next_index(count)).collect(),
            Sampling::Epoch => (0..batch)
                .map(|_| {
                    let count64 = count.max(1) as u64;
                    let (epoch, position) = (self.state / count64, self.state % count64);
                    self.state += 1;
                    shuffled(count, epoch)[position as usize]
                })
                .collect(),
        }
    }

    /// The next `batch` windows of `tokens`.
    pub fn batch(&mut self, tokens: &[u32], batch: usize, ctx: usize, device: &Device) -> Batch {
        let starts: Vec<usize> = match self.mode {
            Sampling::Random => (0..batch)
                .map(|_| self.next_index(tokens.len() - ctx))
                .collect(),
            Sampling::Epoch => {
                let p = magic_prime((tokens.len() - 1) / ctx) as u128;
                let factor = ((p as f64) * (5f64.sqrt() - 1.0) / 2.0) as u128;
                (0..batch)
                    .map(|_| {
                        let n = u128::from(self.state) % p + 1;
                        self.state += 1;
                        ((factor * n * n * n) % p) as usize * ctx
                    })
                    .collect()
            }
        };
        windows(tokens, &starts, ctx, device)
    }
}

/// `0..count` in the order of epoch `epoch` (Fisher-Yates with a generator seeded by it).
fn shuffled(count: usize, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    let mut rng = rwkv_burn::random::SplitMix64::new(epoch ^ 0x2545_f491_4f6c_dd1d);
    for i in (1..count).rev() {
        let j = ((rng.next_u64() >> 11) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The largest prime `p <= limit` with `p % 3 == 2` (so cubing is a bijection mod `p`), or 2.
pub fn magic_prime(limit: usize) -> usize {
    let is_prime = |n: usize| {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    };
    (2..=limit.max(2))
        .rev()
        .find(|&n| n % 3 == 2 && is_prime(n))
        .unwrap_or(2)
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
        weights: None,
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
    fn epoch_sampling_visits_every_window_once() {
        assert_eq!(magic_prime(100), 89);
        let device = Device::default();
        let ctx = 4;
        let tokens: Vec<u32> = (0..(90 * ctx + 1) as u32).collect();
        let p = magic_prime((tokens.len() - 1) / ctx);
        let mut sampler = WindowSampler::with_mode(Sampling::Epoch, 0);
        let mut starts = Vec::new();
        for _ in 0..p {
            let b = sampler.batch(&tokens, 1, ctx, &device);
            starts.push(
                b.inputs
                    .into_data()
                    .convert::<i64>()
                    .try_into_vec::<i64>()
                    .unwrap()[0],
            );
        }
        let mut sorted = starts.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), p, "every window once per epoch");
        assert_ne!(starts, sorted, "in a scrambled order");
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
