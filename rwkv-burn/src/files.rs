//! The files the library reads and writes on a user's behalf, and the one rule for each.
//!
//! **Inputs** ([`read_input`]) must be regular files (or `-`, standard input, where a caller
//! allows it) and are read up to a limit the format implies, so `/dev/zero` or a fifo that
//! never ends cannot exhaust memory.
//!
//! **Outputs** ([`write_output`]): what a path names decides how it is written.
//! - Nothing there yet, or a regular file: the bytes go to a temporary file beside it (beside
//!   the file a symlink points to), are synced, and are renamed over it, so an interrupted
//!   write never leaves a half-written file under the final name, and a symlink stays a
//!   symlink. A read-only file is refused rather than replaced.
//! - A fifo or a character device (`/dev/stdout`, `/dev/null`, a pipe a user made): written
//!   straight into, never renamed over, so the device node stays what it was.
//! - A directory, a block device, a socket, a dangling symlink: refused.
//! - Any file the command reads (the model, a state file) is refused as an output, unless the
//!   caller says that one may be replaced (`--state-out` equal to `--state-in`).
//!
//! Temporary files are registered while they exist; [`remove_temporaries`] deletes them, for
//! a command-line tool's SIGINT/SIGTERM handler.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A file could not be read or written under the rules above.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The operating system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The path names something this rule does not read or write.
    #[error("{path}: {reason}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The input is larger than its format allows.
    #[error("{path}: larger than {limit} bytes, the most this input may hold")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
}

impl FileError {
    /// The message without the path, for errors that name the file themselves.
    pub fn reason(&self) -> String {
        match self {
            Self::Io { source, .. } => source.to_string(),
            Self::Refused { reason, .. } => reason.clone(),
            Self::TooLarge { limit, .. } => {
                format!("larger than {limit} bytes, the most this input may hold")
            }
        }
    }

    /// The file it is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. } | Self::Refused { path, .. } | Self::TooLarge { path, .. } => {
                path
            }
        }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn refused(path: &Path, reason: impl Into<String>) -> Self {
        Self::Refused {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Reads a whole input file of at most `limit` bytes. It must be a regular file; a fifo, a
/// device or a directory is refused before anything is read.
pub fn read_input(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let meta = std::fs::metadata(path).map_err(FileError::io(path))?;
    if !meta.is_file() {
        return Err(FileError::refused(
            path,
            format!("is {}, not a regular file", kind(&meta)),
        ));
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    let file = std::fs::File::open(path).map_err(FileError::io(path))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take` bounds the read even if the file grows underneath us.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(FileError::io(path))?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

/// What a file-system entry is, for messages.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a fifo";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Whether two metadata describe the same file.
#[cfg(unix)]
fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_inode(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    false
}

/// Whether two paths name the same existing file (through links, or two spellings of one
/// path); false when either does not exist.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => same_inode(&a, &b),
        _ => false,
    }
}

/// The files a command reads, which its outputs must not replace.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    paths: Vec<PathBuf>,
}

impl Inputs {
    /// No inputs to protect.
    pub fn new() -> Self {
        Self::default()
    }

    /// Protects `path` (a file, or a folder and everything in it) from being an output.
    pub fn protect(mut self, path: impl Into<PathBuf>) -> Self {
        self.paths.push(path.into());
        self
    }

    /// Protects `path` if there is one.
    pub fn protect_opt(self, path: Option<&Path>) -> Self {
        match path {
            Some(p) => self.protect(p),
            None => self,
        }
    }

    /// The protected input that `output` (existing with `meta`, or about to be created in
    /// `dir`) would replace, if any.
    fn clash(&self, output: &Path, meta: Option<&std::fs::Metadata>) -> Option<&Path> {
        let canonical_out = canonical_target(output);
        self.paths.iter().map(PathBuf::as_path).find(|input| {
            let Ok(input_meta) = std::fs::metadata(input) else {
                return false;
            };
            if input_meta.is_dir() {
                // A Hugging Face folder: nothing inside it may be written.
                let (Some(out), Ok(dir)) = (&canonical_out, std::fs::canonicalize(input)) else {
                    return false;
                };
                return out.starts_with(dir);
            }
            meta.is_some_and(|m| same_inode(m, &input_meta))
        })
    }
}

/// `path` with its directory resolved (the file itself need not exist).
fn canonical_target(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Some(p);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(path.file_name()?))
}

/// How an output path is written.
enum Plan {
    /// A temporary file renamed over this path (the output, or the file its symlink names).
    Replace(PathBuf),
    /// Straight into the fifo or device.
    Into,
}

/// Checks `path` as an output by the rule in this module's documentation, without writing:
/// a command calls it before its work, so a refused output costs nothing.
pub fn check_output(path: &Path, inputs: &Inputs) -> Result<(), FileError> {
    plan(path, inputs).map(drop)
}

fn plan(path: &Path, inputs: &Inputs) -> Result<Plan, FileError> {
    let link = std::fs::symlink_metadata(path).ok();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if link.is_some() {
                return Err(FileError::refused(
                    path,
                    "is a symlink to a file that does not exist",
                ));
            }
            None
        }
        Err(e) => return Err(FileError::io(path)(e)),
    };
    if let Some(input) = inputs.clash(path, meta.as_ref()) {
        return Err(FileError::refused(
            path,
            format!(
                "is an input of this command ({}); choose another output",
                input.display()
            ),
        ));
    }
    match &meta {
        None => {
            if path.file_name().is_none() {
                return Err(FileError::refused(path, "has no file name"));
            }
            Ok(Plan::Replace(path.to_path_buf()))
        }
        Some(m) if m.is_file() => {
            if m.permissions().readonly() {
                return Err(FileError::refused(path, "is read-only"));
            }
            // Replace the file a symlink points to, not the link.
            if link.is_some_and(|l| l.file_type().is_symlink()) {
                Ok(Plan::Replace(
                    std::fs::canonicalize(path).map_err(FileError::io(path))?,
                ))
            } else {
                Ok(Plan::Replace(path.to_path_buf()))
            }
        }
        Some(m) if writes_through(m) => Ok(Plan::Into),
        Some(m) => Err(FileError::refused(
            path,
            format!("is {}; give a file name", kind(m)),
        )),
    }
}

/// Writes `bytes` to `path` by the rule in this module's documentation, refusing to replace
/// any of `inputs`.
pub fn write_output(path: &Path, bytes: &[u8], inputs: &Inputs) -> Result<(), FileError> {
    match plan(path, inputs)? {
        Plan::Replace(target) => write_atomic(&target, bytes).map_err(|e| match e {
            // Name the path the user gave.
            FileError::Io { source, .. } => FileError::io(path)(source),
            other => other,
        }),
        Plan::Into => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(FileError::io(path))?;
            file.write_all(bytes)
                .and_then(|()| file.flush())
                .map_err(FileError::io(path))
        }
    }
}

/// Fifos and character devices are written straight into.
fn writes_through(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        t.is_fifo() || t.is_char_device()
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// Temporary files that exist right now (see [`remove_temporaries`]).
static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Deletes every temporary file an unfinished write has open. For a signal handler: after it,
/// the process should exit without writing more.
pub fn remove_temporaries() {
    let list = match TEMPORARIES.lock() {
        Ok(list) => list,
        Err(poisoned) => poisoned.into_inner(),
    };
    for path in list.iter() {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes a temporary file from the registry when dropped (and the file, unless renamed).
struct Temporary(PathBuf);

impl Temporary {
    fn new(path: PathBuf) -> Self {
        if let Ok(mut list) = TEMPORARIES.lock() {
            list.push(path.clone());
        }
        Self(path)
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Ok(mut list) = TEMPORARIES.lock() {
            list.retain(|p| p != &self.0);
        }
    }
}

/// Writes bytes to a temporary file next to `path`, syncs it, and renames it into place. The
/// caller has checked that `path` is absent or a regular file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let Some(file_name) = path.file_name() else {
        return Err(FileError::refused(path, "has no file name"));
    };
    let tmp_name = format!(".{}.tmp{}", file_name.to_string_lossy(), std::process::id());
    let tmp = Temporary::new(match dir {
        Some(d) => d.join(tmp_name),
        None => PathBuf::from(tmp_name),
    });
    let mut file = std::fs::File::create(&tmp.0).map_err(FileError::io(path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(FileError::io(path))?;
    drop(file);
    std::fs::rename(&tmp.0, path).map_err(FileError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_new_and_regular_files_atomically_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_output(&path, b"one", &Inputs::new()).unwrap();
        write_output(&path, b"two", &Inputs::new()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Other tests write in parallel: only this folder's entries must be gone.
        let registered = TEMPORARIES.lock().unwrap();
        assert!(!registered.iter().any(|p| p.starts_with(dir.path())));
    }

    #[test]
    fn refuses_inputs_directories_and_read_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.pth");
        std::fs::write(&model, b"weights").unwrap();
        let inputs = Inputs::new().protect(&model);
        let err = write_output(&model, b"x", &inputs).unwrap_err();
        assert!(err.to_string().contains("input"), "{err}");
        assert!(matches!(
            write_output(dir.path(), b"x", &Inputs::new()),
            Err(FileError::Refused { .. })
        ));
        // Inside a protected folder.
        let folder = dir.path().join("hf");
        std::fs::create_dir(&folder).unwrap();
        let inside = folder.join("new.safetensors");
        let err = write_output(&inside, b"x", &Inputs::new().protect(&folder)).unwrap_err();
        assert!(matches!(err, FileError::Refused { .. }), "{err}");
        assert_eq!(std::fs::read(&model).unwrap(), b"weights");
        let ro = dir.path().join("ro");
        std::fs::write(&ro, b"keep").unwrap();
        let mut perms = std::fs::metadata(&ro).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&ro, perms).unwrap();
        assert!(matches!(
            write_output(&ro, b"x", &Inputs::new()),
            Err(FileError::Refused { .. })
        ));
        assert_eq!(std::fs::read(&ro).unwrap(), b"keep");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_stays_a_link_and_a_device_stays_a_device() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_output(&link, b"new", &Inputs::new()).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // A symlink to the protected model is the model.
        let inputs = Inputs::new().protect(&target);
        assert!(write_output(&link, b"x", &inputs).is_err());
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("missing"), &dangling).unwrap();
        assert!(write_output(&dangling, b"x", &Inputs::new()).is_err());
        // /dev/null is written into, not replaced.
        write_output(Path::new("/dev/null"), b"gone", &Inputs::new()).unwrap();
        let meta = std::fs::metadata("/dev/null").unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(meta.file_type().is_char_device());
    }

    #[test]
    fn inputs_must_be_regular_and_within_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompt.txt");
        std::fs::write(&path, b"hello").unwrap();
        assert_eq!(read_input(&path, 5).unwrap(), b"hello");
        assert!(matches!(
            read_input(&path, 4),
            Err(FileError::TooLarge { limit: 4, .. })
        ));
        assert!(matches!(
            read_input(dir.path(), 100),
            Err(FileError::Refused { .. })
        ));
        #[cfg(unix)]
        assert!(matches!(
            read_input(Path::new("/dev/zero"), 100),
            Err(FileError::Refused { .. })
        ));
    }
}
