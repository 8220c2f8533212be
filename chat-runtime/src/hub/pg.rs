//! The PostgreSQL broker: `NOTIFY chat_events` carries wake-ups, sent after
//! commit and coalesced (one NOTIFY every few milliseconds lists every room
//! that changed, `<room>:<seq>,...`), so notifying never serializes commits
//! (PostgreSQL holds a cluster-wide lock from a notifying transaction's
//! commit until it returns). `chat_ephemeral` carries typing and presence. A
//! dedicated connection listens (not a pooled one: LISTEN does not survive
//! transaction pooling). A wake-up lost in a crash is covered by the poll.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use sqlx::{PgPool, postgres::PgListener};

use super::{Broker, Hub};
use crate::store::{EVENTS_CHANNEL, RoomId, Seq};

/// Channel of typing and presence messages.
pub const EPHEMERAL_CHANNEL: &str = "chat_ephemeral";

/// How long wake-ups are gathered before one NOTIFY sends them.
const COALESCE: Duration = Duration::from_millis(2);
/// Pairs per NOTIFY (payloads stay well under 8000 bytes).
const PAIRS_PER_NOTIFY: usize = 300;

/// Publishes through NOTIFY on the pool.
pub struct PgBroker {
    pool: PgPool,
    wakeups: tokio::sync::mpsc::UnboundedSender<(RoomId, Seq)>,
}

impl PgBroker {
    /// A broker publishing on `pool` (spawns the coalescing notifier).
    pub fn new(pool: PgPool) -> Arc<Self> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(notifier(pool.clone(), rx));
        Arc::new(Self { pool, wakeups: tx })
    }
}

async fn notifier(pool: PgPool, mut rx: tokio::sync::mpsc::UnboundedReceiver<(RoomId, Seq)>) {
    while let Some((room, seq)) = rx.recv().await {
        let mut latest: std::collections::HashMap<RoomId, Seq> = [(room, seq)].into();
        let deadline = tokio::time::Instant::now() + COALESCE;
        while latest.len() < PAIRS_PER_NOTIFY {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((r, s))) => {
                    let e = latest.entry(r).or_insert(s);
                    *e = (*e).max(s);
                }
                _ => break,
            }
        }
        let payload = latest
            .iter()
            .map(|(r, s)| format!("{r}:{s}"))
            .collect::<Vec<_>>()
            .join(",");
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(EVENTS_CHANNEL)
            .bind(payload)
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "wake-up NOTIFY failed; other replicas catch up by polling");
        }
    }
}

impl Broker for PgBroker {
    fn publish_wakeup(&self, room: RoomId, seq: Seq) {
        let _ = self.wakeups.send((room, seq));
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

/// Parses a wake-up payload `<room>:<seq>[,<room>:<seq>...]`, skipping
/// malformed pairs.
pub fn parse_wakeups(payload: &str) -> Vec<(RoomId, Seq)> {
    payload
        .split(',')
        .filter_map(|pair| {
            let (room, seq) = pair.split_once(':')?;
            Some((room.parse().ok()?, seq.parse().ok()?))
        })
        .collect()
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
                        for (room, seq) in parse_wakeups(n.payload()) {
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
        assert_eq!(parse_wakeups("12:345"), vec![(12, 345)]);
        assert_eq!(parse_wakeups("12:345,7:1"), vec![(12, 345), (7, 1)]);
        assert_eq!(parse_wakeups("x:1,3:4,12"), vec![(3, 4)]);
    }
}
