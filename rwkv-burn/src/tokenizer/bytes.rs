//! A byte-level tokenizer (id = byte value), for small models trained on raw bytes such as the
//! test fixtures (vocabulary 256).

use super::{Tokenizer, TokenizerError};

/// Each byte is its own token: ids 0..=255.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteTokenizer;

impl Tokenizer for ByteTokenizer {
    fn encode(&self, bytes: &[u8]) -> Result<Vec<u32>, TokenizerError> {
        Ok(bytes.iter().map(|&b| u32::from(b)).collect())
    }

    fn token_bytes(&self, id: u32) -> Result<Vec<u8>, TokenizerError> {
        u8::try_from(id)
            .map(|b| vec![b])
            .map_err(|_| TokenizerError::UnknownId(id))
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    fn vocab_size(&self) -> usize {
        256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_bytes() {
        let t = ByteTokenizer;
        let ids = t.encode("hé".as_bytes()).unwrap();
        assert_eq!(ids, vec![104, 195, 169]);
        assert_eq!(t.decode(&ids).unwrap(), "hé");
        assert!(t.token_bytes(256).is_err());
    }
}
