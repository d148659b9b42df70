//! Errors of the chat services and their gRPC status codes. A client's mistake never becomes
//! INTERNAL; database trouble becomes UNAVAILABLE (retryable) without leaking details.

use tonic::{Code, Status};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (empty text, name too long, …).
    #[error("{0}")]
    InvalidArgument(String),
    /// What the request names does not exist (or is not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// No valid token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// It exists already (a taken username).
    #[error("{0}")]
    AlreadyExists(String),
    /// The state does not allow it (an expired invite).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Too many requests.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Cannot be served now; the caller may retry (with its client key, if the outcome of a
    /// write is unknown).
    #[error("{0}")]
    Unavailable(String),
    /// The database failed or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Something that should not happen.
    #[error("internal: {0}")]
    Internal(String),
}

/// Shorthand for results of the chat services.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Database(e) => {
                tracing::warn!(error = %e, "database error");
                let code = match e {
                    sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::WorkerCrashed => Code::Unavailable,
                    // Read-only replica promoted away, lock waits, deadlocks: retryable.
                    sqlx::Error::Database(ref db)
                        if matches!(
                            db.code().as_deref(),
                            Some("HY000" | "40001" | "25006" | "08S01")
                        ) =>
                    {
                        Code::Unavailable
                    }
                    _ => Code::Internal,
                };
                Status::new(code, "database unavailable, retry")
            }
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Whether a database error is a duplicate-key violation.
pub fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23000"))
}
