//! Choosing a tokenizer: the one a user names (`world`, `bytes`, or a vocabulary file), or
//! the one a model's vocabulary size implies. The `rwkv` and `rwkv-train` tools and the
//! browser page all choose here.

use super::{ByteTokenizer, Tokenizer, TokenizerError, WorldTokenizer, load_tokenizer};
use std::path::Path;

/// The RWKV World vocabulary (`assets/rwkv_vocab_v20230424.txt`), embedded so World models
/// run without a vocabulary file.
pub static WORLD_VOCAB: &[u8] = include_bytes!("../../assets/rwkv_vocab_v20230424.txt");

/// Vocabulary size of RWKV World models: the World tokenizer's 65530 ids, padded.
pub const WORLD_MODEL_VOCAB: usize = 65536;

/// The embedded World tokenizer.
pub fn world() -> WorldTokenizer {
    WorldTokenizer::from_bytes(WORLD_VOCAB, Path::new("<embedded World vocabulary>"))
        .expect("the embedded vocabulary parses")
}

/// Resolves a `--vocab` choice: `world` (embedded), `bytes`, or a path (World `.txt` or
/// `tokenizer.json`). Without a choice, picks by the model's vocabulary size (65536: World,
/// 256: bytes).
pub fn choose(
    vocab: Option<&str>,
    model_vocab: usize,
) -> Result<Box<dyn Tokenizer>, TokenizerError> {
    match vocab {
        Some("world") => Ok(Box::new(world())),
        Some("bytes") => Ok(Box::new(ByteTokenizer)),
        Some(path) => load_tokenizer(path),
        None if model_vocab == 256 => Ok(Box::new(ByteTokenizer)),
        None if model_vocab == WORLD_MODEL_VOCAB => Ok(Box::new(world())),
        None => Err(TokenizerError::Input(format!(
            "no tokenizer known for a vocabulary of {model_vocab}: pass --vocab (for the Pile \
             models, --vocab 20B_tokenizer.json)"
        ))),
    }
}

/// The vocabulary size a fresh model needs for `tokenizer`: its ids rounded up to a multiple
/// of 64, as RWKV's models pad theirs (256 for bytes, 65536 for World).
pub fn model_vocab(tokenizer: &dyn Tokenizer) -> usize {
    tokenizer.vocab_size().next_multiple_of(64)
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

    #[test]
    fn fresh_models_fit_their_tokenizer() {
        assert_eq!(model_vocab(&ByteTokenizer), 256);
        assert_eq!(model_vocab(&world()), WORLD_MODEL_VOCAB);
    }
}
