//! Inference on top of [`rwkv_burn`]: logits for parity checks, sampling, generation with
//! streamed text, and the `rwkv` command-line tool built on them.

pub mod generate;
pub mod logits;
pub mod sampler;
