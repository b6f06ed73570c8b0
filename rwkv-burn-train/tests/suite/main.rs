//! The training crate's integration tests, in one test binary (see the library's
//! `tests/suite/main.rs` for why).

mod cli_grad;
mod cli_hostile;
mod cli_train;
mod export_official;
mod grad_fixture;
mod loss_fixture;
mod train_tiny;
