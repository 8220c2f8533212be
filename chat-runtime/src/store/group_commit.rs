//! The group commit of sends ([`Store::send_many`]): many rooms' queued
//! sends stored by one statement, one commit, one WAL flush.
//!
//! A batch is read, planned, then written:
//!
//! 1. **Read** (one statement): per send, its room's `last_seq` and kind,
//!    whether the sender is a member, whether its `client_msg_id` is already
//!    stored, whether its thread root is a root; and the commit time.
//! 2. **Plan** ([`plan`], pure): each send's answer, and the rows to write
//!    with consecutive seqs per room.
//! 3. **Write** (one statement): for each room written, `UPDATE rooms SET
//!    last_seq` *only if it still has the `last_seq` read*, and the messages
//!    and events of exactly the rooms so updated.
//!
//! The fast path runs read and write as two autocommitted statements: two
//! round trips, the write's commit inside the second. Every change that can
//! make a plan wrong (another send, an edit or deletion, a join, leave or
//! kick) takes the room's next seq, so a room whose `last_seq` moved since
//! the read is exactly a room whose plan may be stale. The write skips such
//! a room (`last_seq = seen` is false, also after waiting for its row lock),
//! and its sends are committed again under the room row's lock (the locked
//! path: BEGIN, `SELECT ... FOR UPDATE` in id order, read, write, COMMIT),
//! which is also what a batch the database refuses falls back to. Rooms
//! written by one replica at a time (the usual case) never conflict.

use std::collections::{HashMap, HashSet, hash_map::Entry};

use sqlx::{PgExecutor, types::Json};

use super::{
    RoomId, Seq, Store, StoreError, StoreResult, UserId,
    accounts::User,
    events::{Attachment, NewMessage, SendAck},
    rooms::room_absent,
};
use crate::protocol::event::MessagePayload;

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

/// What the read found for one send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Check {
    /// The room's `last_seq` and whether it is public; `None`: no such room.
    room: Option<(Seq, bool)>,
    /// The sender is a member of the room.
    member: bool,
    /// The seq of a message already stored with this `client_msg_id`.
    stored: Option<Seq>,
    /// The thread root: `None` no such (undeleted) message, `Some(false)` a
    /// reply itself, `Some(true)` a root.
    root_ok: Option<bool>,
}

/// What the read found for a batch.
#[derive(Clone, Debug, Default)]
struct Observed {
    /// Per send, in batch order.
    checks: Vec<Check>,
    /// The commit time as PostgreSQL prints a `timestamptz` (written back
    /// exactly into `created_at`).
    created_at: String,
    /// The same, as the payloads carry it (RFC 3339, milliseconds, UTC).
    created_at_payload: String,
    /// The same, milliseconds since the epoch.
    created_ms: i64,
}

/// The rows a batch writes, as the write statement's parallel arrays.
#[derive(Debug, Default)]
struct Writes<'a> {
    room: Vec<RoomId>,
    seq: Vec<Seq>,
    sender: Vec<UserId>,
    client_msg_id: Vec<&'a str>,
    body: Vec<&'a str>,
    thread_root: Vec<Option<Seq>>,
    attachments: Vec<Json<&'a Vec<Attachment>>>,
    payload: Vec<String>,
}

/// A batch's answers and writes.
#[derive(Debug, Default)]
struct Plan<'a> {
    /// Each send's answer, valid once its room's write commits.
    results: Vec<StoreResult<SendAck>>,
    writes: Writes<'a>,
    /// Per room written, in first-send order: (room, `last_seq` read,
    /// `last_seq` after the write).
    positions: Vec<(RoomId, Seq, Seq)>,
}

/// Decides each send from what was read: an absent room or a non-member of
/// a private room is told the room is absent, a non-member of a public room
/// to join first, a used `client_msg_id` (also earlier in the batch) gets
/// the original ack with `duplicate: true`, a bad thread root is invalid;
/// the rest take their room's next seqs in batch order. Pure.
///
/// # Errors
/// A payload that does not serialize (not expected: it is built from
/// strings and numbers).
fn plan<'a>(batch: &[&'a RoomSend], observed: &Observed) -> StoreResult<Plan<'a>> {
    let mut plan = Plan::default();
    // (room, seq read, next seq) for rooms given a seq.
    let mut next: HashMap<RoomId, usize> = HashMap::new();
    // Sends of this batch already given a seq, for retries within it.
    let mut taken: HashMap<(RoomId, UserId, &str), Seq> = HashMap::new();
    for (send, check) in batch.iter().zip(&observed.checks) {
        let (room, user, m) = (send.room, &send.user, &send.message);
        let Some((last_seq, public)) = check.room else {
            plan.results.push(Err(room_absent(room)));
            continue;
        };
        if !check.member {
            // A non-member of a private room or DM is told the room is
            // absent.
            plan.results.push(Err(if public {
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
                plan.results.push(Ok(SendAck {
                    seq: *e.get(),
                    client_msg_id: m.client_msg_id.clone(),
                    duplicate: true,
                }));
                continue;
            }
            Entry::Vacant(e) => e,
        };
        if let Some(seq) = check.stored {
            plan.results.push(Ok(SendAck {
                seq,
                client_msg_id: m.client_msg_id.clone(),
                duplicate: true,
            }));
            slot.insert(seq);
            continue;
        }
        if let Some(root) = m.thread_root {
            let refusal = match check.root_ok {
                None => Some(format!(
                    "thread_root {root} is not a message in room {room}"
                )),
                Some(false) => Some(format!(
                    "thread_root {root} is itself a reply; reply to its root"
                )),
                Some(true) => None,
            };
            if let Some(message) = refusal {
                plan.results.push(Err(StoreError::Invalid(message)));
                continue;
            }
        }
        let payload = serde_json::to_string(&MessagePayload::new(
            user,
            &m.client_msg_id,
            &m.body,
            m.thread_root,
            &m.attachments,
            &observed.created_at_payload,
        ))
        .map_err(|e| StoreError::Invalid(format!("the message did not serialize: {e}")))?;
        let i = *next.entry(room).or_insert_with(|| {
            plan.positions.push((room, last_seq, last_seq));
            plan.positions.len() - 1
        });
        plan.positions[i].2 += 1;
        let seq = plan.positions[i].2;
        slot.insert(seq);
        let w = &mut plan.writes;
        w.room.push(room);
        w.seq.push(seq);
        w.sender.push(user.id);
        w.client_msg_id.push(m.client_msg_id.as_str());
        w.body.push(m.body.as_str());
        w.thread_root.push(m.thread_root);
        w.attachments.push(Json(&m.attachments));
        w.payload.push(payload);
        plan.results.push(Ok(SendAck {
            seq,
            client_msg_id: m.client_msg_id.clone(),
            duplicate: false,
        }));
    }
    Ok(plan)
}

/// The events of the rooms in `written`, by room in seq order.
fn committed_events(
    writes: Writes<'_>,
    created_ms: i64,
    written: &HashSet<RoomId>,
) -> Vec<(RoomId, Vec<CommittedEvent>)> {
    let mut events: Vec<(RoomId, Vec<CommittedEvent>)> = Vec::new();
    let mut slot_of: HashMap<RoomId, usize> = HashMap::new();
    for ((room, seq), payload) in writes.room.into_iter().zip(writes.seq).zip(writes.payload) {
        if !written.contains(&room) {
            continue;
        }
        let slot = *slot_of.entry(room).or_insert_with(|| {
            events.push((room, Vec::new()));
            events.len() - 1
        });
        events[slot].1.push(CommittedEvent {
            seq,
            payload,
            created_ms,
        });
    }
    events
}

/// Step 1: what the database says of each send now (one statement).
async fn read<'e>(db: impl PgExecutor<'e>, batch: &[&RoomSend]) -> StoreResult<Observed> {
    type Row = (
        Option<Seq>,
        Option<bool>,
        bool,
        Option<Seq>,
        Option<bool>,
        String,
        String,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.last_seq, r.kind = 'public', \
                EXISTS (SELECT 1 FROM room_members rm WHERE rm.room_id = k.r AND rm.user_id = k.u), \
                (SELECT m.seq FROM messages m \
                  WHERE m.room_id = k.r AND m.sender_id = k.u AND m.client_msg_id = k.c), \
                (SELECT m.thread_root_seq IS NULL FROM messages m \
                  WHERE m.room_id = k.r AND m.seq = k.t AND m.deleted_at IS NULL), \
                now()::text, \
                to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                (extract(epoch FROM now()) * 1000)::bigint \
         FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[]) WITH ORDINALITY AS k(r, u, c, t, i) \
         LEFT JOIN rooms r ON r.id = k.r \
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
    .fetch_all(db)
    .await?;
    if rows.len() != batch.len() {
        return Err(StoreError::Invalid(
            "the send could not be checked; retry".into(),
        ));
    }
    let mut observed = Observed::default();
    for (last_seq, public, member, stored, root_ok, at, at_payload, ms) in rows {
        observed.checks.push(Check {
            room: last_seq.map(|s| (s, public.unwrap_or(false))),
            member,
            stored,
            root_ok,
        });
        (
            observed.created_at,
            observed.created_at_payload,
            observed.created_ms,
        ) = (at, at_payload, ms);
    }
    Ok(observed)
}

/// Step 3: moves each room's `last_seq` from the value read to its new one
/// and stores the messages and events of the rooms so moved (one
/// statement). Returns those rooms: a room missing moved since the read.
async fn write<'e>(
    db: impl PgExecutor<'e>,
    plan: &Plan<'_>,
    created_at: &str,
) -> StoreResult<HashSet<RoomId>> {
    let w = &plan.writes;
    let (mut p_room, mut p_seen, mut p_last) = (Vec::new(), Vec::new(), Vec::new());
    for &(room, seen, last) in &plan.positions {
        p_room.push(room);
        p_seen.push(seen);
        p_last.push(last);
    }
    let written: Vec<(RoomId,)> = sqlx::query_as(
        "WITH positions AS ( \
           UPDATE rooms SET last_seq = p.last \
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS p(id, seen, last) \
           WHERE rooms.id = p.id AND rooms.last_seq = p.seen \
           RETURNING rooms.id), \
         stored AS ( \
           INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, thread_root_seq, attachments, created_at) \
           SELECT w.*, $12::timestamptz \
           FROM unnest($4::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::bigint[], $10::jsonb[]) \
                AS w(room_id, seq, sender, client_msg_id, body, thread_root, attachments) \
           WHERE w.room_id IN (SELECT id FROM positions)), \
         events AS ( \
           INSERT INTO room_events (room_id, seq, kind, actor_id, message_seq, payload, created_at) \
           SELECT e.room_id, e.seq, 'message', e.sender, e.seq, e.payload::jsonb, $12::timestamptz \
           FROM unnest($4::bigint[], $5::bigint[], $6::bigint[], $11::text[]) AS e(room_id, seq, sender, payload) \
           WHERE e.room_id IN (SELECT id FROM positions)) \
         SELECT id FROM positions",
    )
    .bind(&p_room)
    .bind(&p_seen)
    .bind(&p_last)
    .bind(&w.room)
    .bind(&w.seq)
    .bind(&w.sender)
    .bind(&w.client_msg_id)
    .bind(&w.body)
    .bind(&w.thread_root)
    .bind(&w.attachments)
    .bind(&w.payload)
    .bind(created_at)
    .fetch_all(db)
    .await?;
    Ok(written.into_iter().map(|(r,)| r).collect())
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

    /// Sends messages to any number of rooms (the committer's group commit:
    /// one commit, one WAL flush, for all of them). Results come back in
    /// order; each is the answer to that send: a retry with an already used
    /// `client_msg_id` (also within the batch) gets the original ack with
    /// `duplicate: true` and writes nothing, non-members and absent rooms get
    /// a refusal, and each room's new messages take consecutive seqs in
    /// batch order.
    ///
    /// Two round trips when no other writer moved a room in between (the
    /// module's fast path); the rooms that moved are committed again with
    /// their rows locked in id order, so sends from other replicas serialize
    /// with this one and two group commits never deadlock.
    ///
    /// When the database refuses the batch, its messages are committed again
    /// room by room, and a room that fails again one message at a time (in
    /// order), so one message the database refuses fails only its own
    /// sender. A failure to reach the database fails the whole batch at
    /// once.
    ///
    /// Also returned: the events committed, by room in seq order, as the
    /// fan-out would read them back (so local subscribers are served
    /// without that read).
    pub async fn send_many(&self, batch: &[RoomSend]) -> Committed {
        let all: Vec<&RoomSend> = batch.iter().collect();
        let (mut done, moved) = match self.send_unlocked(&all).await {
            Ok(fast) => fast,
            Err(e) if !refused_by_database(&e) => return Committed::failed(batch.len(), e),
            // Nothing was written (one statement): the locked path, which
            // isolates what the database refuses.
            Err(_) => return self.send_locked(&all).await,
        };
        if moved.is_empty() {
            return done;
        }
        let sends: Vec<&RoomSend> = moved.iter().map(|&i| all[i]).collect();
        tracing::debug!(
            sends = sends.len(),
            "rooms moved since the group commit's read; committing their sends under the rooms' row locks"
        );
        let again = self.send_locked(&sends).await;
        for (i, r) in moved.into_iter().zip(again.results) {
            done.results[i] = r;
        }
        done.events.extend(again.events);
        done
    }

    /// The fast path: read, plan, write with no lock held between. Returns
    /// what committed, and the indices of the sends whose rooms moved since
    /// the read (their results are to be replaced).
    async fn send_unlocked(&self, batch: &[&RoomSend]) -> StoreResult<(Committed, Vec<usize>)> {
        let observed = read(&self.pool, batch).await?;
        let mut plan = plan(batch, &observed)?;
        if plan.positions.is_empty() {
            return Ok((
                Committed {
                    results: plan.results,
                    events: Vec::new(),
                },
                Vec::new(),
            ));
        }
        let written = write(&self.pool, &plan, &observed.created_at).await?;
        let moved: Vec<usize> = (0..batch.len())
            .filter(|&i| {
                plan.positions.iter().any(|p| p.0 == batch[i].room)
                    && !written.contains(&batch[i].room)
            })
            .collect();
        let events = committed_events(
            std::mem::take(&mut plan.writes),
            observed.created_ms,
            &written,
        );
        Ok((
            Committed {
                results: plan.results,
                events,
            },
            moved,
        ))
    }

    /// The locked path: the batch in one transaction with its rooms' rows
    /// locked; refused batches split room by room, then one send at a time.
    async fn send_locked(&self, batch: &[&RoomSend]) -> Committed {
        let e = match self.send_locked_tx(batch).await {
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
            let sends: Vec<&RoomSend> = index.iter().map(|&i| batch[i]).collect();
            let done = match self.send_locked_tx(&sends).await {
                Ok(done) => done,
                Err(e) if sends.len() == 1 || !refused_by_database(&e) => {
                    Committed::failed(sends.len(), e)
                }
                Err(_) => {
                    let mut one_by_one = Committed::default();
                    for send in sends {
                        let done = self
                            .send_locked_tx(&[send])
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

    async fn send_locked_tx(&self, batch: &[&RoomSend]) -> StoreResult<Committed> {
        let mut tx = self.begin().await?;
        let mut room_ids: Vec<RoomId> = batch.iter().map(|s| s.room).collect();
        room_ids.sort_unstable();
        room_ids.dedup();
        // Locked in id order (no deadlock between group commits); the read
        // after it sees every commit that moved these rooms.
        sqlx::query("SELECT id FROM rooms WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&room_ids)
            .execute(&mut *tx)
            .await?;
        let observed = read(&mut *tx, batch).await?;
        let mut plan = plan(batch, &observed)?;
        if plan.positions.is_empty() {
            tx.rollback().await?;
            return Ok(Committed {
                results: plan.results,
                events: Vec::new(),
            });
        }
        let written = write(&mut *tx, &plan, &observed.created_at).await?;
        if written.len() != plan.positions.len() {
            return Err(StoreError::Invalid(
                "a locked room moved during its group commit; retry".into(),
            ));
        }
        tx.commit().await?;
        let events = committed_events(
            std::mem::take(&mut plan.writes),
            observed.created_ms,
            &written,
        );
        Ok(Committed {
            results: plan.results,
            events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: UserId) -> User {
        User {
            id,
            username: format!("u{id}"),
            display_name: format!("User {id}"),
        }
    }

    fn send(room: RoomId, sender: UserId, client_msg_id: &str, root: Option<Seq>) -> RoomSend {
        RoomSend {
            room,
            user: user(sender),
            message: NewMessage {
                client_msg_id: client_msg_id.into(),
                body: format!("body of {client_msg_id}"),
                thread_root: root,
                attachments: Vec::new(),
            },
        }
    }

    fn member_of(last_seq: Seq) -> Check {
        Check {
            room: Some((last_seq, true)),
            member: true,
            stored: None,
            root_ok: None,
        }
    }

    fn observed(checks: Vec<Check>) -> Observed {
        Observed {
            checks,
            created_at: "2026-12-02 06:00:00.123456+00".into(),
            created_at_payload: "2026-12-02T06:00:00.123Z".into(),
            created_ms: 1_796_191_200_123,
        }
    }

    fn seqs(plan: &Plan<'_>) -> Vec<Result<(Seq, bool), String>> {
        plan.results
            .iter()
            .map(|r| match r {
                Ok(a) => Ok((a.seq, a.duplicate)),
                Err(e) => Err(e.to_string()),
            })
            .collect()
    }

    #[test]
    fn each_room_takes_consecutive_seqs_in_batch_order() {
        let sends = [
            send(1, 10, "a", None),
            send(2, 10, "b", None),
            send(1, 11, "c", None),
        ];
        let batch: Vec<&RoomSend> = sends.iter().collect();
        let obs = observed(vec![member_of(5), member_of(40), member_of(5)]);
        let plan = plan(&batch, &obs).unwrap();
        assert_eq!(
            seqs(&plan),
            vec![Ok((6, false)), Ok((41, false)), Ok((7, false))]
        );
        assert_eq!(plan.positions, vec![(1, 5, 7), (2, 40, 41)]);
        assert_eq!(plan.writes.room, vec![1, 2, 1]);
        assert_eq!(plan.writes.seq, vec![6, 41, 7]);
        assert!(
            plan.writes.payload[0].contains("\"created_at\":\"2026-12-02T06:00:00.123Z\""),
            "{}",
            plan.writes.payload[0]
        );
    }

    #[test]
    fn retries_get_the_original_seq_and_write_nothing() {
        let sends = [
            send(1, 10, "stored-before", None),
            send(1, 10, "new", None),
            send(1, 10, "new", None),
        ];
        let batch: Vec<&RoomSend> = sends.iter().collect();
        let stored = Check {
            stored: Some(3),
            ..member_of(9)
        };
        let plan = plan(&batch, &observed(vec![stored, member_of(9), member_of(9)])).unwrap();
        assert_eq!(
            seqs(&plan),
            vec![Ok((3, true)), Ok((10, false)), Ok((10, true))]
        );
        assert_eq!(plan.positions, vec![(1, 9, 10)]);
        assert_eq!(plan.writes.seq, vec![10]);
    }

    #[test]
    fn refusals_name_the_room_or_the_thread_root_and_write_nothing() {
        let sends = [
            send(1, 10, "absent", None),
            send(2, 10, "public, not a member", None),
            send(3, 10, "private, not a member", None),
            send(4, 10, "no such root", Some(7)),
            send(4, 10, "root is a reply", Some(8)),
        ];
        let batch: Vec<&RoomSend> = sends.iter().collect();
        let not_member = |public| Check {
            room: Some((1, public)),
            member: false,
            stored: None,
            root_ok: None,
        };
        let obs = observed(vec![
            Check::default(),
            not_member(true),
            not_member(false),
            member_of(9),
            Check {
                root_ok: Some(false),
                ..member_of(9)
            },
        ]);
        let plan = plan(&batch, &obs).unwrap();
        let got = seqs(&plan);
        assert!(got[0].as_ref().unwrap_err().contains("room 1"), "{got:?}");
        assert!(
            got[1].as_ref().unwrap_err().contains("join it first"),
            "{got:?}"
        );
        assert_eq!(got[2], Err(room_absent(3).to_string()));
        assert!(
            got[3]
                .as_ref()
                .unwrap_err()
                .contains("thread_root 7 is not a message"),
            "{got:?}"
        );
        assert!(
            got[4].as_ref().unwrap_err().contains("reply to its root"),
            "{got:?}"
        );
        assert!(plan.positions.is_empty());
        assert!(plan.writes.seq.is_empty());
    }

    #[test]
    fn only_the_rooms_written_give_events() {
        let sends = [
            send(1, 10, "a", None),
            send(2, 10, "b", None),
            send(1, 10, "c", None),
        ];
        let batch: Vec<&RoomSend> = sends.iter().collect();
        let obs = observed(vec![member_of(0), member_of(0), member_of(0)]);
        let plan = plan(&batch, &obs).unwrap();
        let events = committed_events(plan.writes, obs.created_ms, &HashSet::from([1]));
        assert_eq!(events.len(), 1);
        let (room, list) = &events[0];
        assert_eq!(*room, 1);
        assert_eq!(list.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(list[0].created_ms, obs.created_ms);
    }
}
