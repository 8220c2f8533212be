//! Messages over REST: send, history, threads, edit, delete, reactions, read
//! state, search. Each handler decodes, calls the chat service and encodes.

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    error::ApiResult,
    http::{
        auth::Authed,
        extract::{AppJson, AppPath, AppQuery},
    },
    state::AppState,
    store::{RoomId, Seq, events::NewMessage},
};

/// `POST /api/v1/rooms/{room}/messages` (idempotent by `client_msg_id`).
pub async fn send(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath(room): AppPath<RoomId>,
    AppJson(m): AppJson<NewMessage>,
) -> ApiResult<Json<Value>> {
    let ack = s.chat.send(&p.user, room, m).await?;
    Ok(Json(
        json!({"room": room, "seq": ack.seq, "client_msg_id": ack.client_msg_id, "duplicate": ack.duplicate}),
    ))
}

/// History page.
#[derive(Deserialize)]
pub struct Page {
    /// Messages with seq below this (default: the newest).
    pub before: Option<Seq>,
    /// Replies after this seq (threads).
    pub after: Option<Seq>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<i64>,
}

/// `GET /api/v1/rooms/{room}/messages?before=&limit=`: newest first; pass the
/// smallest seq you got as `before` for the next page.
pub async fn history(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath(room): AppPath<RoomId>,
    AppQuery(q): AppQuery<Page>,
) -> ApiResult<Json<Value>> {
    let (messages, last_seq) = s
        .chat
        .history(&p.user, room, q.before, q.limit.unwrap_or(50))
        .await?;
    let next = messages
        .last()
        .map(|m| m.seq)
        .filter(|_| messages.len() as i64 == q.limit.unwrap_or(50).clamp(1, 200));
    Ok(Json(json!({
        "messages": messages,
        "next_before": next,
        "epoch": s.chat.epoch(),
        "last_seq": last_seq,
    })))
}

/// `GET /api/v1/rooms/{room}/threads/{seq}?after=&limit=`: replies, oldest first.
pub async fn thread(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath((room, root)): AppPath<(RoomId, Seq)>,
    AppQuery(q): AppQuery<Page>,
) -> ApiResult<Json<Value>> {
    let replies = s
        .chat
        .thread(
            &p.user,
            room,
            root,
            q.after.unwrap_or(0),
            q.limit.unwrap_or(50),
        )
        .await?;
    Ok(Json(json!({"root": root, "replies": replies})))
}

/// Edit body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    /// New text.
    pub body: String,
}

/// `PATCH /api/v1/rooms/{room}/messages/{seq}`.
pub async fn edit(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath((room, seq)): AppPath<(RoomId, Seq)>,
    AppJson(b): AppJson<EditBody>,
) -> ApiResult<Json<Value>> {
    let event = s.chat.edit(&p.user, room, seq, &b.body).await?;
    Ok(Json(
        json!({"room": room, "seq": event, "message_seq": seq}),
    ))
}

/// `DELETE /api/v1/rooms/{room}/messages/{seq}`.
pub async fn remove(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath((room, seq)): AppPath<(RoomId, Seq)>,
) -> ApiResult<Json<Value>> {
    let event = s.chat.delete(&p.user, room, seq).await?;
    Ok(Json(
        json!({"room": room, "seq": event, "message_seq": seq}),
    ))
}

async fn reaction(
    s: AppState,
    p: crate::auth::Principal,
    room: RoomId,
    seq: Seq,
    emoji: String,
    on: bool,
) -> ApiResult<Json<Value>> {
    let event = s.chat.react(&p.user, room, seq, &emoji, on).await?;
    Ok(Json(
        json!({"room": room, "seq": event, "message_seq": seq, "emoji": emoji, "on": on}),
    ))
}

/// `PUT /api/v1/rooms/{room}/messages/{seq}/reactions/{emoji}`.
pub async fn react(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath((room, seq, emoji)): AppPath<(RoomId, Seq, String)>,
) -> ApiResult<Json<Value>> {
    reaction(s, p, room, seq, emoji, true).await
}

/// `DELETE /api/v1/rooms/{room}/messages/{seq}/reactions/{emoji}`.
pub async fn unreact(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath((room, seq, emoji)): AppPath<(RoomId, Seq, String)>,
) -> ApiResult<Json<Value>> {
    reaction(s, p, room, seq, emoji, false).await
}

/// Read position.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    /// Last read seq.
    pub seq: Seq,
}

/// `POST /api/v1/rooms/{room}/read {"seq": 42}`.
pub async fn read(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath(room): AppPath<RoomId>,
    AppJson(b): AppJson<ReadBody>,
) -> ApiResult<Json<Value>> {
    let read = s.chat.mark_read(&p.user, room, b.seq).await?;
    Ok(Json(json!({"room": room, "last_read_seq": read})))
}

/// Search query.
#[derive(Deserialize)]
pub struct SearchQuery {
    /// Words to find.
    pub q: String,
    /// Only this room.
    pub room: Option<RoomId>,
    /// 1 to 100 (default 20).
    pub limit: Option<i64>,
}

/// `GET /api/v1/search?q=&room=`: full-text search in the caller's rooms.
pub async fn search(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppQuery(q): AppQuery<SearchQuery>,
) -> ApiResult<Json<Value>> {
    let hits = s
        .chat
        .search(&p.user, &q.q, q.room, q.limit.unwrap_or(20))
        .await?;
    let results: Vec<Value> = hits
        .into_iter()
        .map(|(room, m)| json!({"room": room, "message": m}))
        .collect();
    Ok(Json(json!({"results": results})))
}
