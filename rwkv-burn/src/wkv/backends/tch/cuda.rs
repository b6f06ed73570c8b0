//! The CUDA driver API, loaded dynamically: one module of the WKV kernels per (GPU, head
//! size), and launches on the stream libtorch computes on.
//!
//! Ordering with libtorch: tch exposes no stream API, so libtorch runs every operation of
//! this process on each device's default (legacy) stream, and the kernels are launched on
//! that stream too. They therefore start after the operations that produced their inputs and
//! finish before any later operation, including one that reuses a freed input's memory from
//! libtorch's caching allocator. The driver API works in the device's primary context, the
//! one libtorch's runtime API uses.

use super::launch::{Arg, LaunchError, Launcher, Params};
use super::nvrtc;
use libloading::Library;
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::{Mutex, OnceLock};

type Context = *mut c_void;
type Module = *mut c_void;
type Function = *mut c_void;
type Status = c_int;

const COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const COMPUTE_CAPABILITY_MINOR: c_int = 76;
const MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: c_int = 97;
const FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;
/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SHARED_BYTES: usize = 48 * 1024;

/// The driver entry points used here (their C signatures from `cuda.h`).
struct Api {
    _lib: Library,
    init: unsafe extern "C" fn(c_uint) -> Status,
    device_get: unsafe extern "C" fn(*mut c_int, c_int) -> Status,
    device_attribute: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> Status,
    primary_ctx_retain: unsafe extern "C" fn(*mut Context, c_int) -> Status,
    ctx_set_current: unsafe extern "C" fn(Context) -> Status,
    module_load_data: unsafe extern "C" fn(*mut Module, *const c_void) -> Status,
    module_get_function: unsafe extern "C" fn(*mut Function, Module, *const c_char) -> Status,
    func_set_attribute: unsafe extern "C" fn(Function, c_int, c_int) -> Status,
    #[allow(clippy::type_complexity)]
    launch_kernel: unsafe extern "C" fn(
        Function,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> Status,
    error_string: unsafe extern "C" fn(Status, *mut *const c_char) -> Status,
}

impl Api {
    fn load() -> Result<Self, LaunchError> {
        let driver = |e: libloading::Error| LaunchError::Driver(e.to_string());
        // SAFETY: loading libcuda runs no initialisers with preconditions; the symbols are
        // the driver's public C API with these signatures and stay valid while `_lib` lives.
        unsafe {
            let lib = Library::new("libcuda.so.1")
                .or_else(|_| Library::new("libcuda.so"))
                .map_err(driver)?;
            Ok(Self {
                init: *lib.get(b"cuInit\0").map_err(driver)?,
                device_get: *lib.get(b"cuDeviceGet\0").map_err(driver)?,
                device_attribute: *lib.get(b"cuDeviceGetAttribute\0").map_err(driver)?,
                primary_ctx_retain: *lib.get(b"cuDevicePrimaryCtxRetain\0").map_err(driver)?,
                ctx_set_current: *lib.get(b"cuCtxSetCurrent\0").map_err(driver)?,
                module_load_data: *lib.get(b"cuModuleLoadData\0").map_err(driver)?,
                module_get_function: *lib.get(b"cuModuleGetFunction\0").map_err(driver)?,
                func_set_attribute: *lib.get(b"cuFuncSetAttribute\0").map_err(driver)?,
                launch_kernel: *lib.get(b"cuLaunchKernel\0").map_err(driver)?,
                error_string: *lib.get(b"cuGetErrorString\0").map_err(driver)?,
                _lib: lib,
            })
        }
    }

    fn check(&self, call: &'static str, status: Status) -> Result<(), LaunchError> {
        if status == 0 {
            return Ok(());
        }
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a pointer to a static C string, or leaves null.
        unsafe { (self.error_string)(status, &mut text) };
        let message = if text.is_null() {
            format!("error {status}")
        } else {
            // SAFETY: non-null, so a static NUL-terminated string from the driver.
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        };
        Err(LaunchError::Call { call, message })
    }
}

fn api() -> Result<&'static Api, LaunchError> {
    static API: OnceLock<Result<Api, LaunchError>> = OnceLock::new();
    API.get_or_init(|| {
        let api = Api::load()?;
        // SAFETY: cuInit may be called any number of times; libtorch has usually called it.
        api.check("cuInit", unsafe { (api.init)(0) })?;
        Ok(api)
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The compiled kernels on one GPU, for one head size.
pub(super) struct Kernels {
    context: Context,
    functions: HashMap<&'static str, Function>,
    max_shared_bytes: usize,
}

// SAFETY: contexts and function handles of the driver API may be used from any thread (each
// launch first makes the context current on the calling thread).
unsafe impl Send for Kernels {}
unsafe impl Sync for Kernels {}

/// The kernels for the GPU with this CUDA ordinal and RWKV-5/6/7 head size `head_size`
/// (RWKV-4 passes any), compiled on first use and kept for the life of the process (like
/// libtorch's own kernels).
pub(super) fn kernels(ordinal: usize, head_size: usize) -> Result<&'static Kernels, LaunchError> {
    type Cache = Mutex<HashMap<(usize, usize), Result<&'static Kernels, LaunchError>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry((ordinal, head_size))
        .or_insert_with(|| load(ordinal, head_size).map(|k| &*Box::leak(Box::new(k))))
        .clone()
}

fn load(ordinal: usize, head_size: usize) -> Result<Kernels, LaunchError> {
    let api = api()?;
    let attribute = |device: c_int, attribute: c_int| -> Result<i32, LaunchError> {
        let mut value = 0;
        // SAFETY: `value` is valid for writes.
        api.check("cuDeviceGetAttribute", unsafe {
            (api.device_attribute)(&mut value, attribute, device)
        })?;
        Ok(value)
    };
    let mut device = 0;
    let mut context: Context = std::ptr::null_mut();
    let mut module: Module = std::ptr::null_mut();
    // SAFETY: out-pointers are valid; the ordinal is checked by the driver.
    unsafe {
        api.check(
            "cuDeviceGet",
            (api.device_get)(&mut device, ordinal as c_int),
        )?;
    }
    let arch = format!(
        "sm_{}{}",
        attribute(device, COMPUTE_CAPABILITY_MAJOR)?,
        attribute(device, COMPUTE_CAPABILITY_MINOR)?
    );
    let max_shared_bytes = attribute(device, MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize;
    let cubin = nvrtc::compile(head_size, &arch)?;
    // SAFETY: the CUBIN buffer outlives the call (the driver copies it); out-pointers valid.
    unsafe {
        api.check(
            "cuDevicePrimaryCtxRetain",
            (api.primary_ctx_retain)(&mut context, device),
        )?;
        api.check("cuCtxSetCurrent", (api.ctx_set_current)(context))?;
        api.check(
            "cuModuleLoadData",
            (api.module_load_data)(&mut module, cubin.as_ptr().cast()),
        )?;
    }
    let mut functions = HashMap::new();
    for name in nvrtc::KERNELS {
        let c_name = CString::new(name).expect("kernel names have no NUL");
        let mut function: Function = std::ptr::null_mut();
        // SAFETY: `module` is loaded; out-pointer valid.
        api.check("cuModuleGetFunction", unsafe {
            (api.module_get_function)(&mut function, module, c_name.as_ptr())
        })?;
        functions.insert(name, function);
    }
    Ok(Kernels {
        context,
        functions,
        max_shared_bytes,
    })
}

impl Launcher for Kernels {
    fn fits_shared(&self, bytes: usize) -> bool {
        bytes <= self.max_shared_bytes.max(DEFAULT_SHARED_BYTES)
    }

    unsafe fn launch(
        &self,
        kernel: &'static str,
        grid: u32,
        block: u32,
        shared_bytes: usize,
        args: &[Arg],
    ) -> Result<(), LaunchError> {
        let api = api()?;
        let function = self.functions[kernel];
        let mut params = Params::new(args);
        // SAFETY: the caller guarantees the arguments.
        unsafe {
            api.check("cuCtxSetCurrent", (api.ctx_set_current)(self.context))?;
            if shared_bytes > DEFAULT_SHARED_BYTES {
                api.check(
                    "cuFuncSetAttribute",
                    (api.func_set_attribute)(
                        function,
                        FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        shared_bytes as c_int,
                    ),
                )?;
            }
            api.check(
                "cuLaunchKernel",
                (api.launch_kernel)(
                    function,
                    grid,
                    1,
                    1,
                    block,
                    1,
                    1,
                    shared_bytes as c_uint,
                    // The legacy default stream: libtorch's stream (see the module docs).
                    std::ptr::null_mut(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                ),
            )
        }
    }
}
