//! Helpers for tests and benchmarks that need real infrastructure (not mocks). Only in builds
//! with the `testing` feature: never in the production binary.
pub mod browser;
pub mod config;
pub mod console_e2e;
pub mod pg;
pub mod sink_bench;
