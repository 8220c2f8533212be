//! The bounded outbound queue of one socket, in frames and bytes. Ephemeral
//! frames (typing, presence) are dropped first, once the queue is half full;
//! anything else that does not fit (a room event, or a reply to a client
//! that keeps asking without reading) marks the queue overflowed and the
//! socket is closed with the reconnect code (lossless: the client resumes by
//! seq). Only the closing items themselves are exempt from the bound.
//!
//! The hub (fan-out) and the socket's session push into it; the socket's
//! writer (`crate::ws`) is its only consumer. It lives with the hub so that
//! the hub never depends on the WebSocket layer.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard},
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::store::{RoomId, Seq, UserId};

/// One queued item.
#[derive(Debug, Clone)]
pub enum Item {
    /// A room event from the fan-out (ordered and gap-filled by the writer).
    Event {
        /// Room.
        room: RoomId,
        /// Seq.
        seq: Seq,
        /// The frame, serialized once for every subscriber.
        text: Utf8Bytes,
        /// The user whose membership this event ends (left, kicked,
        /// banned): that user's socket receives nothing after it.
        ends: Option<UserId>,
    },
    /// A frame that must arrive (ack, error, subscribed, pong).
    Reply(Utf8Bytes),
    /// A frame that may be dropped under pressure (typing, presence).
    Ephemeral(Utf8Bytes, &'static str),
    /// Replay missed events before live ones (handled by the writer).
    Subscribe(Box<SubscribeRequest>),
    /// Close the socket with the reconnect code.
    Reconnect(&'static str),
    /// Close the socket with this code and reason.
    Close(u16, String),
}

/// A subscription to set up in the writer, in order with everything else.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// Request id to echo.
    pub id: Option<String>,
    /// Room.
    pub room: RoomId,
    /// The client's epoch, if resuming.
    pub epoch: Option<String>,
    /// The client's last seen seq, if resuming.
    pub last_seq: Option<Seq>,
    /// The room's latest seq, read with the membership check after the hub
    /// registered the socket (`None`: the writer reads it).
    pub room_last_seq: Option<Seq>,
}

impl Item {
    fn bytes(&self) -> usize {
        match self {
            Item::Event { text, .. } | Item::Reply(text) | Item::Ephemeral(text, _) => text.len(),
            Item::Subscribe(_) | Item::Reconnect(_) | Item::Close(..) => 64,
        }
    }
}

/// Slots a drained queue keeps; more are given back once it is empty.
const KEEP_SLOTS: usize = 64;

/// What happened to a pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// An ephemeral frame dropped because the queue is under pressure.
    Dropped,
    /// The queue overflowed: the socket must reconnect.
    Overflow,
    /// The socket is gone.
    Closed,
}

struct State {
    items: VecDeque<Item>,
    bytes: usize,
    overflowed: bool,
    closed: bool,
}

/// The queue.
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbox {
    /// A queue holding at most `max_frames` items and `max_bytes` bytes.
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                overflowed: false,
                closed: false,
            }),
            notify: Notify::new(),
            max_frames,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an item.
    pub fn push(&self, item: Item) -> Push {
        let size = item.bytes();
        let result = {
            let mut s = self.lock();
            if s.closed || s.overflowed {
                return Push::Closed;
            }
            let frames = s.items.len();
            let bytes = s.bytes;
            match item {
                Item::Ephemeral(..)
                    if frames * 2 >= self.max_frames || bytes * 2 >= self.max_bytes =>
                {
                    return Push::Dropped;
                }
                // Closing items always fit: nothing is queued after them.
                Item::Reconnect(_) | Item::Close(..) => {
                    s.bytes += size;
                    s.items.push_back(item);
                    Push::Queued
                }
                _ if frames >= self.max_frames || bytes + size > self.max_bytes => {
                    s.overflowed = true;
                    s.items.clear();
                    s.bytes = 0;
                    s.items
                        .push_back(Item::Reconnect("slow consumer: queue overflowed"));
                    Push::Overflow
                }
                _ => {
                    s.bytes += size;
                    s.items.push_back(item);
                    Push::Queued
                }
            }
        };
        self.notify.notify_one();
        result
    }

    /// Waits for the next item; `None` once closed and drained.
    pub async fn pop(&self) -> Option<Item> {
        loop {
            {
                let mut s = self.lock();
                if let Some(item) = s.items.pop_front() {
                    s.bytes = s.bytes.saturating_sub(item.bytes());
                    if s.items.is_empty() && s.items.capacity() > KEEP_SLOTS {
                        // A socket that fell behind once does not keep
                        // thousands of slots for the rest of its life.
                        s.items.shrink_to(KEEP_SLOTS);
                    }
                    return Some(item);
                }
                if s.closed {
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Closes the queue: pushes fail, `pop` drains then ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// Whether the queue overflowed (the socket is being closed as too slow).
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: Seq, n: usize) -> Item {
        Item::Event {
            room: 1,
            seq,
            text: "x".repeat(n).into(),
            ends: None,
        }
    }

    #[tokio::test]
    async fn ephemeral_frames_go_first_under_pressure() {
        let q = Outbox::new(4, 1 << 20);
        assert_eq!(q.push(event(1, 10)), Push::Queued);
        assert_eq!(q.push(Item::Ephemeral("t".into(), "typing")), Push::Queued);
        // Half full: typing is dropped, events still fit.
        assert_eq!(q.push(Item::Ephemeral("t".into(), "typing")), Push::Dropped);
        assert_eq!(q.push(event(2, 10)), Push::Queued);
        assert_eq!(q.push(event(3, 10)), Push::Queued);
        // Full: the next event overflows, the queue becomes a reconnect.
        assert_eq!(q.push(event(4, 10)), Push::Overflow);
        assert!(matches!(q.pop().await, Some(Item::Reconnect(_))));
        assert_eq!(q.push(event(5, 10)), Push::Closed);
    }

    #[tokio::test]
    async fn replies_count_against_the_bound() {
        // A client that sends pings (or bad frames) without reading the
        // answers cannot grow the queue without limit.
        let q = Outbox::new(3, 1 << 20);
        for _ in 0..3 {
            assert_eq!(q.push(Item::Reply("pong".into())), Push::Queued);
        }
        assert_eq!(q.push(Item::Reply("pong".into())), Push::Overflow);
        assert!(q.overflowed());
        assert!(matches!(q.pop().await, Some(Item::Reconnect(_))));
        assert_eq!(q.push(Item::Reply("pong".into())), Push::Closed);
        let q = Outbox::new(100, 10);
        assert_eq!(q.push(Item::Reply("12345678".into())), Push::Queued);
        assert_eq!(q.push(Item::Reply("12345678".into())), Push::Overflow);
    }

    #[tokio::test]
    async fn byte_bound_applies() {
        let q = Outbox::new(100, 100);
        assert_eq!(q.push(event(1, 60)), Push::Queued);
        assert_eq!(q.push(event(2, 60)), Push::Overflow);
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_slots_back() {
        let q = Outbox::new(4096, 1 << 20);
        for seq in 0..2000 {
            assert_eq!(q.push(event(seq, 10)), Push::Queued);
        }
        assert!(q.lock().items.capacity() >= 2000);
        for _ in 0..2000 {
            assert!(q.pop().await.is_some());
        }
        assert!(q.is_empty());
        assert!(q.lock().items.capacity() <= KEEP_SLOTS);
    }

    #[tokio::test]
    async fn pop_waits_and_close_ends() {
        let q = std::sync::Arc::new(Outbox::new(10, 1000));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop().await.map(|i| i.bytes()) });
        tokio::task::yield_now().await;
        q.push(Item::Reply("hello".into()));
        assert_eq!(waiter.await.unwrap(), Some(5));
        q.close();
        assert!(q.pop().await.is_none());
    }
}
