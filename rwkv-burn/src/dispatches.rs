//! Counting the GPU dispatches (kernel launches) a piece of work issues on a CubeCL device
//! (wgpu, Vulkan, WebGPU), through CubeCL's launch observer. For small models a GPU decode
//! step costs launches and read-backs more than arithmetic (the embedded 4 x 128 model
//! decodes at about a token a second on SwiftShader), so `rwkv bench` and the browser page
//! report the count per decode step.

use burn::tensor::Device;
use serde::Serialize;
use std::collections::BTreeMap;

/// Set (to anything) to print every counted launch to stderr, in order (`launch NAME`): the
/// order shows which model code a run of unfused kernels comes from, e.g.
/// `RWKV_TRACE_LAUNCHES=1 rwkv bench --device wgpu --decode 2 ...`.
pub const TRACE_ENV: &str = "RWKV_TRACE_LAUNCHES";

/// Kernel launches, in all and by kernel (CubeCL's short kernel names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Dispatches {
    /// Every launch.
    pub total: usize,
    /// Launches per kernel name.
    pub by_kernel: BTreeMap<String, usize>,
}

/// Runs `f` and counts the kernel launches issued while it runs, where `device` is a CubeCL
/// device (`None` elsewhere: CPU backends and libtorch launch no CubeCL kernels).
///
/// Launches are issued when queued work is flushed, so `f` should end with a read-back (as a
/// decode step does) and start after one. The observer is process-wide: launches of other
/// threads in the meantime are counted too.
pub fn count<T>(device: &Device, f: impl FnOnce() -> T) -> (T, Option<Dispatches>) {
    let counting = Counting::start(device);
    let out = f();
    (out, counting.map(Counting::finish))
}

/// A count in progress ([`count`] for work that is not one closure, such as an asynchronous
/// read-back in the browser): launches are counted from [`Counting::start`] until
/// [`Counting::finish`].
pub struct Counting {
    #[cfg(feature = "wgpu")]
    counter: std::sync::Arc<cube::Counter>,
    #[cfg(feature = "wgpu")]
    _watching: cubecl::logging::LaunchObservation,
}

impl Counting {
    /// Starts counting, where `device` is a CubeCL device.
    pub fn start(device: &Device) -> Option<Counting> {
        #[cfg(feature = "wgpu")]
        if crate::device::is_cubecl(device) {
            let counter = std::sync::Arc::new(cube::Counter {
                trace: std::env::var_os(TRACE_ENV).is_some(),
                ..cube::Counter::default()
            });
            let watching = cubecl::logging::LaunchObservation::new(counter.clone());
            return Some(Counting {
                counter,
                _watching: watching,
            });
        }
        let _ = device;
        None
    }

    /// Stops counting: the launches since [`Counting::start`].
    pub fn finish(self) -> Dispatches {
        #[cfg(feature = "wgpu")]
        {
            let Counting {
                counter,
                _watching: watching,
            } = self;
            drop(watching);
            let counts = counter.counts.lock().map(|c| c.clone()).unwrap_or_default();
            let mut dispatches = Dispatches::default();
            for (kernel, n) in counts {
                let name = cubecl::config::type_name_format(
                    kernel,
                    cubecl::config::TypeNameFormatLevel::Short,
                );
                dispatches.total += n;
                *dispatches.by_kernel.entry(name).or_default() += n;
            }
            dispatches
        }
        #[cfg(not(feature = "wgpu"))]
        {
            let _ = self;
            Dispatches::default()
        }
    }
}

#[cfg(feature = "wgpu")]
mod cube {
    use cubecl::logging::LaunchObserver;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Launches by CubeCL's full kernel name; `trace`: print each as it comes.
    #[derive(Default)]
    pub(super) struct Counter {
        pub(super) counts: Mutex<BTreeMap<&'static str, usize>>,
        pub(super) trace: bool,
    }

    impl LaunchObserver for Counter {
        fn launched(&self, kernel: &'static str) {
            if self.trace {
                let name = cubecl::config::type_name_format(
                    kernel,
                    cubecl::config::TypeNameFormatLevel::Short,
                );
                eprintln!("launch {name}");
            }
            if let Ok(mut counts) = self.counts.lock() {
                *counts.entry(kernel).or_default() += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::test_devices;
    use burn::tensor::Tensor;

    /// On CubeCL devices an element-wise product and its read-back are counted (at least one
    /// launch); elsewhere there is no count.
    #[test]
    fn launches_are_counted_on_cubecl_devices_only() {
        for device in test_devices() {
            let a = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
            let _ = a.clone().into_data();
            let (sum, counted) = count(&device, || {
                (a.clone() * a.clone())
                    .add_scalar(1.0)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            });
            assert_eq!(sum, [2.0, 5.0, 10.0]);
            match counted {
                Some(d) => {
                    assert!(crate::device::is_cubecl(&device), "{device:?}");
                    assert!(d.total >= 1, "{device:?}: {d:?}");
                    assert_eq!(d.total, d.by_kernel.values().sum::<usize>());
                }
                None => assert!(!crate::device::is_cubecl(&device), "{device:?}"),
            }
        }
    }
}
