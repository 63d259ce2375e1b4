//! End-to-end tests of `guard-agent daemon` (issue 4): selectors, registration, reasons,
//! status, policy reload and restart re-adoption.

use crate::Test;

pub const TESTS: &[Test] = &[];
