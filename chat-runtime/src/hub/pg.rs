//! The PostgreSQL broker: `LISTEN chat_events` for wake-ups (sent with
//! `NOTIFY` inside each event's transaction, so they arrive in commit order)
//! and `chat_ephemeral` for typing and presence. A dedicated connection
//! listens (not a pooled one: LISTEN does not survive transaction pooling).

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use sqlx::{PgPool, postgres::PgListener};

use super::{Broker, Hub};
use crate::store::{EVENTS_CHANNEL, RoomId, Seq};

/// Channel of typing and presence messages.
pub const EPHEMERAL_CHANNEL: &str = "chat_ephemeral";

/// Publishes through NOTIFY on the pool.
pub struct PgBroker {
    pool: PgPool,
}

impl PgBroker {
    /// A broker publishing on `pool`.
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self { pool })
    }
}

impl Broker for PgBroker {
    fn publish_wakeup(&self, _room: RoomId, _seq: Seq) -> BoxFuture<'_, ()> {
        // Sent by the event's own transaction (store::append_event).
        Box::pin(async {})
    }

    fn publish_ephemeral(&self, message: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EPHEMERAL_CHANNEL)
                .bind(message)
                .execute(&self.pool)
                .await
            {
                tracing::debug!(error = %e, "ephemeral publish failed (typing/presence may be late)");
            }
        })
    }
}

/// Parses a wake-up payload `<room>:<seq>`.
pub fn parse_wakeup(payload: &str) -> Option<(RoomId, Seq)> {
    let (room, seq) = payload.split_once(':')?;
    Some((room.parse().ok()?, seq.parse().ok()?))
}

/// Listens until the process ends, feeding the hub. After a lost connection
/// (the listener reconnects by itself) the hub polls, so nothing is missed.
pub async fn listen(pool: PgPool, hub: Arc<Hub>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; retrying in 1s (fan-out falls back to polling)");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all([EVENTS_CHANNEL, EPHEMERAL_CHANNEL])
            .await
        {
            tracing::warn!(error = %e, "LISTEN failed; retrying in 1s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        hub.poll().await;
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    if n.channel() == EVENTS_CHANNEL {
                        if let Some((room, seq)) = parse_wakeup(n.payload()) {
                            hub.wake(room, seq);
                        }
                    } else {
                        hub.on_ephemeral(n.payload());
                    }
                }
                Ok(None) => {
                    tracing::warn!(
                        "LISTEN connection was lost and re-established; polling for missed events"
                    );
                    hub.poll().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN receive failed; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakeups_parse() {
        assert_eq!(parse_wakeup("12:345"), Some((12, 345)));
        assert_eq!(parse_wakeup("x:1"), None);
        assert_eq!(parse_wakeup("12"), None);
    }
}
