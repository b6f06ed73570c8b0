//! Training for [`rwkv_burn`] models. For now: the language-modelling loss and its gradients,
//! named like the official checkpoints and checked against the official fixtures.

pub mod binidx;
pub mod data;
pub mod grad;
pub mod loss;
pub mod optimizer;
pub mod plot;
pub mod run;
pub mod sft;
pub mod state_tuning;
pub mod trainer;
