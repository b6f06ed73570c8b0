//! The library's integration tests, in one test binary: each binary start loads every backend's
//! libraries (about 4 GB with libtorch's CUDA ones), which cost 5–50 s per start on the CI
//! machine when its page cache has been reclaimed, so one start serves them all.

mod bad_input;
mod common;
mod fixtures;
mod formats;
mod modes;
mod mutations;
mod tokenizers;
mod weight_formats;
