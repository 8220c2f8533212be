//! One WebSocket: a reader that decodes client frames in order and hands
//! them to the chat service ([`crate::chat::Chat`]) or, for subscriptions,
//! typing and presence, to the hub; and a writer (`super::writer`) that owns
//! the socket's send half, its per-room cursors and its bounded queue. The
//! reader never writes to the socket: every answer goes through the queue.

use std::{
    borrow::Cow,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures::StreamExt;
use tracing::{Instrument, Span};

use super::{
    ack_order::AckOrder,
    chat_error_frame, store_error_frame,
    throttle::Throttle,
    writer::{CLOSE_TIMEOUT, WriterContext, WriterEnd, write_loop},
};
use crate::{
    auth::Principal,
    hub::{
        SessionId, Status, Subscription,
        outbox::{Item, Outbox, SubscribeRequest},
    },
    metrics::CloseClass,
    protocol::{
        ClientFrame, ErrorCode, PresenceStatus, ServerFrame, close, decode, encode, scan_id,
    },
    state::AppState,
    store::{RoomId, Seq, StoreResult, events::NewMessage},
    telemetry::TRACE_TARGET,
};

/// Frames queued per socket before it is closed as too slow.
///
/// Four times [`crate::committer::MAX_BATCH`]: one group commit can hand a
/// room's subscribers up to that many events at once, so a bound of one
/// batch (1,024 before) closed readers that were a single commit behind. In
/// `make bench`'s durable throughput scenario (100 rooms, 34,000 acked
/// sends/s) a reader about 3 s behind on the saturated 2-core machine was
/// closed at 1,024. With frames of about 250 bytes, [`QUEUE_BYTES`] is now
/// the bound that is met first, as in Centrifugo (`client_queue_max_size`,
/// 1 MiB by default).
pub const QUEUE_FRAMES: usize = 4 * crate::committer::MAX_BATCH;
/// Bytes queued per socket before it is closed as too slow.
pub const QUEUE_BYTES: usize = 1 << 20;
/// How often the server pings.
pub const PING_EVERY: Duration = Duration::from_secs(25);
/// Silence after which a peer is considered dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(60);

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
    outbox.push(Item::Reply(encode(&ServerFrame::Hello {
        user: Cow::Borrowed(&principal.user),
        epoch: Cow::Owned(hub.epoch()),
        server: Cow::Borrowed(hub.pod()),
        ping_interval_ms: PING_EVERY.as_millis() as u64,
        max_message_bytes: state.config.limits.max_message_bytes,
    })));
    let mut writer = tokio::spawn(write_loop(
        sink,
        outbox.clone(),
        WriterContext {
            history: hub.clone(),
            metrics: state.metrics.clone(),
            resume_limit: state.config.resume_limit,
            user: principal.user.id,
        },
    ));

    // The upgrade request's span (the socket runs in it): frames link to it.
    let socket_span = Span::current();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_seen = Instant::now();
    let mut throttle = Throttle::default();
    let mut acks = AckOrder::default();
    let mut silent = false;
    let mut expired = false;
    let mut ended: Option<WriterEnd> = None;
    // How the reader stopped: a close frame from the client, a frame over
    // the limit, or a stream that failed or ended without a close frame.
    let mut peer_closed = false;
    let mut too_large = false;
    let mut dropped = false;
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
                        too_large = true;
                        outbox.push(Item::Close(close::TOO_LARGE, format!(
                            "frame too large: the limit is {} bytes",
                            state.request_limit()
                        )));
                        break;
                    }
                    _ => {
                        dropped = true;
                        break;
                    }
                };
                last_seen = Instant::now();
                match msg {
                    Message::Text(text) => {
                        // Each frame is a trace of its own (a socket may live for
                        // hours), linked to the socket's upgrade request. A
                        // disabled span (traces off) costs a branch.
                        let frame = tracing::info_span!(target: TRACE_TARGET, parent: None, "ws.frame", frame.type = tracing::field::Empty);
                        frame.follows_from(&socket_span);
                        // Boxed: the handler's futures (database calls) are large, and
                        // an idle socket should not carry them around.
                        Box::pin(handle_text(&state, sid, &principal, &outbox, &mut throttle, &mut acks, text.as_str(), &frame).instrument(frame.clone())).await;
                    }
                    Message::Binary(bytes) => {
                        // Refused, but with its id when one can be read.
                        state.metrics.bad_frames.inc();
                        let id = scan_id(&String::from_utf8_lossy(&bytes));
                        outbox.push(Item::Reply(encode(&ServerFrame::error(id.as_deref(), ErrorCode::BadFrame, "binary frames are not supported: send JSON text frames"))));
                    }
                    Message::Close(_) => {
                        peer_closed = true;
                        break;
                    }
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
                    outbox.push(Item::Reply(encode(&ServerFrame::Ping)));
                }
            }
            _ = &mut expiry => {
                expired = true;
                outbox.push(Item::Close(
                    close::UNAUTHORIZED,
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
    let class = if reason != "closed" && reason != "token expired" || too_large {
        CloseClass::Client
    } else if peer_closed || expired {
        CloseClass::Normal
    } else if dropped || ended == Some(WriterEnd::PeerGone) {
        CloseClass::Abnormal
    } else {
        // The server closed with a close frame (drain, reconnect).
        CloseClass::Normal
    };
    state.metrics.websocket_closed(class);
    state.metrics.connections.dec();
    tracing::info!(user = principal.user.id, reason, "websocket closed");
}

/// The `type` of a client frame, as the protocol spells it.
fn frame_type(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Subscribe { .. } => "subscribe",
        ClientFrame::Unsubscribe { .. } => "unsubscribe",
        ClientFrame::Send { .. } => "send",
        ClientFrame::Edit { .. } => "edit",
        ClientFrame::Delete { .. } => "delete",
        ClientFrame::React { .. } => "react",
        ClientFrame::Read { .. } => "read",
        ClientFrame::Typing { .. } => "typing",
        ClientFrame::Presence { .. } => "presence",
        ClientFrame::Ping { .. } => "ping",
        ClientFrame::Pong { .. } => "pong",
    }
}

#[allow(clippy::too_many_arguments)] // the reader's state, borrowed per frame
async fn handle_text(
    state: &AppState,
    sid: SessionId,
    principal: &Principal,
    outbox: &Arc<Outbox>,
    throttle: &mut Throttle,
    acks: &mut AckOrder,
    text: &str,
    span: &Span,
) {
    let frame = match decode(text) {
        Ok(f) => f,
        Err(e) => {
            state.metrics.bad_frames.inc();
            outbox.push(Item::Reply(encode(&ServerFrame::error(
                e.id.as_deref(),
                e.code,
                e.message,
            ))));
            return;
        }
    };
    span.record("frame.type", frame_type(&frame));
    let chat = &state.chat;
    let store = state.hub.store();
    let user = &principal.user;
    let answer = |frame: Utf8Bytes| {
        outbox.push(Item::Reply(frame));
    };
    match frame {
        ClientFrame::Subscribe {
            id,
            room,
            epoch,
            last_seq,
        } => {
            if state.hub.subscription_count(sid) >= 500 && !state.hub.is_subscribed(sid, room) {
                return answer(encode(&ServerFrame::error(
                    id.as_deref(),
                    ErrorCode::Invalid,
                    "at most 500 rooms per connection",
                )));
            }
            let request = Box::new(SubscribeRequest {
                id: id.clone(),
                room,
                epoch,
                last_seq,
                room_last_seq: None,
            });
            let mut request = match state.hub.subscribe(sid, user.id, request).await {
                Ok(Subscription::Queued) => return,
                Ok(Subscription::Check(request)) => request,
                Err(e) => return answer(store_error_frame(id.as_deref(), &e)),
            };
            // Membership is checked after the subscription, so that a
            // membership ending meanwhile is seen either here or by the
            // fan-out (which unsubscribes only sockets it knows). Until the
            // writer has the room's cursor it writes none of its events, so
            // a refused socket never sees one. The room's position comes
            // with the check (one query): every event after it reaches this
            // socket's queue live.
            match store.member_last_seq(room, user.id).await {
                Ok(last) => {
                    state.hub.member_checked(room, user.id, last);
                    request.room_last_seq = Some(last);
                    outbox.push(Item::Subscribe(request));
                }
                Err(e) => {
                    state.hub.unsubscribe(sid, room);
                    answer(store_error_frame(id.as_deref(), &e));
                }
            }
        }
        ClientFrame::Unsubscribe { id, room } => {
            state.hub.unsubscribe(sid, room);
            answer(encode(&ServerFrame::Unsubscribed {
                id: id.map(Cow::Owned),
                room,
                reason: None,
            }));
        }
        ClientFrame::Send {
            id,
            room,
            client_msg_id,
            body,
            thread_root,
            attachments,
        } => {
            let m = NewMessage {
                client_msg_id,
                body,
                thread_root,
                attachments,
            };
            // Queued in order, acked when stored: the reader moves on, so a
            // client may pipeline sends; its messages keep their order. The
            // send's span runs until the ack is queued; the committer
            // parents (or links) its commit to it.
            let started = Instant::now();
            let send = tracing::info_span!(target: TRACE_TARGET, "chat.send", room);
            let pending = match send.in_scope(|| chat.submit(user, room, m)) {
                Ok(p) => p,
                Err(e) => {
                    if matches!(e, crate::chat::ChatError::Rejected(_)) {
                        state.metrics.bad_frames.inc();
                    }
                    return answer(chat_error_frame(id.as_deref(), &e));
                }
            };
            let (metrics, outbox) = (state.metrics.clone(), outbox.clone());
            let mut turn = acks.take_turn();
            tokio::spawn(
                async move {
                    let frame = match pending.ack().await {
                        Ok(ack) => {
                            metrics.db_latency.observe(started.elapsed().as_secs_f64());
                            encode(&ServerFrame::Ack {
                                id: id.as_deref().map(Cow::Borrowed),
                                room,
                                seq: Some(ack.seq),
                                client_msg_id: Some(Cow::Owned(ack.client_msg_id)),
                                duplicate: Some(ack.duplicate),
                                unchanged: None,
                            })
                        }
                        Err(e) => store_error_frame(id.as_deref(), &e),
                    };
                    turn.wait().await;
                    outbox.push(Item::Reply(frame));
                    turn.done();
                }
                .instrument(send),
            );
        }
        ClientFrame::Edit {
            id,
            room,
            seq,
            body,
        } => {
            let result = chat.edit(user, room, seq, &body).await;
            answer(ack_event(id.as_deref(), room, result.map(Some)));
        }
        ClientFrame::Delete { id, room, seq } => {
            let result = chat.delete(user, room, seq).await;
            answer(ack_event(id.as_deref(), room, result.map(Some)));
        }
        ClientFrame::React {
            id,
            room,
            seq,
            emoji,
            on,
        } => {
            let result = chat.react(user, room, seq, &emoji, on).await;
            answer(ack_event(id.as_deref(), room, result));
        }
        ClientFrame::Read { id, room, seq } => match chat.mark_read(user, room, seq).await {
            Ok(read) => answer(encode(&ServerFrame::Read {
                id: id.map(Cow::Owned),
                room,
                last_read_seq: read,
            })),
            Err(e) => answer(store_error_frame(id.as_deref(), &e)),
        },
        ClientFrame::Typing { id, room } => {
            if state.hub.is_subscribed(sid, room) {
                if throttle.typing(room, Instant::now()) {
                    state.hub.typing(room, user).await;
                }
            } else {
                answer(encode(&ServerFrame::error(
                    id.as_deref(),
                    ErrorCode::Invalid,
                    format!("subscribe to room {room} before sending typing"),
                )));
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
        ClientFrame::Ping { id } => answer(encode(&ServerFrame::Pong {
            id: id.map(Cow::Owned),
        })),
        ClientFrame::Pong { .. } => {}
    }
}

/// The answer to an edit, delete or reaction (already published by the
/// chat service): `ack` with the event's seq, or `seq: null, unchanged:
/// true` when nothing changed.
fn ack_event(id: Option<&str>, room: RoomId, result: StoreResult<Option<Seq>>) -> Utf8Bytes {
    match result {
        Ok(seq) => encode(&ServerFrame::Ack {
            id: id.map(Cow::Borrowed),
            room,
            seq,
            client_msg_id: None,
            duplicate: None,
            unchanged: seq.is_none().then_some(true),
        }),
        Err(e) => store_error_frame(id, &e),
    }
}
