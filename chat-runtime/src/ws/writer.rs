//! The writer of one WebSocket: owns the send half, the per-room cursors and
//! the bounded queue's consumer end. It turns live events into a contiguous
//! stream per room: it skips what the client has and fills gaps from the
//! database; subscriptions replay missed events before live ones.

use std::{collections::HashMap, sync::Arc};

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

struct Writer {
    sink: Sink,
    state: AppState,
    user: UserId,
    cursors: HashMap<RoomId, Seq>,
}

impl Writer {
    async fn send(&mut self, text: Utf8Bytes, flush: bool) -> Result<(), axum::Error> {
        if flush {
            self.sink.send(Message::Text(text)).await
        } else {
            self.sink.feed(Message::Text(text)).await
        }
    }

    /// After an event that ends this socket's user's membership: stop
    /// delivering the room and say so. Returns whether it ended.
    async fn ended(&mut self, room: RoomId, ends: Option<UserId>) -> Result<bool, axum::Error> {
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
    ) -> Result<(), axum::Error> {
        let Some(&cursor) = self.cursors.get(&room) else {
            return Ok(());
        };
        if seq <= cursor {
            return Ok(());
        }
        if seq > cursor + 1 {
            // A gap (lost wake-up, overtaken pump): read it from the database.
            let epoch = self.state.hub.epoch();
            if let Ok(rows) = self
                .state
                .hub
                .store()
                .events_between(room, cursor, seq - 1)
                .await
            {
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
        }
        self.send(text, flush).await?;
        self.state.metrics.deliveries.inc();
        self.cursors.insert(room, seq);
        self.ended(room, ends).await?;
        Ok(())
    }

    async fn subscribe(&mut self, req: SubscribeRequest) -> Result<(), axum::Error> {
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

/// Writes what the queue holds until it closes or the socket fails.
pub(super) async fn write_loop(sink: Sink, outbox: Arc<Outbox>, state: AppState, user: UserId) {
    let mut w = Writer {
        sink,
        state,
        user,
        cursors: HashMap::new(),
    };
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
                let _ = w
                    .sink
                    .send(Message::Close(Some(CloseFrame {
                        code: CLOSE_RECONNECT,
                        reason: reason.into(),
                    })))
                    .await;
                break;
            }
            Item::Close(code, reason) => {
                let _ = w
                    .sink
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
                break;
            }
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = w.sink.close().await;
}
