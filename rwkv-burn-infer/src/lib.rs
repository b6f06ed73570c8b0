//! Inference on top of [`rwkv_burn`]: running prompts through a model and the `rwkv`
//! command-line tool built on it.

pub mod logits;
