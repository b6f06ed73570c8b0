//! Reusing the state of prompt prefixes already read: a chat system prompt or a document that
//! many questions share is read once.

use rwkv_burn::State;

/// A state and the logits after it, for one token prefix.
#[derive(Debug, Clone)]
struct Entry {
    tokens: Vec<u32>,
    state: State,
    logits: Vec<f32>,
}

/// Remembers the states after up to `capacity` token prefixes, and at most a budget of bytes
/// when given one (least recently used evicted).
#[derive(Debug, Clone)]
pub struct PrefixCache {
    entries: Vec<Entry>,
    capacity: usize,
    /// Most bytes held, and the bytes of one sequence's state.
    budget: Option<(usize, usize)>,
}

/// What the cache holds for the start of a prompt.
#[derive(Debug, Clone)]
pub struct CacheHit {
    /// How many leading prompt tokens the state has already read.
    pub len: usize,
    /// The state after them.
    pub state: State,
    /// The logits after them.
    pub logits: Vec<f32>,
}

impl PrefixCache {
    /// A cache of at most `capacity` states.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Vec::new(),
            capacity: capacity.max(1),
            budget: None,
        }
    }

    /// A cache that holds at most `budget` bytes of states, logits and token ids, for states
    /// of `state_bytes` each (the server's `--cache-mb`).
    pub fn with_budget(budget: usize, state_bytes: usize) -> Self {
        Self {
            entries: Vec::new(),
            capacity: usize::MAX,
            budget: Some((budget, state_bytes)),
        }
    }

    fn entry_bytes(&self, tokens: usize, logits: usize) -> usize {
        let state = self.budget.map_or(0, |(_, state)| state);
        state + 4 * (tokens + logits)
    }

    /// Bytes the cached entries take (states counted at the size given to
    /// [`PrefixCache::with_budget`]).
    pub fn bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| self.entry_bytes(e.tokens.len(), e.logits.len()))
            .sum()
    }

    /// The longest cached prefix of `prompt`, if any.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<CacheHit> {
        let (index, _) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| prompt.starts_with(&e.tokens))
            .max_by_key(|(_, e)| e.tokens.len())?;
        let entry = self.entries.remove(index);
        let hit = CacheHit {
            len: entry.tokens.len(),
            state: entry.state.clone(),
            logits: entry.logits.clone(),
        };
        self.entries.push(entry); // most recently used last
        Some(hit)
    }

    /// Remembers the state (and logits) after `tokens`.
    pub fn insert(&mut self, tokens: Vec<u32>, state: State, logits: Vec<f32>) {
        self.entries.retain(|e| e.tokens != tokens);
        if self.entries.len() == self.capacity {
            self.entries.remove(0);
        }
        if let Some((budget, _)) = self.budget {
            let size = self.entry_bytes(tokens.len(), logits.len());
            if size > budget {
                return;
            }
            while !self.entries.is_empty() && self.bytes() + size > budget {
                self.entries.remove(0);
            }
        }
        self.entries.push(Entry {
            tokens,
            state,
            logits,
        });
    }

    /// Number of cached prefixes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_budget_evicts_the_least_recently_used() {
        let device = rwkv_burn::DeviceSpec::Flex.device().unwrap();
        let config = rwkv_burn::presets::preset("7-0.1b").unwrap();
        let state = State::zeros(&config, 1, &device);
        // Entries of 1000 + 4 * (tokens + 2 logits) bytes; room for two of them.
        let mut cache = PrefixCache::with_budget(2100, 1000);
        cache.insert(vec![1], state.clone(), vec![0.0; 2]);
        cache.insert(vec![2], state.clone(), vec![0.0; 2]);
        assert!(cache.lookup(&[1, 5]).is_some()); // 1 is now the most recent
        cache.insert(vec![3], state.clone(), vec![0.0; 2]);
        assert_eq!(cache.len(), 2);
        assert!(cache.lookup(&[2]).is_none());
        assert!(cache.lookup(&[1]).is_some() && cache.lookup(&[3]).is_some());
        assert!(cache.bytes() <= 2100);
        // An entry larger than the whole budget is not kept.
        cache.insert(vec![9; 400], state, vec![0.0; 2]);
        assert!(cache.lookup(&[9; 400]).is_none());
    }
}
