//! Room events: sending (idempotent by `client_msg_id`), edits, deletions
//! (tombstones), reactions, read state, history (keyset pagination), threads,
//! full-text search, replay for resume, and retention.
//!
//! Every event takes the room's next seq inside its own transaction (the
//! room row's lock orders writers, so commit order is seq order). The wake-up
//! to other replicas is sent after the commit, coalesced, by the broker
//! ([`crate::hub::pg`]), never inside the transaction.

use serde::{Deserialize, Serialize};
use serde_json::{Value, value::RawValue};
use sqlx::{FromRow, Row, postgres::PgRow, types::Json};

use super::{
    RoomId, Seq, Store, StoreError, StoreResult, UserId,
    accounts::User,
    append_event, check_no_nul, next_seq,
    rooms::{Role, room_absent},
};
pub use crate::protocol::Attachment;
use crate::protocol::{RoomEvent, StoredEvent, UserRef, event::MessagePayload};

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
    check_no_nul("body", &m.body)?;
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
        check_no_nul(&format!("attachments[{i}].url"), &a.url)?;
        check_no_nul(&format!("attachments[{i}].content_type"), &a.content_type)?;
        if let Some(name) = &a.name {
            check_no_nul(&format!("attachments[{i}].name"), name)?;
        }
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

/// A stored room event, for replay and fan-out. The payload is read from
/// `jsonb` without an intermediate `Value`: typed when it has a known shape,
/// passed through as stored otherwise ([`StoredEvent`]).
#[derive(Clone, Debug)]
pub struct EventRow {
    /// Seq.
    pub seq: Seq,
    /// Payload (kind and fields).
    pub payload: StoredEvent,
    /// Commit time, milliseconds since the epoch (fan-out latency metric).
    pub created_ms: i64,
}

impl<'r> FromRow<'r, PgRow> for EventRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let Json(payload): Json<&RawValue> = row.try_get("payload")?;
        Ok(Self {
            seq: row.try_get("seq")?,
            payload: StoredEvent::parse(payload.get()),
            created_ms: row.try_get("created_ms")?,
        })
    }
}

/// One send of a group commit ([`Store::send_many`]).
#[derive(Clone, Debug)]
pub struct RoomSend {
    /// The room.
    pub room: RoomId,
    /// The sender.
    pub user: User,
    /// The message.
    pub message: NewMessage,
}

/// A message event just committed by this replica: its payload as stored
/// (serialized once; the fan-out builds the event frame from these bytes).
#[derive(Clone, Debug)]
pub struct CommittedEvent {
    /// Seq.
    pub seq: Seq,
    /// The payload as stored, a JSON object.
    pub payload: String,
    /// Commit time, milliseconds since the epoch (fan-out latency metric).
    pub created_ms: i64,
}

/// What a group commit did.
#[derive(Debug, Default)]
pub struct Committed {
    /// Each send's answer, in the order given.
    pub results: Vec<StoreResult<SendAck>>,
    /// The events committed, by room, each room's in seq order.
    pub events: Vec<(RoomId, Vec<CommittedEvent>)>,
}

impl Committed {
    /// `n` sends that all failed with `e`.
    fn failed(n: usize, e: StoreError) -> Self {
        let results = if n == 1 {
            vec![Err(e)]
        } else {
            let msg = e.to_string();
            (0..n)
                .map(|_| Err(StoreError::Db(sqlx::Error::Protocol(msg.clone()))))
                .collect()
        };
        Self {
            results,
            events: Vec::new(),
        }
    }
}

/// Whether the database refused the statement (a constraint, a bad value):
/// retrying the batch in parts isolates the culprit. Anything else (no
/// connection, a timeout) would fail the parts too.
fn refused_by_database(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(sqlx::Error::Database(_)))
}

/// Events of one room committed one transaction at a time, merged into one
/// list per room (each still in seq order).
fn merge_rooms(events: Vec<(RoomId, Vec<CommittedEvent>)>) -> Vec<(RoomId, Vec<CommittedEvent>)> {
    let mut merged: Vec<(RoomId, Vec<CommittedEvent>)> = Vec::new();
    for (room, list) in events {
        match merged.iter_mut().find(|(r, _)| *r == room) {
            Some((_, all)) => all.extend(list),
            None => merged.push((room, list)),
        }
    }
    merged
}

impl Store {
    /// Sends several messages to one room in one transaction: the group
    /// commit of [`Store::send_many`] for a single room (see there).
    pub async fn send_batch(
        &self,
        room: RoomId,
        batch: &[(User, NewMessage)],
    ) -> Vec<StoreResult<SendAck>> {
        let sends: Vec<RoomSend> = batch
            .iter()
            .map(|(user, message)| RoomSend {
                room,
                user: user.clone(),
                message: message.clone(),
            })
            .collect();
        self.send_many(&sends).await.results
    }

    /// Sends messages to any number of rooms in one transaction (the
    /// committer's group commit: one commit, one WAL flush, for all of
    /// them). Results come back in order; each is the answer to that send:
    /// a retry with an already used `client_msg_id` (also within the batch)
    /// gets the original ack with `duplicate: true` and writes nothing,
    /// non-members and absent rooms get a refusal, and each room's new
    /// messages take consecutive seqs in batch order. The room rows are
    /// locked first, in id order, so sends from other replicas serialize
    /// with this one and two group commits never deadlock.
    ///
    /// When the transaction fails on something the database refused, its
    /// messages are committed again room by room, and a room that fails
    /// again one message at a time (in order), so one message the database
    /// refuses fails only its own sender. A failure to reach the database
    /// fails the whole batch at once.
    ///
    /// Also returned: the events committed, by room in seq order, as the
    /// fan-out would read them back (so local subscribers are served
    /// without that read).
    pub async fn send_many(&self, batch: &[RoomSend]) -> Committed {
        let all: Vec<&RoomSend> = batch.iter().collect();
        let e = match self.send_many_tx(&all).await {
            Ok(done) => return done,
            Err(e) => e,
        };
        if !refused_by_database(&e) || batch.len() == 1 {
            return Committed::failed(batch.len(), e);
        }
        tracing::warn!(
            size = batch.len(),
            error = %e,
            "group commit failed; committing its messages room by room"
        );
        let mut rooms: Vec<RoomId> = batch.iter().map(|s| s.room).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let mut results: Vec<Option<StoreResult<SendAck>>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        let mut events = Vec::new();
        for room in rooms {
            let index: Vec<usize> = (0..batch.len())
                .filter(|&i| batch[i].room == room)
                .collect();
            let sends: Vec<&RoomSend> = index.iter().map(|&i| &batch[i]).collect();
            let done = match self.send_many_tx(&sends).await {
                Ok(done) => done,
                Err(e) if sends.len() == 1 || !refused_by_database(&e) => {
                    Committed::failed(sends.len(), e)
                }
                Err(_) => {
                    let mut one_by_one = Committed::default();
                    for send in sends {
                        let done = self
                            .send_many_tx(&[send])
                            .await
                            .unwrap_or_else(|e| Committed::failed(1, e));
                        one_by_one.results.extend(done.results);
                        one_by_one.events.extend(done.events);
                    }
                    one_by_one.events = merge_rooms(one_by_one.events);
                    one_by_one
                }
            };
            for (i, r) in index.into_iter().zip(done.results) {
                results[i] = Some(r);
            }
            events.extend(done.events);
        }
        Committed {
            results: results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(StoreError::Invalid("the send was not stored; retry".into()))
                    })
                })
                .collect(),
            events,
        }
    }

    async fn send_many_tx(&self, batch: &[&RoomSend]) -> StoreResult<Committed> {
        use std::collections::{HashMap, hash_map::Entry};
        let mut tx = self.begin().await?;
        let mut room_ids: Vec<RoomId> = batch.iter().map(|s| s.room).collect();
        room_ids.sort_unstable();
        room_ids.dedup();
        // Locked in id order (no deadlock between group commits); the
        // commit's time comes along (`now()` is the transaction's start, the
        // `created_at` the rows get by default).
        let locked: Vec<(RoomId, Seq, String, String, i64)> = sqlx::query_as(
            "SELECT id, last_seq, kind, \
                    to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    (extract(epoch FROM now()) * 1000)::bigint \
             FROM rooms WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&room_ids)
        .fetch_all(&mut *tx)
        .await?;
        let Some((_, _, _, created_at, created_ms)) = locked.first().cloned() else {
            tx.rollback().await?;
            return Ok(Committed {
                results: batch.iter().map(|s| Err(room_absent(s.room))).collect(),
                events: Vec::new(),
            });
        };
        // (next seq, public) per room.
        let mut rooms: HashMap<RoomId, (Seq, bool)> = locked
            .into_iter()
            .map(|(id, last, kind, _, _)| (id, (last, kind == "public")))
            .collect();
        // Per send: a member? already stored (its seq)? its thread root a
        // message (and itself no reply)?
        let checks: Vec<(bool, Option<Seq>, Option<bool>)> = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM room_members rm WHERE rm.room_id = k.r AND rm.user_id = k.u), \
                    (SELECT m.seq FROM messages m \
                      WHERE m.room_id = k.r AND m.sender_id = k.u AND m.client_msg_id = k.c), \
                    (SELECT m.thread_root_seq IS NULL FROM messages m \
                      WHERE m.room_id = k.r AND m.seq = k.t AND m.deleted_at IS NULL) \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[]) WITH ORDINALITY AS k(r, u, c, t, i) \
             ORDER BY k.i",
        )
        .bind(batch.iter().map(|s| s.room).collect::<Vec<_>>())
        .bind(batch.iter().map(|s| s.user.id).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|s| s.message.client_msg_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|s| s.message.thread_root)
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        if checks.len() != batch.len() {
            return Err(StoreError::Invalid(
                "the send could not be checked; retry".into(),
            ));
        }

        let mut results = Vec::with_capacity(batch.len());
        // Sends of this batch already given a seq, for retries within it.
        let mut taken: HashMap<(RoomId, UserId, &str), Seq> = HashMap::new();
        let n = batch.len();
        let (mut w_room, mut w_seq, mut w_sender, mut w_cmid, mut w_body, mut w_root) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut w_att, mut w_payload) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (send, (member, stored, root_ok)) in batch.iter().zip(checks) {
            let (room, user, m) = (send.room, &send.user, &send.message);
            let Some((next, public)) = rooms.get_mut(&room) else {
                results.push(Err(room_absent(room)));
                continue;
            };
            if !member {
                // A non-member of a private room or DM is told the room is
                // absent.
                results.push(Err(if *public {
                    StoreError::Forbidden(format!(
                        "you are not a member of room {room}; join it first"
                    ))
                } else {
                    room_absent(room)
                }));
                continue;
            }
            let slot = match taken.entry((room, user.id, m.client_msg_id.as_str())) {
                Entry::Occupied(e) => {
                    results.push(Ok(SendAck {
                        seq: *e.get(),
                        client_msg_id: m.client_msg_id.clone(),
                        duplicate: true,
                    }));
                    continue;
                }
                Entry::Vacant(e) => e,
            };
            if let Some(seq) = stored {
                results.push(Ok(SendAck {
                    seq,
                    client_msg_id: m.client_msg_id.clone(),
                    duplicate: true,
                }));
                slot.insert(seq);
                continue;
            }
            if let Some(root) = m.thread_root {
                match root_ok {
                    None => {
                        results.push(Err(StoreError::Invalid(format!(
                            "thread_root {root} is not a message in room {room}"
                        ))));
                        continue;
                    }
                    Some(false) => {
                        results.push(Err(StoreError::Invalid(format!(
                            "thread_root {root} is itself a reply; reply to its root"
                        ))));
                        continue;
                    }
                    Some(true) => {}
                }
            }
            let payload = serde_json::to_string(&MessagePayload::new(
                user,
                &m.client_msg_id,
                &m.body,
                m.thread_root,
                &m.attachments,
                &created_at,
            ))
            .map_err(|e| StoreError::Invalid(format!("the message did not serialize: {e}")))?;
            *next += 1;
            slot.insert(*next);
            w_room.push(room);
            w_seq.push(*next);
            w_sender.push(user.id);
            w_cmid.push(m.client_msg_id.as_str());
            w_body.push(m.body.as_str());
            w_root.push(m.thread_root);
            w_att.push(Json(&m.attachments));
            w_payload.push(payload);
            results.push(Ok(SendAck {
                seq: *next,
                client_msg_id: m.client_msg_id.clone(),
                duplicate: false,
            }));
        }
        if w_seq.is_empty() {
            tx.rollback().await?;
            return Ok(Committed {
                results,
                events: Vec::new(),
            });
        }
        let (last_room, last_seq): (Vec<RoomId>, Vec<Seq>) = room_ids
            .iter()
            .filter_map(|r| rooms.get(r).map(|(next, _)| (*r, *next)))
            .unzip();
        // One statement: the rooms' positions, the messages, their events.
        sqlx::query(
            "WITH positions AS ( \
               UPDATE rooms SET last_seq = p.last FROM unnest($1::bigint[], $2::bigint[]) AS p(id, last) \
               WHERE rooms.id = p.id AND rooms.last_seq < p.last), \
             stored AS ( \
               INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, thread_root_seq, attachments) \
               SELECT * FROM unnest($3::bigint[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::bigint[], $9::jsonb[])) \
             INSERT INTO room_events (room_id, seq, kind, actor_id, message_seq, payload) \
             SELECT e.room_id, e.seq, 'message', e.sender, e.seq, e.payload::jsonb \
             FROM unnest($3::bigint[], $4::bigint[], $5::bigint[], $10::text[]) AS e(room_id, seq, sender, payload)",
        )
        .bind(&last_room)
        .bind(&last_seq)
        .bind(&w_room)
        .bind(&w_seq)
        .bind(&w_sender)
        .bind(&w_cmid)
        .bind(&w_body)
        .bind(&w_root)
        .bind(&w_att)
        .bind(&w_payload)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut events: Vec<(RoomId, Vec<CommittedEvent>)> = Vec::new();
        let mut slot_of: HashMap<RoomId, usize> = HashMap::new();
        for ((room, seq), payload) in w_room.into_iter().zip(w_seq).zip(w_payload) {
            let event = CommittedEvent {
                seq,
                payload,
                created_ms,
            };
            let slot = *slot_of.entry(room).or_insert_with(|| {
                events.push((room, Vec::new()));
                events.len() - 1
            });
            events[slot].1.push(event);
        }
        Ok(Committed { results, events })
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
        check_no_nul("body", body)?;
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
        let payload = RoomEvent::Edit {
            message_seq: message,
            body: body.to_string(),
            edited_at,
            actor: actor.into(),
            deleted: false,
        };
        append_event(&mut tx, room, seq, actor.id, Some(message), &payload).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Deletes a message (its author, or a moderator/owner), leaving a
    /// tombstone: the body and attachments are erased from the message and
    /// from its earlier events in the log. Returns the delete event's seq.
    pub async fn delete(&self, room: RoomId, actor: &User, message: Seq) -> StoreResult<Seq> {
        let role = self.require_member(room, actor.id).await?;
        let mut tx = self.begin().await?;
        let seq = next_seq(&mut tx, room).await?;
        let deleted = sqlx::query(
            "UPDATE messages SET deleted_at = now(), body = '', attachments = '[]' \
             WHERE room_id = $1 AND seq = $2 AND deleted_at IS NULL AND (sender_id = $3 OR $4)",
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
        // The content goes from the log too: replay and history never show
        // it again (the events keep their seq, marked `deleted`).
        sqlx::query(
            "UPDATE room_events SET payload = payload || CASE WHEN kind = 'message' \
               THEN '{\"body\": \"\", \"attachments\": [], \"deleted\": true}'::jsonb \
               ELSE '{\"body\": \"\", \"deleted\": true}'::jsonb END \
             WHERE room_id = $1 AND message_seq = $2 AND kind IN ('message', 'edit')",
        )
        .bind(room)
        .bind(message)
        .execute(&mut *tx)
        .await?;
        let payload = RoomEvent::Delete {
            message_seq: message,
            actor: actor.into(),
        };
        append_event(&mut tx, room, seq, actor.id, Some(message), &payload).await?;
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
        check_no_nul("emoji", emoji)?;
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
        let payload = RoomEvent::Reaction {
            message_seq: message,
            emoji: emoji.to_string(),
            on,
            user: UserRef::from(actor),
        };
        append_event(&mut tx, room, seq, actor.id, Some(message), &payload).await?;
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

    /// Search over the rooms `user` belongs to (or one of them), newest
    /// first among equally good matches. The query's words ([`SearchQuery`])
    /// must all match: words of scripts that separate words with spaces
    /// through the full-text index (ranked by `ts_rank`), words of scripts
    /// that do not (CJK, Thai...) as substrings of the body (served by the
    /// trigram index when pg_trgm is installed).
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
        check_no_nul("q", query)?;
        let q = SearchQuery::parse(query);
        // Placeholders $1..$4 are fixed; each substring term adds one.
        let mut filter =
            String::from(" WHERE m.deleted_at IS NULL AND ($3::bigint IS NULL OR m.room_id = $3)");
        let mut order = String::from(" ORDER BY m.created_at DESC, m.seq DESC");
        if q.words.is_some() {
            filter.push_str(" AND m.search @@ plainto_tsquery('simple', $2)");
            order = String::from(
                " ORDER BY ts_rank(m.search, plainto_tsquery('simple', $2)) DESC, m.created_at DESC, m.seq DESC",
            );
        }
        for i in 0..q.substrings.len() {
            filter.push_str(&format!(" AND m.body ILIKE ${}", i + 5));
        }
        let sql = format!(
            "{}{filter}{order} LIMIT $4",
            MESSAGE_VIEW
                .replacen("SELECT m.seq,", "SELECT m.room_id AS room, m.seq,", 1)
                .replacen(
                    "FROM messages m JOIN users u ON u.id = m.sender_id",
                    "FROM messages m JOIN users u ON u.id = m.sender_id JOIN room_members rm ON rm.room_id = m.room_id AND rm.user_id = $1",
                    1
                )
        );
        let mut select = sqlx::query_as::<_, SearchRow>(sqlx::AssertSqlSafe(sql))
            .bind(user)
            .bind(q.words.unwrap_or_default())
            .bind(room)
            .bind(limit.clamp(1, 100));
        for s in &q.substrings {
            select = select.bind(like_pattern(s));
        }
        let rows: Vec<SearchRow> = select.fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| (r.room, r.message)).collect())
    }

    /// Builds the trigram index for substring search when pg_trgm is
    /// installed and the index is missing or invalid (a build that was
    /// interrupted). Concurrently, so sends are not blocked; one replica at a
    /// time (an advisory lock). Returns whether the index is usable.
    pub async fn ensure_search_index(&self) -> StoreResult<bool> {
        const LOCK: i64 = 0x6368_6f72_7573_7431; // "chorust1"
        let (has_trgm,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm')")
                .fetch_one(&self.pool)
                .await?;
        if !has_trgm {
            return Ok(false);
        }
        let mut conn = self.pool.acquire().await?;
        let (schema,): (Option<String>,) = sqlx::query_as("SELECT current_schema()")
            .fetch_one(&mut *conn)
            .await?;
        // Per schema: tenants sharing a database build their own indexes.
        let lock = super::scoped_lock_key(LOCK, schema.as_deref().unwrap_or("public"));
        let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(lock)
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            return Ok(false);
        }
        let result = async {
            let valid: Option<(bool,)> = sqlx::query_as(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 WHERE c.relname = 'messages_body_trgm' AND c.relnamespace = current_schema()::regnamespace",
            )
            .fetch_optional(&mut *conn)
            .await?;
            match valid {
                Some((true,)) => return Ok(true),
                Some((false,)) => {
                    sqlx::raw_sql("DROP INDEX CONCURRENTLY IF EXISTS messages_body_trgm")
                        .execute(&mut *conn)
                        .await?;
                }
                None => {}
            }
            tracing::info!("building the trigram search index (messages_body_trgm)");
            sqlx::raw_sql(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_body_trgm ON messages USING GIN (body gin_trgm_ops)",
            )
            .execute(&mut *conn)
            .await?;
            Ok::<bool, sqlx::Error>(true)
        }
        .await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(lock)
            .execute(&mut *conn)
            .await;
        Ok(result?)
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

/// A search query split by how each word can be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// Words of scripts written with spaces, for the full-text index
    /// (`plainto_tsquery('simple', ...)`); `None` when there are none.
    pub words: Option<String>,
    /// Words holding a character of a script written without spaces between
    /// words (or, as Korean, with particles attached to them): matched as
    /// substrings of the body. At most [`MAX_SUBSTRING_TERMS`].
    pub substrings: Vec<String>,
}

/// Substring terms used from one query (the rest are ignored).
pub const MAX_SUBSTRING_TERMS: usize = 8;

/// Whether `c` belongs to a script whose words are not separated by spaces
/// (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar, Tibetan...) or, like
/// Hangul, carry particles the 'simple' parser cannot split off.
pub fn unspaced_script(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF      // Thai, Lao
        | 0x0F00..=0x0FFF    // Tibetan
        | 0x1000..=0x109F    // Myanmar
        | 0x1100..=0x11FF    // Hangul Jamo
        | 0x1780..=0x17FF    // Khmer
        | 0x19E0..=0x19FF    // Khmer symbols
        | 0x2E80..=0x2FDF    // CJK radicals
        | 0x3040..=0x30FF    // Hiragana, Katakana
        | 0x3100..=0x31FF    // Bopomofo, Hangul compatibility Jamo, Katakana ext.
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xA960..=0xA97F    // Hangul Jamo extended A
        | 0xAC00..=0xD7FF    // Hangul syllables, Jamo extended B
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0x20000..=0x3134F  // CJK extensions B-G
    )
}

impl SearchQuery {
    /// Splits a query on whitespace and sorts its words.
    pub fn parse(q: &str) -> Self {
        let mut words = Vec::new();
        let mut substrings = Vec::new();
        for w in q.split_whitespace() {
            if w.chars().any(unspaced_script) {
                // CJK punctuation around a term is not part of it.
                let t: String = w.trim_matches(|c: char| !c.is_alphanumeric()).to_string();
                if !t.is_empty() && substrings.len() < MAX_SUBSTRING_TERMS {
                    substrings.push(t);
                }
            } else {
                words.push(w);
            }
        }
        Self {
            words: (!words.is_empty()).then(|| words.join(" ")),
            substrings,
        }
    }
}

/// An ILIKE pattern matching `s` anywhere, its `%`, `_` and `\` literal.
fn like_pattern(s: &str) -> String {
    let mut p = String::with_capacity(s.len() + 2);
    p.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
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

    #[test]
    fn queries_split_into_full_text_words_and_substring_terms() {
        let q = SearchQuery::parse("上海");
        assert_eq!((q.words, q.substrings), (None, vec!["上海".to_string()]));
        let q = SearchQuery::parse("meeting 東京、 notes");
        assert_eq!(q.words.as_deref(), Some("meeting notes"));
        assert_eq!(q.substrings, ["東京"]);
        for term in ["서울", "กรุงเทพ", "とうきょう", "ソウル", "𠮷野家"]
        {
            assert_eq!(SearchQuery::parse(term).substrings, [term], "{term}");
        }
        let q = SearchQuery::parse("hello World, café");
        assert_eq!(
            (q.words.as_deref(), q.substrings.len()),
            (Some("hello World, café"), 0)
        );
        assert_eq!(
            SearchQuery::parse(&"字 ".repeat(20)).substrings.len(),
            MAX_SUBSTRING_TERMS
        );
        assert_eq!(like_pattern("5%_a\\b"), "%5\\%\\_a\\\\b%");
    }

    #[test]
    fn nul_characters_are_refused_naming_the_field() {
        let e = validate_message(&msg("a\0b"), 100).unwrap_err().to_string();
        assert!(e.starts_with("body contains a NUL"), "{e}");
        let mut att = msg("");
        att.attachments = vec![Attachment {
            url: "https://cdn.example/a.png".into(),
            content_type: "image/png".into(),
            size_bytes: 1,
            name: Some("a\0.png".into()),
        }];
        let e = validate_message(&att, 100).unwrap_err().to_string();
        assert!(e.starts_with("attachments[0].name contains a NUL"), "{e}");
        att.attachments[0].name = None;
        att.attachments[0].content_type = "image/\0png".into();
        let e = validate_message(&att, 100).unwrap_err().to_string();
        assert!(
            e.starts_with("attachments[0].content_type contains a NUL"),
            "{e}"
        );
    }
}
