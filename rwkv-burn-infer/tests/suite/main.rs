//! The inference crate's integration tests, in one test binary (see the library's
//! `tests/suite/main.rs` for why).

mod cli_hostile;
mod cli_logits;
mod cli_tools;
mod generate;
mod serve;
