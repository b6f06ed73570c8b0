use crate::wkv::WkvOps;
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;

/// Under autodiff the reference body is differentiated op by op. A dedicated backward pass
/// (so training does not record a per-timestep graph) arrives with the kernel work.
impl<B: WkvOps, C: CheckpointStrategy> WkvOps for Autodiff<B, C> {}
