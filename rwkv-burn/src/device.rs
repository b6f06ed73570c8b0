//! Names for the devices a build can run on, so front ends can offer a `--device` choice.
//!
//! The core never picks a device by itself: callers parse the user's choice with
//! [`DeviceSpec::from_str`](std::str::FromStr) and build it with [`DeviceSpec::device`].

use burn::tensor::Device;
use std::fmt;
use std::str::FromStr;

/// A device the user can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// burn-flex: pure-Rust CPU backend.
    Flex,
    /// burn-ndarray: CPU backend (deprecated upstream, kept behind the `ndarray` feature).
    NdArray,
    /// burn-tch on the CPU: libtorch (deprecated upstream, kept behind the `tch` feature).
    LibTorch,
    /// burn-tch on the CUDA GPU with this ordinal (needs a CUDA build of libtorch and a GPU);
    /// written `libtorch-cuda` (GPU 0) or `libtorch-cuda:N`.
    LibTorchCuda(usize),
    /// burn-wgpu on the adapter wgpu prefers (a high-power GPU when there is one; Mesa's
    /// lavapipe on a machine without a GPU). WGSL shaders, or SPIR-V on Vulkan when the
    /// `vulkan` feature is on. `CUBECL_WGPU_DEFAULT_DEVICE` overrides the choice.
    Wgpu,
    /// burn-wgpu pinned to Vulkan, with CubeCL's SPIR-V compiler.
    Vulkan,
}

impl DeviceSpec {
    /// Every name this build understands, compiled in or not, in the order `--help` shows them.
    pub const ALL: [DeviceSpec; 6] = [
        DeviceSpec::Flex,
        DeviceSpec::NdArray,
        DeviceSpec::LibTorch,
        DeviceSpec::LibTorchCuda(0),
        DeviceSpec::Wgpu,
        DeviceSpec::Vulkan,
    ];

    /// The name users type.
    pub fn name(self) -> &'static str {
        match self {
            DeviceSpec::Flex => "flex",
            DeviceSpec::NdArray => "ndarray",
            DeviceSpec::LibTorch => "libtorch",
            DeviceSpec::LibTorchCuda(_) => "libtorch-cuda",
            DeviceSpec::Wgpu => "wgpu",
            DeviceSpec::Vulkan => "vulkan",
        }
    }

    /// Whether the device needs a GPU (compiled in or not, one may be absent at run time).
    /// wgpu does not: with no GPU it runs on a software Vulkan driver (Mesa's lavapipe, which
    /// `scripts/setup.sh --tests` installs).
    pub fn needs_gpu(self) -> bool {
        matches!(self, DeviceSpec::LibTorchCuda(_))
    }

    /// The cargo feature that compiles this device in.
    pub fn feature(self) -> &'static str {
        match self {
            DeviceSpec::Flex => "flex",
            DeviceSpec::NdArray => "ndarray",
            DeviceSpec::LibTorch | DeviceSpec::LibTorchCuda(_) => "tch",
            DeviceSpec::Wgpu => "wgpu",
            DeviceSpec::Vulkan => "vulkan",
        }
    }

    /// Whether this build has the backend compiled in.
    pub fn is_available(self) -> bool {
        match self {
            DeviceSpec::Flex => cfg!(feature = "flex"),
            DeviceSpec::NdArray => cfg!(feature = "ndarray"),
            DeviceSpec::LibTorch | DeviceSpec::LibTorchCuda(_) => cfg!(feature = "tch"),
            DeviceSpec::Wgpu => cfg!(feature = "wgpu"),
            DeviceSpec::Vulkan => cfg!(feature = "vulkan"),
        }
    }

    /// Whether the device can run on this machine now: compiled in and, for a GPU device, a
    /// GPU present (`libtorch-cuda`: libtorch sees a CUDA device; `wgpu`/`vulkan`: wgpu finds
    /// an adapter, which lavapipe is on a machine without a GPU).
    pub fn is_present(self) -> bool {
        self.is_available() && self.require_present().is_ok()
    }

    /// The devices compiled into this build that work on this machine: every CPU device and
    /// wgpu (on lavapipe when there is no GPU), plus `libtorch-cuda` when a CUDA GPU is
    /// present. Tests and benchmarks iterate them, so on a GPU machine they cover the GPU too.
    ///
    /// [`DEVICES_ENV`] (`RWKV_DEVICES=libtorch-cuda,vulkan`) narrows them to the devices it
    /// names, in the order of [`DeviceSpec::ALL`]: a GPU check spends its minutes on the GPU,
    /// and a dry run of it on one CPU device.
    ///
    /// # Panics
    /// When [`DEVICES_ENV`] names an unknown device or one that cannot run here. A check told
    /// to cover `libtorch-cuda` on a machine where libtorch finds no GPU must fail, not pass
    /// over zero devices.
    pub fn available() -> Vec<DeviceSpec> {
        let present: Vec<DeviceSpec> = Self::ALL.into_iter().filter(|d| d.is_present()).collect();
        narrow(&present, std::env::var(DEVICES_ENV).ok().as_deref())
            .unwrap_or_else(|e| panic!("{DEVICES_ENV}: {e}"))
    }

    /// Builds the Burn device.
    ///
    /// # Errors
    /// [`DeviceError::NotCompiled`] when the backend's cargo feature is off in this build;
    /// [`DeviceError::Absent`] when it is compiled in but this machine has nothing to run it
    /// on (no CUDA device for `libtorch-cuda`, no adapter for `wgpu`/`vulkan`). Without this
    /// check the first tensor op panicked inside CubeCL ("AdapterUnavailable", seen on an
    /// H200 whose Vulkan loader lacked glvnd, 2026-12-04).
    pub fn device(self) -> Result<Device, DeviceError> {
        self.require_present()?;
        match self {
            #[cfg(feature = "flex")]
            DeviceSpec::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            // burn-ndarray is deprecated upstream; the user asked to keep it.
            DeviceSpec::NdArray => Ok(Device::ndarray()),
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            // burn-tch is deprecated upstream; the user asked to keep it.
            DeviceSpec::LibTorch => Ok(Device::libtorch()),
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            DeviceSpec::LibTorchCuda(ordinal) => Ok(Device::libtorch_cuda(ordinal)),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "vulkan")]
            DeviceSpec::Vulkan => Ok(Device::vulkan(burn::tensor::DeviceKind::DefaultDevice)),
            #[allow(unreachable_patterns)]
            other => Err(DeviceError::NotCompiled {
                name: other.name(),
                feature: other.feature(),
            }),
        }
    }
}

impl DeviceSpec {
    /// [`DeviceError::Absent`] unless the machine has what this compiled-in device runs on.
    fn require_present(self) -> Result<(), DeviceError> {
        #[allow(unused_variables)] // in builds with neither libtorch nor wgpu
        let absent = |why: String| -> Result<(), DeviceError> {
            Err(DeviceError::Absent {
                name: self.to_string(),
                why,
            })
        };
        match self {
            #[cfg(feature = "tch")]
            DeviceSpec::LibTorchCuda(ordinal)
                if !tch::Cuda::is_available() || ordinal >= tch::Cuda::device_count() as usize =>
            {
                absent(format!(
                    "libtorch sees {} CUDA device(s); wanted ordinal {ordinal}",
                    tch::Cuda::device_count()
                ))
            }
            #[cfg(all(feature = "wgpu", not(target_family = "wasm")))]
            DeviceSpec::Wgpu if graphics_adapters().any == 0 => absent(
                "wgpu finds no adapter on any graphics API (no GPU driver, and no software \
                 Vulkan such as Mesa's lavapipe)"
                    .into(),
            ),
            #[cfg(all(feature = "vulkan", not(target_family = "wasm")))]
            DeviceSpec::Vulkan if graphics_adapters().vulkan == 0 => absent(
                "the Vulkan loader finds no adapter (is libvulkan1 installed, with the \
                 driver's ICD and, for NVIDIA, glvnd's libGLdispatch?)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// How many adapters wgpu finds: on any graphics API, and on Vulkan.
#[cfg(all(feature = "wgpu", not(target_family = "wasm")))]
#[derive(Clone, Copy)]
struct GraphicsAdapters {
    any: usize,
    #[cfg_attr(not(feature = "vulkan"), allow(dead_code))] // asked for `vulkan` only
    vulkan: usize,
}

/// Asked once per process, before any wgpu device of ours exists: CubeCL keeps its instances
/// alive and serialises their creation because the Vulkan loader crashes when instances come
/// and go on several threads at once, and this probe's instance is created and dropped here,
/// under the `OnceLock`, at the first `wgpu`/`vulkan` device a process builds.
#[cfg(all(feature = "wgpu", not(target_family = "wasm")))]
fn graphics_adapters() -> GraphicsAdapters {
    use cubecl::wgpu::wgpu;
    static FOUND: std::sync::OnceLock<GraphicsAdapters> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        let count = |backends: wgpu::Backends| {
            let backends = backends & wgpu::Instance::enabled_backend_features();
            if backends.is_empty() {
                return 0;
            }
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                backends,
                ..wgpu::InstanceDescriptor::new_without_display_handle()
            });
            ready(instance.enumerate_adapters(backends)).len()
        };
        GraphicsAdapters {
            any: count(wgpu::Backends::all()),
            vulkan: count(wgpu::Backends::VULKAN),
        }
    })
}

/// The value of a future that native wgpu completes at once (adapter enumeration asks the
/// driver synchronously), polled to its end with a waker that does nothing.
#[cfg(all(feature = "wgpu", not(target_family = "wasm")))]
fn ready<T>(future: impl std::future::Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::yield_now();
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::LibTorchCuda(ordinal) if *ordinal > 0 => {
                write!(f, "{}:{ordinal}", self.name())
            }
            _ => f.write_str(self.name()),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || DeviceError::Unknown(s.to_string());
        let (name, ordinal) = match s.trim().split_once(':') {
            Some((name, ordinal)) => (name, Some(ordinal.parse::<usize>().map_err(|_| unknown())?)),
            None => (s.trim(), None),
        };
        let spec = Self::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(name))
            .ok_or_else(unknown)?;
        match (spec, ordinal) {
            (_, None) => Ok(spec),
            (DeviceSpec::LibTorchCuda(_), Some(ordinal)) => Ok(DeviceSpec::LibTorchCuda(ordinal)),
            // Only CUDA devices are numbered.
            _ => Err(unknown()),
        }
    }
}

/// The environment variable that narrows [`DeviceSpec::available`] to a comma-separated list
/// of device names.
pub const DEVICES_ENV: &str = "RWKV_DEVICES";

/// `present` narrowed to the comma-separated device names of `wanted` (all of it when `wanted`
/// is unset or blank), or why `wanted` cannot be followed.
fn narrow(present: &[DeviceSpec], wanted: Option<&str>) -> Result<Vec<DeviceSpec>, String> {
    let Some(wanted) = wanted.filter(|v| !v.trim().is_empty()) else {
        return Ok(present.to_vec());
    };
    let wanted = wanted
        .split(',')
        .map(str::parse::<DeviceSpec>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if let Some(absent) = wanted.iter().find(|d| !present.contains(d)) {
        return Err(format!(
            "{absent} cannot run here (not compiled in, or no GPU)"
        ));
    }
    Ok(present
        .iter()
        .copied()
        .filter(|d| wanted.contains(d))
        .collect())
}

/// The environment variable that lowers [`max_buffer_bytes`] below what the device states:
/// bytes, a positive integer (other values are ignored). For trying how a model fails on a
/// device with smaller buffers, and for testing that failure on any device.
pub const MAX_BUFFER_ENV: &str = "RWKV_MAX_BUFFER_BYTES";

/// The largest tensor, in bytes, that `device` can hold in one buffer, or `None` where the
/// backend states no limit (the CPU backends, libtorch). CubeCL devices (wgpu, Vulkan, WebGPU)
/// allocate each tensor as one buffer of at most their `max_page_size`: WebGPU's default and
/// lavapipe's storage-buffer limit are 128 MiB, less than a World model's f32 embedding
/// (65536 × 768 × 4 = 192 MiB). A larger tensor fails only when its data is first read back,
/// after the whole forward pass was queued, so loading asks first. [`MAX_BUFFER_ENV`] lowers
/// the limit.
pub fn max_buffer_bytes(device: &Device) -> Option<u64> {
    let stated = stated_buffer_bytes(device);
    let lowered = std::env::var(MAX_BUFFER_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&v| v > 0);
    match (stated, lowered) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What the device itself states (see [`max_buffer_bytes`]).
fn stated_buffer_bytes(device: &Device) -> Option<u64> {
    #[cfg(feature = "wgpu")]
    {
        // An autodiff device allocates on the device it wraps.
        let plain = device.clone().inner();
        if let burn_dispatch::DispatchDevice::Cube(cube) = plain.as_dispatch() {
            return Some(cube.client().properties().memory.max_page_size);
        }
    }
    #[cfg(not(feature = "wgpu"))]
    let _ = device;
    None
}

/// Whether `device` runs CubeCL kernels (wgpu, Vulkan, WebGPU), autodiff wrappers included.
pub fn is_cubecl(device: &Device) -> bool {
    #[cfg(feature = "wgpu")]
    {
        let plain = device.clone().inner();
        matches!(plain.as_dispatch(), burn_dispatch::DispatchDevice::Cube(_))
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = device;
        false
    }
}

/// Why a device name could not be turned into a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// Not a device name at all.
    #[error(
        "unknown device '{0}' (known: flex, ndarray, libtorch, libtorch-cuda[:N], wgpu, vulkan)"
    )]
    Unknown(String),
    /// A known device whose backend is not compiled into this build.
    #[error(
        "device '{name}' is not compiled into this build (enable the cargo feature '{feature}')"
    )]
    NotCompiled {
        /// The device name.
        name: &'static str,
        /// The feature that would enable it.
        feature: &'static str,
    },
    /// A device compiled into this build that this machine cannot run.
    #[error("device '{name}' cannot run on this machine: {why}")]
    Absent {
        /// The device as the user named it.
        name: String,
        /// What is missing.
        why: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_this_machine_lacks_are_refused_by_name() {
        // No machine we test on has an eighth CUDA GPU.
        match DeviceSpec::LibTorchCuda(7).device() {
            Err(DeviceError::Absent { name, why }) => {
                assert_eq!(name, "libtorch-cuda:7");
                assert!(why.contains("CUDA device(s)"), "{why}");
            }
            Err(e @ DeviceError::NotCompiled { .. }) if cfg!(feature = "tch") => {
                panic!("libtorch is compiled in, yet: {e}")
            }
            Err(DeviceError::NotCompiled { .. }) => {}
            other => panic!("libtorch-cuda:7 gave {:?}", other.map(|_| ())),
        }
        // Every device `available` lists builds (wgpu here on lavapipe: adapters are found).
        for spec in DeviceSpec::available() {
            assert!(spec.device().is_ok(), "{spec}");
        }
    }

    #[test]
    fn parses_names_case_insensitively() {
        assert_eq!("FLEX".parse::<DeviceSpec>(), Ok(DeviceSpec::Flex));
        assert_eq!(" ndarray ".parse::<DeviceSpec>(), Ok(DeviceSpec::NdArray));
        assert!(matches!(
            "cuda9".parse::<DeviceSpec>(),
            Err(DeviceError::Unknown(_))
        ));
    }

    #[test]
    fn cuda_devices_take_an_ordinal() {
        let cuda = |s: &str| s.parse::<DeviceSpec>();
        assert_eq!(cuda("libtorch-cuda"), Ok(DeviceSpec::LibTorchCuda(0)));
        assert_eq!(cuda("libtorch-cuda:3"), Ok(DeviceSpec::LibTorchCuda(3)));
        assert_eq!(DeviceSpec::LibTorchCuda(3).to_string(), "libtorch-cuda:3");
        assert_eq!(DeviceSpec::LibTorchCuda(0).to_string(), "libtorch-cuda");
        for bad in [
            "libtorch-cuda:",
            "libtorch-cuda:x",
            "flex:1",
            "libtorch-cuda:-1",
        ] {
            assert!(matches!(cuda(bad), Err(DeviceError::Unknown(_))), "{bad}");
        }
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn cubecl_devices_state_a_buffer_limit_and_cpu_devices_none() {
        let wgpu = DeviceSpec::Wgpu.device().unwrap();
        let limit = max_buffer_bytes(&wgpu).expect("wgpu states a limit");
        // WebGPU guarantees at least 128 MiB for a storage buffer binding.
        assert!(limit >= 128 << 20, "{limit}");
        assert_eq!(max_buffer_bytes(&wgpu.autodiff()), Some(limit));
    }

    #[cfg(feature = "flex")]
    #[test]
    fn cpu_devices_state_no_buffer_limit() {
        if std::env::var_os(MAX_BUFFER_ENV).is_none() {
            assert_eq!(max_buffer_bytes(&DeviceSpec::Flex.device().unwrap()), None);
        }
    }

    #[test]
    fn the_devices_variable_narrows_the_present_devices_and_refuses_absent_ones() {
        use DeviceSpec::*;
        let present = [Flex, LibTorch, Wgpu];
        assert_eq!(narrow(&present, None), Ok(present.to_vec()));
        assert_eq!(narrow(&present, Some(" ")), Ok(present.to_vec()));
        // The order stays that of the present devices.
        assert_eq!(narrow(&present, Some("wgpu, flex")), Ok(vec![Flex, Wgpu]));
        let absent = narrow(&present, Some("flex,libtorch-cuda")).unwrap_err();
        assert!(absent.contains("libtorch-cuda cannot run here"), "{absent}");
        let unknown = narrow(&present, Some("flex,cuda")).unwrap_err();
        assert!(unknown.contains("unknown device 'cuda'"), "{unknown}");
    }

    #[test]
    fn availability_matches_features() {
        for spec in DeviceSpec::ALL {
            match spec.device() {
                Ok(_) => assert!(spec.is_present(), "{spec}"),
                Err(DeviceError::NotCompiled { .. }) => assert!(!spec.is_available(), "{spec}"),
                Err(DeviceError::Absent { .. }) => {
                    assert!(spec.is_available() && !spec.is_present(), "{spec}")
                }
                Err(e) => panic!("{spec}: {e}"),
            }
        }
    }
}
