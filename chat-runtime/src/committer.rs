//! Group commit of sends, across rooms. Every send of this replica goes
//! through its room's queue; a few worker tasks ([`WORKERS`]) each take what
//! has queued in the rooms no other worker is committing, and store it in one
//! transaction ([`Store::send_many`]): one commit and one WAL flush for the
//! sends of many rooms. Under light load that is a batch of one (no added
//! latency); under load, one commit carries many rooms' messages.
//!
//! Order: a room is in at most one transaction at a time, and its queue is
//! taken in order, so queue order is seq order and a client's messages keep
//! the order it sent them in.
//!
//! Right after each commit, before any ack is answered, each room's events
//! go to the [`OnCommit`] hook (the hub's local fan-out), so this replica's
//! subscribers are served from memory instead of reading the rows back.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::oneshot;
use tracing::Instrument;

use crate::{
    store::{
        RoomId, Store, StoreError, StoreResult,
        accounts::User,
        events::{CommittedEvent, NewMessage, RoomSend, SendAck},
    },
    telemetry::TRACE_TARGET,
};

/// Called with a room's newly committed events, in seq order, once per
/// transaction and before its acks are answered.
pub type OnCommit = Box<dyn Fn(RoomId, Vec<CommittedEvent>) + Send + Sync>;

/// Messages per transaction at most.
pub const MAX_BATCH: usize = 1024;
/// Sends waiting per room before new ones are refused.
pub const QUEUE: usize = 4096;
/// Transactions in flight at most (each on its own pooled connection):
/// while some wait for their WAL flush, others are being built. With
/// `synchronous_commit` on, a flush can take tens of milliseconds on a busy
/// disk; six in flight kept the durable rate within reach of the relaxed
/// one in `make bench` (docs/runtime.md).
pub const WORKERS: usize = 6;

struct Pending {
    send: RoomSend,
    reply: oneshot::Sender<StoreResult<SendAck>>,
    /// The span the send was queued in (`chat.send`, or an HTTP request):
    /// the commit's parent or link in traces.
    span: tracing::Span,
}

/// One room's queue.
#[derive(Default)]
struct RoomQueue {
    sends: VecDeque<Pending>,
    /// A worker is committing some of this room's sends.
    busy: bool,
}

#[derive(Default)]
struct Queues {
    rooms: HashMap<RoomId, RoomQueue>,
    /// Rooms with queued sends and no transaction in flight, oldest first.
    ready: VecDeque<RoomId>,
    /// Workers running.
    workers: usize,
}

impl Queues {
    /// Takes up to `max` sends from the ready rooms (marking them busy);
    /// returns them and the rooms they came from.
    fn take(&mut self, max: usize) -> (Vec<Pending>, Vec<RoomId>) {
        let mut batch = Vec::new();
        let mut rooms = Vec::new();
        while batch.len() < max {
            let Some(room) = self.ready.pop_front() else {
                break;
            };
            let Some(q) = self.rooms.get_mut(&room) else {
                continue;
            };
            q.busy = true;
            let n = q.sends.len().min(max - batch.len());
            batch.extend(q.sends.drain(..n));
            rooms.push(room);
        }
        (batch, rooms)
    }

    /// Whether to start another worker: something is ready and fewer than
    /// [`WORKERS`] run (counted as running from here).
    fn start_worker(&mut self) -> bool {
        let start = !self.ready.is_empty() && self.workers < WORKERS;
        if start {
            self.workers += 1;
        }
        start
    }

    /// A worker committed `rooms`: each is ready again if more queued
    /// meanwhile, forgotten otherwise.
    fn release(&mut self, rooms: &[RoomId]) {
        for room in rooms {
            let Some(q) = self.rooms.get_mut(room) else {
                continue;
            };
            q.busy = false;
            if q.sends.is_empty() {
                self.rooms.remove(room);
            } else {
                self.ready.push_back(*room);
            }
        }
    }
}

/// The queues and their workers.
pub struct Committer {
    store: Store,
    on_commit: OnCommit,
    queues: Mutex<Queues>,
}

impl Committer {
    /// A committer writing to `store`, handing what it committed to
    /// `on_commit`.
    pub fn new(store: Store, on_commit: OnCommit) -> Arc<Self> {
        Arc::new(Self {
            store,
            on_commit,
            queues: Mutex::new(Queues::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
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
        let start_worker = {
            let mut q = self.lock();
            let queue = q.rooms.entry(room).or_default();
            if queue.sends.len() >= QUEUE {
                return Err(StoreError::Invalid(format!(
                    "room {room} receives messages faster than they can be stored; retry shortly"
                )));
            }
            let idle = queue.sends.is_empty() && !queue.busy;
            queue.sends.push_back(Pending {
                send: RoomSend {
                    room,
                    user,
                    message,
                },
                reply,
                span: tracing::Span::current(),
            });
            // A room that was busy or queued already is taken by a worker
            // that is running.
            idle && {
                q.ready.push_back(room);
                q.start_worker()
            }
        };
        if start_worker {
            self.spawn_worker();
        }
        Ok(rx)
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

    fn spawn_worker(self: &Arc<Self>) {
        // Boxed: a worker may start another, and a future cannot contain
        // its own type.
        let work: futures::future::BoxFuture<'static, ()> = Box::pin(self.clone().work());
        tokio::spawn(work);
    }

    /// A worker: commits batches until nothing is ready, then exits (the
    /// next send starts one again).
    async fn work(self: Arc<Self>) {
        loop {
            let (batch, rooms) = {
                let mut q = self.lock();
                let taken = q.take(MAX_BATCH);
                if taken.0.is_empty() {
                    q.workers -= 1;
                    return;
                }
                taken
            };
            // Traces: the transaction is a child of the first send's span
            // and linked from the others; each room's local fan-out is a
            // child of the commit.
            let commit = tracing::info_span!(target: TRACE_TARGET, parent: &batch[0].span, "chat.commit", rooms = rooms.len(), messages = batch.len());
            for p in &batch[1..] {
                commit.follows_from(&p.span);
            }
            let (sends, replies): (Vec<RoomSend>, Vec<_>) =
                batch.into_iter().map(|p| (p.send, p.reply)).unzip();
            let committed = self
                .store
                .send_many(&sends)
                .instrument(commit.clone())
                .await;
            for (room, events) in committed.events {
                let fanout = tracing::info_span!(target: TRACE_TARGET, parent: &commit, "chat.fanout", room, events = events.len());
                fanout.in_scope(|| (self.on_commit)(room, events));
            }
            for (reply, result) in replies.into_iter().zip(committed.results) {
                let _ = reply.send(result);
            }
            // Rooms that queued more meanwhile are ready again: this worker
            // takes some, another may take the rest.
            let another = {
                let mut q = self.lock();
                q.release(&rooms);
                q.start_worker()
            };
            if another {
                self.spawn_worker();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(room: RoomId, id: &str) -> Pending {
        Pending {
            send: RoomSend {
                room,
                user: User {
                    id: 1,
                    username: "alice".into(),
                    display_name: "Alice".into(),
                },
                message: NewMessage {
                    client_msg_id: id.into(),
                    body: "hi".into(),
                    thread_root: None,
                    attachments: vec![],
                },
            },
            reply: oneshot::channel().0,
            span: tracing::Span::none(),
        }
    }

    fn queue(q: &mut Queues, room: RoomId, id: &str) {
        let rq = q.rooms.entry(room).or_default();
        let idle = rq.sends.is_empty() && !rq.busy;
        rq.sends.push_back(pending(room, id));
        if idle {
            q.ready.push_back(room);
        }
    }

    fn ids(batch: &[Pending]) -> Vec<String> {
        batch
            .iter()
            .map(|p| p.send.message.client_msg_id.clone())
            .collect()
    }

    #[test]
    fn a_room_is_in_one_transaction_at_a_time_and_keeps_its_order() {
        let mut q = Queues::default();
        queue(&mut q, 1, "a1");
        queue(&mut q, 2, "b1");
        queue(&mut q, 1, "a2");
        let (batch, rooms) = q.take(MAX_BATCH);
        assert_eq!(ids(&batch), ["a1", "a2", "b1"], "both rooms, each in order");
        assert_eq!(rooms, [1, 2]);
        // Room 1 is being committed: what it gets meanwhile waits.
        queue(&mut q, 1, "a3");
        queue(&mut q, 3, "c1");
        let (second, _) = q.take(MAX_BATCH);
        assert_eq!(ids(&second), ["c1"], "not room 1's a3 while a1, a2 commit");
        q.release(&rooms);
        let (third, _) = q.take(MAX_BATCH);
        assert_eq!(ids(&third), ["a3"]);
        assert!(
            !q.rooms.contains_key(&2),
            "an empty released room is forgotten"
        );
    }

    #[test]
    fn a_full_batch_leaves_the_rest_of_a_room_for_the_next() {
        let mut q = Queues::default();
        for i in 0..5 {
            queue(&mut q, 1, &format!("a{i}"));
        }
        queue(&mut q, 2, "b0");
        let (batch, rooms) = q.take(3);
        assert_eq!(ids(&batch), ["a0", "a1", "a2"]);
        let (other, others) = q.take(3);
        assert_eq!(ids(&other), ["b0"], "room 1 stays busy with its rest");
        q.release(&rooms);
        q.release(&others);
        let (rest, _) = q.take(3);
        assert_eq!(ids(&rest), ["a3", "a4"]);
    }
}
