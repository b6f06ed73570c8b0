//! Writing PyTorch's `.pth` format (the zip archive of `torch.save`), so exported models load
//! with `torch.load(path, weights_only=True)` and therefore in the official `rwkv` package.
//!
//! The archive is what `torch.save` writes for a flat `OrderedDict` of contiguous CPU tensors:
//! `<name>/data.pkl` (a protocol-2 pickle that names each tensor's storage by a persistent id),
//! one stored (uncompressed) entry per storage under `<name>/data/<key>`, aligned to 64 bytes
//! so `torch.load(mmap=True)` works too, and the small version records PyTorch checks.
//! The pickle uses only the globals `weights_only` unpickling allows.

use super::StorageDType;
use crate::safetensors_io::IoError;
use std::io::{Seek, Write};
use std::path::Path;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// One tensor to store: its key, shape (row-major, contiguous) and little-endian bytes.
pub(crate) struct PthTensor<'a> {
    pub name: &'a str,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

/// Writes `tensors` (all of `dtype`) as a `.pth` file, atomically.
pub(crate) fn write(
    path: &Path,
    tensors: &[PthTensor<'_>],
    dtype: StorageDType,
) -> Result<(), IoError> {
    let archive = archive_name(path);
    let mut bytes = std::io::Cursor::new(Vec::new());
    write_archive(&mut bytes, &archive, tensors, dtype).map_err(|e| IoError::Format {
        path: path.to_path_buf(),
        message: format!("writing the zip archive: {e}"),
    })?;
    crate::safetensors_io::write_atomic(path, bytes.get_ref())
}

/// `torch.save` names the archive's top folder after the file; any name is accepted on load.
fn archive_name(path: &Path) -> String {
    let stem: String = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        .collect();
    if stem.is_empty() {
        "archive".into()
    } else {
        stem
    }
}

fn write_archive<W: Write + Seek>(
    out: W,
    archive: &str,
    tensors: &[PthTensor<'_>],
    dtype: StorageDType,
) -> zip::result::ZipResult<()> {
    let mut zip = ZipWriter::new(out);
    let small = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let entry = |zip: &mut ZipWriter<W>, name: &str, bytes: &[u8], align: u16| {
        let options = small
            .with_alignment(align)
            .large_file(bytes.len() as u64 >= u32::MAX as u64);
        zip.start_file(format!("{archive}/{name}"), options)?;
        zip.write_all(bytes)?;
        zip::result::ZipResult::Ok(())
    };
    entry(&mut zip, "data.pkl", &pickle(tensors, dtype), 1)?;
    entry(&mut zip, ".format_version", b"1", 1)?;
    entry(&mut zip, ".storage_alignment", b"64", 1)?;
    entry(&mut zip, "byteorder", b"little", 1)?;
    for (key, tensor) in tensors.iter().enumerate() {
        entry(&mut zip, &format!("data/{key}"), tensor.bytes, 64)?;
    }
    entry(&mut zip, "version", b"3\n", 1)?;
    zip.finish()?;
    Ok(())
}

/// The pickle of `OrderedDict([(name, _rebuild_tensor_v2(storage, 0, shape, stride, False,
/// OrderedDict())), ...])`, each storage a persistent id `('storage', <Kind>Storage, key,
/// 'cpu', numel)` resolved by `torch.load` to the entry `data/<key>`.
fn pickle(tensors: &[PthTensor<'_>], dtype: StorageDType) -> Vec<u8> {
    let storage_class = match dtype {
        StorageDType::F32 => "FloatStorage",
        StorageDType::F16 => "HalfStorage",
        StorageDType::BF16 => "BFloat16Storage",
    };
    let mut p = Pickle(vec![0x80, 2]); // PROTO 2
    p.global("collections", "OrderedDict");
    p.0.extend_from_slice(b")R("); // EMPTY_TUPLE, REDUCE, MARK
    for (key, t) in tensors.iter().enumerate() {
        p.string(t.name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.0.extend_from_slice(b"((");
        p.string("storage");
        p.global("torch", storage_class);
        p.string(&key.to_string());
        p.string("cpu");
        p.int(t.shape.iter().product::<usize>());
        p.0.extend_from_slice(b"tQ"); // TUPLE, BINPERSID
        p.int(0); // storage offset
        p.tuple(&t.shape);
        p.tuple(&contiguous_strides(&t.shape));
        p.0.push(0x89); // NEWFALSE: requires_grad
        p.global("collections", "OrderedDict");
        p.0.extend_from_slice(b")RtR"); // backward hooks; close the args; call
    }
    p.0.extend_from_slice(b"u."); // SETITEMS, STOP
    p.0
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend_from_slice(module.as_bytes());
        self.0.push(b'\n');
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'\n');
    }

    fn string(&mut self, s: &str) {
        self.0.push(b'X'); // BINUNICODE
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: usize) {
        if v < 256 {
            self.0.extend_from_slice(&[b'K', v as u8]);
        } else if v < 65536 {
            self.0.push(b'M');
            self.0.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= i32::MAX as usize {
            self.0.push(b'J');
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // LONG1: little-endian two's complement; a positive value needs a clear top bit.
            let mut bytes = (v as u64).to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes[bytes.len() - 1] == 0 && bytes[bytes.len() - 2] < 0x80 {
                bytes.pop();
            }
            self.0.extend_from_slice(&[0x8a, bytes.len() as u8]);
            self.0.extend_from_slice(&bytes);
        }
    }

    fn tuple(&mut self, items: &[usize]) {
        self.0.push(b'(');
        for &v in items {
            self.int(v);
        }
        self.0.push(b't');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_strides(&[5]), vec![1]);
        assert!(contiguous_strides(&[]).is_empty());
    }

    #[test]
    fn large_ints_use_minimal_long1() {
        let mut p = Pickle(Vec::new());
        p.int(1 << 31);
        assert_eq!(p.0, vec![0x8a, 5, 0, 0, 0, 0x80, 0]);
    }

    #[test]
    fn archive_name_is_a_safe_stem() {
        assert_eq!(
            archive_name(Path::new("/x/rwkv-7 world.pth")),
            "rwkv-7world"
        );
        assert_eq!(archive_name(Path::new("/x/ü.pth")), "archive");
    }
}
