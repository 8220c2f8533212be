//! One small pool of admin connections (to the maintenance database
//! `postgres`, and to the shared database of Schema tenants when there are
//! any) per database server, shared by every reconcile. A resync of
//! N tenants on one server then reuses at most [`ADMIN_POOL_SIZE`]
//! connections instead of opening (and tearing down) several per tenant;
//! the operator's own footprint on a server stays bounded however many
//! reconciles run at once (the rest wait for a free connection, up to
//! [`CONNECT_TIMEOUT`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{
    PgPool, Postgres,
    pool::{PoolConnection, PoolOptions},
};

use super::{
    DatabaseError, connections::ServerConnections, server::CONNECT_TIMEOUT, server::ServerConfig,
};

/// Admin connections per server at most.
pub const ADMIN_POOL_SIZE: u32 = 4;
/// An admin connection unused this long is closed (idle servers hold none
/// of the operator's connections between resyncs).
pub const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A server and database: host, port, admin login, database.
type ServerKey = (String, u16, String, String);

/// Admin pools by server, each with the settings it was made with.
#[derive(Default)]
pub struct AdminPools {
    pools: Mutex<HashMap<ServerKey, (Arc<ServerConfig>, PgPool)>>,
}

impl std::fmt::Debug for AdminPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.pools.lock().map(|p| p.len()).unwrap_or_default();
        f.debug_struct("AdminPools").field("servers", &n).finish()
    }
}

impl AdminPools {
    /// The pool of `server`; a changed password or sslmode replaces it (the
    /// old one closes its connections as they are returned).
    fn pool(&self, server: &ServerConfig, database: &str) -> PgPool {
        let key = (
            server.host.clone(),
            server.port,
            server.username.clone(),
            database.to_string(),
        );
        let Ok(mut pools) = self.pools.lock() else {
            return new_pool(server, database);
        };
        match pools.get(&key) {
            Some((config, pool)) if config.as_ref() == server => pool.clone(),
            _ => {
                let pool = new_pool(server, database);
                if let Some((_, old)) = pools.insert(key, (Arc::new(server.clone()), pool.clone()))
                {
                    tokio::spawn(async move { old.close().await });
                }
                pool
            }
        }
    }

    /// An admin connection to `server`'s database `postgres`. A server with
    /// no free connection slot (SQLSTATE 53300) or an operator already using
    /// every pooled connection for [`CONNECT_TIMEOUT`] gives
    /// [`DatabaseError::Busy`] (transient: the tenant's last known state
    /// stands).
    pub async fn acquire(
        &self,
        server: &ServerConfig,
    ) -> Result<PoolConnection<Postgres>, DatabaseError> {
        self.acquire_in(server, "postgres").await
    }

    /// [`AdminPools::acquire`], to `database` (a pool of its own, of the
    /// same size).
    pub async fn acquire_in(
        &self,
        server: &ServerConfig,
        database: &str,
    ) -> Result<PoolConnection<Postgres>, DatabaseError> {
        let address = format!("{}:{}", server.host, server.port);
        match self.pool(server, database).acquire().await {
            Ok(conn) => Ok(conn),
            // The pool retried until its timeout: a full server (53300,
            // retried by sqlx), every pooled connection in use, or a server
            // that does not answer. One direct attempt tells them apart.
            Err(sqlx::Error::PoolTimedOut) => Err(diagnose(server, address).await),
            Err(source) => Err(DatabaseError::Unreachable {
                server: address,
                source,
            }),
        }
    }

    /// The connection figures of every server this operator has a pool for
    /// (one query each, on a pooled connection; a server that cannot be
    /// asked now is left out and logged).
    pub async fn connections(&self) -> Vec<ServerConnections> {
        let servers: Vec<Arc<ServerConfig>> = match self.pools.lock() {
            // One pool per address is enough (several admin logins may
            // share a server).
            Ok(pools) => {
                let mut by_address: HashMap<(String, u16), Arc<ServerConfig>> = HashMap::new();
                for (config, _) in pools.values() {
                    by_address
                        .entry((config.host.clone(), config.port))
                        .or_insert_with(|| config.clone());
                }
                by_address.into_values().collect()
            }
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::new();
        for server in servers {
            let address = format!("{}:{}", server.host, server.port);
            let read = async {
                let mut conn = self.acquire(&server).await?;
                super::connections::read(&mut conn, address.clone()).await
            };
            match read.await {
                Ok(figures) => out.push(figures),
                Err(e) => {
                    tracing::warn!(server = %address, error = %e, "cannot read the server's connection figures")
                }
            }
        }
        out
    }

    /// Admin connections open now, over every server (idle or in use).
    pub fn open_connections(&self) -> u32 {
        self.pools
            .lock()
            .map(|p| p.values().map(|(_, pool)| pool.size()).sum())
            .unwrap_or_default()
    }
}

/// Why no pooled connection came: one direct connection attempt, classified
/// by its SQLSTATE.
async fn diagnose(server: &ServerConfig, address: String) -> DatabaseError {
    use sqlx::Connection;
    let options = server.admin_options();
    let attempt = sqlx::PgConnection::connect_with(&options);
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            DatabaseError::Busy {
                server: address,
                why: format!(
                    "every one of the operator's {ADMIN_POOL_SIZE} admin connections stayed in use"
                ),
            }
        }
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("53300") => {
            DatabaseError::Busy {
                server: address,
                why: format!("the server has no free connection slot ({})", e.message()),
            }
        }
        Ok(Err(source)) => DatabaseError::Unreachable {
            server: address,
            source,
        },
        Err(_) => DatabaseError::Timeout { server: address },
    }
}

fn new_pool(server: &ServerConfig, database: &str) -> PgPool {
    PoolOptions::<Postgres>::new()
        .max_connections(ADMIN_POOL_SIZE)
        .min_connections(0)
        .idle_timeout(ADMIN_IDLE_TIMEOUT)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(server.admin_options().database(database))
}
