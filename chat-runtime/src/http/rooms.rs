//! Rooms, DMs, membership, roles, kicks, bans, presence. Each handler
//! decodes, calls the chat service and encodes.

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    error::{ApiResult, AppError},
    http::{
        auth::Authed,
        extract::{AppJson, AppPath, AppQuery},
    },
    state::AppState,
    store::{
        RoomId,
        rooms::{Role, RoomKind},
    },
};

/// `GET /api/v1/rooms?scope=joined|public`.
#[derive(Deserialize)]
pub struct ListQuery {
    /// `joined` (default) or `public`.
    #[serde(default)]
    pub scope: Option<String>,
}

/// Lists rooms.
pub async fn list(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppQuery(q): AppQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let rooms = match q.scope.as_deref().unwrap_or("joined") {
        "joined" => s.chat.joined_rooms(&p.user).await?,
        "public" => s.chat.public_rooms(&p.user).await?,
        other => {
            return Err(AppError::BadRequest(format!(
                "scope {other:?} is not one of joined, public"
            )));
        }
    };
    Ok(Json(json!({"rooms": rooms})))
}

/// New room.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoom {
    /// Name.
    pub name: String,
    /// `public` or `private`.
    pub kind: RoomKind,
    /// Topic.
    #[serde(default)]
    pub topic: String,
}

/// `POST /api/v1/rooms`.
pub async fn create(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppJson(r): AppJson<NewRoom>,
) -> ApiResult<Json<Value>> {
    let room = s
        .chat
        .create_room(&p.user, r.kind, &r.name, &r.topic)
        .await?;
    Ok(Json(json!({"room": room})))
}

/// A user, by username.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRef {
    /// Username.
    pub user: String,
}

/// `POST /api/v1/dms {"user": "bob"}`: the DM room with bob (created on
/// first use; the caller joins it again after leaving).
pub async fn direct(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppJson(u): AppJson<UserRef>,
) -> ApiResult<Json<Value>> {
    let room = s.chat.direct(&p.user, &u.user).await?;
    Ok(Json(json!({"room": room})))
}

/// `GET /api/v1/rooms/{room}`.
pub async fn show(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath(room): AppPath<RoomId>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"room": s.chat.room(&p.user, room).await?})))
}

/// `POST /api/v1/rooms/{room}/join`.
pub async fn join(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath(room): AppPath<RoomId>,
) -> ApiResult<Json<Value>> {
    let view = s.chat.join(&p.user, room).await?;
    Ok(Json(json!({"room": view})))
}

/// `POST /api/v1/rooms/{room}/leave`.
pub async fn leave(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath(room): AppPath<RoomId>,
) -> ApiResult<Json<Value>> {
    s.chat.leave(&p.user, room).await?;
    Ok(Json(json!({"left": room})))
}

/// `POST /api/v1/rooms/{room}/invite {"user": "bob"}`.
pub async fn invite(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath(room): AppPath<RoomId>,
    AppJson(u): AppJson<UserRef>,
) -> ApiResult<Json<Value>> {
    let (target, seq) = s.chat.invite(&p.user, room, &u.user).await?;
    Ok(Json(json!({"invited": target, "seq": seq})))
}

/// `GET /api/v1/rooms/{room}/members`.
pub async fn members(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath(room): AppPath<RoomId>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"members": s.chat.members(&p.user, room).await?}),
    ))
}

/// New role.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    /// `owner`, `moderator` or `member`.
    pub role: Role,
}

/// `PUT /api/v1/rooms/{room}/members/{user}/role {"role": "moderator"}`.
pub async fn set_role(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath((room, user)): AppPath<(RoomId, String)>,
    AppJson(r): AppJson<RoleBody>,
) -> ApiResult<Json<Value>> {
    let (target, seq) = s.chat.set_role(&p.user, room, &user, r.role).await?;
    Ok(Json(json!({"user": target, "role": r.role, "seq": seq})))
}

/// `POST /api/v1/rooms/{room}/kick {"user": "bob"}`.
pub async fn kick(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath(room): AppPath<RoomId>,
    AppJson(u): AppJson<UserRef>,
) -> ApiResult<Json<Value>> {
    let (target, seq) = s.chat.kick(&p.user, room, &u.user).await?;
    Ok(Json(json!({"kicked": target, "seq": seq})))
}

/// `POST /api/v1/rooms/{room}/bans {"user": "bob"}`.
pub async fn ban(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath(room): AppPath<RoomId>,
    AppJson(u): AppJson<UserRef>,
) -> ApiResult<Json<Value>> {
    let (target, seq) = s.chat.ban(&p.user, room, &u.user).await?;
    Ok(Json(json!({"banned": target, "seq": seq})))
}

/// `DELETE /api/v1/rooms/{room}/bans/{user}`.
pub async fn unban(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath((room, user)): AppPath<(RoomId, String)>,
) -> ApiResult<Json<Value>> {
    let target = s.chat.unban(&p.user, room, &user).await?;
    Ok(Json(json!({"unbanned": target})))
}

/// `GET /api/v1/rooms/{room}/presence`: counts, and each status for rooms of
/// at most 500 members.
pub async fn presence(
    State(s): State<AppState>,
    Authed(p): Authed,
    AppPath(room): AppPath<RoomId>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.chat.presence(&p.user, room).await?)))
}
