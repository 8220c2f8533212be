//! PostgreSQL storage: the pool, migrations (under sqlx's advisory lock), the
//! resume epoch, and the tables behind accounts, rooms and room events.

pub mod accounts;
pub mod events;
pub mod rooms;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::{
    PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::protocol::{ErrorCode, RoomEvent};
pub use crate::protocol::{RoomId, Seq, UserId};

/// The migrations compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The timeline part of the epoch: the timeline id, or `None` when the role
/// may not read it (SQLSTATE 42501: `pg_control_checkpoint()` needs
/// superuser or pg_monitor), which never changes while the role's grants do
/// not. Any other error (a pool timeout under load, a dropped connection) is
/// returned, so the caller keeps the epoch it has: leaving the timeline out
/// on a transient error changed the epoch and sent every client a spurious
/// `epoch_changed` reload.
pub fn timeline_or_not_permitted(
    result: Result<(i32,), sqlx::Error>,
) -> Result<Option<i32>, sqlx::Error> {
    match result {
        Ok((t,)) => Ok(Some(t)),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The advisory lock key sqlx's PostgreSQL migrator takes for a database:
/// `0x3d32ad9e * crc32(name)` (CRC-32/ISO-HDLC), as in sqlx-postgres 0.9
/// `migrate.rs` (`generate_lock_id`).
pub fn migration_lock_key(database: &str) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC.checksum(database.as_bytes()))
}

/// Channel carrying `<room>:<seq>[,<room>:<seq>...]` wake-ups after commits.
pub const EVENTS_CHANNEL: &str = "chat_events";

/// A NOTIFY channel name (or advisory lock name) of this tenant: `base` as
/// is when the tables live in schema `public` (a database per tenant), else
/// `<base>_<schema>`. Tenants sharing a database (one schema each, the
/// operator's Schema isolation) must not share channels: NOTIFY channels
/// and advisory locks are per database, not per schema. A name that would
/// pass PostgreSQL's 63-byte limit takes 16 hex digits of the schema's
/// SHA-256 instead.
pub fn scoped_name(base: &str, schema: &str) -> String {
    if schema == "public" {
        return base.to_string();
    }
    let name = format!("{base}_{schema}");
    if name.len() <= 63 {
        return name;
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(schema.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{base}_{hex}")
}

/// An advisory lock key of this tenant: `base` in schema `public`, else
/// mixed with the schema's CRC-32 (see [`scoped_name`]).
pub fn scoped_lock_key(base: i64, schema: &str) -> i64 {
    if schema == "public" {
        return base;
    }
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    base ^ (i64::from(CRC.checksum(schema.as_bytes())) << 16)
}

/// Storage failures and refusals, mapped to REST errors and error frames.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing does not exist (or the caller may not know it does).
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// It already exists.
    #[error("{0}")]
    Conflict(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// The error code of this refusal: the one mapping from storage errors
    /// to codes, used by error frames as is and by REST through
    /// [`ErrorCode::for_rest`] (`invalid` is `400 bad_request` there).
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::Forbidden(_) => ErrorCode::Forbidden,
            StoreError::Conflict(_) => ErrorCode::Conflict,
            StoreError::Invalid(_) => ErrorCode::Invalid,
            StoreError::Db(_) => ErrorCode::Internal,
        }
    }
}

/// Result alias.
pub type StoreResult<T> = Result<T, StoreError>;

/// In a read-only session: `Ok` when every migration of [`MIGRATOR`] is
/// applied, else an error naming the first missing one and the fix.
async fn applied_read_only(
    conn: &mut sqlx::PgConnection,
) -> Result<(), sqlx::migrate::MigrateError> {
    let applied: Vec<(i64,)> = sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_default();
    let applied: std::collections::HashSet<i64> = applied.into_iter().map(|(v,)| v).collect();
    match MIGRATOR
        .iter()
        .find(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
    {
        None => {
            tracing::warn!(
                "the database session is read-only: migrations are all applied, so the replica starts; writes will fail"
            );
            Ok(())
        }
        Some(m) => Err(sqlx::migrate::MigrateError::Execute(sqlx::Error::Configuration(
            format!(
                "the database session is read-only and migration {} ({}) is not applied: start a replica with a writable session first",
                m.version, m.description
            )
            .into(),
        ))),
    }
}

/// Refuses text PostgreSQL cannot store: the NUL character (U+0000) is not
/// allowed in `text` or `jsonb` values. The error names the field, so the
/// request fails alone instead of failing the transaction it would join.
pub fn check_no_nul(field: &str, value: &str) -> StoreResult<()> {
    if value.contains('\0') {
        return Err(StoreError::Invalid(format!(
            "{field} contains a NUL character (\\u0000), which cannot be stored"
        )));
    }
    Ok(())
}

/// The database handle.
#[derive(Clone)]
pub struct Store {
    /// Connection pool.
    pub pool: PgPool,
}

impl Store {
    /// Connects (with retries for up to `wait`, so replicas can start before
    /// the database is reachable).
    pub async fn connect(url: &str, pool_size: u32, wait: Duration) -> Result<Self, sqlx::Error> {
        Self::connect_with(url, pool_size, wait, None).await
    }

    /// [`Store::connect`], with `synchronous_commit` set to this value on
    /// every connection (`None`: the server's setting).
    pub async fn connect_with(
        url: &str,
        pool_size: u32,
        wait: Duration,
        synchronous_commit: Option<&str>,
    ) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = url.parse()?;
        let mut options = options.application_name("chat-runtime");
        if let Some(value) = synchronous_commit {
            options = options.options([("synchronous_commit", value)]);
        }
        let deadline = Instant::now() + wait;
        loop {
            let attempt = PgPoolOptions::new()
                .max_connections(pool_size)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
                .await;
            match attempt {
                Ok(pool) => return Ok(Self { pool }),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "database not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies pending migrations, one replica at a time, under the same
    /// PostgreSQL advisory lock key sqlx's migrator uses (so replicas of
    /// earlier versions, which lock through sqlx, still take turns with us).
    ///
    /// The lock is polled with `pg_try_advisory_lock` rather than awaited in
    /// `pg_advisory_lock`: a session blocked in that call holds a snapshot,
    /// and `CREATE INDEX CONCURRENTLY` in the replica holding the lock waits
    /// for every older snapshot, so two replicas starting together deadlocked
    /// (PostgreSQL error 40P01, seen on the local node's first pods).
    ///
    /// Migrations this binary does not know are ignored: Chorus migrations
    /// are expand-only (docs/runtime.md, "Schema changes"), so a pod of the
    /// previous release restarting during a rollout or after a rollback
    /// serves against the newer schema instead of refusing to start.
    ///
    /// A read-only session (`default_transaction_read_only`, a hot standby)
    /// cannot take part: there it only checks that every migration this
    /// binary knows is applied, so the replica starts, serves reads and
    /// fails writes (counted as `chat_send_errors_total{reason="database"}`).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let mut conn = self.pool.acquire().await?;
        let (read_only,): (String,) =
            sqlx::query_as("SELECT current_setting('transaction_read_only')")
                .fetch_one(&mut *conn)
                .await?;
        if read_only == "on" {
            return applied_read_only(&mut conn).await;
        }
        let (database, schema): (String, Option<String>) =
            sqlx::query_as("SELECT current_database(), current_schema()")
                .fetch_one(&mut *conn)
                .await?;
        // A database of its own: sqlx's key. One schema of a shared
        // database: a key of its own, so tenants do not wait for each other.
        let key = match schema.as_deref() {
            None | Some("public") => migration_lock_key(&database),
            Some(schema) => migration_lock_key(&format!("{database}.{schema}")),
        };
        loop {
            let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut *conn)
                .await?;
            if locked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut migrator =
            sqlx::migrate::Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
        migrator.set_locking(false).set_ignore_missing(true);
        // `run_direct` on this connection (the one holding the lock): sqlx's
        // `run(&mut conn)` is not `Send`-friendly in spawned tasks (its
        // `Acquire` bound is not general enough); sqlx is pinned exactly.
        let result = migrator.run_direct(None, &mut *conn, false).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await;
        result?;
        unlocked?;
        Ok(())
    }

    /// The schema the tables live in (`current_schema()`; `public` when
    /// the search path names none that exists): tenants sharing a database
    /// each have their own ([`scoped_name`]).
    pub async fn schema(&self) -> Result<String, sqlx::Error> {
        let (schema,): (Option<String>,) = sqlx::query_as("SELECT current_schema()")
            .fetch_one(&self.pool)
            .await?;
        Ok(schema.unwrap_or_else(|| "public".into()))
    }

    /// The resume epoch: a hash of this database's instance id (written by
    /// the first migration), its oid (changes on a logical restore into a new
    /// database) and, when the role may read it, the timeline (changes after
    /// point-in-time recovery or failover).
    pub async fn epoch(&self) -> Result<String, sqlx::Error> {
        let (instance, oid): (String, i64) = sqlx::query_as(
            "SELECT (SELECT value FROM chat_meta WHERE key = 'instance'), \
                    (SELECT oid::bigint FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&self.pool)
        .await?;
        let timeline = timeline_or_not_permitted(
            sqlx::query_as::<_, (i32,)>("SELECT timeline_id FROM pg_control_checkpoint()")
                .fetch_one(&self.pool)
                .await,
        )?;
        let mut h = Sha256::new();
        h.update(instance.as_bytes());
        h.update(oid.to_be_bytes());
        if let Some(t) = timeline {
            h.update(t.to_be_bytes());
        }
        Ok(h.finalize()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&self.pool),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> StoreResult<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

/// Takes the room's next seq inside `tx`, locking the room row until commit.
pub(crate) async fn next_seq(tx: &mut Transaction<'_, Postgres>, room: RoomId) -> StoreResult<Seq> {
    let row: Option<(Seq,)> =
        sqlx::query_as("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
            .bind(room)
            .fetch_optional(&mut **tx)
            .await?;
    row.map(|(s,)| s).ok_or_else(|| rooms::room_absent(room))
}

/// Records a room event in `tx`. The caller announces it after commit
/// (the chat service, [`crate::chat::Chat`], publishes every write once).
pub(crate) async fn append_event(
    tx: &mut Transaction<'_, Postgres>,
    room: RoomId,
    seq: Seq,
    actor: UserId,
    message_seq: Option<Seq>,
    payload: &RoomEvent,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO room_events (room_id, seq, kind, actor_id, message_seq, payload) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(room)
    .bind(seq)
    .bind(payload.kind())
    .bind(actor)
    .bind(message_seq)
    .bind(sqlx::types::Json(payload))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_transient_error_reading_the_timeline_is_an_error_not_a_new_epoch() {
        assert_eq!(
            super::timeline_or_not_permitted(Ok((3,))).ok(),
            Some(Some(3))
        );
        assert!(super::timeline_or_not_permitted(Err(sqlx::Error::PoolTimedOut)).is_err());
    }

    #[test]
    fn channels_and_locks_are_per_schema_except_in_public() {
        use super::{scoped_lock_key, scoped_name};
        assert_eq!(scoped_name("chat_events", "public"), "chat_events");
        assert_eq!(scoped_name("chat_events", "chat_a"), "chat_events_chat_a");
        assert_ne!(
            scoped_name("chat_ephemeral", "chat_a"),
            scoped_name("chat_ephemeral", "chat_b")
        );
        let long = "a".repeat(63);
        let scoped = scoped_name("chat_ephemeral", &long);
        assert!(scoped.len() <= 63, "{scoped}");
        assert_ne!(scoped, scoped_name("chat_ephemeral", &"b".repeat(63)));
        assert_eq!(scoped_lock_key(7, "public"), 7);
        assert_ne!(scoped_lock_key(7, "chat_a"), scoped_lock_key(7, "chat_b"));
        assert_ne!(scoped_lock_key(7, "chat_a"), 7);
    }
}
