//! Choosing a tokenizer for a model: a file the user names, the embedded World vocabulary, or
//! bytes for byte-level models.

use rwkv_burn::tokenizer::{
    ByteTokenizer, Tokenizer, TokenizerError, WorldTokenizer, load_tokenizer,
};
use std::path::Path;

/// The RWKV World vocabulary, embedded so World models run without a vocabulary file.
pub static WORLD_VOCAB: &[u8] = include_bytes!("../assets/rwkv_vocab_v20230424.txt");

/// The embedded World tokenizer.
pub fn world() -> WorldTokenizer {
    WorldTokenizer::from_bytes(WORLD_VOCAB, Path::new("<embedded World vocabulary>"))
        .expect("the embedded vocabulary parses")
}

/// Resolves `--vocab`: `world` (embedded), `bytes`, or a path (World `.txt` or
/// `tokenizer.json`). Without a choice, picks by the model's vocabulary size.
pub fn choose(
    vocab: Option<&str>,
    model_vocab: usize,
) -> Result<Box<dyn Tokenizer>, TokenizerError> {
    match vocab {
        Some("world") => Ok(Box::new(world())),
        Some("bytes") => Ok(Box::new(ByteTokenizer)),
        Some(path) => load_tokenizer(path),
        None if model_vocab == 256 => Ok(Box::new(ByteTokenizer)),
        None if model_vocab == 65536 => Ok(Box::new(world())),
        None => Err(TokenizerError::Input(format!(
            "no tokenizer known for a vocabulary of {model_vocab}: pass --vocab (for the Pile \
             models, --vocab 20B_tokenizer.json)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_by_vocabulary_size() {
        assert_eq!(choose(None, 256).unwrap().vocab_size(), 256);
        assert_eq!(choose(None, 65536).unwrap().vocab_size(), 65530);
        assert!(choose(None, 50277).is_err());
        assert_eq!(choose(Some("bytes"), 65536).unwrap().vocab_size(), 256);
    }
}
