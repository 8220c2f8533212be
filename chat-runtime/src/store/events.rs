//! Room events: sending (idempotent by `client_msg_id`), edits, deletions
//! (tombstones), reactions, read state, history (keyset pagination), threads,
//! full-text search, replay for resume, and retention.
//!
//! Every event takes the room's next seq with `UPDATE rooms ... RETURNING`
//! inside its own transaction and queues `NOTIFY chat_events '<room>:<seq>'`,
//! delivered at commit.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::FromRow;

use super::{
    RoomId, Seq, Store, StoreError, StoreResult, UserId, accounts::User, append_event, next_seq,
    rooms::Role,
};

/// A reference to an attachment stored elsewhere (the runtime keeps only metadata).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Where the file is (https:// or http://).
    pub url: String,
    /// MIME type, for example `image/png`.
    pub content_type: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// File name to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Attachments per message.
pub const MAX_ATTACHMENTS: usize = 10;
/// Largest attachment size accepted in metadata (100 MiB).
pub const MAX_ATTACHMENT_BYTES: u64 = 100 * 1024 * 1024;

/// A new message, as sent by a client.
#[derive(Clone, Debug, Deserialize)]
pub struct NewMessage {
    /// Client-chosen id, unique per sender and room: a retried send with the
    /// same id returns the original ack.
    pub client_msg_id: String,
    /// Text.
    #[serde(default)]
    pub body: String,
    /// Seq of the thread's root message, for a reply.
    #[serde(default)]
    pub thread_root: Option<Seq>,
    /// Attachment references.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// Checks a message against the limits. Pure.
pub fn validate_message(m: &NewMessage, max_body_bytes: usize) -> StoreResult<()> {
    let id_ok = (1..=64).contains(&m.client_msg_id.len())
        && m.client_msg_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !id_ok {
        return Err(StoreError::Invalid(
            "client_msg_id must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.', ':'".into(),
        ));
    }
    if m.body.len() > max_body_bytes {
        return Err(StoreError::Invalid(format!(
            "body is {} bytes; the limit is {max_body_bytes}",
            m.body.len()
        )));
    }
    if m.body.trim().is_empty() && m.attachments.is_empty() {
        return Err(StoreError::Invalid(
            "body is empty: send text or an attachment".into(),
        ));
    }
    if m.attachments.len() > MAX_ATTACHMENTS {
        return Err(StoreError::Invalid(format!(
            "attachments: at most {MAX_ATTACHMENTS} per message"
        )));
    }
    for (i, a) in m.attachments.iter().enumerate() {
        if !(a.url.starts_with("https://") || a.url.starts_with("http://")) || a.url.len() > 2048 {
            return Err(StoreError::Invalid(format!(
                "attachments[{i}].url must be an http(s) URL of at most 2048 characters"
            )));
        }
        if a.size_bytes > MAX_ATTACHMENT_BYTES {
            return Err(StoreError::Invalid(format!(
                "attachments[{i}].size_bytes exceeds {MAX_ATTACHMENT_BYTES} bytes"
            )));
        }
        if a.content_type.is_empty() || a.content_type.len() > 128 || !a.content_type.contains('/')
        {
            return Err(StoreError::Invalid(format!(
                "attachments[{i}].content_type must be a MIME type such as image/png"
            )));
        }
    }
    Ok(())
}

/// The answer to a send.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SendAck {
    /// The message's seq.
    pub seq: Seq,
    /// The client's id, echoed.
    pub client_msg_id: String,
    /// True when this was a retry of an earlier send.
    pub duplicate: bool,
}

/// One reaction count.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReactionCount {
    /// Emoji.
    pub emoji: String,
    /// How many users reacted with it.
    pub count: i64,
    /// Whether the caller did.
    pub me: bool,
}

/// A message in its current state.
#[derive(Clone, Debug, Serialize, FromRow)]
pub struct MessageView {
    /// Seq.
    pub seq: Seq,
    /// Sender id.
    pub sender_id: UserId,
    /// Sender username.
    pub sender: String,
    /// The client's id.
    pub client_msg_id: String,
    /// Text ("" once deleted).
    pub body: String,
    /// Root of the thread this replies to.
    pub thread_root: Option<Seq>,
    /// Attachments.
    pub attachments: Value,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, once edited.
    pub edited_at: Option<String>,
    /// True once deleted (a tombstone keeps the seq).
    pub deleted: bool,
    /// Reactions.
    #[sqlx(json)]
    pub reactions: Vec<ReactionCount>,
    /// Replies, for thread roots.
    pub reply_count: i64,
}

const MESSAGE_VIEW: &str = "SELECT m.seq, m.sender_id, u.username AS sender, m.client_msg_id, \
     CASE WHEN m.deleted_at IS NULL THEN m.body ELSE '' END AS body, m.thread_root_seq AS thread_root, \
     CASE WHEN m.deleted_at IS NULL THEN m.attachments ELSE '[]'::jsonb END AS attachments, \
     to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at, \
     to_char(m.edited_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS edited_at, \
     m.deleted_at IS NOT NULL AS deleted, \
     COALESCE((SELECT json_agg(json_build_object('emoji', r.emoji, 'count', r.n, 'me', r.me) ORDER BY r.emoji) \
               FROM (SELECT emoji, count(*) AS n, bool_or(user_id = $1) AS me FROM reactions \
                     WHERE room_id = m.room_id AND message_seq = m.seq GROUP BY emoji) r), '[]') AS reactions, \
     (SELECT count(*) FROM messages t WHERE t.room_id = m.room_id AND t.thread_root_seq = m.seq) AS reply_count \
     FROM messages m JOIN users u ON u.id = m.sender_id";

/// A stored room event, for replay.
#[derive(Clone, Debug, FromRow)]
pub struct EventRow {
    /// Seq.
    pub seq: Seq,
    /// Payload (kind and fields).
    pub payload: Value,
    /// Commit time, milliseconds since the epoch (fan-out latency metric).
    pub created_ms: i64,
}

impl Store {
    /// Sends a message. A retry with the same `client_msg_id` returns the
    /// original ack with `duplicate: true` and writes nothing. Four round
    /// trips: BEGIN, take the seq (members only), insert message and event in
    /// one statement, COMMIT.
    pub async fn send(&self, room: RoomId, sender: &User, m: &NewMessage) -> StoreResult<SendAck> {
        let mut tx = self.begin().await?;
        let seq: Option<(Seq,)> = sqlx::query_as(
            "UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 \
             AND EXISTS (SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2) RETURNING last_seq",
        )
        .bind(room)
        .bind(sender.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((seq,)) = seq else {
            tx.rollback().await?;
            self.last_seq(room).await?;
            return Err(StoreError::Forbidden(format!(
                "you are not a member of room {room}; join it first"
            )));
        };
        if let Some(root) = m.thread_root {
            let ok: Option<(Option<Seq>,)> = sqlx::query_as(
                "SELECT thread_root_seq FROM messages WHERE room_id = $1 AND seq = $2 AND deleted_at IS NULL",
            )
            .bind(room)
            .bind(root)
            .fetch_optional(&mut *tx)
            .await?;
            match ok {
                None => {
                    return Err(StoreError::Invalid(format!(
                        "thread_root {root} is not a message in room {room}"
                    )));
                }
                Some((Some(_),)) => {
                    return Err(StoreError::Invalid(format!(
                        "thread_root {root} is itself a reply; reply to its root"
                    )));
                }
                Some((None,)) => {}
            }
        }
        let attachments = json!(m.attachments);
        let payload = json!({
            "kind": "message",
            "sender": {"id": sender.id, "username": sender.username, "display_name": sender.display_name},
            "client_msg_id": m.client_msg_id,
            "body": m.body,
            "thread_root": m.thread_root,
            "attachments": attachments,
        });
        let inserted: Option<(Seq,)> = sqlx::query_as(
            "WITH m AS ( \
               INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, thread_root_seq, attachments) \
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (room_id, sender_id, client_msg_id) DO NOTHING \
               RETURNING created_at) \
             INSERT INTO room_events (room_id, seq, kind, actor_id, message_seq, payload, created_at) \
             SELECT $1, $2, 'message', $3, $2, \
                    $8::jsonb || jsonb_build_object('created_at', to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')), \
                    m.created_at FROM m RETURNING seq",
        )
        .bind(room)
        .bind(seq)
        .bind(sender.id)
        .bind(&m.client_msg_id)
        .bind(&m.body)
        .bind(m.thread_root)
        .bind(&attachments)
        .bind(&payload)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            // A retry: this client_msg_id was already used by this sender
            // here (a concurrent retry held the room lock we waited on, or
            // committed earlier). Undo our seq and answer with its ack.
            tx.rollback().await?;
            let seq = self
                .existing(room, sender.id, &m.client_msg_id)
                .await?
                .ok_or_else(|| StoreError::Conflict("client_msg_id conflict".into()))?;
            return Ok(SendAck {
                seq,
                client_msg_id: m.client_msg_id.clone(),
                duplicate: true,
            });
        }
        tx.commit().await?;
        Ok(SendAck {
            seq,
            client_msg_id: m.client_msg_id.clone(),
            duplicate: false,
        })
    }

    async fn existing(
        &self,
        room: RoomId,
        sender: UserId,
        client_msg_id: &str,
    ) -> StoreResult<Option<Seq>> {
        let row: Option<(Seq,)> = sqlx::query_as(
            "SELECT seq FROM messages WHERE room_id = $1 AND sender_id = $2 AND client_msg_id = $3",
        )
        .bind(room)
        .bind(sender)
        .bind(client_msg_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(s,)| s))
    }

    /// Edits a message (its author only). Returns the edit event's seq.
    pub async fn edit(
        &self,
        room: RoomId,
        actor: &User,
        message: Seq,
        body: &str,
        max: usize,
    ) -> StoreResult<Seq> {
        if body.trim().is_empty() || body.len() > max {
            return Err(StoreError::Invalid(format!(
                "body must be 1 to {max} bytes"
            )));
        }
        self.require_member(room, actor.id).await?;
        let mut tx = self.begin().await?;
        let seq = next_seq(&mut tx, room).await?;
        let edited: Option<(String,)> = sqlx::query_as(
            "UPDATE messages SET body = $4, edited_at = now() WHERE room_id = $1 AND seq = $2 AND sender_id = $3 AND deleted_at IS NULL \
             RETURNING to_char(edited_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
        )
        .bind(room)
        .bind(message)
        .bind(actor.id)
        .bind(body)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((edited_at,)) = edited else {
            return Err(StoreError::Forbidden(format!(
                "message {message} does not exist, is deleted, or is not yours to edit"
            )));
        };
        let payload = json!({
            "kind": "edit", "message_seq": message, "body": body, "edited_at": edited_at,
            "actor": {"id": actor.id, "username": actor.username},
        });
        append_event(
            &mut tx,
            room,
            seq,
            "edit",
            actor.id,
            Some(message),
            &payload,
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Deletes a message (its author, or a moderator/owner), leaving a
    /// tombstone. Returns the delete event's seq.
    pub async fn delete(&self, room: RoomId, actor: &User, message: Seq) -> StoreResult<Seq> {
        let role = self.require_member(room, actor.id).await?;
        let mut tx = self.begin().await?;
        let seq = next_seq(&mut tx, room).await?;
        let deleted = sqlx::query(
            "UPDATE messages SET deleted_at = now() WHERE room_id = $1 AND seq = $2 AND deleted_at IS NULL \
             AND (sender_id = $3 OR $4)",
        )
        .bind(room)
        .bind(message)
        .bind(actor.id)
        .bind(role >= Role::Moderator)
        .execute(&mut *tx)
        .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::Forbidden(format!(
                "message {message} does not exist, is already deleted, or is not yours to delete"
            )));
        }
        let payload = json!({"kind": "delete", "message_seq": message, "actor": {"id": actor.id, "username": actor.username}});
        append_event(
            &mut tx,
            room,
            seq,
            "delete",
            actor.id,
            Some(message),
            &payload,
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Adds (`on`) or removes a reaction. Returns the event's seq, or `None`
    /// when nothing changed.
    pub async fn react(
        &self,
        room: RoomId,
        actor: &User,
        message: Seq,
        emoji: &str,
        on: bool,
    ) -> StoreResult<Option<Seq>> {
        if emoji.is_empty() || emoji.chars().count() > 16 || emoji.chars().any(char::is_whitespace)
        {
            return Err(StoreError::Invalid(
                "emoji must be 1 to 16 characters without spaces".into(),
            ));
        }
        self.require_member(room, actor.id).await?;
        let mut tx = self.begin().await?;
        let seq = next_seq(&mut tx, room).await?;
        let changed = if on {
            let exists: Option<(i32,)> = sqlx::query_as(
                "SELECT 1 FROM messages WHERE room_id = $1 AND seq = $2 AND deleted_at IS NULL",
            )
            .bind(room)
            .bind(message)
            .fetch_optional(&mut *tx)
            .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!(
                    "message {message} does not exist in room {room}"
                )));
            }
            sqlx::query(
                "INSERT INTO reactions (room_id, message_seq, user_id, emoji) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(room)
            .bind(message)
            .bind(actor.id)
            .bind(emoji)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            sqlx::query("DELETE FROM reactions WHERE room_id = $1 AND message_seq = $2 AND user_id = $3 AND emoji = $4")
                .bind(room)
                .bind(message)
                .bind(actor.id)
                .bind(emoji)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        };
        if changed == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let payload = json!({
            "kind": "reaction", "message_seq": message, "emoji": emoji, "on": on,
            "user": {"id": actor.id, "username": actor.username},
        });
        append_event(
            &mut tx,
            room,
            seq,
            "reaction",
            actor.id,
            Some(message),
            &payload,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(seq))
    }

    /// Messages before `before` (exclusive; newest first), at most `limit`.
    /// Keyset pagination on the primary key: no OFFSET, constant cost per page.
    pub async fn history(
        &self,
        room: RoomId,
        user: UserId,
        before: Option<Seq>,
        limit: i64,
    ) -> StoreResult<Vec<MessageView>> {
        self.require_member(room, user).await?;
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{MESSAGE_VIEW} WHERE m.room_id = $2 AND m.seq < $3 ORDER BY m.seq DESC LIMIT $4"
        )))
        .bind(user)
        .bind(room)
        .bind(before.unwrap_or(Seq::MAX))
        .bind(limit.clamp(1, 200))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replies to thread root `root`, oldest first, after `after`.
    pub async fn thread(
        &self,
        room: RoomId,
        user: UserId,
        root: Seq,
        after: Seq,
        limit: i64,
    ) -> StoreResult<Vec<MessageView>> {
        self.require_member(room, user).await?;
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{MESSAGE_VIEW} WHERE m.room_id = $2 AND m.thread_root_seq = $3 AND m.seq > $4 ORDER BY m.seq LIMIT $5"
        )))
        .bind(user)
        .bind(room)
        .bind(root)
        .bind(after)
        .bind(limit.clamp(1, 200))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Full-text search over the rooms `user` belongs to (or one of them).
    pub async fn search(
        &self,
        user: UserId,
        query: &str,
        room: Option<RoomId>,
        limit: i64,
    ) -> StoreResult<Vec<(RoomId, MessageView)>> {
        if query.trim().is_empty() || query.len() > 256 {
            return Err(StoreError::Invalid("q must be 1 to 256 characters".into()));
        }
        let rows: Vec<SearchRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{} WHERE m.search @@ plainto_tsquery('simple', $2) AND m.deleted_at IS NULL \
               AND ($3::bigint IS NULL OR m.room_id = $3) ORDER BY m.created_at DESC LIMIT $4",
            MESSAGE_VIEW
                .replacen("SELECT m.seq,", "SELECT m.room_id AS room, m.seq,", 1)
                .replacen(
                    "FROM messages m JOIN users u ON u.id = m.sender_id",
                    "FROM messages m JOIN users u ON u.id = m.sender_id JOIN room_members rm ON rm.room_id = m.room_id AND rm.user_id = $1",
                    1
                )
        )))
        .bind(user)
        .bind(query)
        .bind(room)
        .bind(limit.clamp(1, 100))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.room, r.message)).collect())
    }

    /// Up to `limit` events after `after`, oldest first (for resume and gap fill).
    pub async fn events_after(
        &self,
        room: RoomId,
        after: Seq,
        limit: i64,
    ) -> StoreResult<Vec<EventRow>> {
        Ok(sqlx::query_as(
            "SELECT seq, payload, (extract(epoch FROM created_at) * 1000)::bigint AS created_ms \
             FROM room_events WHERE room_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(room)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Events in `(after, upto]`, oldest first.
    pub async fn events_between(
        &self,
        room: RoomId,
        after: Seq,
        upto: Seq,
    ) -> StoreResult<Vec<EventRow>> {
        Ok(sqlx::query_as(
            "SELECT seq, payload, (extract(epoch FROM created_at) * 1000)::bigint AS created_ms \
             FROM room_events WHERE room_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
        )
        .bind(room)
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes messages and events older than `days` days, in batches.
    /// Returns how many rows went.
    pub async fn sweep_retention(&self, days: u32) -> StoreResult<u64> {
        if days == 0 {
            return Ok(0);
        }
        let mut total = 0;
        for sql in [
            "DELETE FROM room_events WHERE ctid IN (SELECT ctid FROM room_events WHERE created_at < now() - make_interval(days => $1) LIMIT 5000)",
            "DELETE FROM messages WHERE ctid IN (SELECT ctid FROM messages WHERE created_at < now() - make_interval(days => $1) LIMIT 5000)",
        ] {
            loop {
                let n = sqlx::query(sql)
                    .bind(days as i32)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                total += n;
                if n < 5000 {
                    break;
                }
            }
        }
        Ok(total)
    }
}

#[derive(FromRow)]
struct SearchRow {
    room: RoomId,
    #[sqlx(flatten)]
    message: MessageView,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &str) -> NewMessage {
        NewMessage {
            client_msg_id: "c-1".into(),
            body: body.into(),
            thread_root: None,
            attachments: vec![],
        }
    }

    #[test]
    fn limits_name_the_field() {
        assert!(validate_message(&msg("hi"), 10).is_ok());
        assert!(
            validate_message(&msg("x".repeat(11).as_str()), 10)
                .unwrap_err()
                .to_string()
                .contains("body is 11 bytes")
        );
        assert!(
            validate_message(&msg("  "), 10)
                .unwrap_err()
                .to_string()
                .contains("body is empty")
        );
        let mut bad_id = msg("hi");
        bad_id.client_msg_id = "has space".into();
        assert!(
            validate_message(&bad_id, 10)
                .unwrap_err()
                .to_string()
                .contains("client_msg_id")
        );
        let mut att = msg("");
        att.attachments = vec![Attachment {
            url: "ftp://x".into(),
            content_type: "image/png".into(),
            size_bytes: 1,
            name: None,
        }];
        assert!(
            validate_message(&att, 10)
                .unwrap_err()
                .to_string()
                .contains("attachments[0].url")
        );
        att.attachments[0].url = "https://cdn.example/a.png".into();
        assert!(
            validate_message(&att, 10).is_ok(),
            "an attachment alone is a message"
        );
        att.attachments[0].size_bytes = MAX_ATTACHMENT_BYTES + 1;
        assert!(
            validate_message(&att, 10)
                .unwrap_err()
                .to_string()
                .contains("size_bytes")
        );
    }
}
