//! How guardctl reports failures: a gRPC status as `guardctl: <CODE>: <message>` with its
//! details, and an exit code that tells a refusal by the server from a failure to talk to it.

use tonic::{Code, Status};
use tonic_types::{ErrorDetail, StatusExt};

/// Usage errors, unreadable files, an unreachable server.
pub const EXIT_FAILURE: u8 = 1;
/// The server answered and refused (NOT_FOUND, FAILED_PRECONDITION, PERMISSION_DENIED...).
pub const EXIT_REFUSED: u8 = 2;

/// The canonical upper-case name of a gRPC code, as in the gRPC specification.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// UNAVAILABLE means the call never got an answer (server down, TLS refused): a connection
/// failure. Every other code is the server's answer.
pub fn exit_code(status: &Status) -> u8 {
    if status.code() == Code::Unavailable {
        EXIT_FAILURE
    } else {
        EXIT_REFUSED
    }
}

/// `guardctl: NOT_FOUND: no request abc` followed by one indented line per detail.
pub fn describe_status(status: &Status) -> String {
    let mut out = format!("guardctl: {}: {}", code_name(status.code()), status.message());
    for line in detail_lines(status) {
        out.push_str("\n  ");
        out.push_str(&line);
    }
    out
}

fn detail_lines(status: &Status) -> Vec<String> {
    let Ok(details) = status.check_error_details_vec() else {
        return vec!["(details present but not decodable)".into()];
    };
    let mut lines = Vec::new();
    for d in details {
        match d {
            ErrorDetail::ErrorInfo(i) => {
                let mut meta: Vec<_> = i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                meta.sort();
                lines.push(format!("reason: {} ({}) {}", i.reason, i.domain, meta.join(" ")).trim_end().to_string());
            }
            ErrorDetail::PreconditionFailure(p) => {
                for v in p.violations {
                    lines.push(format!("precondition {} {}: {}", v.r#type, v.subject, v.description));
                }
            }
            ErrorDetail::BadRequest(b) => {
                for v in b.field_violations {
                    lines.push(format!("field {}: {}", v.field, v.description));
                }
            }
            ErrorDetail::ResourceInfo(r) => {
                let desc = if r.description.is_empty() { String::new() } else { format!(": {}", r.description) };
                lines.push(format!("resource {} {}{desc}", r.resource_type, r.resource_name));
            }
            ErrorDetail::LocalizedMessage(m) => lines.push(m.message),
            ErrorDetail::Help(h) => {
                for l in h.links {
                    lines.push(format!("see {}: {}", l.description, l.url));
                }
            }
            ErrorDetail::RetryInfo(r) => lines.push(format!("retry after {:?}", r.retry_delay.unwrap_or_default())),
            ErrorDetail::DebugInfo(d) => lines.push(format!("debug: {}", d.detail)),
            ErrorDetail::QuotaFailure(q) => {
                for v in q.violations {
                    lines.push(format!("quota {}: {}", v.subject, v.description));
                }
            }
            ErrorDetail::RequestInfo(r) => lines.push(format!("request {}", r.request_id)),
            other => lines.push(format!("{other:?}")),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn status_line_and_details() {
        let st = Status::with_error_details(
            Code::FailedPrecondition,
            "request r1 is approved, not pending",
            ErrorDetails::with_precondition_failure_violation("STATE", "r1", "already decided"),
        );
        let text = describe_status(&st);
        assert!(text.starts_with("guardctl: FAILED_PRECONDITION: request r1 is approved, not pending"), "{text}");
        assert!(text.contains("\n  precondition STATE r1: already decided"), "{text}");
        assert_eq!(exit_code(&st), EXIT_REFUSED);
        assert_eq!(exit_code(&Status::unavailable("down")), EXIT_FAILURE);
    }
}
