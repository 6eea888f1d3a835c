//! Helpers shared by the integration tests. Each area adds its own submodule.
#![allow(dead_code, unreachable_pub)]

pub mod redis;
pub mod retry;
pub mod sim;
pub mod upstream;
