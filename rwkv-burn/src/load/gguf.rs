//! GGUF, llama.cpp's model container: the header, the typed metadata and the tensor table,
//! every count, length and offset checked against the file before it sizes anything. Tensor
//! bytes stay in the memory map; nothing here knows RWKV (`gguf_rwkv.rs` maps the names).
//!
//! Why a reader of our own: the GGUF readers on crates.io come inside a tensor framework
//! (candle-core's `quantized::gguf_file`, a second framework in the build) or are small
//! crates that trust the counts they read (a metadata array of 2^60 strings is an allocation
//! request). The format is small (ggml's `docs/gguf.md`: magic, version, two counts, typed
//! key-values, a tensor table, aligned data), and the checks are most of the code either way.

use crate::weights::LoadError;
use std::path::Path;

/// `GGUF` as the first four bytes.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Versions read: 2 and 3 (same layout; 1 used 32-bit counts and predates every RWKV file).
const VERSIONS: [u32; 2] = [2, 3];
/// ggml's limit on a tensor's dimensions (`GGML_MAX_DIMS`).
const MAX_DIMS: usize = 4;
/// Arrays inside arrays deeper than this are refused (the format allows nesting; no writer
/// nests, and unbounded nesting would be unbounded recursion).
const MAX_NESTING: usize = 2;
/// The alignment of tensor data when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// UINT8, UINT16, UINT32, UINT64.
    Uint(u64),
    /// INT8, INT16, INT32, INT64.
    Int(i64),
    /// FLOAT32, FLOAT64.
    Float(f64),
    /// BOOL.
    Bool(bool),
    /// STRING (UTF-8; invalid sequences replaced).
    String(String),
    /// ARRAY.
    Array(Vec<Value>),
}

impl Value {
    /// A non-negative integer value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A short rendering for `rwkv info` (arrays by length and first items).
    pub fn describe(&self) -> String {
        match self {
            Value::Uint(v) => v.to_string(),
            Value::Int(v) => v.to_string(),
            Value::Float(v) => format!("{v}"),
            Value::Bool(v) => v.to_string(),
            Value::String(s) if s.chars().count() > 60 => {
                format!("{:?}...", s.chars().take(60).collect::<String>())
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(items) => {
                let head: Vec<String> = items.iter().take(4).map(Value::describe).collect();
                let more = if items.len() > 4 { ", ..." } else { "" };
                format!("[{} items: {}{more}]", items.len(), head.join(", "))
            }
        }
    }
}

/// A ggml tensor type: the ones this build reads, and the others by name for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: f16 scale, 32 int8 (34 bytes).
    Q8_0,
    /// Blocks of 32: f16 scale, 16 bytes of nibbles (18 bytes).
    Q4_0,
    /// Super-blocks of 256, 4.5 bits a value (see `kquants.rs`).
    Q4K,
    /// Super-blocks of 256, 5.5 bits a value.
    Q5K,
    /// Super-blocks of 256, 6.5625 bits a value.
    Q6K,
}

impl GgmlType {
    /// The type of ggml's numbering `id` (`enum ggml_type`), or its name when this build does
    /// not read it, or `None` for an id ggml does not have.
    fn from_id(id: u32) -> Result<Self, Option<&'static str>> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => {
                let name = match id {
                    3 => "Q4_1",
                    6 => "Q5_0",
                    7 => "Q5_1",
                    9 => "Q8_1",
                    10 => "Q2_K",
                    11 => "Q3_K",
                    15 => "Q8_K",
                    16 => "IQ2_XXS",
                    17 => "IQ2_XS",
                    18 => "IQ3_XXS",
                    19 => "IQ1_S",
                    20 => "IQ4_NL",
                    21 => "IQ3_S",
                    22 => "IQ2_S",
                    23 => "IQ4_XS",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    29 => "IQ1_M",
                    34 => "TQ1_0",
                    35 => "TQ2_0",
                    39 => "MXFP4",
                    _ => return Err(None),
                };
                return Err(Some(name));
            }
        })
    }

    /// ggml's number for it (`enum ggml_type`).
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Bf16 => 30,
        }
    }

    /// ggml's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// The K quantization it is, for the types dequantized at load.
    pub fn k_quant(self) -> Option<super::kquants::KQuant> {
        use super::kquants::KQuant;
        match self {
            Self::Q4K => Some(KQuant::Q4K),
            Self::Q5K => Some(KQuant::Q5K),
            Self::Q6K => Some(KQuant::Q6K),
            _ => None,
        }
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_0 => (32, 18),
            Self::Q4K | Self::Q5K | Self::Q6K => {
                let kind = self.k_quant().expect("a K type");
                (super::kquants::QK_K as u64, kind.block_bytes() as u64)
            }
        }
    }
}

/// One entry of the tensor table, checked against the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The name (`blk.0.time_mix_key.weight`).
    pub name: String,
    /// ggml's `ne`: the contiguous dimension first (the reverse of torch's shape).
    pub ne: Vec<usize>,
    /// The element type.
    pub kind: GgmlType,
    /// Where its bytes are in the file.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
}

impl TensorInfo {
    /// The shape in torch's order (`ne` reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file (the bytes themselves are not held here).
#[derive(Debug, Clone)]
pub struct Gguf {
    /// Format version.
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// The tensor table in file order.
    pub tensors: Vec<TensorInfo>,
}

impl Gguf {
    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    /// Parses the header, metadata and tensor table of `bytes`, the whole file at `path`
    /// (named in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, LoadError> {
        let mut r = Reader {
            bytes,
            pos: 0,
            path,
        };
        if r.take(4)? != MAGIC {
            return Err(LoadError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: "no GGUF magic".into(),
            });
        }
        let version = r.u32()?;
        if !VERSIONS.contains(&version) {
            return Err(LoadError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: format!("GGUF version {version}; this build reads versions 2 and 3"),
            });
        }
        let tensor_count = r.u64()?;
        let kv_count = r.u64()?;
        // Each key-value takes at least 8 + 4 + 1 bytes, each tensor entry 8 + 4 + 8 + 4 + 8.
        r.check_count(kv_count, 13, "metadata entries")?;
        r.check_count(tensor_count, 32, "tensors")?;
        let mut metadata = Vec::with_capacity(kv_count as usize);
        for _ in 0..kv_count {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind, 0)?;
            if metadata.iter().any(|(k, _)| *k == key) {
                return Err(r.corrupt(format!("metadata key '{key}' appears twice")));
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, value)) => match value.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(r.corrupt(format!(
                        "general.alignment {} is not a power of two up to 1 MiB",
                        value.describe()
                    )));
                }
            },
        };
        let mut raw = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.corrupt(format!(
                    "tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let ne = (0..n_dims)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let kind = r.u32()?;
            let offset = r.u64()?;
            raw.push((name, ne, kind, offset));
        }
        let data_start = (r.pos as u64).next_multiple_of(alignment);
        let file_len = bytes.len() as u64;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(raw.len());
        for (name, ne, kind, offset) in raw {
            let bad = |detail: String| r.corrupt(format!("tensor '{name}': {detail}"));
            let kind = GgmlType::from_id(kind).map_err(|name_of| match name_of {
                Some(type_name) => LoadError::UnsupportedDType {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    dtype: format!(
                        "{type_name} (GGUF types read: F32, F16, BF16, Q8_0, Q4_0, Q4_K, \
                         Q5_K, Q6_K; re-quantize with llama-quantize or convert from the original)"
                    ),
                },
                None => bad(format!("unknown ggml type {kind}")),
            })?;
            if ne.contains(&0) {
                return Err(bad(format!("a dimension is zero ({ne:?})")));
            }
            let elements = ne
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .filter(|&n| n <= file_len.saturating_mul(2))
                .ok_or_else(|| bad(format!("dimensions {ne:?} hold more values than the file")))?;
            let (per_block, block_bytes) = kind.block();
            if ne[0] % per_block != 0 {
                return Err(bad(format!(
                    "rows of {} values are not whole {} blocks of {per_block}",
                    ne[0],
                    kind.name()
                )));
            }
            let size = elements / per_block * block_bytes;
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "data offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(size));
            let (Some(start), Some(end)) = (start, end) else {
                return Err(bad(format!("data offset {offset} is out of range")));
            };
            if end > file_len {
                return Err(LoadError::Truncated {
                    path: path.to_path_buf(),
                    detail: format!(
                        "tensor '{name}' needs bytes {start}..{end}, the file has {file_len}"
                    ),
                });
            }
            if tensors.iter().any(|t| t.name == name) {
                return Err(bad("it appears twice in the tensor table".into()));
            }
            tensors.push(TensorInfo {
                name,
                ne: ne.iter().map(|&d| d as usize).collect(),
                kind,
                start: start as usize,
                end: end as usize,
            });
        }
        Ok(Self {
            version,
            metadata,
            tensors,
        })
    }
}

/// A cursor over the file that refuses to read past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, detail: String) -> LoadError {
        LoadError::Truncated {
            path: self.path.to_path_buf(),
            detail,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], LoadError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.corrupt(format!(
                "the header runs past the end of the file (byte {} + {n} of {})",
                self.pos,
                self.bytes.len()
            )));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LoadError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Refuses `count` items of at least `min_bytes` each when the rest of the file cannot
    /// hold them (so no count read from the file sizes an allocation beyond the file).
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<(), LoadError> {
        let left = (self.bytes.len() - self.pos) as u64;
        if count.saturating_mul(min_bytes) > left {
            return Err(self.corrupt(format!(
                "{count} {what} declared, the {left} bytes left cannot hold them"
            )));
        }
        Ok(())
    }

    fn string(&mut self) -> Result<String, LoadError> {
        let len = self.u64()?;
        self.check_count(len, 1, "string bytes")?;
        let bytes = self.take(len as usize)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<Value, LoadError> {
        Ok(match kind {
            0 => Value::Uint(u64::from(self.array::<1>()?[0])),
            1 => Value::Int(i64::from(self.array::<1>()?[0] as i8)),
            2 => Value::Uint(u64::from(u16::from_le_bytes(self.array()?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.array()?))),
            4 => Value::Uint(u64::from(self.u32()?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.array()?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.array()?))),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(self.corrupt(format!("a boolean holds {other}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(self.corrupt("arrays nested too deeply".into()));
                }
                let item = self.u32()?;
                let count = self.u64()?;
                let min = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return Err(self.corrupt(format!("unknown value type {other}"))),
                };
                self.check_count(count, min, "array items")?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.array()?)),
            12 => Value::Float(f64::from_le_bytes(self.array()?)),
            other => return Err(self.corrupt(format!("unknown value type {other}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_that_do_not_fit_the_file_are_refused_before_allocating() {
        let mut file = b"GGUF".to_vec();
        file.extend(3u32.to_le_bytes());
        file.extend(u64::MAX.to_le_bytes());
        file.extend(0u64.to_le_bytes());
        let err = Gguf::parse(&file, Path::new("x.gguf")).unwrap_err();
        assert!(err.to_string().contains("tensors declared"), "{err}");
    }

    #[test]
    fn unknown_versions_and_magic_are_refused() {
        let mut file = b"GGUF".to_vec();
        file.extend(7u32.to_le_bytes());
        file.extend([0; 16]);
        let err = Gguf::parse(&file, Path::new("x.gguf")).unwrap_err();
        assert!(err.to_string().contains("version 7"), "{err}");
        let err = Gguf::parse(b"GGML\0\0\0\0", Path::new("x.gguf")).unwrap_err();
        assert!(matches!(err, LoadError::NotACheckpoint { .. }), "{err}");
    }
}
