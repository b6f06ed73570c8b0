//! The training crate's integration tests, in one test binary (see the library's
//! `tests/suite/main.rs` for why).

mod chat_sft;
mod cli_grad;
mod cli_hostile;
mod cli_train;
mod export_official;
mod grad_fixture;
mod lora;
mod loss_fixture;
mod state_tuning;
mod train_tiny;
