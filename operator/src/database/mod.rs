//! The tenant's PostgreSQL database (or schema in a shared database:
//! [`schema`]): identifiers, server settings, provisioning, login checks and
//! reclaim.

pub mod claim;
pub mod connections;
pub mod ident;
pub mod pool;
pub mod provision;
pub mod schema;
pub mod server;

use futures::future::BoxFuture;
use rand::{Rng, distr::Alphanumeric};

pub use claim::ClaimError;
pub use connections::ServerConnections;
pub use ident::{Ident, IdentError};
pub use pool::AdminPools;
pub use provision::{
    DropOutcome, EnsureOutcome, Isolation, LoginCheck, LoginRoleState, PasswordAction,
    TenantDatabase, check_claim, check_login, classify_login, drop_tenant, ensure,
    secure_public_schema,
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
    /// No admin connection now, though the server answers: it has no free
    /// connection slot (SQLSTATE 53300) or every pooled connection of the
    /// operator is in use. Transient: retried with backoff, and the
    /// tenant's last known database state stands.
    #[error("PostgreSQL at {server} is busy: {why}; the operator retries with backoff")]
    Busy {
        /// host:port.
        server: String,
        /// Which of the two.
        why: String,
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
    /// The tenant role cannot log in for a reason the next reconcile may
    /// repair or that may pass (an expiry, a missing role, a full server).
    #[error("role {role} cannot log in: {why}")]
    Login {
        /// The role.
        role: String,
        /// Why, as the condition says it.
        why: String,
    },
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

    /// True when the error says nothing about the tenant's own role and
    /// database: the server was busy or could not be reached. The tenant's
    /// last known database state then stands (no flapping of healthy
    /// tenants while the server or the operator is overloaded).
    pub fn is_transient(&self) -> bool {
        self.is_unreachable() || matches!(self, Self::Busy { .. })
    }
}

/// The operations a reconcile asks of a database server. The controller
/// reaches PostgreSQL only through this trait: [`Postgres`] in production, a
/// stand-in in the controller's unit tests (which check the apiserver
/// requests, not SQL: `provision` and the e2e suites test the SQL).
pub trait Provisioner: Send + Sync {
    /// [`check_claim`]: is the name free or this tenant's?
    fn check_claim<'a>(
        &'a self,
        server: &'a ServerConfig,
        db: &'a TenantDatabase,
    ) -> BoxFuture<'a, Result<(), DatabaseError>>;
    /// [`ensure`]: create or repair the role and database.
    fn ensure<'a>(
        &'a self,
        server: &'a ServerConfig,
        db: &'a TenantDatabase,
        password: &'a PasswordAction,
    ) -> BoxFuture<'a, Result<EnsureOutcome, DatabaseError>>;
    /// [`check_login`]: does the password log in?
    fn check_login<'a>(
        &'a self,
        server: &'a ServerConfig,
        db: &'a TenantDatabase,
        password: &'a str,
    ) -> BoxFuture<'a, Result<LoginCheck, DatabaseError>>;
    /// [`drop_tenant`]: the reclaim of `reclaimPolicy: Delete`.
    fn drop_tenant<'a>(
        &'a self,
        server: &'a ServerConfig,
        db: &'a TenantDatabase,
    ) -> BoxFuture<'a, Result<DropOutcome, DatabaseError>>;
    /// The connection figures of the servers provisioned on so far
    /// ([`connections`]); none by default.
    fn connections(&self) -> BoxFuture<'_, Vec<ServerConnections>> {
        Box::pin(async { Vec::new() })
    }
}

/// The real [`Provisioner`]: the functions of [`provision`] on the server,
/// with one pool of admin connections per server ([`pool`]).
#[derive(Debug, Default)]
pub struct Postgres {
    pools: AdminPools,
}

impl Postgres {
    /// Admin connections open now, over every server.
    pub fn open_connections(&self) -> u32 {
        self.pools.open_connections()
    }
}

impl Provisioner for Postgres {
    fn check_claim<'a>(
        &'a self,
        server: &'a ServerConfig,
        db: &'a TenantDatabase,
    ) -> BoxFuture<'a, Result<(), DatabaseError>> {
        Box::pin(check_claim(&self.pools, server, db))
    }

    fn ensure<'a>(
        &'a self,
        server: &'a ServerConfig,
        db: &'a TenantDatabase,
        password: &'a PasswordAction,
    ) -> BoxFuture<'a, Result<EnsureOutcome, DatabaseError>> {
        Box::pin(ensure(&self.pools, server, db, password))
    }

    fn check_login<'a>(
        &'a self,
        server: &'a ServerConfig,
        db: &'a TenantDatabase,
        password: &'a str,
    ) -> BoxFuture<'a, Result<LoginCheck, DatabaseError>> {
        Box::pin(check_login(&self.pools, server, db, password))
    }

    fn drop_tenant<'a>(
        &'a self,
        server: &'a ServerConfig,
        db: &'a TenantDatabase,
    ) -> BoxFuture<'a, Result<DropOutcome, DatabaseError>> {
        Box::pin(drop_tenant(&self.pools, server, db))
    }

    fn connections(&self) -> BoxFuture<'_, Vec<ServerConnections>> {
        Box::pin(self.pools.connections())
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
