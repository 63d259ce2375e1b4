//! Helpers for tests and benchmarks that need real infrastructure (not mocks).
pub mod pg;
