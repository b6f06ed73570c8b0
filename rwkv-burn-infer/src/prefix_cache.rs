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

/// Remembers the states after up to `capacity` token prefixes (least recently used evicted).
#[derive(Debug, Clone)]
pub struct PrefixCache {
    entries: Vec<Entry>,
    capacity: usize,
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
        }
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
