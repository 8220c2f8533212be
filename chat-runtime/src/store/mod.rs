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

/// Channel carrying `<room>:<seq>[,<room>:<seq>...]` wake-ups after commits.
pub const EVENTS_CHANNEL: &str = "chat_events";

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
        let options: PgConnectOptions = url.parse()?;
        let options = options.application_name("chat-runtime");
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

    /// Applies pending migrations. sqlx holds a PostgreSQL advisory lock
    /// while it migrates, so replicas starting together apply each migration
    /// once.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
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
        let timeline: Option<(i32,)> =
            sqlx::query_as("SELECT timeline_id FROM pg_control_checkpoint()")
                .fetch_one(&self.pool)
                .await
                .ok();
        let mut h = Sha256::new();
        h.update(instance.as_bytes());
        h.update(oid.to_be_bytes());
        if let Some((t,)) = timeline {
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
