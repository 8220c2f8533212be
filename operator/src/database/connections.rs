//! Connections in use on each database server the operator provisions on,
//! for the "connections near the limit" alerts: one query per server on a
//! pooled admin connection, every [`INTERVAL`] while this replica leads.
//! `pg_stat_activity` lists every session's role to any user (only the
//! query text of others' sessions is hidden), so the admin login needs no
//! extra privilege.

use std::{collections::HashMap, time::Duration};

use sqlx::PgConnection;

use super::DatabaseError;

/// How often the figures are read.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// One server's connection figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerConnections {
    /// `host:port`.
    pub server: String,
    /// `max_connections`.
    pub max: i64,
    /// Client sessions open now (what `max_connections` bounds), the
    /// operator's own query included.
    pub total: i64,
    /// Client sessions by role.
    pub by_role: HashMap<String, i64>,
}

/// Reads `server`'s figures over `conn`.
pub async fn read(
    conn: &mut PgConnection,
    server: String,
) -> Result<ServerConnections, DatabaseError> {
    let rows: Vec<(Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT usename::text, count(*), current_setting('max_connections')::int8 \
         FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY usename",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(DatabaseError::query("reading pg_stat_activity"))?;
    let mut figures = ServerConnections {
        server,
        ..ServerConnections::default()
    };
    for (role, n, max) in rows {
        figures.max = max;
        figures.total += n;
        if let Some(role) = role {
            *figures.by_role.entry(role).or_default() += n;
        }
    }
    if figures.max == 0 {
        // No row at all cannot happen (this session is a client backend),
        // but the setting is read on its own then.
        let (max,): (i64,) = sqlx::query_as("SELECT current_setting('max_connections')::int8")
            .fetch_one(&mut *conn)
            .await
            .map_err(DatabaseError::query("reading max_connections"))?;
        figures.max = max;
    }
    Ok(figures)
}
