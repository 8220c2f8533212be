//! The transport between replicas, both directions: [`Broker`] publishes
//! wake-ups and ephemeral messages and hands back a stream of what the other
//! replicas published ([`Inbound`]); [`receive`] feeds that stream to the
//! hub. Room events are durable in PostgreSQL, so the transport may be
//! at-most-once (NOTIFY, NATS core): whatever it drops, the poll after each
//! reconnection ([`Inbound::Resync`]) and the hub's timer poll read back.
//!
//! Wake-ups are coalesced on the way out ([`spawn_coalescer`]): one message
//! every few milliseconds lists every room that changed as
//! `<room>:<seq>[,<room>:<seq>...]`.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use tokio::sync::mpsc;

use super::Hub;
use crate::store::{RoomId, Seq};

/// How long wake-ups are gathered before one message sends them.
const COALESCE: Duration = Duration::from_millis(2);
/// Pairs per wake-up message (a NOTIFY payload stays well under its
/// 8000-byte limit).
const PAIRS_PER_MESSAGE: usize = 300;
/// Inbound messages buffered between a broker's receiver task and the hub.
const INBOUND_BUFFER: usize = 4096;

/// What a replica receives from the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Rooms with a committed event at (at least) the given seq.
    Wakeups(Vec<(RoomId, Seq)>),
    /// A typing or presence message (JSON of [`super::Ephemeral`]).
    Ephemeral(String),
    /// The transport (re)connected: messages may have been dropped while it
    /// was away, so every subscribed room is compared with the database.
    Resync,
}

/// Transport between replicas (PostgreSQL LISTEN/NOTIFY in [`super::pg`],
/// NATS in [`super::nats`]; chosen by `CHAT_BROKER`).
pub trait Broker: Send + Sync + 'static {
    /// Says a room event was committed (after the commit). May coalesce:
    /// receivers read every row above what they delivered anyway.
    fn publish_wakeup(&self, room: RoomId, seq: Seq);
    /// Sends an ephemeral message to every replica.
    fn publish_ephemeral(&self, message: String) -> BoxFuture<'_, ()>;
    /// What the other replicas publish, until the process ends. The
    /// implementation reconnects by itself and yields [`Inbound::Resync`]
    /// once subscribed, and again after every reconnection.
    fn subscribe(&self) -> BoxStream<'static, Inbound>;
}

/// Feeds `inbound` to `hub` until the stream ends: wake-ups to
/// [`Hub::wake`], ephemeral messages to [`Hub::on_ephemeral`], a resync to
/// [`Hub::poll`] (counted in `chat_broker_resyncs_total`).
pub async fn receive(hub: Arc<Hub>, mut inbound: BoxStream<'static, Inbound>) {
    while let Some(message) = inbound.next().await {
        match message {
            Inbound::Wakeups(pairs) => {
                for (room, seq) in pairs {
                    hub.wake(room, seq);
                }
            }
            Inbound::Ephemeral(text) => hub.on_ephemeral(&text),
            Inbound::Resync => {
                hub.metrics.broker_resyncs.inc();
                hub.poll().await;
            }
        }
    }
}

/// A channel whose receiving half is the stream [`Broker::subscribe`]
/// returns; the sending half goes to the broker's receiver task, which
/// stops when its send fails (the stream was dropped).
pub(crate) fn inbound_channel() -> (mpsc::Sender<Inbound>, BoxStream<'static, Inbound>) {
    let (tx, rx) = mpsc::channel(INBOUND_BUFFER);
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    (tx, stream.boxed())
}

/// Spawns the wake-up coalescer: gathers `(room, seq)` pairs for
/// [`COALESCE`] (or until [`PAIRS_PER_MESSAGE`] rooms), keeps each room's
/// highest seq, and calls `send` with the payload
/// `<room>:<seq>[,<room>:<seq>...]`. Sending outside the commit keeps
/// commits from waiting on the transport.
pub(crate) fn spawn_coalescer<F, Fut>(send: F) -> mpsc::UnboundedSender<(RoomId, Seq)>
where
    F: Fn(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(RoomId, Seq)>();
    tokio::spawn(async move {
        while let Some((room, seq)) = rx.recv().await {
            let mut latest: HashMap<RoomId, Seq> = [(room, seq)].into();
            let deadline = tokio::time::Instant::now() + COALESCE;
            while latest.len() < PAIRS_PER_MESSAGE {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((r, s))) => {
                        let e = latest.entry(r).or_insert(s);
                        *e = (*e).max(s);
                    }
                    _ => break,
                }
            }
            send(format_wakeups(&latest)).await;
        }
    });
    tx
}

/// `<room>:<seq>` pairs joined by commas.
fn format_wakeups(latest: &HashMap<RoomId, Seq>) -> String {
    latest
        .iter()
        .map(|(r, s)| format!("{r}:{s}"))
        .collect::<Vec<_>>()
        .join(",")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakeups_parse() {
        assert_eq!(parse_wakeups("12:345"), vec![(12, 345)]);
        assert_eq!(parse_wakeups("12:345,7:1"), vec![(12, 345), (7, 1)]);
        assert_eq!(parse_wakeups("x:1,3:4,12"), vec![(3, 4)]);
    }

    #[test]
    fn wakeups_format_and_parse_back() {
        let latest: HashMap<RoomId, Seq> = [(1, 10), (2, 20)].into();
        let mut back = parse_wakeups(&format_wakeups(&latest));
        back.sort();
        assert_eq!(back, vec![(1, 10), (2, 20)]);
    }

    #[tokio::test]
    async fn the_coalescer_keeps_each_rooms_highest_seq() {
        let (out, mut got) = mpsc::unbounded_channel();
        let tx = spawn_coalescer(move |payload| {
            let out = out.clone();
            async move {
                let _ = out.send(payload);
            }
        });
        for (room, seq) in [(1, 5), (1, 7), (2, 3), (1, 6)] {
            tx.send((room, seq)).unwrap();
        }
        let mut pairs = parse_wakeups(&got.recv().await.unwrap());
        pairs.sort();
        assert_eq!(pairs, vec![(1, 7), (2, 3)]);
    }
}
