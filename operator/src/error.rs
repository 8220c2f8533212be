//! The operator's error type. Each variant has a metric label; transient
//! errors requeue with backoff, invalid specs wait for a change.

use kube::runtime::finalizer;

use crate::{apply::ApplyError, controller::ServerSecretError, database::DatabaseError};

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What the operator was doing.
        what: String,
        /// API error.
        #[source]
        source: kube::Error,
    },
    /// Applying or deleting a child failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The database server failed or is unreachable.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The server Secret is missing or incomplete (or, on deletion, the
    /// spec is too invalid to name one).
    #[error(transparent)]
    ServerConfig(#[from] ServerSecretError),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// Wraps a kube error with what was being done.
    pub fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Kube { what, source }
    }

    /// Low-cardinality label for `chorus_reconcile_failures_total{reason}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Apply(_) => "apply",
            Error::Database(e) if e.is_unreachable() => "database_unreachable",
            Error::Database(crate::database::DatabaseError::Busy { .. }) => "database_busy",
            Error::Database(_) => "database",
            Error::ServerConfig(_) => "server_config",
            Error::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
