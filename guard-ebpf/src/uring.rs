//! io_uring's own LSM hooks, for policies with `io_uring = "deny"`. The requests themselves go
//! through the ordinary hooks (file_open, path_*, socket_connect...), which `decide` refuses
//! for such a policy when they come through io_uring (`decide::via_io_uring`); these two refuse
//! what has no other hook: setting up an SQPOLL ring (a kernel thread that submits for the
//! tree) and running a request with registered credentials (a personality). Both hooks exist
//! on 6.1 and 6.12 (added in 5.12). io_uring_setup itself has no LSM hook on these kernels, so
//! a plain ring can still be created; every hooked operation through it is refused.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use guard_common::{reason, Action, Hook, EPERM, IO_URING_DENY};

use crate::decide::{emit, Op, Outcome};
use crate::maps::{policy, scratch, watched};
use crate::resolve::label;

#[inline(always)]
fn refuse_if_denied(hook: Hook, what: &[u8]) -> i32 {
    let Some(w) = watched() else { return 0 };
    let Some(conf) = policy(&w) else { return -EPERM };
    if conf.io_uring != IO_URING_DENY {
        return 0;
    }
    if let Some(s) = scratch() {
        label(s, what);
        let op = Op { hook, aux: 0, holdable: false, always_record: true };
        emit(s, &w, &op, Outcome::decision(Action::Deny as u8, reason::IO_URING, 0, 0));
    }
    -EPERM
}

/// uring_sqpoll(void): io_uring_setup with IORING_SETUP_SQPOLL.
#[lsm(hook = "uring_sqpoll")]
pub fn uring_sqpoll(_ctx: LsmContext) -> i32 {
    refuse_if_denied(Hook::UringSqpoll, b"io_uring: SQPOLL thread")
}

/// uring_override_creds(const struct cred *new): a request with a registered personality.
#[lsm(hook = "uring_override_creds")]
pub fn uring_override_creds(_ctx: LsmContext) -> i32 {
    refuse_if_denied(Hook::UringCreds, b"io_uring: registered credentials")
}
