//! Training for [`rwkv_burn`] models. For now: the language-modelling loss the trainer will
//! minimise, checked against the official fixtures.

pub mod loss;
