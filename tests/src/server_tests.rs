//! End-to-end tests of holds decided by the central guard-server (issue 3). The server runs
//! on the host; the VM reaches it through QEMU's forwarded port.

use crate::Test;

pub const TESTS: &[Test] = &[];
