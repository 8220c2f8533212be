//! The PostgreSQL broker: `NOTIFY chat_events` carries wake-ups, sent after
//! commit and coalesced ([`super::broker::spawn_coalescer`]), so notifying
//! never serializes commits (PostgreSQL holds a cluster-wide lock from a
//! notifying transaction's commit until it returns). `chat_ephemeral`
//! carries typing and presence. A dedicated connection listens (not a pooled
//! one: LISTEN does not survive transaction pooling). A wake-up lost in a
//! crash is covered by the poll. Channels are per database: when the tables
//! live in a schema other than `public` (tenants sharing a database), both
//! names carry the schema ([`crate::store::scoped_name`]).

use std::{sync::Arc, time::Duration};

use futures::{future::BoxFuture, stream::BoxStream};
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::mpsc;

use super::broker::{Broker, Inbound, inbound_channel, parse_wakeups, spawn_coalescer};
use crate::store::{EVENTS_CHANNEL, RoomId, Seq, scoped_name};

/// Channel of typing and presence messages.
pub const EPHEMERAL_CHANNEL: &str = "chat_ephemeral";

/// The two channel names of one tenant.
#[derive(Clone, Debug)]
struct Channels {
    events: Arc<str>,
    ephemeral: Arc<str>,
}

/// Publishes through NOTIFY on the pool; receives on its own LISTEN
/// connection.
pub struct PgBroker {
    pool: PgPool,
    channels: Channels,
    wakeups: mpsc::UnboundedSender<(RoomId, Seq)>,
}

impl PgBroker {
    /// A broker publishing on `pool`, whose tables live in `schema`
    /// ([`crate::store::Store::schema`]); spawns the coalescing notifier.
    pub fn new(pool: PgPool, schema: &str) -> Arc<Self> {
        let channels = Channels {
            events: scoped_name(EVENTS_CHANNEL, schema).into(),
            ephemeral: scoped_name(EPHEMERAL_CHANNEL, schema).into(),
        };
        let notify_pool = pool.clone();
        let events = channels.events.clone();
        let wakeups =
            spawn_coalescer(move |payload| notify(notify_pool.clone(), events.clone(), payload));
        Arc::new(Self {
            pool,
            channels,
            wakeups,
        })
    }
}

async fn notify(pool: PgPool, channel: Arc<str>, payload: String) {
    if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
        .bind(&*channel)
        .bind(payload)
        .execute(&pool)
        .await
    {
        tracing::debug!(error = %e, "wake-up NOTIFY failed; other replicas catch up by polling");
    }
}

impl Broker for PgBroker {
    fn publish_wakeup(&self, room: RoomId, seq: Seq) {
        let _ = self.wakeups.send((room, seq));
    }

    fn publish_ephemeral(&self, message: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&*self.channels.ephemeral)
                .bind(message)
                .execute(&self.pool)
                .await
            {
                tracing::debug!(error = %e, "ephemeral publish failed (typing/presence may be late)");
            }
        })
    }

    fn subscribe(&self) -> BoxStream<'static, Inbound> {
        let (tx, stream) = inbound_channel();
        tokio::spawn(listen(self.pool.clone(), self.channels.clone(), tx));
        stream
    }
}

/// Listens until `to` is dropped. After a lost connection (the listener
/// reconnects by itself) it asks for a resync, so nothing is missed.
async fn listen(pool: PgPool, channels: Channels, to: mpsc::Sender<Inbound>) {
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
            .listen_all([&*channels.events, &*channels.ephemeral])
            .await
        {
            tracing::warn!(error = %e, "LISTEN failed; retrying in 1s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if to.send(Inbound::Resync).await.is_err() {
            return;
        }
        loop {
            let message = match listener.try_recv().await {
                Ok(Some(n)) if n.channel() == &*channels.events => {
                    Inbound::Wakeups(parse_wakeups(n.payload()))
                }
                Ok(Some(n)) => Inbound::Ephemeral(n.payload().to_string()),
                Ok(None) => {
                    tracing::warn!(
                        "LISTEN connection was lost and re-established; polling for missed events"
                    );
                    Inbound::Resync
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN receive failed; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            };
            if to.send(message).await.is_err() {
                return;
            }
        }
    }
}
