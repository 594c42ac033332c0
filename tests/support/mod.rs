//! Fixtures shared by the integration tests: a real wharfd, a real registry, real OCI
//! test images. Each test binary uses a subset, hence the allow.
#![allow(dead_code)]

pub mod daemon;
pub mod images;
pub mod registry;
pub mod token_server;
