//! Tokenizers for RWKV models: the World vocabulary (v5-v7 World models) and the GPT-NeoX
//! `20B_tokenizer.json` of the Pile models (RWKV-4), behind one trait.

mod bytes;
mod choose;
mod neox;
mod stream;
mod world;

pub use bytes::ByteTokenizer;
pub use choose::{WORLD_MODEL_VOCAB, WORLD_VOCAB, choose, model_vocab, world};
pub use neox::NeoxTokenizer;
pub use stream::StreamDecoder;
pub use world::WorldTokenizer;

use std::path::{Path, PathBuf};

/// End-of-text id of the RWKV World and Pile vocabularies (and of byte-level training data):
/// documents end with it, and generation stops at it.
pub const END_OF_TEXT: u32 = 0;

/// The most ids a vocabulary may have (a model's vocabulary has the same bound,
/// [`crate::config::MAX_VOCAB`]); a file naming a larger id is refused before anything is
/// sized by it.
pub const MAX_VOCAB: usize = crate::config::MAX_VOCAB;

/// The largest vocabulary file read (the World vocabulary is 1 MiB, `20B_tokenizer.json` 2 MiB).
pub const MAX_VOCAB_FILE_BYTES: u64 = 256 << 20;

/// Turns bytes into token ids and back.
pub trait Tokenizer: Send + Sync {
    /// Token ids of `bytes`. The World tokenizer accepts any bytes; tokenizers that work on
    /// text refuse invalid UTF-8.
    fn encode(&self, bytes: &[u8]) -> Result<Vec<u32>, TokenizerError>;

    /// The bytes a token stands for (empty for special tokens that decode to nothing).
    fn token_bytes(&self, id: u32) -> Result<Vec<u8>, TokenizerError>;

    /// The concatenated bytes of `ids`.
    fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend(self.token_bytes(id)?);
        }
        Ok(out)
    }

    /// Text of `ids` with the reference implementation's handling of invalid UTF-8.
    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError>;

    /// Number of ids the tokenizer can produce (highest id + 1).
    fn vocab_size(&self) -> usize;
}

/// A tokenizer failure.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The vocabulary file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The vocabulary file is malformed.
    #[error("{path}: line {line}: {message}")]
    Vocab {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 for whole-file problems).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The vocabulary file is not one this library reads (see [`crate::files`]).
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// An id the vocabulary does not have.
    #[error("token id {0} is not in the vocabulary")]
    UnknownId(u32),
    /// Input the tokenizer cannot take.
    #[error("{0}")]
    Input(String),
}

/// Opens a vocabulary: a `tokenizer.json` (Hugging Face format, e.g. `20B_tokenizer.json`) or
/// an RWKV World vocabulary (`rwkv_vocab_v20230424.txt`), recognised by content. The name
/// `bytes` gives the byte-level [`ByteTokenizer`].
pub fn load_tokenizer(path: impl AsRef<Path>) -> Result<Box<dyn Tokenizer>, TokenizerError> {
    let path = path.as_ref();
    if path == Path::new("bytes") {
        return Ok(Box::new(ByteTokenizer));
    }
    let bytes = crate::files::read_input(path, MAX_VOCAB_FILE_BYTES)?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        Ok(Box::new(NeoxTokenizer::from_bytes(&bytes, path)?))
    } else {
        Ok(Box::new(WorldTokenizer::from_bytes(&bytes, path)?))
    }
}
