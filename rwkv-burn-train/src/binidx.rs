//! The binidx token format of RWKV-LM and GPT-NeoX (Megatron's indexed dataset): a `.bin` of
//! raw token ids and an `.idx` describing where each document starts. Both the current
//! (`MMIDIDX`) and the legacy (`TNTIDX`) index headers are read; the current one is written.

use memmap2::Mmap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";
const LEGACY_MAGIC: &[u8; 8] = b"TNTIDX\x00\x00";

/// Element types of `.bin` files (Megatron's dtype codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    U8,
    I16,
    I32,
    I64,
    U16,
}

impl Element {
    fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(Self::U8),
            3 => Some(Self::I16),
            4 => Some(Self::I32),
            5 => Some(Self::I64),
            8 => Some(Self::U16),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 => 4,
            Self::I64 => 8,
        }
    }

    fn read(self, bytes: &[u8]) -> i64 {
        match self {
            Self::U8 => i64::from(bytes[0]),
            Self::I16 => i64::from(i16::from_le_bytes([bytes[0], bytes[1]])),
            Self::U16 => i64::from(u16::from_le_bytes([bytes[0], bytes[1]])),
            Self::I32 => i64::from(i32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"))),
            Self::I64 => i64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        }
    }
}

/// A binidx dataset could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BinidxError {
    /// The operating system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The files are not a valid binidx pair.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A memory-mapped binidx dataset.
pub struct Binidx {
    bin: Mmap,
    element: Element,
    /// (byte offset into .bin, length in tokens) of every document.
    documents: Vec<(usize, usize)>,
}

/// `prefix.bin` and `prefix.idx` for a path given with or without either extension.
pub fn paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let base = match prefix.extension().and_then(|e| e.to_str()) {
        Some("bin" | "idx") => prefix.with_extension(""),
        _ => prefix.to_path_buf(),
    };
    (base.with_extension("bin"), base.with_extension("idx"))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], BinidxError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| BinidxError::Format {
                path: self.path.to_path_buf(),
                message: format!(
                    "truncated index: needs {} more bytes at offset {}",
                    n, self.at
                ),
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, BinidxError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn array(&mut self, count: u64, size: usize) -> Result<Vec<i64>, BinidxError> {
        let n = usize::try_from(count).unwrap_or(usize::MAX);
        let bytes = self.take(n.saturating_mul(size))?;
        Ok(bytes
            .chunks_exact(size)
            .map(|c| match size {
                4 => i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))),
                _ => i64::from_le_bytes(c.try_into().expect("8 bytes")),
            })
            .collect())
    }
}

impl Binidx {
    /// Opens `prefix.bin` / `prefix.idx`.
    pub fn open(prefix: &Path) -> Result<Self, BinidxError> {
        let (bin_path, idx_path) = paths(prefix);
        let idx = std::fs::read(&idx_path).map_err(|source| BinidxError::Io {
            path: idx_path.clone(),
            source,
        })?;
        let file = std::fs::File::open(&bin_path).map_err(|source| BinidxError::Io {
            path: bin_path.clone(),
            source,
        })?;
        // SAFETY: read-only map; the data is copied out token by token.
        let bin = unsafe { Mmap::map(&file) }.map_err(|source| BinidxError::Io {
            path: bin_path.clone(),
            source,
        })?;
        let format = |message: String| BinidxError::Format {
            path: idx_path.clone(),
            message,
        };
        let mut cur = Cursor {
            bytes: &idx,
            at: 0,
            path: &idx_path,
        };
        let (element, documents) = if idx.starts_with(MAGIC) {
            cur.take(MAGIC.len())?;
            let version = cur.u64()?;
            if version != 1 {
                return Err(format(format!("unsupported index version {version}")));
            }
            let code = u64::from(cur.take(1)?[0]);
            let element = Element::from_code(code)
                .ok_or_else(|| format(format!("unsupported dtype code {code}")))?;
            let count = cur.u64()?;
            let doc_count = cur.u64()?;
            let sizes = cur.array(count, 4)?;
            let pointers = cur.array(count, 8)?;
            // Read (and so length-check) the document index even though windows ignore it.
            let _doc_idx = cur.array(doc_count, 8)?;
            let docs: Vec<(usize, usize)> = pointers
                .iter()
                .zip(&sizes)
                .map(|(&p, &s)| {
                    (
                        usize::try_from(p).unwrap_or(usize::MAX),
                        usize::try_from(s).unwrap_or(usize::MAX),
                    )
                })
                .collect();
            (element, docs)
        } else if idx.starts_with(LEGACY_MAGIC) {
            cur.take(LEGACY_MAGIC.len())?;
            let _version = cur.u64()?;
            let code = cur.u64()?;
            let element = Element::from_code(code)
                .ok_or_else(|| format(format!("unsupported dtype code {code}")))?;
            let _element_size = cur.u64()?;
            let len = cur.u64()?;
            let s = cur.u64()?;
            let _dim_offsets = cur.array(len + 1, 8)?;
            let data_offsets = cur.array(len + 1, 8)?;
            let _sizes = cur.array(s, 8)?;
            let docs: Vec<(usize, usize)> = data_offsets
                .windows(2)
                .map(|w| {
                    let start = usize::try_from(w[0]).unwrap_or(usize::MAX);
                    let len = usize::try_from(w[1].saturating_sub(w[0])).unwrap_or(usize::MAX);
                    (start.saturating_mul(element.size()), len)
                })
                .collect();
            (element, docs)
        } else {
            return Err(format(
                "not a binidx index (no MMIDIDX or TNTIDX header)".into(),
            ));
        };
        for (i, &(offset, len)) in documents.iter().enumerate() {
            // Checked: a corrupt index can hold any numbers.
            let end = len
                .checked_mul(element.size())
                .and_then(|bytes| offset.checked_add(bytes));
            if end.is_none_or(|end| end > bin.len()) {
                return Err(BinidxError::Format {
                    path: bin_path.clone(),
                    message: format!(
                        "document {i} extends past the end of the data (truncated .bin?)"
                    ),
                });
            }
        }
        Ok(Self {
            bin,
            element,
            documents,
        })
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.documents.len()
    }

    /// Whether there are no documents.
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    /// Every document's tokens, in order.
    pub fn documents(&self) -> Vec<Vec<u32>> {
        let size = self.element.size();
        self.documents
            .iter()
            .map(|&(offset, len)| {
                self.bin[offset..offset + len * size]
                    .chunks_exact(size)
                    .map(|c| self.element.read(c) as u32)
                    .collect()
            })
            .collect()
    }

    /// The tokens of every document, concatenated in order.
    pub fn all_tokens(&self) -> Vec<u32> {
        let size = self.element.size();
        self.documents
            .iter()
            .flat_map(|&(offset, len)| {
                self.bin[offset..offset + len * size]
                    .chunks_exact(size)
                    .map(|c| self.element.read(c) as u32)
            })
            .collect()
    }
}

/// Writes documents as `prefix.bin` / `prefix.idx` (current format, u16 ids, so the
/// vocabulary must be below 65536).
pub fn write(prefix: &Path, documents: &[Vec<u32>]) -> Result<(), BinidxError> {
    let (bin_path, idx_path) = paths(prefix);
    if let Some(&t) = documents
        .iter()
        .flatten()
        .find(|&&t| t > u32::from(u16::MAX))
    {
        return Err(BinidxError::Format {
            path: bin_path,
            message: format!("token {t} does not fit the u16 binidx format"),
        });
    }
    let mut bin = Vec::new();
    let mut pointers = Vec::with_capacity(documents.len());
    for doc in documents {
        pointers.push(bin.len() as i64);
        for &t in doc {
            bin.extend_from_slice(&(t as u16).to_le_bytes());
        }
    }
    let mut idx = Vec::new();
    idx.extend_from_slice(MAGIC);
    idx.extend_from_slice(&1u64.to_le_bytes());
    idx.push(8); // u16
    idx.extend_from_slice(&(documents.len() as u64).to_le_bytes());
    idx.extend_from_slice(&(documents.len() as u64 + 1).to_le_bytes());
    for doc in documents {
        idx.extend_from_slice(&(doc.len() as i32).to_le_bytes());
    }
    for p in &pointers {
        idx.extend_from_slice(&p.to_le_bytes());
    }
    for i in 0..=documents.len() as i64 {
        idx.extend_from_slice(&i.to_le_bytes());
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rwkv_burn::safetensors_io::IoError| BinidxError::Format {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    rwkv_burn::safetensors_io::write_atomic(&bin_path, &bin).map_err(io(&bin_path))?;
    rwkv_burn::safetensors_io::write_atomic(&idx_path, &idx).map_err(io(&idx_path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_documents() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("data");
        let docs = vec![vec![1, 2, 3], vec![], vec![65535, 0, 7]];
        write(&prefix, &docs).unwrap();
        let data = Binidx::open(&dir.path().join("data.bin")).unwrap();
        assert_eq!(data.len(), 3);
        assert_eq!(data.all_tokens(), vec![1, 2, 3, 65535, 0, 7]);
        assert!(write(&prefix, &[vec![70000]]).is_err());
    }

    #[test]
    fn reads_the_legacy_header() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("old");
        let tokens: [u16; 5] = [10, 11, 12, 13, 14];
        let bin: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        std::fs::write(prefix.with_extension("bin"), bin).unwrap();
        let mut idx = LEGACY_MAGIC.to_vec();
        for v in [1u64, 8, 2, 2, 2] {
            idx.extend_from_slice(&v.to_le_bytes()); // version, dtype, element size, len, s
        }
        for v in [0i64, 1, 2] {
            idx.extend_from_slice(&v.to_le_bytes()); // dim offsets
        }
        for v in [0i64, 2, 5] {
            idx.extend_from_slice(&v.to_le_bytes()); // data offsets (elements)
        }
        for v in [2i64, 3] {
            idx.extend_from_slice(&v.to_le_bytes()); // sizes
        }
        std::fs::write(prefix.with_extension("idx"), idx).unwrap();
        let data = Binidx::open(&prefix).unwrap();
        assert_eq!(
            data.all_tokens(),
            tokens.iter().map(|&t| u32::from(t)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn truncated_or_foreign_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("data");
        write(&prefix, &[vec![1, 2, 3, 4]]).unwrap();
        let idx = std::fs::read(prefix.with_extension("idx")).unwrap();
        std::fs::write(prefix.with_extension("idx"), &idx[..idx.len() - 12]).unwrap();
        let err = Binidx::open(&prefix).err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");
        write(&prefix, &[vec![1, 2, 3, 4]]).unwrap();
        let bin = std::fs::read(prefix.with_extension("bin")).unwrap();
        std::fs::write(prefix.with_extension("bin"), &bin[..3]).unwrap();
        assert!(
            Binidx::open(&prefix)
                .err()
                .unwrap()
                .to_string()
                .contains("past the end")
        );
        // Nonsense sizes are caught, not overflowed.
        write(&prefix, &[vec![1, 2, 3, 4]]).unwrap();
        assert!(Binidx::open(&prefix).is_ok());
        let mut idx = std::fs::read(prefix.with_extension("idx")).unwrap();
        let sizes_at = MAGIC.len() + 8 + 1 + 8 + 8;
        idx[sizes_at..sizes_at + 4].copy_from_slice(&(-1i32).to_le_bytes());
        std::fs::write(prefix.with_extension("idx"), &idx).unwrap();
        assert!(
            Binidx::open(&prefix)
                .err()
                .unwrap()
                .to_string()
                .contains("past the end")
        );
        std::fs::write(prefix.with_extension("idx"), b"hello").unwrap();
        assert!(
            Binidx::open(&prefix)
                .err()
                .unwrap()
                .to_string()
                .contains("not a binidx")
        );
        assert!(matches!(
            Binidx::open(&dir.path().join("missing")),
            Err(BinidxError::Io { .. })
        ));
    }
}
