//! Tests only: the kernels of `wkv.cu` compiled for the CPU together with `emulator.cpp` (a
//! CPU emulation of the CUDA features they use), so that tests on machines without a GPU run
//! the kernels' own code, through the same argument marshalling as the CUDA path, on
//! libtorch's CPU tensors. Only the driver calls of `cuda.rs` are left out.

use super::launch::LaunchError;
use super::launch::{Arg, Launcher, Params};
use libloading::Library;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

type LaunchFn =
    unsafe extern "C" fn(*const c_char, c_uint, c_uint, usize, *mut *mut c_void) -> c_int;

/// The kernels compiled for the CPU for one head size.
pub(super) struct Emulator {
    _dir: tempfile::TempDir,
    _lib: Library,
    launch: LaunchFn,
}

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with libtorch's CPU tensors on this thread going through the emulated kernels
/// instead of the reference body.
pub(crate) fn with_emulation<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(false));
        }
    }
    ACTIVE.with(|a| a.set(true));
    let _reset = Reset;
    f()
}

/// The emulator for `head_size`, when this thread asked for emulation.
pub(super) fn active(head_size: usize) -> Option<&'static Emulator> {
    if !ACTIVE.with(Cell::get) {
        return None;
    }
    static CACHE: OnceLock<Mutex<HashMap<usize, &'static Emulator>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    Some(
        cache
            .entry(head_size)
            .or_insert_with(|| Box::leak(Box::new(build(head_size)))),
    )
}

fn build(head_size: usize) -> Emulator {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/wkv/backends/tch/emulator.cpp");
    let dir = tempfile::tempdir().unwrap();
    let lib_path = dir.path().join(format!("libwkv_emulator_{head_size}.so"));
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let status = Command::new(&compiler)
        .args(["-std=c++17", "-O2", "-shared", "-fPIC", "-pthread"])
        .arg(format!("-DHEAD_SIZE={head_size}"))
        .arg(&source)
        .arg("-o")
        .arg(&lib_path)
        .status()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(
        status.success(),
        "{compiler} could not build the kernel emulator"
    );
    // SAFETY: the library was just built from `emulator.cpp`, whose entry point has this
    // signature.
    unsafe {
        let lib = Library::new(&lib_path).unwrap();
        let launch: LaunchFn = *lib.get(b"emulator_launch\0").unwrap();
        Emulator {
            _dir: dir,
            _lib: lib,
            launch,
        }
    }
}

impl Launcher for Emulator {
    fn fits_shared(&self, _bytes: usize) -> bool {
        true
    }

    unsafe fn launch(
        &self,
        kernel: &'static str,
        grid: u32,
        block: u32,
        shared_bytes: usize,
        args: &[Arg],
    ) -> Result<(), LaunchError> {
        // The emulation keeps one block's state in globals: one launch at a time.
        static RUNNING: Mutex<()> = Mutex::new(());
        let _running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        let name = CString::new(kernel).unwrap();
        let mut params = Params::new(args);
        // SAFETY: the caller guarantees the arguments (host pointers here).
        let status = unsafe {
            (self.launch)(
                name.as_ptr(),
                grid,
                block,
                shared_bytes,
                params.as_mut_ptr(),
            )
        };
        assert_eq!(status, 0, "the emulator has no kernel {kernel}");
        Ok(())
    }
}
