//! `torch.save`'s zip archive (PyTorch 1.6 and later, the container of every official RWKV
//! `.pth`) read from bytes in memory: where each tensor's bytes lie in the buffer. A browser
//! page holds a checkpoint as bytes, and pytorch-reader 0.22.1 reads storages only from a
//! file path (see `pickle.rs` for the unpickler this needs).
//!
//! The archive is `<root>/data.pkl` (the pickle naming each tensor's storage, offset, shape
//! and strides) and one entry `<root>/data/<key>` per storage, stored uncompressed, so a
//! contiguous tensor is a range of the buffer: nothing is copied. A tensor saved as a
//! strided view (a transpose) is gathered into its own bytes.

use super::pickle::{self, TensorRef};
use crate::dtype::SourceDType;
use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use zip::{CompressionMethod, ZipArchive};

/// Largest `data.pkl` read (pytorch-reader's limit too): it holds only names and shapes.
const MAX_PICKLE_BYTES: u64 = 100 << 20;

/// Where a tensor's bytes are.
#[derive(Debug, PartialEq)]
pub(super) enum TensorBytes {
    /// A range of the archive (a contiguous tensor).
    InArchive(Range<usize>),
    /// A strided view's elements, gathered in row-major order.
    Gathered(Vec<u8>),
}

/// One tensor of the archive.
#[derive(Debug)]
pub(super) struct ZipTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// The element type, or the storage class's name where we have no such type.
    pub dtype: Result<SourceDType, String>,
    /// Empty for a type we have not got (reading it reports the type).
    pub bytes: TensorBytes,
}

/// Why an archive was refused.
pub(super) type Error = String;

/// The tensors of the `torch.save` zip archive `data`.
pub(super) fn read(data: &[u8]) -> Result<Vec<ZipTensor>, Error> {
    let mut archive = ZipArchive::new(Cursor::new(data))
        .map_err(|e| format!("its zip directory cannot be read ({e})"))?;
    let (pickle_index, root) = archive
        .file_names_raw()
        .enumerate()
        .find_map(|(i, name)| {
            let root = name.strip_suffix(b"data.pkl")?;
            (root.is_empty() || root.ends_with(b"/")).then(|| (i, root.to_vec()))
        })
        .ok_or("a zip archive without data.pkl is not a PyTorch checkpoint")?;
    let record = |name: &str| [root.as_slice(), name.as_bytes()].concat();
    if let Some(i) = archive.index_for_name_raw(&record("byteorder")) {
        let range = stored_range(&mut archive, i, data.len())?;
        if data[range].trim_ascii() == b"big" {
            return Err("the checkpoint is big-endian, which is not supported".into());
        }
    }
    let range = stored_range(&mut archive, pickle_index, data.len())?;
    if range.len() as u64 > MAX_PICKLE_BYTES {
        return Err(format!(
            "its data.pkl is {} bytes, more than the {MAX_PICKLE_BYTES} a state dict needs",
            range.len()
        ));
    }
    let found = pickle::tensors(&data[range]).map_err(|e| format!("data.pkl: {e}"))?;
    let mut storages: HashMap<String, Range<usize>> = HashMap::new();
    found
        .into_iter()
        .map(|tensor| {
            let storage = match storages.get(&tensor.storage.key) {
                Some(range) => range.clone(),
                None => {
                    let name = record(&format!("data/{}", tensor.storage.key));
                    let index = archive.index_for_name_raw(&name).ok_or_else(|| {
                        format!(
                            "tensor '{}': its storage data/{} is not in the archive",
                            tensor.name, tensor.storage.key
                        )
                    })?;
                    let range = stored_range(&mut archive, index, data.len())?;
                    storages.insert(tensor.storage.key.clone(), range.clone());
                    range
                }
            };
            let bytes = view(&tensor, storage, data)
                .map_err(|e| format!("tensor '{}': {e}", tensor.name))?;
            Ok(ZipTensor {
                name: tensor.name,
                shape: tensor.shape,
                dtype: tensor.storage.dtype,
                bytes,
            })
        })
        .collect()
}

/// Where entry `index`'s bytes lie in the archive, which must store it uncompressed (as
/// `torch.save` does) and hold all of it.
fn stored_range(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    index: usize,
    len: usize,
) -> Result<Range<usize>, Error> {
    let entry = archive
        .by_index_raw(index)
        .map_err(|e| format!("entry {index} cannot be read ({e})"))?;
    let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
    if entry.compression() != CompressionMethod::Stored || entry.encrypted() {
        return Err(format!(
            "entry {name} is compressed or encrypted; torch.save stores its entries as they \
             are (re-save it with torch.save, or convert it with `rwkv convert`)"
        ));
    }
    let start = entry
        .data_start()
        .ok_or_else(|| format!("entry {name} has no data"))?;
    let end = start.checked_add(entry.size());
    match end {
        Some(end) if end <= len as u64 => Ok(start as usize..end as usize),
        _ => Err(format!(
            "entry {name} ends at byte {}, past the file's {len} (a download cut short?)",
            start.saturating_add(entry.size())
        )),
    }
}

/// The bytes of `tensor`, a view of the storage at `storage` in `data`.
fn view(tensor: &TensorRef, storage: Range<usize>, data: &[u8]) -> Result<TensorBytes, Error> {
    let Ok(dtype) = tensor.storage.dtype else {
        return Ok(TensorBytes::InArchive(0..0));
    };
    let size = dtype.size();
    let held = (storage.len() / size).min(tensor.storage.numel);
    let numel = tensor
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("its shape {:?} overflows", tensor.shape))?;
    if numel == 0 {
        return Ok(TensorBytes::InArchive(storage.start..storage.start));
    }
    // The furthest element the view reaches, which the storage must hold.
    let last = tensor
        .shape
        .iter()
        .zip(&tensor.stride)
        .try_fold(tensor.offset, |at, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|step| at.checked_add(step))
        });
    if last.is_none_or(|last| last >= held) {
        return Err(format!(
            "shape {:?}, strides {:?} at offset {} reach past its storage of {held} elements",
            tensor.shape, tensor.stride, tensor.offset
        ));
    }
    let mut expected = 1;
    let contiguous = tensor
        .shape
        .iter()
        .zip(&tensor.stride)
        .rev()
        .all(|(&d, &s)| {
            let ok = d == 1 || s == expected;
            expected *= d;
            ok
        });
    let start = storage.start + tensor.offset * size;
    if contiguous {
        return Ok(TensorBytes::InArchive(start..start + numel * size));
    }
    // A view with repeated elements (a stride of 0) could ask for more than the file; no
    // weights need that.
    if numel * size > data.len() {
        return Err(format!(
            "a strided view of {} bytes, more than the file holds",
            numel * size
        ));
    }
    let mut out = Vec::with_capacity(numel * size);
    let mut index = vec![0usize; tensor.shape.len()];
    for _ in 0..numel {
        let at: usize = index.iter().zip(&tensor.stride).map(|(i, s)| i * s).sum();
        let from = start + at * size;
        out.extend_from_slice(&data[from..from + size]);
        for (i, &d) in index.iter_mut().zip(&tensor.shape).rev() {
            *i += 1;
            if *i < d {
                break;
            }
            *i = 0;
        }
    }
    Ok(TensorBytes::Gathered(out))
}
