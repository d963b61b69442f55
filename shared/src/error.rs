//! Typed errors of the library. Every message names what was wrong and never carries a secret.

use thiserror::Error;

/// An error talking to a vendor API.
#[derive(Debug, Error)]
pub enum ConnectorError {
    /// The vendor refused the credentials (wrong secret, revoked token, expired key).
    #[error("{vendor} rejected the credentials: {detail}")]
    Auth {
        vendor: &'static str,
        detail: String,
    },
    /// The credentials are valid but lack a permission.
    #[error("{vendor} denied access to {path} (HTTP 403): {detail}")]
    Forbidden {
        vendor: &'static str,
        path: String,
        detail: String,
    },
    /// Any other non-success status that retrying will not fix.
    #[error("{vendor} answered HTTP {status} for {path}: {detail}")]
    Status {
        vendor: &'static str,
        status: u16,
        path: String,
        detail: String,
    },
    /// The vendor kept failing (429/5xx/network) past the retry budget.
    #[error("{vendor} kept failing for {path} after {attempts} attempts: {detail}")]
    Exhausted {
        vendor: &'static str,
        path: String,
        attempts: u32,
        detail: String,
    },
    /// The vendor's body was not the JSON we expect.
    #[error("{vendor} sent a malformed response for {path}: {detail}")]
    Malformed {
        vendor: &'static str,
        path: String,
        detail: String,
    },
    /// The connection's configuration (secret fields, mapping config, base URL) is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A state read or write (token cache, detail cache) failed.
    #[error("state store: {0}")]
    State(String),
}

impl ConnectorError {
    /// Whether a later attempt (SQS redelivery, next continuation) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectorError::Exhausted { .. } | ConnectorError::State(_)
        )
    }
}

/// An error in the mapping text; `line` is 1-based.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("mapping line {line}: {message} (got `{text}`)")]
pub struct MappingError {
    pub line: usize,
    pub text: String,
    pub message: String,
}

/// An error of the AWS side (DynamoDB, SQS, Secrets Manager).
#[derive(Debug, Error)]
pub enum AwsError {
    #[error("DynamoDB {op}: {detail}")]
    Dynamo { op: &'static str, detail: String },
    #[error("SQS {op}: {detail}")]
    Sqs { op: &'static str, detail: String },
    #[error("Secrets Manager: {0}")]
    Secrets(String),
    #[error("missing environment variable {0}")]
    Env(&'static str),
    #[error("stored item is malformed: {0}")]
    Item(String),
}

/// The error a handler returns: what went wrong in one invocation.
#[derive(Debug, Error)]
pub enum SyncError {
    #[error("invalid event: {0}")]
    Event(String),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("secret {secret_id}: {detail}")]
    Secret { secret_id: String, detail: String },
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("connection {connection} already has run {run_id} in progress (started {started_at}); nothing was started")]
    AlreadyRunning {
        connection: String,
        run_id: String,
        started_at: String,
    },
    #[error("{0}")]
    Other(String),
}

/// Render any error with its sources, one line, for logs and run records.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
