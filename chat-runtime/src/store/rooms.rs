//! Rooms, direct messages, membership, roles, invitations, kicks and bans.
//! Every membership change is also a room event with its own seq, so it is
//! replayed on resume like a message.

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, Postgres, Transaction};

use super::{
    RoomId, Seq, Store, StoreError, StoreResult, UserId, accounts::User, append_event,
    check_no_nul, next_seq,
};
pub use crate::protocol::Role;
use crate::protocol::{MemberAction, RoomEvent};

/// Room kinds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    /// Anyone may join.
    Public,
    /// Members join by invitation.
    Private,
    /// A direct conversation between two users.
    Dm,
}

impl RoomKind {
    fn as_str(self) -> &'static str {
        match self {
            RoomKind::Public => "public",
            RoomKind::Private => "private",
            RoomKind::Dm => "dm",
        }
    }
}

/// A room as listed for a member.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct RoomView {
    /// Id.
    pub id: RoomId,
    /// `public`, `private` or `dm`.
    pub kind: String,
    /// Name (for DMs: both usernames).
    pub name: String,
    /// Topic.
    pub topic: String,
    /// Seq of the latest event.
    pub last_seq: Seq,
    /// The caller's role, if a member.
    pub role: Option<String>,
    /// The caller's read position.
    pub last_read_seq: Option<Seq>,
    /// Messages after the read position (0 for non-members).
    pub unread: i64,
    /// Member count.
    pub members: i64,
}

/// A member of a room.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct MemberView {
    /// User id.
    pub id: UserId,
    /// Username.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: String,
    /// Read position.
    pub last_read_seq: Seq,
}

const ROOM_VIEW: &str = "SELECT r.id, r.kind, r.name, r.topic, r.last_seq, m.role, m.last_read_seq, \
     COALESCE((SELECT count(*) FROM messages x WHERE x.room_id = r.id AND x.seq > m.last_read_seq AND x.deleted_at IS NULL AND x.sender_id <> m.user_id), 0) AS unread, \
     (SELECT count(*) FROM room_members c WHERE c.room_id = r.id) AS members \
     FROM rooms r LEFT JOIN room_members m ON m.room_id = r.id AND m.user_id = $1";

/// The one answer for a room the caller may not know exists: missing, or
/// private (or a DM) and the caller is not a member. Every route and frame
/// taking a room id gives it, so the two cannot be told apart.
pub fn room_absent(room: RoomId) -> StoreError {
    StoreError::NotFound(format!("room {room} does not exist or is private"))
}

fn check_name(name: &str) -> StoreResult<()> {
    if name.trim().is_empty() || name.chars().count() > 80 {
        return Err(StoreError::Invalid(
            "name must be 1 to 80 characters".into(),
        ));
    }
    check_no_nul("name", name)
}

async fn member_event(
    tx: &mut Transaction<'_, Postgres>,
    room: RoomId,
    actor: &User,
    target: &User,
    action: MemberAction,
    role: Option<Role>,
) -> StoreResult<Seq> {
    let seq = next_seq(tx, room).await?;
    let payload = RoomEvent::Member {
        action,
        actor: actor.into(),
        user: target.clone(),
        role,
    };
    append_event(tx, room, seq, actor.id, None, &payload).await?;
    Ok(seq)
}

impl Store {
    /// The caller's role in a room, or `None` when not a member.
    pub async fn role(&self, room: RoomId, user: UserId) -> StoreResult<Option<Role>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT role FROM room_members WHERE room_id = $1 AND user_id = $2")
                .bind(room)
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(r,)| Role::parse(&r)))
    }

    /// Fails unless `user` is a member; returns the role. A non-member is
    /// told as [`Store::not_member`] says: a private room looks absent.
    pub async fn require_member(&self, room: RoomId, user: UserId) -> StoreResult<Role> {
        match self.role(room, user).await? {
            Some(role) => Ok(role),
            None => Err(self.not_member(room).await),
        }
    }

    /// The room's latest seq, for a member: membership and position in one
    /// query (the subscribe path). A non-member is refused as
    /// [`Store::require_member`] refuses.
    pub async fn member_last_seq(&self, room: RoomId, user: UserId) -> StoreResult<Seq> {
        let row: Option<(Seq, String, bool)> = sqlx::query_as(
            "SELECT r.last_seq, r.kind, EXISTS (SELECT 1 FROM room_members m \
               WHERE m.room_id = r.id AND m.user_id = $2) \
             FROM rooms r WHERE r.id = $1",
        )
        .bind(room)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((last, _, true)) => Ok(last),
            Some((_, kind, false)) if kind == "public" => Err(StoreError::Forbidden(format!(
                "you are not a member of room {room}; join it first"
            ))),
            _ => Err(room_absent(room)),
        }
    }

    /// The refusal for a caller who is not a member of `room`: `forbidden`
    /// for a public room (anyone may see it and join), and for a private
    /// room or DM exactly the answer for a room that does not exist
    /// ([`room_absent`]), so a non-member cannot tell one from the other.
    pub async fn not_member(&self, room: RoomId) -> StoreError {
        let kind: Result<Option<(String,)>, _> =
            sqlx::query_as("SELECT kind FROM rooms WHERE id = $1")
                .bind(room)
                .fetch_optional(&self.pool)
                .await;
        match kind {
            Ok(Some((k,))) if k == "public" => StoreError::Forbidden(format!(
                "you are not a member of room {room}; join it first"
            )),
            Ok(_) => room_absent(room),
            Err(e) => StoreError::Db(e),
        }
    }

    /// Creates a public or private room; the creator becomes its owner.
    pub async fn create_room(
        &self,
        creator: &User,
        kind: RoomKind,
        name: &str,
        topic: &str,
    ) -> StoreResult<RoomView> {
        if kind == RoomKind::Dm {
            return Err(StoreError::Invalid(
                "create direct messages with POST /api/v1/dms".into(),
            ));
        }
        check_name(name)?;
        check_no_nul("topic", topic)?;
        let mut tx = self.begin().await?;
        let (id,): (RoomId,) = sqlx::query_as(
            "INSERT INTO rooms (kind, name, topic, created_by) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(kind.as_str())
        .bind(name.trim())
        .bind(topic)
        .bind(creator.id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, 'owner')")
            .bind(id)
            .bind(creator.id)
            .execute(&mut *tx)
            .await?;
        member_event(
            &mut tx,
            id,
            creator,
            creator,
            MemberAction::Joined,
            Some(Role::Owner),
        )
        .await?;
        tx.commit().await?;
        self.room_view(id, creator.id).await
    }

    /// The direct-message room of two users, created on first use. A caller
    /// who left it joins it again. Returns the room and the seq of the
    /// membership event written, if any.
    pub async fn direct_room(
        &self,
        me: &User,
        other: &User,
    ) -> StoreResult<(RoomView, Option<Seq>)> {
        if me.id == other.id {
            return Err(StoreError::Invalid(
                "a direct message needs another user".into(),
            ));
        }
        let (lo, hi) = if me.id < other.id {
            (me, other)
        } else {
            (other, me)
        };
        let key = format!("{}:{}", lo.id, hi.id);
        let mut tx = self.begin().await?;
        let created: Option<(RoomId,)> = sqlx::query_as(
            "INSERT INTO rooms (kind, name, created_by, dm_key) VALUES ('dm', $1, $2, $3) \
             ON CONFLICT (dm_key) DO NOTHING RETURNING id",
        )
        .bind(format!("{} & {}", lo.username, hi.username))
        .bind(me.id)
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;
        let (id, seq) = match created {
            Some((id,)) => {
                let mut seq = None;
                for u in [lo, hi] {
                    sqlx::query("INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, 'member')")
                        .bind(id)
                        .bind(u.id)
                        .execute(&mut *tx)
                        .await?;
                    seq = Some(
                        member_event(&mut tx, id, me, u, MemberAction::Joined, Some(Role::Member))
                            .await?,
                    );
                }
                tx.commit().await?;
                (id, seq)
            }
            None => {
                let (id,): (RoomId,) = sqlx::query_as("SELECT id FROM rooms WHERE dm_key = $1")
                    .bind(&key)
                    .fetch_one(&mut *tx)
                    .await?;
                // One of the pair who left comes back by opening the DM again.
                let rejoined = sqlx::query(
                    "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, 'member') \
                     ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(me.id)
                .execute(&mut *tx)
                .await?;
                if rejoined.rows_affected() == 0 {
                    tx.rollback().await?;
                    (id, None)
                } else {
                    let seq = member_event(
                        &mut tx,
                        id,
                        me,
                        me,
                        MemberAction::Joined,
                        Some(Role::Member),
                    )
                    .await?;
                    tx.commit().await?;
                    (id, Some(seq))
                }
            }
        };
        Ok((self.room_view(id, me.id).await?, seq))
    }

    /// One room as `user` sees it. Private rooms and DMs are visible to
    /// members only.
    pub async fn room_view(&self, room: RoomId, user: UserId) -> StoreResult<RoomView> {
        let view: Option<RoomView> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{ROOM_VIEW} WHERE r.id = $2")))
                .bind(user)
                .bind(room)
                .fetch_optional(&self.pool)
                .await?;
        match view {
            Some(v) if v.kind == "public" || v.role.is_some() => Ok(v),
            _ => Err(room_absent(room)),
        }
    }

    /// Rooms `user` belongs to, most recently active first, with unread counts.
    pub async fn joined_rooms(&self, user: UserId) -> StoreResult<Vec<RoomView>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{ROOM_VIEW} WHERE m.user_id IS NOT NULL ORDER BY r.last_seq DESC, r.id LIMIT 500"
        )))
        .bind(user)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Public rooms, largest first.
    pub async fn public_rooms(&self, user: UserId, limit: i64) -> StoreResult<Vec<RoomView>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{ROOM_VIEW} WHERE r.kind = 'public' ORDER BY members DESC, r.id LIMIT $2"
        )))
        .bind(user)
        .bind(limit.clamp(1, 500))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Joins a public room (or a room the user was invited to, which makes
    /// them a member already). Banned users are refused.
    pub async fn join(&self, room: RoomId, user: &User) -> StoreResult<Seq> {
        let mut tx = self.begin().await?;
        let kind: Option<(String, bool)> = sqlx::query_as(
            "SELECT kind, EXISTS (SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2) \
             FROM rooms WHERE id = $1",
        )
        .bind(room)
        .bind(user.id)
        .fetch_optional(&mut *tx)
        .await?;
        match kind.as_ref().map(|(k, member)| (k.as_str(), *member)) {
            Some(("public", _)) => {}
            // A member (invited, or of the DM) joining again: nothing to do.
            Some((_, true)) => {
                tx.rollback().await?;
                return self.last_seq(room).await;
            }
            // Private rooms are joined by invitation; to anyone else they
            // look absent.
            None | Some((_, false)) => return Err(room_absent(room)),
        }
        let banned: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM room_bans WHERE room_id = $1 AND user_id = $2")
                .bind(room)
                .bind(user.id)
                .fetch_optional(&mut *tx)
                .await?;
        if banned.is_some() {
            return Err(StoreError::Forbidden(format!(
                "you are banned from room {room}"
            )));
        }
        let inserted = sqlx::query(
            "INSERT INTO room_members (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(room)
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await?;
            return self.last_seq(room).await;
        }
        let seq = member_event(
            &mut tx,
            room,
            user,
            user,
            MemberAction::Joined,
            Some(Role::Member),
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Leaves a room.
    pub async fn leave(&self, room: RoomId, user: &User) -> StoreResult<Seq> {
        let mut tx = self.begin().await?;
        let removed = sqlx::query("DELETE FROM room_members WHERE room_id = $1 AND user_id = $2")
            .bind(room)
            .bind(user.id)
            .execute(&mut *tx)
            .await?;
        if removed.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(self.not_member(room).await);
        }
        let seq = member_event(&mut tx, room, user, user, MemberAction::Left, None).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Adds `target` to a room. Public rooms: any member may invite;
    /// private rooms: moderators and owners. Not for DMs. Inviting a banned
    /// user lifts the ban, so only moderators and owners may do it.
    pub async fn invite(&self, room: RoomId, actor: &User, target: &User) -> StoreResult<Seq> {
        let role = self.require_member(room, actor.id).await?;
        let view = self.room_view(room, actor.id).await?;
        match view.kind.as_str() {
            "dm" => {
                return Err(StoreError::Invalid(
                    "direct-message rooms have exactly two members".into(),
                ));
            }
            "private" if role < Role::Moderator => {
                return Err(StoreError::Forbidden(
                    "only moderators and owners invite to a private room".into(),
                ));
            }
            _ => {}
        }
        let mut tx = self.begin().await?;
        let lifted = sqlx::query("DELETE FROM room_bans WHERE room_id = $1 AND user_id = $2")
            .bind(room)
            .bind(target.id)
            .execute(&mut *tx)
            .await?;
        if lifted.rows_affected() > 0 && role < Role::Moderator {
            return Err(StoreError::Forbidden(format!(
                "{} is banned from room {room}; only moderators and owners can lift a ban",
                target.username
            )));
        }
        let inserted = sqlx::query(
            "INSERT INTO room_members (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(room)
        .bind(target.id)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "{} is already a member",
                target.username
            )));
        }
        let seq = member_event(
            &mut tx,
            room,
            actor,
            target,
            MemberAction::Invited,
            Some(Role::Member),
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Members of a room (members only).
    pub async fn members(&self, room: RoomId, user: UserId) -> StoreResult<Vec<MemberView>> {
        self.require_member(room, user).await?;
        Ok(sqlx::query_as(
            "SELECT u.id, u.username, u.display_name, m.role, m.last_read_seq FROM room_members m \
             JOIN users u ON u.id = m.user_id WHERE m.room_id = $1 ORDER BY u.username LIMIT 5000",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Member ids of a room (for presence fan-out).
    pub async fn member_ids(&self, room: RoomId) -> StoreResult<Vec<UserId>> {
        let rows: Vec<(UserId,)> =
            sqlx::query_as("SELECT user_id FROM room_members WHERE room_id = $1")
                .bind(room)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(u,)| u).collect())
    }

    /// Rooms a user belongs to (for presence fan-out).
    pub async fn room_ids_of(&self, user: UserId) -> StoreResult<Vec<RoomId>> {
        let rows: Vec<(RoomId,)> =
            sqlx::query_as("SELECT room_id FROM room_members WHERE user_id = $1")
                .bind(user)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    /// Changes a member's role (owners only; an owner cannot demote the last owner).
    pub async fn set_role(
        &self,
        room: RoomId,
        actor: &User,
        target: &User,
        role: Role,
    ) -> StoreResult<Seq> {
        if self.require_member(room, actor.id).await? != Role::Owner {
            return Err(StoreError::Forbidden("only owners change roles".into()));
        }
        let mut tx = self.begin().await?;
        let current: Option<(String,)> = sqlx::query_as(
            "SELECT role FROM room_members WHERE room_id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(room)
        .bind(target.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((current,)) = current else {
            return Err(StoreError::NotFound(format!(
                "{} is not a member",
                target.username
            )));
        };
        if current == "owner" && role != Role::Owner {
            let (owners,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM room_members WHERE room_id = $1 AND role = 'owner'",
            )
            .bind(room)
            .fetch_one(&mut *tx)
            .await?;
            if owners <= 1 {
                return Err(StoreError::Invalid(
                    "a room keeps at least one owner: promote another first".into(),
                ));
            }
        }
        sqlx::query("UPDATE room_members SET role = $3 WHERE room_id = $1 AND user_id = $2")
            .bind(room)
            .bind(target.id)
            .bind(role.as_str())
            .execute(&mut *tx)
            .await?;
        let seq =
            member_event(&mut tx, room, actor, target, MemberAction::Role, Some(role)).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Removes a member (moderators and owners; not someone of equal or
    /// higher role). With `ban`, they cannot rejoin until unbanned.
    pub async fn kick(
        &self,
        room: RoomId,
        actor: &User,
        target: &User,
        ban: bool,
    ) -> StoreResult<Seq> {
        let actor_role = self.require_member(room, actor.id).await?;
        if actor_role < Role::Moderator {
            return Err(StoreError::Forbidden(
                "only moderators and owners remove members".into(),
            ));
        }
        let target_role = self.role(room, target.id).await?;
        if target_role.is_some_and(|r| r >= actor_role) {
            return Err(StoreError::Forbidden(format!(
                "{} has an equal or higher role",
                target.username
            )));
        }
        let mut tx = self.begin().await?;
        let removed = sqlx::query("DELETE FROM room_members WHERE room_id = $1 AND user_id = $2")
            .bind(room)
            .bind(target.id)
            .execute(&mut *tx)
            .await?;
        if ban {
            sqlx::query(
                "INSERT INTO room_bans (room_id, user_id, banned_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(room)
            .bind(target.id)
            .bind(actor.id)
            .execute(&mut *tx)
            .await?;
        } else if removed.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "{} is not a member",
                target.username
            )));
        }
        let seq = member_event(
            &mut tx,
            room,
            actor,
            target,
            if ban {
                MemberAction::Banned
            } else {
                MemberAction::Kicked
            },
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Lifts a ban (moderators and owners).
    pub async fn unban(&self, room: RoomId, actor: &User, target: &User) -> StoreResult<()> {
        if self.require_member(room, actor.id).await? < Role::Moderator {
            return Err(StoreError::Forbidden(
                "only moderators and owners lift bans".into(),
            ));
        }
        sqlx::query("DELETE FROM room_bans WHERE room_id = $1 AND user_id = $2")
            .bind(room)
            .bind(target.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The room's latest seq.
    pub async fn last_seq(&self, room: RoomId) -> StoreResult<Seq> {
        let row: Option<(Seq,)> = sqlx::query_as("SELECT last_seq FROM rooms WHERE id = $1")
            .bind(room)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|(s,)| s).ok_or_else(|| room_absent(room))
    }

    /// Latest seqs of several rooms (the fan-out poll).
    pub async fn last_seqs(&self, rooms: &[RoomId]) -> StoreResult<Vec<(RoomId, Seq)>> {
        Ok(
            sqlx::query_as("SELECT id, last_seq FROM rooms WHERE id = ANY($1)")
                .bind(rooms)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Moves a member's read position forward (never back).
    pub async fn mark_read(&self, room: RoomId, user: UserId, seq: Seq) -> StoreResult<Seq> {
        let row: Option<(Seq,)> = sqlx::query_as(
            "UPDATE room_members SET last_read_seq = GREATEST(last_read_seq, LEAST($3, (SELECT last_seq FROM rooms WHERE id = $1))) \
             WHERE room_id = $1 AND user_id = $2 RETURNING last_read_seq",
        )
        .bind(room)
        .bind(user)
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((s,)) => Ok(s),
            None => Err(self.not_member(room).await),
        }
    }
}
