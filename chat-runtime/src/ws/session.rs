//! One WebSocket: a reader that handles client frames in order, and a writer
//! ([`super::writer`]) that owns the socket's send half, its per-room
//! cursors and its bounded queue.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::extract::ws::{Message, WebSocket};
use futures::StreamExt;
use serde_json::json;

use super::{
    ack_order::AckOrder,
    outbox::{Item, Outbox, SubscribeRequest},
    protocol::{ClientFrame, PresenceStatus, decode, error_frame, reply},
    throttle::Throttle,
    writer::{CLOSE_TIMEOUT, WriterEnd},
};
use crate::{
    app::AppState,
    auth::Principal,
    hub::{SessionId, Status},
    store::{
        RoomId, Seq, StoreError,
        events::{NewMessage, validate_message},
    },
};

/// Close code asking the client to reconnect and resume (drain, overflow,
/// epoch change, missed pings).
pub const CLOSE_RECONNECT: u16 = 4000;
/// Close code sent when the connection's token expires (at its `exp`).
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Frames queued per socket before it is closed as too slow.
pub const QUEUE_FRAMES: usize = 1024;
/// Bytes queued per socket before it is closed as too slow.
pub const QUEUE_BYTES: usize = 1 << 20;
/// How often the server pings.
pub const PING_EVERY: Duration = Duration::from_secs(25);
/// Silence after which a peer is considered dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(60);

/// An error frame for a storage refusal or failure (failures are logged,
/// never detailed to the client).
pub(super) fn store_error_frame(id: Option<&str>, e: &StoreError) -> String {
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

/// Time from now until a Unix time in seconds (zero when it has passed).
fn until_unix(at: i64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Duration::from_secs(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
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
    let mut writer = tokio::spawn(super::writer::write_loop(
        sink,
        outbox.clone(),
        state.clone(),
        principal.user.id,
    ));

    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_seen = Instant::now();
    let mut throttle = Throttle::default();
    let mut acks = AckOrder::default();
    let mut silent = false;
    let mut expired = false;
    let mut ended: Option<WriterEnd> = None;
    // The token's lifetime is the connection's: at `exp` it closes with 4001.
    let expiry = tokio::time::sleep(until_unix(principal.exp));
    tokio::pin!(expiry);
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
                        break;
                    }
                    _ => break,
                };
                last_seen = Instant::now();
                match msg {
                    Message::Text(text) => {
                        // Boxed: the handler's futures (database calls) are large, and
                        // an idle socket should not carry them around.
                        Box::pin(handle_text(&state, sid, &principal, &outbox, &mut throttle, &mut acks, text.as_str())).await;
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
                    // Dead peer: queue the reconnect close and stop reading;
                    // the writer gets CLOSE_TIMEOUT to send it, then goes.
                    silent = true;
                    outbox.push(Item::Reconnect("no frame from the client for 60s"));
                    break;
                } else {
                    outbox.push(Item::Reply(reply("ping", None, json!({})).into()));
                }
            }
            _ = &mut expiry => {
                expired = true;
                outbox.push(Item::Close(
                    CLOSE_UNAUTHORIZED,
                    "token expired: log in again, then reconnect".into(),
                ));
                break;
            }
            end = &mut writer => {
                ended = Some(end.unwrap_or(WriterEnd::PeerGone));
                break;
            }
        }
    }
    outbox.close();
    hub.close_session(sid);
    if ended.is_none() {
        // Let the writer flush what is queued (a close frame, typically);
        // a writer stuck on a peer that does not read is aborted.
        ended = match tokio::time::timeout(CLOSE_TIMEOUT, &mut writer).await {
            Ok(end) => Some(end.unwrap_or(WriterEnd::PeerGone)),
            Err(_) => {
                writer.abort();
                Some(WriterEnd::Stalled)
            }
        };
    }
    let reason = if silent {
        "no frame from the client in time"
    } else if ended == Some(WriterEnd::Stalled) {
        "write stalled"
    } else if outbox.overflowed() {
        "queue overflowed"
    } else if expired {
        "token expired"
    } else {
        "closed"
    };
    if !matches!(reason, "closed" | "token expired") {
        state.metrics.slow_disconnects.inc();
    }
    state.metrics.connections.dec();
    tracing::info!(user = principal.user.id, reason, "websocket closed");
}

async fn handle_text(
    state: &AppState,
    sid: SessionId,
    principal: &Principal,
    outbox: &Arc<Outbox>,
    throttle: &mut Throttle,
    acks: &mut AckOrder,
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
            let mut turn = acks.take_turn();
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
                turn.wait().await;
                outbox.push(Item::Reply(frame.into()));
                turn.done();
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
        ClientFrame::Typing { id, room } => {
            if state.hub.is_subscribed(sid, room) {
                if throttle.typing(room, Instant::now()) {
                    state.hub.typing(room, user).await;
                }
            } else {
                answer(error_frame(
                    id.as_deref(),
                    "invalid",
                    &format!("subscribe to room {room} before sending typing"),
                    None,
                ));
            }
        }
        ClientFrame::Presence { status, .. } => {
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
