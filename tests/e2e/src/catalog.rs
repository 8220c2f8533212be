//! Looking at the test PostgreSQL server as its admin: what the operator
//! created, changed or dropped there.

use sqlx::{Connection, PgConnection};

use crate::{Result, database_admin_url};

/// A new admin connection to the test server.
pub async fn admin_connection() -> Result<PgConnection> {
    Ok(PgConnection::connect(&database_admin_url()?).await?)
}

/// Whether role `name` exists.
pub async fn role_exists(name: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(name)
        .fetch_optional(&mut admin_connection().await?)
        .await?;
    Ok(row.is_some())
}

/// Whether database `name` exists.
pub async fn database_exists(name: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut admin_connection().await?)
        .await?;
    Ok(row.is_some())
}

/// Runs SQL the test generated itself (names from `unique_suffix`, never
/// input) as the admin.
pub async fn admin_sql(sql: String) -> Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin_connection().await?)
        .await?;
    Ok(())
}
