use crate::wkv::WkvOps;
use burn::backend::Flex;

/// burn-flex runs the reference body.
impl WkvOps for Flex {}
