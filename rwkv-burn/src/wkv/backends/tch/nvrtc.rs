//! Compiling `wkv.cu` at run time with NVRTC, loaded dynamically.
//!
//! No CUDA toolkit is needed to build: libnvrtc is opened when a CUDA tensor first reaches a
//! WKV operator. PyTorch's CUDA wheels ship it outside the default library path (in
//! `site-packages/nvidia/cuda_nvrtc/lib`, or `nvidia/cu13/lib` for CUDA 13 wheels), so besides
//! the usual search it is looked for beside the libtorch this process loaded.

use libloading::Library;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The kernels' source; every kernel is `extern "C"` so its symbol is its name.
pub const SOURCE: &str = include_str!("wkv.cu");

/// Names of the kernels in [`SOURCE`].
pub const KERNELS: [&str; 6] = [
    "wkv4_forward",
    "wkv4_backward",
    "wkv5_forward",
    "wkv5_backward",
    "wkv7_forward",
    "wkv7_backward",
];

/// Why the kernels could not be compiled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NvrtcError {
    /// No libnvrtc was found.
    #[error(
        "libnvrtc not found (tried {tried}); set RWKV_NVRTC to its path or add its directory to LD_LIBRARY_PATH"
    )]
    NotFound {
        /// The names and paths tried.
        tried: String,
    },
    /// An NVRTC call failed.
    #[error("NVRTC {call} failed: {message}")]
    Call {
        /// The function.
        call: &'static str,
        /// NVRTC's description of the error.
        message: String,
    },
    /// The source did not compile.
    #[error("NVRTC {version} could not compile the WKV kernels for {arch}:\n{log}")]
    Compile {
        /// NVRTC's version, `major.minor`.
        version: String,
        /// The target architecture.
        arch: String,
        /// The compiler's log.
        log: String,
    },
}

type Program = *mut c_void;
type Status = c_int;

/// The NVRTC entry points used here (their C signatures from `nvrtc.h`).
struct Api {
    _lib: Library,
    /// NVRTC's builtins library, loaded beforehand from libnvrtc's folder ([`builtins_beside`]).
    _builtins: Vec<Library>,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status,
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    log: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    cubin_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    cubin: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    destroy: unsafe extern "C" fn(*mut Program) -> Status,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
}

impl Api {
    fn load(lib: Library, builtins: Vec<Library>) -> Result<Self, libloading::Error> {
        // SAFETY: the symbols are NVRTC's public C API with these signatures; the function
        // pointers stay valid while `_lib` is alive, which is as long as `self`.
        unsafe {
            Ok(Self {
                version: *lib.get(b"nvrtcVersion\0")?,
                create: *lib.get(b"nvrtcCreateProgram\0")?,
                compile: *lib.get(b"nvrtcCompileProgram\0")?,
                log_size: *lib.get(b"nvrtcGetProgramLogSize\0")?,
                log: *lib.get(b"nvrtcGetProgramLog\0")?,
                cubin_size: *lib.get(b"nvrtcGetCUBINSize\0")?,
                cubin: *lib.get(b"nvrtcGetCUBIN\0")?,
                destroy: *lib.get(b"nvrtcDestroyProgram\0")?,
                error_string: *lib.get(b"nvrtcGetErrorString\0")?,
                _lib: lib,
                _builtins: builtins,
            })
        }
    }

    fn check(&self, call: &'static str, status: Status) -> Result<(), NvrtcError> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString returns a static C string for any status.
        let message = unsafe { CStr::from_ptr((self.error_string)(status)) }
            .to_string_lossy()
            .into_owned();
        Err(NvrtcError::Call { call, message })
    }
}

/// The process's NVRTC, found once.
fn api() -> Result<&'static Api, NvrtcError> {
    static API: OnceLock<Result<Api, NvrtcError>> = OnceLock::new();
    API.get_or_init(|| {
        let candidates = candidates();
        for candidate in &candidates {
            // SAFETY: loading NVRTC runs no initialisers with preconditions.
            if let Ok(lib) = unsafe { Library::new(candidate) }
                && let Ok(api) = Api::load(lib, builtins_beside(candidate))
            {
                return Ok(api);
            }
        }
        let tried = candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Err(NvrtcError::NotFound { tried })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Where libnvrtc may be, most specific first.
fn candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("RWKV_NVRTC")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    out.extend(
        ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
            .into_iter()
            .map(PathBuf::from),
    );
    for dir in libtorch_dirs() {
        for sub in [".", "../../nvidia/cuda_nvrtc/lib", "../../nvidia/cu13/lib"] {
            out.extend(nvrtc_in(&dir.join(sub)));
        }
    }
    out
}

/// The libnvrtc files in `dir` (libtorch's own archives name them with a hash, e.g.
/// `libnvrtc-1a2b3c4d.so.12`), without the builtins library it loads itself.
fn nvrtc_in(dir: &Path) -> Vec<PathBuf> {
    libraries_in(dir, |n| {
        n.starts_with("libnvrtc") && !n.contains("builtins")
    })
}

/// NVRTC's builtins library in the folder of `nvrtc` (a path; nothing for a bare name, which
/// the library path resolves, builtins and all), loaded.
///
/// NVRTC opens `libnvrtc-builtins.so.<version>` by name when it compiles. CUDA 13 wheels keep
/// both in `nvidia/cu13/lib`, off the library path, and their libnvrtc has no RPATH to look
/// there: against the PyTorch 2.11 (CUDA 13) wheel every compilation failed with "failed to
/// open libnvrtc-builtins.so.13.0" (`RWKV_TORCH=2.11.0`, `cargo test ... nvrtc`). A library
/// already loaded under that name satisfies the lookup, so it is loaded first, by path.
fn builtins_beside(nvrtc: &Path) -> Vec<Library> {
    let Some(dir) = nvrtc.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Vec::new();
    };
    libraries_in(dir, |n| n.starts_with("libnvrtc-builtins"))
        .into_iter()
        // SAFETY: the builtins library has no initialisers with preconditions.
        .filter_map(|path| unsafe { Library::new(path) }.ok())
        .collect()
}

/// The shared libraries (`.so` in the name, not the `.alt.` variants) in `dir` whose file name
/// passes `keep`, sorted.
fn libraries_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".so") && !n.contains(".alt.") && keep(n))
        })
        .collect();
    found.sort();
    found
}

/// The directories of the libtorch libraries mapped into this process.
fn libtorch_dirs() -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(Path::new)
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n == "libtorch_cpu.so" || n == "libc10.so")
        })
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    dirs.dedup();
    dirs
}

/// NVRTC's version, `(major, minor)`.
pub fn version() -> Result<(i32, i32), NvrtcError> {
    let api = api()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for writes.
    unsafe { (api.version)(&mut major, &mut minor) };
    Ok((major, minor))
}

/// Compiles [`SOURCE`] for `head_size` (the RWKV-5/6/7 head size N; the RWKV-4 kernels do not
/// depend on it) into a CUBIN for `arch` (`sm_80`, `sm_90`, ...).
///
/// # Errors
/// [`NvrtcError`] when NVRTC is missing, rejects the architecture, or the source fails.
pub fn compile(head_size: usize, arch: &str) -> Result<Vec<u8>, NvrtcError> {
    compile_source(SOURCE, head_size, arch)
}

fn compile_source(source: &str, head_size: usize, arch: &str) -> Result<Vec<u8>, NvrtcError> {
    let api = api()?;
    let source = CString::new(source).expect("the kernel source has no NUL");
    let name = c"wkv.cu";
    let options: Vec<CString> = [
        format!("--gpu-architecture={arch}"),
        format!("-DHEAD_SIZE={head_size}"),
        "--std=c++17".to_string(),
    ]
    .into_iter()
    .map(|o| CString::new(o).expect("options have no NUL"))
    .collect();
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();

    let mut program: Program = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the program is destroyed below.
    unsafe {
        api.check(
            "nvrtcCreateProgram",
            (api.create)(
                &mut program,
                source.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ),
        )?;
    }
    // SAFETY: `program` is a live program; the buffers are sized by NVRTC's own answers.
    let result = unsafe {
        let compiled = (api.compile)(program, option_ptrs.len() as c_int, option_ptrs.as_ptr());
        if compiled != 0 {
            let mut size = 0usize;
            (api.log_size)(program, &mut size);
            let mut log = vec![0u8; size.max(1)];
            (api.log)(program, log.as_mut_ptr().cast());
            let log = String::from_utf8_lossy(&log)
                .trim_end_matches('\0')
                .to_string();
            let (major, minor) = version()?;
            Err(NvrtcError::Compile {
                version: format!("{major}.{minor}"),
                arch: arch.to_string(),
                log,
            })
        } else {
            let mut size = 0usize;
            api.check("nvrtcGetCUBINSize", (api.cubin_size)(program, &mut size))
                .and_then(|()| {
                    let mut cubin = vec![0u8; size];
                    api.check(
                        "nvrtcGetCUBIN",
                        (api.cubin)(program, cubin.as_mut_ptr().cast()),
                    )
                    .map(|()| cubin)
                })
        }
    };
    // SAFETY: `program` came from nvrtcCreateProgram and is not used again.
    unsafe { (api.destroy)(&mut program) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs no GPU, only libnvrtc (the PyTorch CUDA wheel that `scripts/setup-torch.sh`
    /// installs brings one); skipped, saying why, when there is none.
    #[test]
    fn the_kernels_compile_with_nvrtc() {
        let version = match version() {
            Ok(v) => v,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        eprintln!("NVRTC {}.{}", version.0, version.1);
        // Ampere and Hopper; head sizes of the tests and of the released models.
        for arch in ["sm_80", "sm_90"] {
            for head_size in [8, 64] {
                let cubin = compile(head_size, arch).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    &cubin[..4],
                    b"\x7fELF",
                    "{arch}, N = {head_size}: not a CUBIN"
                );
                for kernel in KERNELS {
                    assert!(
                        cubin.windows(kernel.len()).any(|w| w == kernel.as_bytes()),
                        "{arch}, N = {head_size}: no {kernel} in the CUBIN"
                    );
                }
            }
        }
    }

    #[test]
    fn a_broken_source_reports_the_compiler_log() {
        if version().is_err() {
            eprintln!("skipped: no libnvrtc");
            return;
        }
        let broken = SOURCE.replace("float out = 0.0f;", "float out = undeclared;");
        match compile_source(&broken, 64, "sm_80") {
            Err(NvrtcError::Compile { log, .. }) => assert!(log.contains("undeclared"), "{log}"),
            other => panic!("a broken source compiled: {other:?}"),
        }
    }
}
