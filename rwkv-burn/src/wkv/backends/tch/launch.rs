//! What the WKV operators need from something that runs the kernels of `wkv.cu` on raw
//! pointers: the CUDA driver (`cuda.rs`), or in tests a CPU emulation (`emulator.rs`).

use super::nvrtc::NvrtcError;
use std::ffi::c_void;

/// Why the kernels cannot run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LaunchError {
    /// libcuda could not be loaded.
    #[error("the CUDA driver (libcuda.so.1) could not be loaded: {0}")]
    Driver(String),
    /// A driver call failed.
    #[error("CUDA {call} failed: {message}")]
    Call {
        /// The function.
        call: &'static str,
        /// The driver's description of the error.
        message: String,
    },
    /// NVRTC failed.
    #[error(transparent)]
    Nvrtc(#[from] NvrtcError),
}

/// A kernel argument: a device pointer or a 32-bit integer, as the kernels declare them.
#[derive(Clone, Copy)]
pub(super) enum Arg {
    /// A `float*` (libtorch's `data_ptr`).
    Ptr(u64),
    /// An `int`.
    Int(i32),
}

/// Runs the kernels of `wkv.cu`.
pub(super) trait Launcher: Sync {
    /// Whether a kernel needing `bytes` of dynamic shared memory can run.
    fn fits_shared(&self, bytes: usize) -> bool;

    /// Runs `kernel` on `grid` blocks of `block` threads with `shared_bytes` of dynamic
    /// shared memory.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters, and every pointer must be a live allocation
    /// where the kernel runs, large enough for what the kernel reads and writes, kept alive
    /// (or freed only through libtorch) until the launch has been enqueued.
    unsafe fn launch(
        &self,
        kernel: &'static str,
        grid: u32,
        block: u32,
        shared_bytes: usize,
        args: &[Arg],
    ) -> Result<(), LaunchError>;
}

/// The arguments laid out as `cuLaunchKernel` takes them: one 8-byte slot per argument and
/// an array of pointers to the slots. An `int` parameter reads the low four bytes of its
/// slot, which hold it on little-endian targets (x86-64, aarch64).
pub(super) struct Params {
    _values: Box<[u64]>,
    pointers: Vec<*mut c_void>,
}

impl Params {
    pub(super) fn new(args: &[Arg]) -> Self {
        let mut values: Box<[u64]> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => p,
                Arg::Int(i) => i as u32 as u64,
            })
            .collect();
        // The boxed slice never moves, so the pointers stay valid as long as `self`.
        let pointers = values
            .iter_mut()
            .map(|v| (v as *mut u64).cast::<c_void>())
            .collect();
        Self {
            _values: values,
            pointers,
        }
    }

    /// The `void** kernelParams` of `cuLaunchKernel`.
    pub(super) fn as_mut_ptr(&mut self) -> *mut *mut c_void {
        self.pointers.as_mut_ptr()
    }
}
