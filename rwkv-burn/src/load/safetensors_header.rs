//! A safetensors file's header: each tensor's element type, shape and byte range, checked as
//! the safetensors crate checks them (offsets from 0, contiguous, sizes that match the shape
//! and type, data that ends where the file does), with sizes in 64 bits.
//!
//! Why not `safetensors::SafeTensors::read_metadata` (0.8.0): it computes a tensor's size in
//! bits in `usize`, which overflows on wasm32 for any tensor of 512 MiB or more, and refuses
//! the file ("overflow computing buffer size"). A World model of 1.5B parameters has one: its
//! 65536 x 2048 embedding in f32, as `rwkv quantize` keeps it; so the browser page refused
//! every quantized 1.5B file (measured 2026-12-04 with the 1.5B shape's q4 file, 1.46 GiB).

use safetensors::tensor::TensorInfo;
use std::collections::HashMap;
use std::ops::Range;

/// The longest header read (the safetensors crate's limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor of the header.
pub(super) struct HeaderTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    /// Its bytes in the file (the 8-byte length and the header included in the count).
    pub range: Range<usize>,
}

/// Why a header was refused.
pub(super) enum HeaderError {
    /// The file ends before the header or the data it describes.
    Truncated(String),
    /// The header is not a valid safetensors header.
    Invalid(String),
}

/// The tensors the header of a safetensors file of `file_len` bytes describes; `file` is the
/// file's start, which must hold the header.
pub(super) fn read(file: &[u8], file_len: u64) -> Result<Vec<HeaderTensor>, HeaderError> {
    let invalid = |s: String| HeaderError::Invalid(s);
    let Some(len) = file.get(..8) else {
        return Err(HeaderError::Truncated("too short for safetensors".into()));
    };
    let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES {
        return Err(invalid(format!(
            "a header of {n} bytes, more than the {MAX_HEADER_BYTES} allowed"
        )));
    }
    let data_start = 8 + n as usize;
    if data_start as u64 > file_len {
        return Err(HeaderError::Truncated(format!(
            "the header declares {n} bytes, the file has {file_len}"
        )));
    }
    let Some(header) = file.get(8..data_start) else {
        return Err(invalid(format!(
            "its header ({n} bytes) is not within the file's first {} bytes",
            file.len()
        )));
    };
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| invalid(e.to_string()))?;
    let mut tensors = header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, value)| {
            serde_json::from_value::<TensorInfo>(value)
                .map(|info| (name.clone(), info))
                .map_err(|e| invalid(format!("tensor '{name}': {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    let mut end = 0u64;
    let mut out = Vec::with_capacity(tensors.len());
    for (name, info) in tensors {
        let (s, e) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        if s != end || e < s {
            return Err(invalid(format!(
                "tensor '{name}' at bytes {s}..{e}, not where the previous one ended ({end})"
            )));
        }
        let bits = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize() as u64, |n, &d| n.checked_mul(d as u64));
        let bytes = match bits {
            Some(bits) if bits % 8 == 0 => bits / 8,
            _ => {
                return Err(invalid(format!(
                    "tensor '{name}': shape {:?} of {:?} is not a whole number of bytes",
                    info.shape, info.dtype
                )));
            }
        };
        if e - s != bytes {
            return Err(invalid(format!(
                "tensor '{name}' holds {} bytes, its shape {:?} of {:?} needs {bytes}",
                e - s,
                info.shape,
                info.dtype
            )));
        }
        end = e;
        out.push((name, info, s, e));
    }
    let total = data_start as u64 + end;
    if total > file_len {
        return Err(HeaderError::Truncated(
            "tensor data ends before the header says".into(),
        ));
    }
    if total < file_len {
        // A corrupt file rather than a cut one, but reported as the crate's check was.
        return Err(HeaderError::Truncated(format!(
            "{} bytes after the last tensor",
            file_len - total
        )));
    }
    Ok(out
        .into_iter()
        .map(|(name, info, s, e)| HeaderTensor {
            name,
            dtype: info.dtype,
            shape: info.shape,
            range: data_start + s as usize..data_start + e as usize,
        })
        .collect())
}

/// Where to cut a safetensors file of `file_len` bytes into consecutive parts of about
/// `part_bytes` (more where one tensor is larger) without cutting a tensor: each part's end
/// in the file, the last `file_len`. `head` is the file's start, holding the header; the
/// first part ends past it. `None` when the header cannot be read.
pub(super) fn part_ends(head: &[u8], file_len: u64, part_bytes: u64) -> Option<Vec<u64>> {
    let tensors = read(head, file_len).ok()?;
    let mut boundaries: Vec<u64> = tensors.iter().map(|t| t.range.end as u64).collect();
    boundaries.push(file_len);
    let mut ends = Vec::new();
    let (mut start, mut last) = (0u64, None::<u64>);
    for b in boundaries {
        if b - start > part_bytes
            && let Some(l) = last.filter(|&l| l > start && l >= head.len() as u64)
        {
            ends.push(l);
            start = l;
        }
        last = Some(b);
    }
    if ends.last() != Some(&file_len) {
        ends.push(file_len);
    }
    Some(ends)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(f: Vec<u8>) -> Result<Vec<HeaderTensor>, HeaderError> {
        read(&f, f.len() as u64)
    }

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend(header.as_bytes());
        f.resize(f.len() + data, 0);
        f
    }

    #[test]
    fn parts_end_at_tensor_boundaries() {
        let h = r#"{"a":{"dtype":"U8","shape":[10],"data_offsets":[0,10]},"b":{"dtype":"U8","shape":[50],"data_offsets":[10,60]},"c":{"dtype":"U8","shape":[5],"data_offsets":[60,65]},"d":{"dtype":"U8","shape":[5],"data_offsets":[65,70]}}"#;
        let f = file(h, 70);
        let base = (8 + h.len()) as u64;
        let total = f.len() as u64;
        let head = &f[..8 + h.len()];
        // Parts of about 20 bytes: the header and `a`; `b` alone (larger); `c` and `d`.
        assert_eq!(
            part_ends(head, total, 20),
            Some(vec![base + 10, base + 60, total])
        );
        // Larger parts than the file: one.
        assert_eq!(part_ends(head, total, 1 << 20), Some(vec![total]));
        // More of the file already held than the first boundary: the first part covers it.
        assert_eq!(
            part_ends(&f[..8 + h.len() + 30], total, 20),
            Some(vec![base + 60, total])
        );
        assert_eq!(part_ends(&f[..10], total, 20), None);
    }

    /// A tensor of 2^32 bits (512 MiB of f32): what overflowed the crate's `usize` on wasm32.
    /// Only the header is given, so the data is missing: a truncation, not an overflow.
    #[test]
    fn sizes_are_computed_in_64_bits() {
        let h = r#"{"emb":{"dtype":"F32","shape":[65536,2048],"data_offsets":[0,536870912]}}"#;
        let f = file(h, 0);
        assert!(matches!(
            read(&f, f.len() as u64),
            Err(HeaderError::Truncated(_))
        ));
    }

    #[test]
    fn reads_ranges_and_refuses_what_the_crate_refuses() {
        let h = r#"{"__metadata__":{"a":"b"},"b":{"dtype":"F16","shape":[3],"data_offsets":[8,14]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let f = file(h, 14);
        let t = read(&f, f.len() as u64).ok().unwrap();
        let start = 8 + h.len();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].name.as_str(), t[0].range.clone()),
            ("a", start..start + 8)
        );
        assert_eq!((t[1].name.as_str(), t[1].shape.clone()), ("b", vec![3]));
        assert_eq!(t[1].range, start + 8..start + 14);
        for (header, data) in [
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}"#,
                12,
            ), // wrong size
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
            ), // a gap
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                8,
            ), // backwards
            (
                r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#,
                2,
            ), // half a byte
            (
                r#"{"a":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,8]}}"#,
                8,
            ),
            (
                r#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#,
                8,
            ),
            ("[1,2]", 0),
        ] {
            assert!(
                matches!(whole(file(header, data)), Err(HeaderError::Invalid(_))),
                "{header}"
            );
        }
        assert!(matches!(whole(file(h, 13)), Err(HeaderError::Truncated(_))));
        assert!(matches!(whole(file(h, 15)), Err(HeaderError::Truncated(_))));
        // A header that does not fit in the part given.
        let f = file(h, 14);
        assert!(matches!(
            read(&f[..20], f.len() as u64),
            Err(HeaderError::Invalid(_))
        ));
        let mut long = file(h, 14);
        long[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(whole(long.clone()), Err(HeaderError::Invalid(_))));
        long[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(matches!(whole(long), Err(HeaderError::Truncated(_))));
    }
}
