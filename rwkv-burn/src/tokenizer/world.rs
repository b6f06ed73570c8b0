//! The RWKV World tokenizer: greedy longest match over bytes, as the official `TRIE_TOKENIZER`.

use super::{Tokenizer, TokenizerError};
use std::collections::HashMap;
use std::path::Path;

/// The World vocabulary with a byte trie for greedy longest-match encoding.
#[derive(Debug, Clone)]
pub struct WorldTokenizer {
    /// Bytes of each id (index = id; id 0 is end-of-text and has no bytes).
    tokens: Vec<Option<Vec<u8>>>,
    /// Trie edges: (node, byte) -> node. Node 0 is the root.
    edges: HashMap<(u32, u8), u32>,
    /// Token id ending at each node, if any.
    ends: Vec<Option<u32>>,
}

impl WorldTokenizer {
    /// Reads `rwkv_vocab_v20230424.txt` (or any file in its `ID REPR LEN` format).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let bytes = crate::files::read_input(path, super::MAX_VOCAB_FILE_BYTES)?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses vocabulary text; `path` is only used in errors.
    pub fn from_bytes(text: &[u8], path: &Path) -> Result<Self, TokenizerError> {
        let err = |line: usize, message: String| TokenizerError::Vocab {
            path: path.to_path_buf(),
            line,
            message,
        };
        let text = std::str::from_utf8(text).map_err(|e| err(0, format!("not UTF-8: {e}")))?;
        let mut tokens: Vec<Option<Vec<u8>>> = vec![None];
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let (id, rest) = line
                .split_once(' ')
                .ok_or_else(|| err(number, "expected `ID REPR LEN`".into()))?;
            let (repr, len) = rest
                .rsplit_once(' ')
                .ok_or_else(|| err(number, "expected `ID REPR LEN`".into()))?;
            let id: usize = id
                .parse()
                .map_err(|_| err(number, format!("bad id {id:?}")))?;
            let len: usize = len
                .parse()
                .map_err(|_| err(number, format!("bad length {len:?}")))?;
            let bytes = parse_literal(repr).map_err(|m| err(number, m))?;
            if bytes.len() != len {
                return Err(err(
                    number,
                    format!("literal has {} bytes, line says {len}", bytes.len()),
                ));
            }
            if id == 0 {
                return Err(err(number, "id 0 is reserved for end-of-text".into()));
            }
            if id >= super::MAX_VOCAB {
                return Err(err(
                    number,
                    format!(
                        "id {id} is too large; ids must be below {}",
                        super::MAX_VOCAB
                    ),
                ));
            }
            if tokens.len() <= id {
                tokens.resize(id + 1, None);
            }
            tokens[id] = Some(bytes);
        }
        Self::from_tokens(tokens, path)
    }

    /// The tokenizer of a vocabulary given as the bytes of each id (index = id; `None` for
    /// ids without text, such as 0, end-of-text); `path` names it in errors.
    pub fn from_tokens(tokens: Vec<Option<Vec<u8>>>, path: &Path) -> Result<Self, TokenizerError> {
        let err = |message: String| TokenizerError::Vocab {
            path: path.to_path_buf(),
            line: 0,
            message,
        };
        if tokens.iter().all(Option::is_none) {
            return Err(err("the vocabulary is empty".into()));
        }
        if tokens.len() > super::MAX_VOCAB {
            return Err(err(format!(
                "{} ids; ids must be below {}",
                tokens.len(),
                super::MAX_VOCAB
            )));
        }
        if tokens.iter().flatten().any(Vec::is_empty) {
            return Err(err("a token has no bytes".into()));
        }
        let mut edges = HashMap::new();
        let mut ends = vec![None];
        for (id, bytes) in tokens.iter().enumerate() {
            let Some(bytes) = bytes else { continue };
            let mut node = 0u32;
            for &b in bytes {
                let next = ends.len() as u32;
                node = *edges.entry((node, b)).or_insert_with(|| {
                    ends.push(None);
                    next
                });
            }
            ends[node as usize] = Some(id as u32);
        }
        Ok(Self {
            tokens,
            edges,
            ends,
        })
    }
}

impl Tokenizer for WorldTokenizer {
    fn encode(&self, bytes: &[u8]) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::with_capacity(bytes.len() / 3 + 1);
        let mut start = 0;
        while start < bytes.len() {
            let (mut node, mut best) = (0u32, None);
            for (offset, &b) in bytes[start..].iter().enumerate() {
                match self.edges.get(&(node, b)) {
                    Some(&next) => node = next,
                    None => break,
                }
                if let Some(id) = self.ends[node as usize] {
                    best = Some((id, offset + 1));
                }
            }
            let (id, len) = best.ok_or_else(|| {
                TokenizerError::Input(format!("byte 0x{:02x} has no token", bytes[start]))
            })?;
            ids.push(id);
            start += len;
        }
        Ok(ids)
    }

    fn token_bytes(&self, id: u32) -> Result<Vec<u8>, TokenizerError> {
        self.tokens
            .get(id as usize)
            .and_then(|t| t.clone())
            .ok_or(TokenizerError::UnknownId(id))
    }

    /// The official decode: UTF-8 of all bytes, or a single U+FFFD if they are not valid.
    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let bytes = self.decode_bytes(ids)?;
        Ok(String::from_utf8(bytes).unwrap_or_else(|_| char::REPLACEMENT_CHARACTER.to_string()))
    }

    fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

/// Parses a Python `str` or `bytes` literal as the vocabulary writes them; a `str` stands for
/// its UTF-8 bytes.
fn parse_literal(repr: &str) -> Result<Vec<u8>, String> {
    let (is_bytes, body) = match repr.strip_prefix('b') {
        Some(rest) => (true, rest),
        None => (false, repr),
    };
    let quote = body.chars().next().ok_or("empty literal")?;
    if !(quote == '\'' || quote == '"') || body.len() < 2 || !body.ends_with(quote) {
        return Err(format!("not a quoted literal: {repr}"));
    }
    let inner = &body[1..body.len() - 1];
    let mut out = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    let push_char = |out: &mut Vec<u8>, c: char| {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            push_char(&mut out, c);
            continue;
        }
        let escape = chars.next().ok_or("dangling backslash")?;
        let mut hex = |digits: usize| -> Result<u32, String> {
            let s: String = chars.by_ref().take(digits).collect();
            if s.len() != digits {
                return Err(format!("short escape in {repr}"));
            }
            u32::from_str_radix(&s, 16).map_err(|_| format!("bad escape in {repr}"))
        };
        match escape {
            'n' => out.push(b'\n'),
            't' => out.push(b'\t'),
            'r' => out.push(b'\r'),
            '\\' => out.push(b'\\'),
            '\'' => out.push(b'\''),
            '"' => out.push(b'"'),
            'a' => out.push(0x07),
            'b' => out.push(0x08),
            'f' => out.push(0x0c),
            'v' => out.push(0x0b),
            '0' => out.push(0),
            'x' => {
                let v = hex(2)?;
                if is_bytes {
                    out.push(v as u8);
                } else {
                    push_char(&mut out, char::from_u32(v).ok_or("bad \\x escape")?);
                }
            }
            'u' | 'U' if !is_bytes => {
                let v = hex(if escape == 'u' { 4 } else { 8 })?;
                push_char(
                    &mut out,
                    char::from_u32(v).ok_or_else(|| format!("bad code point in {repr}"))?,
                );
            }
            other => return Err(format!("unknown escape \\{other} in {repr}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_python_literals() {
        assert_eq!(parse_literal("'a b'").unwrap(), b"a b");
        assert_eq!(parse_literal(r"'\xe4'").unwrap(), "ä".as_bytes());
        assert_eq!(parse_literal(r"b'\xe4'").unwrap(), vec![0xe4]);
        assert_eq!(parse_literal(r#""it's""#).unwrap(), b"it's");
        assert_eq!(parse_literal(r"'\u4e2d'").unwrap(), "中".as_bytes());
        assert!(parse_literal("abc").is_err());
    }

    #[test]
    fn greedy_longest_match() {
        let vocab = "1 'a' 1\n2 'b' 1\n3 'ab' 2\n4 'abc' 3\n5 'c' 1\n";
        let t = WorldTokenizer::from_bytes(vocab.as_bytes(), Path::new("v")).unwrap();
        assert_eq!(t.encode(b"abcab").unwrap(), vec![4, 3]);
        assert_eq!(t.encode(b"abb").unwrap(), vec![3, 2]);
        assert!(t.encode(b"x").is_err());
        assert!(matches!(
            t.token_bytes(0),
            Err(TokenizerError::UnknownId(0))
        ));
    }
}
