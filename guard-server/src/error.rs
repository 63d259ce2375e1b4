//! One error type for everything a request can run into, and its one mapping to a gRPC
//! status. Each kind keeps its own code so clients can act on it (retry on UNAVAILABLE,
//! fix the call on INVALID_ARGUMENT, ...), unlike a blanket `aborted`.
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt};

/// Clone: one failed group commit answers every submission of its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    #[error("invalid argument: {}", describe_fields(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0}")]
    NotFound(String),
    /// The request is in a state that does not allow the call (`kind` is the machine-readable
    /// precondition type, e.g. `STATE` or `ALREADY_REVIEWED`).
    #[error("{description}")]
    FailedPrecondition { kind: &'static str, subject: String, description: String },
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    /// The database is down or busy: worth retrying.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A bug or a corrupted row, never the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe_fields(violations: &[FieldViolation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

impl GuardError {
    /// The HTTP status the console and the chat endpoints answer this error with: the same
    /// kinds as the gRPC codes, so a caller can act on it the same way.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            GuardError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            GuardError::NotFound(_) => StatusCode::NOT_FOUND,
            GuardError::FailedPrecondition { .. } => StatusCode::CONFLICT,
            GuardError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            GuardError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            GuardError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GuardError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        GuardError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn precondition(kind: &'static str, subject: impl Into<String>, description: impl Into<String>) -> Self {
        GuardError::FailedPrecondition { kind, subject: subject.into(), description: description.into() }
    }
}

impl From<GuardError> for Status {
    fn from(err: GuardError) -> Status {
        let message = err.to_string();
        match err {
            GuardError::InvalidArgument(violations) => {
                Status::with_error_details(Code::InvalidArgument, message, ErrorDetails::with_bad_request(violations))
            }
            GuardError::FailedPrecondition { kind, subject, description } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_precondition_failure(vec![PreconditionViolation::new(kind, subject, description)]),
            ),
            GuardError::NotFound(_) => Status::not_found(message),
            GuardError::PermissionDenied(_) => Status::permission_denied(message),
            GuardError::Unauthenticated(_) => Status::unauthenticated(message),
            GuardError::Unavailable(_) => Status::unavailable(message),
            GuardError::Internal(_) => {
                tracing::error!("{message}");
                Status::internal(message)
            }
        }
    }
}

impl From<sqlx::Error> for GuardError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            GuardError::Unavailable(err.to_string())
        } else {
            GuardError::Internal(format!("database: {err}"))
        }
    }
}

/// Errors that say the database cannot be reached or is momentarily busy, as opposed to a
/// statement the server got wrong.
fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match db.code() {
            // A number is SQLite's, a SQLSTATE (text) PostgreSQL's.
            Some(code) => match code.parse::<i32>() {
                // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6), SQLITE_IOERR (10), SQLITE_FULL
                // (13), SQLITE_CANTOPEN (14); extended codes keep the primary one in the low byte.
                Ok(n) => matches!(n & 0xff, 5 | 6 | 10 | 13 | 14),
                // PostgreSQL: class 08 (connection), 53 (resources), 57P (operator intervention,
                // e.g. shutdown), 40001/40P01 (serialization failure, deadlock: retryable).
                Err(_) => {
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || code == "40001"
                        || code == "40P01"
                }
            },
            None => false,
        },
        _ => false,
    }
}

pub type GuardResult<T> = Result<T, GuardError>;
