//! The tenant's PostgreSQL database: identifiers, server settings,
//! provisioning, login checks and reclaim.

pub mod claim;
pub mod ident;
pub mod provision;
pub mod server;

use rand::{Rng, distr::Alphanumeric};

pub use claim::ClaimError;
pub use ident::{Ident, IdentError};
pub use provision::{
    DropOutcome, EnsureOutcome, LoginCheck, PasswordAction, TenantDatabase, check_claim,
    check_login, drop_tenant, ensure,
};
pub use server::{ServerConfig, ServerConfigError};

/// Errors talking to a PostgreSQL server.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The server did not accept a connection.
    #[error("cannot connect to PostgreSQL at {server}: {source}")]
    Unreachable {
        /// host:port.
        server: String,
        /// Driver error.
        #[source]
        source: sqlx::Error,
    },
    /// The server did not answer in time.
    #[error("PostgreSQL at {server} did not answer within 5s")]
    Timeout {
        /// host:port.
        server: String,
    },
    /// A catalog query failed.
    #[error("{what}: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// Driver error.
        #[source]
        source: sqlx::Error,
    },
    /// The role or database is not this tenant's to use.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// A DDL statement failed.
    #[error("{statement}: {source}")]
    Ddl {
        /// The (redacted) statement.
        statement: String,
        /// Driver error.
        #[source]
        source: sqlx::Error,
    },
}

impl DatabaseError {
    fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Query { what, source }
    }

    /// True when the server could not be reached at all (as opposed to a
    /// server that answered with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Timeout { .. })
    }
}

/// A new random password: 32 alphanumeric characters (about 190 bits).
pub fn generate_password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_alphanumeric_and_distinct() {
        let a = generate_password();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, generate_password());
    }
}
