//! Group commit of sends, per room. Every send of this replica to a room
//! goes through the room's queue; one task per active room takes whatever
//! has queued while the previous transaction ran and stores it in one
//! transaction ([`Store::send_batch`]). Under light load that is a batch of
//! one (no added latency); under load, one commit carries many messages.
//! Queue order is seq order, so a client's messages keep the order it sent
//! them in.
//!
//! Right after each commit, before any ack is answered, the batch's events
//! go to the [`OnCommit`] hook (the hub's local fan-out), so this replica's
//! subscribers are served from memory instead of reading the rows back.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::{
    store::{
        RoomId, Store, StoreError, StoreResult,
        accounts::User,
        events::{EventRow, NewMessage, SendAck},
    },
    telemetry::TRACE_TARGET,
};

/// Called with a room's newly committed events, in seq order, once per
/// transaction and before its acks are answered.
pub type OnCommit = Box<dyn Fn(RoomId, Vec<EventRow>) + Send + Sync>;

/// Messages per transaction at most.
pub const MAX_BATCH: usize = 128;
/// Sends waiting per room before new ones are refused.
pub const QUEUE: usize = 4096;
/// An idle room's task exits after this long.
const IDLE: Duration = Duration::from_secs(30);

struct Pending {
    user: User,
    message: NewMessage,
    reply: oneshot::Sender<StoreResult<SendAck>>,
    /// The span the send was queued in (`chat.send`, or an HTTP request):
    /// the commit's parent or link in traces.
    span: tracing::Span,
}

/// The per-room queues.
pub struct Committer {
    store: Store,
    on_commit: OnCommit,
    queues: Mutex<HashMap<RoomId, mpsc::Sender<Pending>>>,
}

impl Committer {
    /// A committer writing to `store`, handing what it committed to
    /// `on_commit`.
    pub fn new(store: Store, on_commit: OnCommit) -> Arc<Self> {
        Arc::new(Self {
            store,
            on_commit,
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Queues a send. Await the receiver for the ack; enqueue order is the
    /// order of the seqs this replica assigns.
    pub fn enqueue(
        self: &Arc<Self>,
        room: RoomId,
        user: User,
        message: NewMessage,
    ) -> StoreResult<oneshot::Receiver<StoreResult<SendAck>>> {
        let (reply, rx) = oneshot::channel();
        let mut pending = Pending {
            user,
            message,
            reply,
            span: tracing::Span::current(),
        };
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..2 {
            let sender = queues.entry(room).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(self.clone().run(room, rx));
                tx
            });
            match sender.try_send(pending) {
                Ok(()) => return Ok(rx),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(StoreError::Invalid(format!(
                        "room {room} receives messages faster than they can be stored; retry shortly"
                    )));
                }
                Err(mpsc::error::TrySendError::Closed(p)) => {
                    // The room's task just exited: start a new one.
                    queues.remove(&room);
                    pending = p;
                }
            }
        }
        Err(StoreError::Invalid(
            "could not queue the message; retry".into(),
        ))
    }

    /// Queues a send and waits for its ack.
    pub async fn send(
        self: &Arc<Self>,
        room: RoomId,
        user: User,
        message: NewMessage,
    ) -> StoreResult<SendAck> {
        let rx = self.enqueue(room, user, message)?;
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Invalid(
                "the send was dropped; retry with the same client_msg_id".into(),
            ))
        })
    }

    async fn run(self: Arc<Self>, room: RoomId, mut rx: mpsc::Receiver<Pending>) {
        loop {
            let first = match tokio::time::timeout(IDLE, rx.recv()).await {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(_) => {
                    // Idle: leave, unless something arrived meanwhile (new
                    // sends only queue under the lock held here).
                    let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                    if rx.is_empty() {
                        queues.remove(&room);
                        return;
                    }
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let items: Vec<(User, NewMessage)> = batch
                .iter()
                .map(|p| (p.user.clone(), p.message.clone()))
                .collect();
            // Traces: the transaction is a child of the first send's span and
            // linked from the others; the local fan-out a child of the commit.
            let commit = tracing::info_span!(target: TRACE_TARGET, parent: &batch[0].span, "chat.commit", room, messages = batch.len());
            for p in &batch[1..] {
                commit.follows_from(&p.span);
            }
            let (results, events) = self
                .store
                .send_batch_events(room, &items)
                .instrument(commit.clone())
                .await;
            if !events.is_empty() {
                let fanout = tracing::info_span!(target: TRACE_TARGET, parent: &commit, "chat.fanout", room, events = events.len());
                fanout.in_scope(|| (self.on_commit)(room, events));
            }
            for (p, r) in batch.into_iter().zip(results) {
                let _ = p.reply.send(r);
            }
        }
    }
}
