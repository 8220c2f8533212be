//! The chat service: every write a client can ask for, behind one type that
//! both surfaces call (the WebSocket session in [`crate::ws`] and the REST
//! handlers in [`crate::http`]).
//!
//! Why: a write is validate -> store (directly, or through the per-room
//! [`Committer`] for sends) -> publish ([`Hub::committed`]: deliver locally at
//! once and wake the other replicas). A forgotten publish is not an error
//! anyone sees; the event arrives a second later, with the poll. Here each
//! write method publishes exactly once, right after its commit, so the
//! adapters only decode, call and encode. Reads are here too, so an adapter
//! never reaches past the service into the store.

use std::{sync::Arc, time::Instant};

use tokio::sync::oneshot;

use crate::{
    committer::Committer,
    config::Limits,
    hub::{Hub, RoomPresence},
    metrics::{Metrics, SendErrorReason},
    protocol::ErrorCode,
    ratelimit::RateLimiter,
    store::{
        RoomId, Seq, Store, StoreError, StoreResult,
        accounts::User,
        events::{MessageView, NewMessage, SendAck, validate_message},
        rooms::{MemberView, Role, RoomKind, RoomView},
    },
};

/// Members a room may have for `presence` to list each one's status.
pub const PRESENCE_DETAIL_LIMIT: usize = 500;
/// Longest room topic, in characters.
pub const MAX_TOPIC_CHARS: usize = 500;

/// Why the service refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The sender is over the per-user send rate.
    #[error("rate limit: retry in {retry_after_ms} ms")]
    RateLimited {
        /// When the next send will be accepted.
        retry_after_ms: u64,
        /// The limit, for the message (`CHAT_MESSAGES_PER_SECOND`).
        per_second: u32,
    },
    /// The message failed validation; nothing was queued. The message names
    /// the field and the limit.
    #[error("{0}")]
    Rejected(#[source] StoreError),
    /// The store refused or failed the write.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ChatError {
    /// The `chat_send_errors_total` reason of a failed send.
    pub fn send_error_reason(&self) -> SendErrorReason {
        match self {
            ChatError::RateLimited { .. } => SendErrorReason::RateLimited,
            ChatError::Rejected(_) => SendErrorReason::Rejected,
            ChatError::Store(e) => store_error_reason(e),
        }
    }

    /// The error code (frames use it as is, REST through
    /// [`ErrorCode::for_rest`]).
    pub fn code(&self) -> ErrorCode {
        match self {
            ChatError::RateLimited { .. } => ErrorCode::RateLimited,
            ChatError::Rejected(e) | ChatError::Store(e) => e.code(),
        }
    }
}

/// The `chat_send_errors_total` reason of a send the store failed.
fn store_error_reason(e: &StoreError) -> SendErrorReason {
    match e {
        StoreError::Db(_) => SendErrorReason::Database,
        StoreError::Invalid(_) => SendErrorReason::Rejected,
        StoreError::NotFound(_) | StoreError::Forbidden(_) | StoreError::Conflict(_) => {
            SendErrorReason::Refused
        }
    }
}

/// The service.
pub struct Chat {
    store: Store,
    hub: Arc<Hub>,
    committer: Arc<Committer>,
    limiter: RateLimiter,
    metrics: Arc<Metrics>,
    max_message_bytes: usize,
    messages_per_second: u32,
}

/// A send queued for its room's group commit; [`PendingSend::ack`] waits
/// for it. Splitting the two lets a WebSocket reader queue pipelined sends
/// in order and move on.
#[must_use = "a queued send is answered only when its ack is awaited"]
pub struct PendingSend {
    reply: oneshot::Receiver<StoreResult<SendAck>>,
    metrics: Arc<Metrics>,
    started: Instant,
}

impl PendingSend {
    /// Waits for the commit (the committer published it); a new message
    /// and a retried one (`duplicate`) are counted apart. Either way the time since
    /// [`Chat::submit`] goes to `chat_send_ack_seconds`; a failure is
    /// counted in `chat_send_errors_total`.
    pub async fn ack(self) -> StoreResult<SendAck> {
        let ack = match self.reply.await {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) => {
                self.metrics.send_failed(store_error_reason(&e));
                return Err(e);
            }
            Err(_) => {
                self.metrics.send_failed(SendErrorReason::Internal);
                return Err(StoreError::Invalid(
                    "the send was dropped; retry with the same client_msg_id".into(),
                ));
            }
        };
        self.metrics
            .send_acked(self.started.elapsed().as_secs_f64());
        // A new message was published by the committer (the hub's
        // `deliver_committed`), once per room and transaction.
        if ack.duplicate {
            self.metrics.duplicate_sends.inc();
        } else {
            self.metrics.messages_in.inc();
        }
        Ok(ack)
    }
}

impl Chat {
    /// The service over `hub`'s store, with its own committer and rate
    /// limiter.
    pub fn new(hub: Arc<Hub>, metrics: Arc<Metrics>, limits: &Limits) -> Self {
        let store = hub.store().clone();
        let local = hub.clone();
        Self {
            committer: Committer::new(
                store.clone(),
                Box::new(move |room, events| local.deliver_committed(room, events)),
            ),
            store,
            hub,
            limiter: RateLimiter::new(limits.messages_per_second),
            metrics,
            max_message_bytes: limits.max_message_bytes as usize,
            messages_per_second: limits.messages_per_second,
        }
    }

    /// Publishes a committed event: delivered locally now, other replicas
    /// woken. The one place a write announces itself.
    fn publish(&self, room: RoomId, seq: Seq) {
        self.hub.committed(room, seq);
    }

    // ---- messages ----

    /// Rate-limits, validates and queues a send (no await: queue order is
    /// seq order). A refusal is counted in `chat_send_errors_total`.
    pub fn submit(
        &self,
        user: &User,
        room: RoomId,
        message: NewMessage,
    ) -> Result<PendingSend, ChatError> {
        let started = Instant::now();
        self.queue(user, room, message, started).inspect_err(|e| {
            let reason = match e {
                // The only refusal of the queue: the room's queue is full.
                ChatError::Store(_) => SendErrorReason::Overloaded,
                other => other.send_error_reason(),
            };
            self.metrics.send_failed(reason);
        })
    }

    fn queue(
        &self,
        user: &User,
        room: RoomId,
        message: NewMessage,
        started: Instant,
    ) -> Result<PendingSend, ChatError> {
        if let Err(retry_after_ms) = self.limiter.check(user.id) {
            self.metrics.rate_limited.inc();
            return Err(ChatError::RateLimited {
                retry_after_ms,
                per_second: self.messages_per_second,
            });
        }
        validate_message(&message, self.max_message_bytes).map_err(ChatError::Rejected)?;
        let reply = self.committer.enqueue(room, user.clone(), message)?;
        Ok(PendingSend {
            reply,
            metrics: self.metrics.clone(),
            started,
        })
    }

    /// Sends a message and waits for its ack (idempotent by
    /// `client_msg_id`).
    pub async fn send(
        &self,
        user: &User,
        room: RoomId,
        message: NewMessage,
    ) -> Result<SendAck, ChatError> {
        Ok(self.submit(user, room, message)?.ack().await?)
    }

    /// Edits one's message. Returns the edit event's seq.
    pub async fn edit(&self, user: &User, room: RoomId, seq: Seq, body: &str) -> StoreResult<Seq> {
        let event = self
            .store
            .edit(room, user, seq, body, self.max_message_bytes)
            .await?;
        self.publish(room, event);
        Ok(event)
    }

    /// Deletes a message (a tombstone). Returns the delete event's seq.
    pub async fn delete(&self, user: &User, room: RoomId, seq: Seq) -> StoreResult<Seq> {
        let event = self.store.delete(room, user, seq).await?;
        self.publish(room, event);
        Ok(event)
    }

    /// Adds (`on`) or removes a reaction. Returns the event's seq, `None`
    /// when nothing changed (and nothing is published).
    pub async fn react(
        &self,
        user: &User,
        room: RoomId,
        seq: Seq,
        emoji: &str,
        on: bool,
    ) -> StoreResult<Option<Seq>> {
        let event = self.store.react(room, user, seq, emoji, on).await?;
        if let Some(e) = event {
            self.publish(room, e);
        }
        Ok(event)
    }

    /// Moves the caller's read position forward (not a room event: nothing
    /// to publish). Returns the position.
    pub async fn mark_read(&self, user: &User, room: RoomId, seq: Seq) -> StoreResult<Seq> {
        self.store.mark_read(room, user.id, seq).await
    }

    // ---- rooms and membership ----

    /// Creates a public or private room owned by `user`. Its first event
    /// (the owner joining) is not published: nobody can be subscribed to a
    /// room that did not exist.
    pub async fn create_room(
        &self,
        user: &User,
        kind: RoomKind,
        name: &str,
        topic: &str,
    ) -> StoreResult<RoomView> {
        if topic.chars().count() > MAX_TOPIC_CHARS {
            return Err(StoreError::Invalid(format!(
                "topic must be at most {MAX_TOPIC_CHARS} characters"
            )));
        }
        self.store.create_room(user, kind, name, topic).await
    }

    /// The DM room of `user` and `other` (created on first use; a caller who
    /// left joins it again).
    pub async fn direct(&self, user: &User, other: &str) -> StoreResult<RoomView> {
        let other = self.store.user_by_name(other).await?;
        let (room, seq) = self.store.direct_room(user, &other).await?;
        if let Some(seq) = seq {
            self.publish(room.id, seq);
        }
        Ok(room)
    }

    /// Joins a public room; returns it as the caller now sees it.
    pub async fn join(&self, user: &User, room: RoomId) -> StoreResult<RoomView> {
        let seq = self.store.join(room, user).await?;
        self.publish(room, seq);
        self.store.room_view(room, user.id).await
    }

    /// Leaves a room. Returns the event's seq.
    pub async fn leave(&self, user: &User, room: RoomId) -> StoreResult<Seq> {
        let seq = self.store.leave(room, user).await?;
        self.publish(room, seq);
        Ok(seq)
    }

    /// Adds the user named `target` to a room.
    pub async fn invite(
        &self,
        user: &User,
        room: RoomId,
        target: &str,
    ) -> StoreResult<(User, Seq)> {
        let target = self.store.user_by_name(target).await?;
        let seq = self.store.invite(room, user, &target).await?;
        self.publish(room, seq);
        Ok((target, seq))
    }

    /// Removes the user named `target` from a room.
    pub async fn kick(&self, user: &User, room: RoomId, target: &str) -> StoreResult<(User, Seq)> {
        self.remove(user, room, target, false).await
    }

    /// Removes the user named `target` from a room, who may not rejoin.
    pub async fn ban(&self, user: &User, room: RoomId, target: &str) -> StoreResult<(User, Seq)> {
        self.remove(user, room, target, true).await
    }

    async fn remove(
        &self,
        user: &User,
        room: RoomId,
        target: &str,
        ban: bool,
    ) -> StoreResult<(User, Seq)> {
        let target = self.store.user_by_name(target).await?;
        let seq = self.store.kick(room, user, &target, ban).await?;
        self.publish(room, seq);
        Ok((target, seq))
    }

    /// Lifts a ban (not a room event: nothing to publish).
    pub async fn unban(&self, user: &User, room: RoomId, target: &str) -> StoreResult<User> {
        let target = self.store.user_by_name(target).await?;
        self.store.unban(room, user, &target).await?;
        Ok(target)
    }

    /// Changes the role of the member named `target`.
    pub async fn set_role(
        &self,
        user: &User,
        room: RoomId,
        target: &str,
        role: Role,
    ) -> StoreResult<(User, Seq)> {
        let target = self.store.user_by_name(target).await?;
        let seq = self.store.set_role(room, user, &target, role).await?;
        self.publish(room, seq);
        Ok((target, seq))
    }

    // ---- reads ----

    /// The caller's rooms, most recently active first.
    pub async fn joined_rooms(&self, user: &User) -> StoreResult<Vec<RoomView>> {
        self.store.joined_rooms(user.id).await
    }

    /// Public rooms, largest first.
    pub async fn public_rooms(&self, user: &User) -> StoreResult<Vec<RoomView>> {
        self.store.public_rooms(user.id, 200).await
    }

    /// One room as the caller sees it.
    pub async fn room(&self, user: &User, room: RoomId) -> StoreResult<RoomView> {
        self.store.room_view(room, user.id).await
    }

    /// A room's members (members only).
    pub async fn members(&self, user: &User, room: RoomId) -> StoreResult<Vec<MemberView>> {
        self.store.members(room, user.id).await
    }

    /// A room's presence (members only): counts, and each status for rooms
    /// of at most [`PRESENCE_DETAIL_LIMIT`] members.
    pub async fn presence(&self, user: &User, room: RoomId) -> StoreResult<RoomPresence> {
        self.store.require_member(room, user.id).await?;
        let ids = self.store.member_ids(room).await?;
        Ok(self.hub.presence_of(&ids, PRESENCE_DETAIL_LIMIT))
    }

    /// A page of history, newest first, and the room's latest seq.
    pub async fn history(
        &self,
        user: &User,
        room: RoomId,
        before: Option<Seq>,
        limit: i64,
    ) -> StoreResult<(Vec<MessageView>, Seq)> {
        let messages = self.store.history(room, user.id, before, limit).await?;
        Ok((messages, self.store.last_seq(room).await?))
    }

    /// Replies to a thread root, oldest first.
    pub async fn thread(
        &self,
        user: &User,
        room: RoomId,
        root: Seq,
        after: Seq,
        limit: i64,
    ) -> StoreResult<Vec<MessageView>> {
        self.store.thread(room, user.id, root, after, limit).await
    }

    /// Full-text search in the caller's rooms.
    pub async fn search(
        &self,
        user: &User,
        query: &str,
        room: Option<RoomId>,
        limit: i64,
    ) -> StoreResult<Vec<(RoomId, MessageView)>> {
        self.store.search(user.id, query, room, limit).await
    }

    /// The current resume epoch.
    pub fn epoch(&self) -> String {
        self.hub.epoch()
    }

    /// The sends-per-second limit (for error messages).
    pub fn messages_per_second(&self) -> u32 {
        self.messages_per_second
    }
}
