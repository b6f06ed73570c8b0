//! The record of every parameter's official name, kept when a model is built: what
//! gradients, exports and optimizer state are named and keyed by.

use burn::module::ParamId;

/// How a parameter's Burn layout relates to its official (stored) layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Same values in the same order; only the shape may differ (`[C]` vs `[1, 1, C]`).
    Same,
    /// A torch `nn.Linear` weight: Burn keeps `[in, out]`, the checkpoint `[out, in]`.
    Transposed,
}

/// A model parameter with its official name and stored shape.
#[derive(Debug, Clone)]
pub struct NamedParam {
    /// The official key, e.g. `blocks.0.att.key.weight`.
    pub name: String,
    /// The parameter's id in the model.
    pub id: ParamId,
    /// The shape in the checkpoint (the official layout).
    pub stored_shape: Vec<usize>,
    /// Rank of the parameter tensor in the model.
    pub rank: usize,
    /// How to go from the model's layout to the official one.
    pub layout: Layout,
}

/// Every parameter of a built model under its official name, in checkpoint-reading order:
/// what gradients and exports are named by.
#[derive(Debug, Clone, Default)]
pub struct ParamNames(pub Vec<NamedParam>);

/// A parameter id derived from the official name, so the same parameter gets the same id in
/// every load: optimizer state saved by id then resumes onto a reloaded model.
pub fn stable_id(name: &str) -> ParamId {
    ParamId::from(crate::random::fnv1a(name.as_bytes()))
}
