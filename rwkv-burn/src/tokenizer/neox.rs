//! Hugging Face `tokenizer.json` tokenizers, in practice GPT-NeoX's `20B_tokenizer.json` used by
//! the RWKV-4 Pile models, through the `tokenizers` crate.

use super::{Tokenizer, TokenizerError};
use std::collections::HashMap;
use std::path::Path;

/// A `tokenizer.json` tokenizer with byte-level tokens mapped back to raw bytes for streaming.
pub struct NeoxTokenizer {
    inner: tokenizers::Tokenizer,
    /// Raw bytes of each id; special (added) tokens decode to nothing, as in `decode`.
    bytes: Vec<Vec<u8>>,
}

impl NeoxTokenizer {
    /// Reads a `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let bytes = crate::files::read_input(path, super::MAX_VOCAB_FILE_BYTES)?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses `tokenizer.json` content; `path` is only used in errors.
    pub fn from_bytes(json: &[u8], path: &Path) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| TokenizerError::Vocab {
            path: path.to_path_buf(),
            line: 0,
            message: e.to_string(),
        })?;
        let unicode_to_byte = byte_level_alphabet();
        let size = inner.get_vocab_size(true);
        if size > super::MAX_VOCAB {
            return Err(TokenizerError::Vocab {
                path: path.to_path_buf(),
                line: 0,
                message: format!(
                    "{size} ids; vocabularies must have at most {}",
                    super::MAX_VOCAB
                ),
            });
        }
        let special: std::collections::HashSet<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let bytes = (0..size as u32)
            .map(|id| {
                if special.contains(&id) {
                    return Vec::new();
                }
                let piece = inner.id_to_token(id).unwrap_or_default();
                // Byte-level BPE spells each byte as one printable character; anything else
                // (an added non-special token) stands for its own UTF-8.
                piece
                    .chars()
                    .map(|c| unicode_to_byte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| piece.into_bytes())
            })
            .collect();
        Ok(Self { inner, bytes })
    }
}

impl Tokenizer for NeoxTokenizer {
    fn encode(&self, bytes: &[u8]) -> Result<Vec<u32>, TokenizerError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| TokenizerError::Input(format!("this tokenizer needs UTF-8 text: {e}")))?;
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Input(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn token_bytes(&self, id: u32) -> Result<Vec<u8>, TokenizerError> {
        self.bytes
            .get(id as usize)
            .cloned()
            .ok_or(TokenizerError::UnknownId(id))
    }

    /// The `tokenizers` library's own decode (special tokens skipped).
    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.bytes.len()) {
            return Err(TokenizerError::UnknownId(bad));
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Input(e.to_string()))
    }

    fn vocab_size(&self) -> usize {
        self.bytes.len()
    }
}

/// GPT-2's byte-level alphabet, inverted: the printable character that stands for each byte.
fn byte_level_alphabet() -> HashMap<char, u8> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0;
    for b in 0u32..256 {
        let c = if printable(b) {
            b
        } else {
            shifted += 1;
            255 + shifted
        };
        map.insert(char::from_u32(c).expect("valid code point"), b as u8);
    }
    map
}
