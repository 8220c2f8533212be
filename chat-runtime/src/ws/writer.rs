//! The writer of one WebSocket: owns the send half, the per-room cursors and
//! the bounded queue's consumer end. It turns live events into a contiguous
//! stream per room: it skips what the client has and fills gaps from the
//! database; subscriptions replay missed events before live ones.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, stream::SplitSink};
use serde_json::json;

use super::{
    outbox::{Item, Outbox, SubscribeRequest},
    protocol::{event_frame, reply},
    session::{CLOSE_RECONNECT, store_error_frame},
};
use crate::{
    app::AppState,
    hub::membership_ended,
    store::{RoomId, Seq, UserId},
};

type Sink = SplitSink<WebSocket, Message>;

/// Longest a single write may take: a peer that stops reading fills the
/// socket's buffers and then stalls writes; after this long it is
/// disconnected instead of pinning its queue and task forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the close frame (and the close itself) may take.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    /// The socket failed (the peer went away).
    #[error("socket: {0}")]
    Socket(#[from] axum::Error),
    /// Missed events could not be read to fill a gap.
    #[error("missed events could not be read ({0})")]
    Hole(String),
    /// A write did not complete within [`WRITE_TIMEOUT`].
    #[error("a write stalled for {}s: the peer stopped reading", WRITE_TIMEOUT.as_secs())]
    Stalled,
}

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriterEnd {
    /// The queue closed, or a close frame was sent.
    Closed,
    /// The socket failed.
    PeerGone,
    /// A write stalled past [`WRITE_TIMEOUT`]: a slow or dead peer.
    Stalled,
}

struct Writer {
    sink: Sink,
    state: AppState,
    user: UserId,
    cursors: HashMap<RoomId, Seq>,
}

impl Writer {
    async fn send(&mut self, text: Utf8Bytes, flush: bool) -> Result<(), WriteError> {
        let write = async {
            if flush {
                self.sink.send(Message::Text(text)).await
            } else {
                self.sink.feed(Message::Text(text)).await
            }
        };
        let mut write = std::pin::pin!(write);
        // Almost every write completes at once (the kernel takes it): only a
        // write that has to wait gets a timer, so fan-out of 100,000 frames
        // a second does not register 100,000 timers.
        if let std::task::Poll::Ready(result) = futures::poll!(write.as_mut()) {
            return Ok(result?);
        }
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(WriteError::Stalled),
        }
    }

    /// Sends a close frame (bounded by [`CLOSE_TIMEOUT`]; the socket is
    /// dropped either way).
    async fn close(&mut self, code: u16, reason: String) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sink.send(frame)).await;
    }

    /// After an event that ends this socket's user's membership: stop
    /// delivering the room and say so. Returns whether it ended.
    async fn ended(&mut self, room: RoomId, ends: Option<UserId>) -> Result<bool, WriteError> {
        if ends != Some(self.user) {
            return Ok(false);
        }
        // The fan-out already dropped this socket from the room (it sees
        // every event in order); the writer only stops writing it.
        self.cursors.remove(&room);
        self.send(
            reply(
                "unsubscribed",
                None,
                json!({"room": room, "reason": "membership_ended"}),
            )
            .into(),
            true,
        )
        .await?;
        Ok(true)
    }

    async fn event(
        &mut self,
        room: RoomId,
        seq: Seq,
        text: Utf8Bytes,
        ends: Option<UserId>,
        flush: bool,
    ) -> Result<(), WriteError> {
        let Some(&cursor) = self.cursors.get(&room) else {
            return Ok(());
        };
        if seq <= cursor {
            return Ok(());
        }
        if seq > cursor + 1 {
            // A gap (lost wake-up, overtaken pump): read it from the database.
            // Every seq below a committed one is committed, so a short read
            // is a hole: never skip it, have the client resume instead.
            let epoch = self.state.hub.epoch();
            let rows = match self
                .state
                .hub
                .store()
                .events_between(room, cursor, seq - 1)
                .await
            {
                Ok(rows) if rows.len() as i64 == seq - 1 - cursor => rows,
                Ok(rows) => {
                    return Err(WriteError::Hole(format!(
                        "room {room}: {} of the events {}..={} exist",
                        rows.len(),
                        cursor + 1,
                        seq - 1
                    )));
                }
                Err(e) => return Err(WriteError::Hole(format!("room {room}: {e}"))),
            };
            for r in rows {
                self.send(event_frame(room, r.seq, &epoch, &r.payload).into(), false)
                    .await?;
                self.state.metrics.deliveries.inc();
                self.cursors.insert(room, r.seq);
                if self.ended(room, membership_ended(&r.payload)).await? {
                    return Ok(());
                }
            }
        }
        self.send(text, flush).await?;
        self.state.metrics.deliveries.inc();
        self.cursors.insert(room, seq);
        self.ended(room, ends).await?;
        Ok(())
    }

    async fn subscribe(&mut self, req: SubscribeRequest) -> Result<(), WriteError> {
        let hub = self.state.hub.clone();
        let store = hub.store();
        let epoch = hub.epoch();
        let room = req.room;
        let last = match store.last_seq(room).await {
            Ok(l) => l,
            Err(e) => {
                return self
                    .send(store_error_frame(req.id.as_deref(), &e).into(), true)
                    .await;
            }
        };
        let limit = i64::from(self.state.config.resume_limit);
        let (recovered, reason, rows) = match (req.epoch.as_deref(), req.last_seq) {
            (Some(e), Some(ls)) if e == epoch && ls <= last => {
                match store.events_after(room, ls, limit + 1).await {
                    Ok(rows) if rows.len() as i64 > limit => {
                        (false, Some("too_far_behind"), Vec::new())
                    }
                    Ok(rows) if rows.first().is_some_and(|r| r.seq != ls + 1) => {
                        (false, Some("history_gone"), Vec::new())
                    }
                    Ok(rows) => (true, None, rows),
                    Err(e) => {
                        return self
                            .send(store_error_frame(req.id.as_deref(), &e).into(), true)
                            .await;
                    }
                }
            }
            (Some(_), Some(_)) => (false, Some("epoch_changed"), Vec::new()),
            _ => (false, Some("fresh"), Vec::new()),
        };
        self.state.metrics.resume(if recovered {
            "recovered"
        } else {
            reason.unwrap_or("fresh")
        });
        let from = if recovered {
            req.last_seq.unwrap_or(last)
        } else {
            last
        };
        let mut fields = json!({
            "room": room, "epoch": epoch, "last_seq": from, "recovered": recovered, "replayed": rows.len(),
            "room_last_seq": last,
        });
        if let Some(r) = reason {
            fields["reason"] = json!(r);
        }
        self.send(
            reply("subscribed", req.id.as_deref(), fields).into(),
            rows.is_empty(),
        )
        .await?;
        let mut cursor = from;
        let n = rows.len();
        for (i, r) in rows.into_iter().enumerate() {
            self.send(
                event_frame(room, r.seq, &epoch, &r.payload).into(),
                i + 1 == n,
            )
            .await?;
            self.state.metrics.deliveries.inc();
            cursor = r.seq;
            if membership_ended(&r.payload) == Some(self.user) {
                // Left (or was removed) while replaying: nothing after it.
                return self.ended(room, Some(self.user)).await.map(|_| ());
            }
        }
        self.cursors.insert(room, cursor);
        Ok(())
    }
}

/// Writes what the queue holds until it closes, a close frame is sent, the
/// socket fails, or a write stalls past [`WRITE_TIMEOUT`].
pub(super) async fn write_loop(
    sink: Sink,
    outbox: Arc<Outbox>,
    state: AppState,
    user: UserId,
) -> WriterEnd {
    let mut w = Writer {
        sink,
        state,
        user,
        cursors: HashMap::new(),
    };
    let mut end = WriterEnd::Closed;
    while let Some(item) = outbox.pop().await {
        let flush = outbox.is_empty();
        let sent = match item {
            Item::Event {
                room,
                seq,
                text,
                ends,
            } => Box::pin(w.event(room, seq, text, ends, flush)).await,
            Item::Reply(text) => w.send(text, flush).await,
            Item::Ephemeral(text, _) => w.send(text, flush).await,
            Item::Subscribe(req) => Box::pin(w.subscribe(*req)).await,
            Item::Reconnect(reason) => {
                w.close(CLOSE_RECONNECT, reason.into()).await;
                break;
            }
            Item::Close(code, reason) => {
                w.close(code, reason).await;
                break;
            }
        };
        match sent {
            Ok(()) => {}
            Err(WriteError::Stalled) => {
                tracing::info!("closing a socket whose peer stopped reading (write stalled)");
                end = WriterEnd::Stalled;
                break;
            }
            Err(WriteError::Socket(_)) => {
                end = WriterEnd::PeerGone;
                break;
            }
            Err(e @ WriteError::Hole(_)) => {
                // Never advance past a hole: the client resumes from what it
                // has, on this replica or another.
                tracing::warn!(error = %e, "closing a socket to fill a gap by resume");
                w.close(
                    CLOSE_RECONNECT,
                    "could not read missed events; reconnect and resume".into(),
                )
                .await;
                break;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, w.sink.close()).await;
    end
}
