//! Choosing the next token from logits: temperature, top-k, top-p, min-p, ChatRWKV-style
//! presence/frequency penalties with decay, banned tokens, and a seedable generator.

use crate::generate::OptionsError;
use rwkv_burn::random::SplitMix64;
use std::collections::HashMap;

/// Sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches this mass (1 = off).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// Subtracted from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted once per (decayed) occurrence of a token already generated.
    pub frequency_penalty: f32,
    /// Occurrence counts are multiplied by this after every token (ChatRWKV's 0.996).
    pub penalty_decay: f32,
    /// Tokens never sampled.
    pub banned: Vec<u32>,
    /// Seed of the random generator: the same seed gives the same tokens on the same device.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 0.85,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.4,
            frequency_penalty: 0.4,
            penalty_decay: 0.996,
            banned: Vec::new(),
            seed: 0,
        }
    }
}

/// The largest magnitude of a presence or frequency penalty, and the highest temperature: far
/// past any useful value (ChatRWKV uses 0 to 2), yet finite sums of them never overflow.
pub const MAX_PENALTY: f32 = 1000.0;
/// See [`MAX_PENALTY`].
pub const MAX_TEMPERATURE: f32 = 1000.0;

impl SamplerConfig {
    /// Checks every setting for a model of `vocab` tokens: temperature finite in
    /// `0..=MAX_TEMPERATURE`, `top_p`, `min_p` and `penalty_decay` in `0..=1`, penalties
    /// finite within `±MAX_PENALTY`, `top_k` at most `vocab`, banned ids below `vocab` and
    /// leaving at least one token to sample.
    pub fn validate(&self, vocab: usize) -> Result<(), OptionsError> {
        let ranged = |name: &'static str, value: f32, lo: f32, hi: f32| {
            if value.is_finite() && (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(OptionsError::new(
                    name,
                    value,
                    format!("a number from {lo} to {hi}"),
                ))
            }
        };
        ranged("temperature", self.temperature, 0.0, MAX_TEMPERATURE)?;
        ranged("top-p", self.top_p, 0.0, 1.0)?;
        ranged("min-p", self.min_p, 0.0, 1.0)?;
        ranged("penalty-decay", self.penalty_decay, 0.0, 1.0)?;
        ranged(
            "presence-penalty",
            self.presence_penalty,
            -MAX_PENALTY,
            MAX_PENALTY,
        )?;
        ranged(
            "frequency-penalty",
            self.frequency_penalty,
            -MAX_PENALTY,
            MAX_PENALTY,
        )?;
        if self.top_k > vocab {
            return Err(OptionsError::new(
                "top-k",
                self.top_k,
                format!("0 (off) to the vocabulary size, {vocab}"),
            ));
        }
        if let Some(&id) = self.banned.iter().find(|&&id| id as usize >= vocab) {
            return Err(OptionsError::new(
                "ban",
                id,
                format!("a token id below the vocabulary size, {vocab}"),
            ));
        }
        let mut banned = self.banned.clone();
        banned.sort_unstable();
        banned.dedup();
        if banned.len() >= vocab {
            return Err(OptionsError::new(
                "ban",
                format!("all {vocab} ids"),
                "a list that leaves at least one token",
            ));
        }
        Ok(())
    }

    /// Greedy decoding without penalties: deterministic, for tests and parity checks.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            ..Self::default()
        }
    }
}

/// A sampler with its own random stream and penalty memory (one per generated sequence).
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    rng: SplitMix64,
    occurrences: HashMap<u32, f32>,
    /// Ids from here on are never sampled: the tokenizer has no text for them.
    known: usize,
}

impl Sampler {
    /// A fresh sampler.
    pub fn new(config: SamplerConfig) -> Self {
        let rng = SplitMix64::new(config.seed);
        Self {
            config,
            rng,
            occurrences: HashMap::new(),
            known: usize::MAX,
        }
    }

    /// Never samples ids at or above `vocab`: a model's vocabulary is often padded past its
    /// tokenizer's (RWKV World: 65536 rows, 65530 tokens), and an untrained or random model
    /// gives the padding real probability.
    pub fn limit_to(&mut self, vocab: usize) {
        self.known = vocab;
    }

    /// Picks a token from one position's logits and records it for the penalties.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let mut logits = logits.to_vec();
        for (&token, &count) in &self.occurrences {
            if let Some(l) = logits.get_mut(token as usize) {
                *l -= self.config.presence_penalty + count * self.config.frequency_penalty;
            }
        }
        for &token in &self.config.banned {
            if let Some(l) = logits.get_mut(token as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        if let Some(unknown) = logits.get_mut(self.known..) {
            unknown.fill(f32::NEG_INFINITY);
        }
        let token = self.choose(&logits);
        for count in self.occurrences.values_mut() {
            *count *= self.config.penalty_decay;
        }
        *self.occurrences.entry(token).or_insert(0.0) += 1.0;
        token
    }

    fn choose(&mut self, logits: &[f32]) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32)
        };
        if self.config.temperature <= 0.0 {
            return argmax();
        }
        let inv_t = 1.0 / self.config.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut ranked: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp()))
            .filter(|(_, p)| *p > 0.0)
            .collect();
        if ranked.is_empty() {
            return argmax();
        }
        // Every step below reads the candidates from the most likely down, and usually stops
        // within the first few dozen: the order is built lazily ([`sort_prefix`]) instead of
        // sorting the whole vocabulary, which cost about 3 ms per token at 65536 ids, per
        // sequence, and dominated batched decoding of small World models.
        let mut sorted = 0;
        let truncates = self.config.top_k > 0 || self.config.top_p < 1.0 || self.config.min_p > 0.0;
        if !truncates {
            // Every candidate stays: no order is needed to draw from them (a flat
            // distribution would otherwise walk, and so sort, most of the vocabulary).
            sorted = ranked.len();
        }
        if self.config.top_k > 0 && self.config.top_k < ranked.len() {
            ranked.select_nth_unstable_by(self.config.top_k - 1, most_likely_first);
            ranked.truncate(self.config.top_k);
        }
        // Sums in f64: then they do not depend (to within 1e-13) on the order the candidates
        // happen to be in, so the pick is that of a full sort.
        let total: f64 = ranked.iter().map(|r| f64::from(r.1)).sum();
        if self.config.top_p < 1.0 {
            let top_p = f64::from(self.config.top_p);
            let mut mass = 0.0;
            let mut keep = ranked.len();
            for i in 0..ranked.len() {
                sort_prefix(&mut ranked, &mut sorted, i + 1);
                mass += f64::from(ranked[i].1) / total;
                if mass >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            ranked.truncate(keep);
            sorted = sorted.min(keep);
        }
        if self.config.min_p > 0.0 {
            sort_prefix(&mut ranked, &mut sorted, 1);
            let floor = ranked[0].1 * self.config.min_p;
            sorted = ranked[..sorted].iter().filter(|r| r.1 >= floor).count();
            ranked.retain(|r| r.1 >= floor);
        }
        let total: f64 = ranked.iter().map(|r| f64::from(r.1)).sum();
        let mut target = f64::from(self.rng.next_f32()) * total;
        for i in 0..ranked.len() {
            sort_prefix(&mut ranked, &mut sorted, i + 1);
            target -= f64::from(ranked[i].1);
            if target <= 0.0 {
                return ranked[i].0;
            }
        }
        ranked.last().map_or(0, |r| r.0)
    }
}

/// Descending probability, ties by ascending id: the order of a stable sort by probability.
fn most_likely_first(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Makes at least the first `need` candidates the most likely ones in order, given that the
/// first `*sorted` already are; grows the ordered part geometrically so that walking down the
/// whole list costs no more than one sort.
fn sort_prefix(ranked: &mut [(u32, f32)], sorted: &mut usize, need: usize) {
    if need <= *sorted {
        return;
    }
    let m = need.max(2 * *sorted).max(64).min(ranked.len());
    if m < ranked.len() {
        ranked.select_nth_unstable_by(m - 1, most_likely_first);
    }
    ranked[..m].sort_unstable_by(most_likely_first);
    *sorted = m;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(f: impl FnOnce(&mut SamplerConfig)) -> SamplerConfig {
        let mut c = SamplerConfig {
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            top_p: 1.0,
            ..SamplerConfig::default()
        };
        f(&mut c);
        c
    }

    #[test]
    fn greedy_takes_the_maximum_and_bans_apply() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0]), 1);
        let mut s = Sampler::new(SamplerConfig {
            banned: vec![1],
            ..SamplerConfig::greedy()
        });
        assert_eq!(s.sample(&[0.1, 3.0, 2.0]), 2);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(config(|c| c.seed = seed));
            (0..40).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_top_p_and_min_p_restrict_the_choice() {
        let logits = [5.0, 4.9, 0.0, -1.0, -2.0];
        for seed in 0..50 {
            let mut k = Sampler::new(config(|c| {
                c.top_k = 2;
                c.seed = seed
            }));
            assert!(k.sample(&logits) < 2);
            let mut p = Sampler::new(config(|c| {
                c.top_p = 0.9;
                c.seed = seed
            }));
            assert!(p.sample(&logits) < 2);
            let mut m = Sampler::new(config(|c| {
                c.min_p = 0.5;
                c.seed = seed
            }));
            assert!(m.sample(&logits) < 2);
        }
    }

    /// What the sampler does, with a full sort of the candidates where a setting cuts the
    /// list (and in id order where none does): the lazily ordered version must pick the same
    /// token.
    fn full_sort_choice(config: &SamplerConfig, logits: &[f32], draw: f32) -> u32 {
        let inv_t = 1.0 / config.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut ranked: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp()))
            .filter(|(_, p)| *p > 0.0)
            .collect();
        let truncates = config.top_k > 0 || config.top_p < 1.0 || config.min_p > 0.0;
        if truncates {
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        }
        if config.top_k > 0 {
            ranked.truncate(config.top_k);
        }
        let total: f64 = ranked.iter().map(|r| f64::from(r.1)).sum();
        if config.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = ranked
                .iter()
                .position(|r| {
                    mass += f64::from(r.1) / total;
                    mass >= f64::from(config.top_p)
                })
                .map_or(ranked.len(), |i| i + 1);
            ranked.truncate(keep);
        }
        if config.min_p > 0.0 {
            let floor = ranked[0].1 * config.min_p;
            ranked.retain(|r| r.1 >= floor);
        }
        let total: f64 = ranked.iter().map(|r| f64::from(r.1)).sum();
        let mut target = f64::from(draw) * total;
        for &(token, p) in &ranked {
            target -= f64::from(p);
            if target <= 0.0 {
                return token;
            }
        }
        ranked.last().unwrap().0
    }

    #[test]
    fn lazy_ordering_picks_what_a_full_sort_picks() {
        let mut noise = SplitMix64::new(3);
        for case in 0..400 {
            let vocab = [3, 70, 1000, 65536][case % 4];
            let logits: Vec<f32> = (0..vocab).map(|_| noise.next_f32() * 12.0 - 6.0).collect();
            let config = SamplerConfig {
                temperature: [0.3, 1.0, 2.0][case % 3],
                top_p: [1.0, 0.5, 0.95, 0.999][(case / 3) % 4],
                top_k: [0, 1, 40, 5000][(case / 12) % 4],
                min_p: [0.0, 0.05][(case / 48) % 2],
                presence_penalty: 0.0,
                frequency_penalty: 0.0,
                seed: case as u64,
                ..SamplerConfig::default()
            };
            let draw = SplitMix64::new(config.seed).next_f32();
            let mut sampler = Sampler::new(config.clone());
            assert_eq!(
                sampler.sample(&logits),
                full_sort_choice(&config, &logits, draw),
                "case {case}: {config:?}"
            );
        }
    }

    #[test]
    fn penalties_discourage_repeats_and_decay() {
        let mut s = Sampler::new(SamplerConfig {
            presence_penalty: 1.0,
            frequency_penalty: 0.5,
            penalty_decay: 0.5,
            ..SamplerConfig::greedy()
        });
        let logits = [2.0, 1.0];
        assert_eq!(s.sample(&logits), 0); // 0 now penalised by 1.5
        assert_eq!(s.sample(&logits), 1); // 2 - 1.5 = 0.5 < 1
        // 0's count decayed to 0.5 -> penalty 1.25 -> 0.75; 1's penalty 1.5 -> -0.5.
        assert_eq!(s.sample(&logits), 0);
    }
}
