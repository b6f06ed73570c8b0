//! Inference on top of [`rwkv_burn`]: logits for parity checks, sampling, generation with
//! streamed text, an OpenAI-compatible server, and the `rwkv` command-line tool built on them.

pub mod bench;
pub mod chat;
pub mod chat_template;
pub mod embedded;
pub mod eval;
pub mod generate;
pub mod logits;
pub mod prefix_cache;
pub mod sampler;
#[cfg(not(target_arch = "wasm32"))]
pub mod serve;
#[cfg(not(target_arch = "wasm32"))]
pub mod tool;
