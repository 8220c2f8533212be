//! One WebSocket: a reader that handles client frames in order, and a writer
//! that owns the socket's send half, its per-room cursors and its bounded
//! queue. The writer turns live events into a contiguous stream per room: it
//! skips what the client has and fills gaps from the database.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt, stream::SplitSink};
use serde_json::json;

use super::{
    outbox::{Item, Outbox, SubscribeRequest},
    protocol::{ClientFrame, PresenceStatus, decode, error_frame, event_frame, reply},
};
use crate::{
    app::AppState,
    auth::Principal,
    hub::{SessionId, Status, membership_ended},
    store::{
        RoomId, Seq, StoreError, UserId,
        events::{NewMessage, validate_message},
    },
};

/// Close code asking the client to reconnect and resume (drain, overflow,
/// epoch change, missed pings).
pub const CLOSE_RECONNECT: u16 = 4000;
/// Close code for an unusable or logged-out token.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Frames queued per socket before it is closed as too slow.
pub const QUEUE_FRAMES: usize = 1024;
/// Bytes queued per socket before it is closed as too slow.
pub const QUEUE_BYTES: usize = 1 << 20;
/// How often the server pings.
pub const PING_EVERY: Duration = Duration::from_secs(25);
/// Silence after which a peer is considered dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(60);

fn store_error_frame(id: Option<&str>, e: &StoreError) -> String {
    let code = match e {
        StoreError::NotFound(_) => "not_found",
        StoreError::Forbidden(_) => "forbidden",
        StoreError::Conflict(_) => "conflict",
        StoreError::Invalid(_) => "invalid",
        StoreError::Db(_) => "internal",
    };
    let message = match e {
        StoreError::Db(err) => {
            tracing::error!(error = %err, "database error while handling a frame");
            "internal error; retry".to_string()
        }
        other => other.to_string(),
    };
    error_frame(id, code, &message, None)
}

/// Runs a socket to completion.
pub async fn run(socket: WebSocket, state: AppState, principal: Principal) {
    let outbox = Arc::new(Outbox::new(QUEUE_FRAMES, QUEUE_BYTES));
    let hub = state.hub.clone();
    let sid = hub.open_session(principal.user.clone(), outbox.clone());
    state.metrics.connections.inc();
    state.metrics.connections_total.inc();
    let (sink, mut stream) = socket.split();
    outbox.push(Item::Reply(
        reply(
            "hello",
            None,
            json!({
                "user": principal.user,
                "epoch": hub.epoch(),
                "server": hub.pod(),
                "ping_interval_ms": PING_EVERY.as_millis() as u64,
                "max_message_bytes": state.config.limits.max_message_bytes,
            }),
        )
        .into(),
    ));
    let mut writer = tokio::spawn(write_loop(
        sink,
        outbox.clone(),
        state.clone(),
        principal.user.id,
    ));

    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_seen = Instant::now();
    loop {
        tokio::select! {
            msg = stream.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) if e.to_string().contains("too long") => {
                        // Above the frame limit: say so with 1009, then close.
                        state.metrics.bad_frames.inc();
                        outbox.push(Item::Close(1009, format!(
                            "frame too large: the limit is {} bytes",
                            state.config.limits.max_message_bytes as usize * 2 + 64 * 1024
                        )));
                        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
                        break;
                    }
                    _ => break,
                };
                last_seen = Instant::now();
                match msg {
                    Message::Text(text) => {
                        // Boxed: the handler's futures (database calls) are large, and
                        // an idle socket should not carry them around.
                        Box::pin(handle_text(&state, sid, &principal, &outbox, text.as_str())).await;
                    }
                    Message::Binary(_) => {
                        state.metrics.bad_frames.inc();
                        outbox.push(Item::Reply(error_frame(None, "bad_frame", "binary frames are not supported: send JSON text frames", None).into()));
                    }
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > DEAD_AFTER {
                    state.metrics.slow_disconnects.inc();
                    outbox.push(Item::Reconnect("no frame from the client for 60s"));
                } else {
                    outbox.push(Item::Reply(reply("ping", None, json!({})).into()));
                }
            }
            _ = &mut writer => break,
        }
    }
    outbox.close();
    hub.close_session(sid);
    state.metrics.connections.dec();
    if !writer.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        writer.abort();
    }
}

async fn handle_text(
    state: &AppState,
    sid: SessionId,
    principal: &Principal,
    outbox: &Arc<Outbox>,
    text: &str,
) {
    let frame = match decode(text) {
        Ok(f) => f,
        Err(e) => {
            state.metrics.bad_frames.inc();
            outbox.push(Item::Reply(
                error_frame(e.id.as_deref(), e.code, &e.message, None).into(),
            ));
            return;
        }
    };
    let store = state.hub.store();
    let user = &principal.user;
    let answer = |frame: String| {
        outbox.push(Item::Reply(frame.into()));
    };
    match frame {
        ClientFrame::Subscribe {
            id,
            room,
            epoch,
            last_seq,
        } => {
            if let Err(e) = store.require_member(room, user.id).await {
                return answer(store_error_frame(id.as_deref(), &e));
            }
            if state.hub.subscription_count(sid) >= 500 && !state.hub.is_subscribed(sid, room) {
                return answer(error_frame(
                    id.as_deref(),
                    "invalid",
                    "at most 500 rooms per connection",
                    None,
                ));
            }
            if let Err(e) = state.hub.subscribe(sid, room).await {
                return answer(store_error_frame(id.as_deref(), &e));
            }
            // Membership may have ended between the check above and the
            // subscription (the fan-out unsubscribes only sockets it knows).
            if let Err(e) = store.require_member(room, user.id).await {
                state.hub.unsubscribe(sid, room);
                return answer(store_error_frame(id.as_deref(), &e));
            }
            outbox.push(Item::Subscribe(Box::new(SubscribeRequest {
                id,
                room,
                epoch,
                last_seq,
            })));
        }
        ClientFrame::Unsubscribe { id, room } => {
            state.hub.unsubscribe(sid, room);
            answer(reply("unsubscribed", id.as_deref(), json!({"room": room})));
        }
        ClientFrame::Send {
            id,
            room,
            client_msg_id,
            body,
            thread_root,
            attachments,
        } => {
            if let Err(retry) = state.limiter.check(user.id) {
                state.metrics.rate_limited.inc();
                return answer(error_frame(
                    id.as_deref(),
                    "rate_limited",
                    &format!(
                        "too many messages: at most {} per second; retry in {retry} ms",
                        state.config.limits.messages_per_second
                    ),
                    Some(retry),
                ));
            }
            let m = NewMessage {
                client_msg_id,
                body,
                thread_root,
                attachments,
            };
            if let Err(e) = validate_message(&m, state.config.limits.max_message_bytes as usize) {
                state.metrics.bad_frames.inc();
                return answer(store_error_frame(id.as_deref(), &e));
            }
            // Queued in order, acked when stored: the reader moves on, so a
            // client may pipeline sends; its messages keep their order.
            let started = Instant::now();
            let rx = match state.committer.enqueue(room, user.clone(), m) {
                Ok(rx) => rx,
                Err(e) => return answer(store_error_frame(id.as_deref(), &e)),
            };
            let (state, outbox) = (state.clone(), outbox.clone());
            tokio::spawn(async move {
                let result = rx.await.unwrap_or_else(|_| {
                    Err(StoreError::Invalid(
                        "the send was dropped; retry with the same client_msg_id".into(),
                    ))
                });
                let frame = match result {
                    Ok(ack) => {
                        state
                            .metrics
                            .db_latency
                            .observe(started.elapsed().as_secs_f64());
                        if ack.duplicate {
                            state.metrics.duplicate_sends.inc();
                        } else {
                            state.metrics.messages_in.inc();
                            state.hub.committed(room, ack.seq);
                        }
                        reply(
                            "ack",
                            id.as_deref(),
                            json!({"room": room, "seq": ack.seq, "client_msg_id": ack.client_msg_id, "duplicate": ack.duplicate}),
                        )
                    }
                    Err(e) => store_error_frame(id.as_deref(), &e),
                };
                outbox.push(Item::Reply(frame.into()));
            });
        }
        ClientFrame::Edit {
            id,
            room,
            seq,
            body,
        } => {
            let result = store
                .edit(
                    room,
                    user,
                    seq,
                    &body,
                    state.config.limits.max_message_bytes as usize,
                )
                .await;
            ack_event(state, outbox, id.as_deref(), room, result.map(Some));
        }
        ClientFrame::Delete { id, room, seq } => {
            let result = store.delete(room, user, seq).await;
            ack_event(state, outbox, id.as_deref(), room, result.map(Some));
        }
        ClientFrame::React {
            id,
            room,
            seq,
            emoji,
            on,
        } => {
            let result = store.react(room, user, seq, &emoji, on).await;
            ack_event(state, outbox, id.as_deref(), room, result);
        }
        ClientFrame::Read { id, room, seq } => match store.mark_read(room, user.id, seq).await {
            Ok(read) => answer(reply(
                "read",
                id.as_deref(),
                json!({"room": room, "last_read_seq": read}),
            )),
            Err(e) => answer(store_error_frame(id.as_deref(), &e)),
        },
        ClientFrame::Typing { room } => {
            if state.hub.is_subscribed(sid, room) {
                state.hub.typing(room, user).await;
            } else {
                answer(error_frame(
                    None,
                    "invalid",
                    &format!("subscribe to room {room} before sending typing"),
                    None,
                ));
            }
        }
        ClientFrame::Presence { status } => {
            state.hub.set_status(
                sid,
                match status {
                    PresenceStatus::Online => Status::Online,
                    PresenceStatus::Away => Status::Away,
                },
            );
        }
        ClientFrame::Ping { id } => answer(reply("pong", id.as_deref(), json!({}))),
        ClientFrame::Pong { .. } => {}
    }
}

fn ack_event(
    state: &AppState,
    outbox: &Outbox,
    id: Option<&str>,
    room: RoomId,
    result: Result<Option<Seq>, StoreError>,
) {
    let frame = match result {
        Ok(Some(seq)) => {
            state.hub.committed(room, seq);
            reply("ack", id, json!({"room": room, "seq": seq}))
        }
        Ok(None) => reply(
            "ack",
            id,
            json!({"room": room, "seq": null, "unchanged": true}),
        ),
        Err(e) => store_error_frame(id, &e),
    };
    outbox.push(Item::Reply(frame.into()));
}

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

async fn write_loop(sink: Sink, outbox: Arc<Outbox>, state: AppState, user: UserId) {
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
