//! The NATS broker: wake-ups on `<prefix>.wakeup` (coalesced, same payload
//! as the PostgreSQL broker's), typing and presence on `<prefix>.ephemeral`,
//! where the prefix (`CHAT_NATS_SUBJECT_PREFIX`, default `chorus.<tenant>`)
//! keeps tenants sharing a NATS server apart. NATS core is at-most-once and
//! drops what is published while a replica is disconnected, so every
//! (re)connection yields [`Inbound::Resync`]: the hub compares each
//! subscribed room with PostgreSQL, where the events are durable. Source of
//! the delivery guarantee: <https://docs.nats.io/nats-concepts/core-nats>.

use std::{sync::Arc, time::Duration};

use async_nats::{Client, ConnectOptions, Event, Subscriber, connection::State};
use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use tokio::sync::{mpsc, watch};

use super::broker::{Broker, Inbound, inbound_channel, parse_wakeups, spawn_coalescer};
use crate::config::NatsAuth;
use crate::store::{RoomId, Seq};

/// Longest wait for the client to take a message (its outgoing buffer is
/// bounded): past it the message is dropped, never a session held up.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);

/// Publishes `payload` on `subject` unless the connection is down (then it is
/// dropped: receivers catch up from PostgreSQL after the reconnection), so a
/// NATS outage never blocks the wake-up coalescer or a typing socket.
async fn publish(client: &Client, subject: &str, payload: String, what: &str) {
    if client.connection_state() != State::Connected {
        tracing::debug!(
            what,
            "NATS is not connected; dropping the message (receivers catch up)"
        );
        return;
    }
    match tokio::time::timeout(
        PUBLISH_TIMEOUT,
        client.publish(subject.to_string(), payload.into()),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, what, "NATS publish failed (receivers catch up)"),
        Err(_) => tracing::debug!(what, "NATS publish timed out (receivers catch up)"),
    }
}

/// A NATS connection problem at start-up.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to CHAT_NATS_URL {url}: {source}")]
pub struct NatsError {
    /// The configured server list.
    pub url: String,
    /// What the client said.
    #[source]
    pub source: async_nats::ConnectError,
}

/// Publishes and subscribes on one NATS connection (the client reconnects by
/// itself, forever; start-up does not wait for the server).
pub struct NatsBroker {
    client: Client,
    ephemeral_subject: String,
    wakeup_subject: String,
    wakeups: mpsc::UnboundedSender<(RoomId, Seq)>,
    /// Counts connections (initial and every reconnection).
    connections: watch::Receiver<u64>,
}

impl NatsBroker {
    /// Connects to `url` (one server or a comma-separated list, `nats://` or
    /// `tls://`) and publishes under `prefix` (`<prefix>.wakeup`,
    /// `<prefix>.ephemeral`). `name` (the replica) shows in the server's
    /// connection list; `auth` is how it logs in. Errors: an unusable URL.
    /// Refused credentials are not an error here: the client keeps
    /// retrying and logs each refusal (`NATS event` with the server's
    /// `Authorization Violation`).
    pub async fn connect(
        url: &str,
        prefix: &str,
        name: &str,
        auth: &NatsAuth,
    ) -> Result<Arc<Self>, NatsError> {
        let (connected, connections) = watch::channel(0u64);
        let servers: Vec<&str> = url.split(',').map(str::trim).collect();
        let options = match auth {
            NatsAuth::None => ConnectOptions::new(),
            NatsAuth::Token(token) => ConnectOptions::with_token(token.clone()),
            NatsAuth::UserPassword { user, password } => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
        };
        let client = options
            .name(name)
            // Own messages are not needed: the replica delivered them already.
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    match event {
                        Event::Connected => {
                            connected.send_modify(|n| *n += 1);
                            tracing::info!("connected to NATS");
                        }
                        Event::Disconnected => tracing::warn!(
                            "NATS connection lost; reconnecting (fan-out falls back to polling)"
                        ),
                        // A refused login (`Authorization Violation`) or a
                        // client-side problem: the operator must see it.
                        Event::ServerError(_) | Event::ClientError(_) => {
                            tracing::warn!(event = %event, "NATS error")
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            })
            .connect(servers.as_slice())
            .await
            .map_err(|source| NatsError {
                url: url.to_string(),
                source,
            })?;
        let wakeup_subject = format!("{prefix}.wakeup");
        let publisher = client.clone();
        let subject = wakeup_subject.clone();
        let wakeups = spawn_coalescer(move |payload: String| {
            let publisher = publisher.clone();
            let subject = subject.clone();
            async move { publish(&publisher, &subject, payload, "wake-up").await }
        });
        Ok(Arc::new(Self {
            client,
            ephemeral_subject: format!("{prefix}.ephemeral"),
            wakeup_subject,
            wakeups,
            connections,
        }))
    }
}

impl Broker for NatsBroker {
    fn publish_wakeup(&self, room: RoomId, seq: Seq) {
        let _ = self.wakeups.send((room, seq));
    }

    fn publish_ephemeral(&self, message: String) -> BoxFuture<'_, ()> {
        Box::pin(publish(
            &self.client,
            &self.ephemeral_subject,
            message,
            "ephemeral",
        ))
    }

    fn subscribe(&self) -> BoxStream<'static, Inbound> {
        let (tx, stream) = inbound_channel();
        tokio::spawn(receive(
            self.client.clone(),
            self.wakeup_subject.clone(),
            self.ephemeral_subject.clone(),
            self.connections.clone(),
            tx,
        ));
        stream
    }
}

/// Subscribes both subjects and forwards what arrives until `to` is dropped;
/// yields a resync once subscribed and after every reconnection (the client
/// re-subscribes by itself).
async fn receive(
    client: Client,
    wakeup_subject: String,
    ephemeral_subject: String,
    mut connections: watch::Receiver<u64>,
    to: mpsc::Sender<Inbound>,
) {
    let (wakeups, ephemeral) = loop {
        match subscribe_both(&client, &wakeup_subject, &ephemeral_subject).await {
            Ok(subs) => break subs,
            Err(e) => {
                tracing::warn!(error = %e, "NATS subscribe failed; retrying in 1s (fan-out falls back to polling)");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let mut messages = futures::stream::select(
        wakeups.map(|m| Inbound::Wakeups(parse_wakeups(&String::from_utf8_lossy(&m.payload)))),
        ephemeral.map(|m| Inbound::Ephemeral(String::from_utf8_lossy(&m.payload).into_owned())),
    );
    connections.mark_changed();
    loop {
        let message = tokio::select! {
            changed = connections.changed() => match changed {
                Ok(()) => Inbound::Resync,
                Err(_) => return,
            },
            next = messages.next() => match next {
                Some(m) => m,
                None => return,
            },
        };
        if to.send(message).await.is_err() {
            return;
        }
    }
}

async fn subscribe_both(
    client: &Client,
    wakeup_subject: &str,
    ephemeral_subject: &str,
) -> Result<(Subscriber, Subscriber), async_nats::SubscribeError> {
    Ok((
        client.subscribe(wakeup_subject.to_string()).await?,
        client.subscribe(ephemeral_subject.to_string()).await?,
    ))
}
