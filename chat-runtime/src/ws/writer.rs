//! The writer of one WebSocket: owns the send half, the per-room cursors and
//! the bounded queue's consumer end. It turns live events into a contiguous
//! stream per room: it skips what the client has and fills gaps from the
//! database; subscriptions replay missed events before live ones.
//!
//! Test seams: the writer is generic over the socket's send half (any
//! [`Sink`] of [`Message`]s, a channel in the unit tests) and over where it
//! reads missed events from ([`History`]: the hub in production, a vector in
//! the tests).

use std::{borrow::Cow, collections::HashMap, future::Future, sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt};

use super::store_error_frame;
use crate::{
    hub::{
        Hub,
        outbox::{Item, Outbox, SubscribeRequest},
    },
    metrics::Metrics,
    protocol::{ResumeReason, ServerFrame, UnsubscribeReason, close, encode},
    store::{RoomId, Seq, StoreResult, UserId, events::EventRow},
};

/// Where the writer reads what a socket missed: the resume epoch, and room
/// events by seq.
pub(crate) trait History: Send + Sync + 'static {
    /// The current resume epoch.
    fn epoch(&self) -> String;
    /// The room's latest seq.
    fn last_seq(&self, room: RoomId) -> impl Future<Output = StoreResult<Seq>> + Send;
    /// Up to `limit` events after `after`, oldest first.
    fn events_after(
        &self,
        room: RoomId,
        after: Seq,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<EventRow>>> + Send;
    /// Events in `(after, upto]`, oldest first.
    fn events_between(
        &self,
        room: RoomId,
        after: Seq,
        upto: Seq,
    ) -> impl Future<Output = StoreResult<Vec<EventRow>>> + Send;
}

impl History for Hub {
    fn epoch(&self) -> String {
        Hub::epoch(self)
    }

    fn last_seq(&self, room: RoomId) -> impl Future<Output = StoreResult<Seq>> + Send {
        self.store().last_seq(room)
    }

    fn events_after(
        &self,
        room: RoomId,
        after: Seq,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<EventRow>>> + Send {
        self.store().events_after(room, after, limit)
    }

    fn events_between(
        &self,
        room: RoomId,
        after: Seq,
        upto: Seq,
    ) -> impl Future<Output = StoreResult<Vec<EventRow>>> + Send {
        self.store().events_between(room, after, upto)
    }
}

/// A socket failure, boxed (the concrete type depends on the [`Sink`]).
type SocketError = Box<dyn std::error::Error + Send + Sync>;

/// Longest a single write may take: a peer that stops reading fills the
/// socket's buffers and then stalls writes; after this long it is
/// disconnected instead of pinning its queue and task forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the close frame (and the close itself) may take.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// The socket failed (the peer went away).
    #[error("socket: {0}")]
    Socket(#[source] SocketError),
    /// Missed events could not be read to fill a gap.
    #[error("missed events could not be read ({0})")]
    Hole(String),
    /// A write did not complete within [`WRITE_TIMEOUT`].
    #[error("a write stalled for {}s: the peer stopped reading", WRITE_TIMEOUT.as_secs())]
    Stalled,
}

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// The queue closed, or a close frame was sent.
    Closed,
    /// The socket failed.
    PeerGone,
    /// A write stalled past [`WRITE_TIMEOUT`]: a slow or dead peer.
    Stalled,
}

/// What the writer needs besides its socket and queue.
pub(crate) struct WriterContext<H> {
    /// Where missed events are read.
    pub history: Arc<H>,
    /// Delivery and resume counters.
    pub metrics: Arc<Metrics>,
    /// Largest number of events replayed on resume (`CHAT_RESUME_LIMIT`).
    pub resume_limit: u32,
    /// The socket's user (whose membership events end a room for it).
    pub user: UserId,
}

struct Writer<S, H> {
    sink: S,
    history: Arc<H>,
    metrics: Arc<Metrics>,
    resume_limit: u32,
    user: UserId,
    cursors: HashMap<RoomId, Seq>,
    /// Per room without a cursor, the highest seq of a live event dropped
    /// (queued between the hub's subscription and the subscribe item, or
    /// after an unsubscribe): a subscription that starts below it reads the
    /// rest from the database, so no event waits for the next one.
    dropped: HashMap<RoomId, Seq>,
}

impl<S, H> Writer<S, H>
where
    S: Sink<Message> + Unpin + Send,
    S::Error: Into<SocketError>,
    H: History,
{
    async fn send(&mut self, text: Utf8Bytes, flush: bool) -> Result<(), WriteError> {
        let sink = &mut self.sink;
        let write = async move {
            if flush {
                sink.send(Message::Text(text)).await
            } else {
                sink.feed(Message::Text(text)).await
            }
            .map_err(|e| WriteError::Socket(e.into()))
        };
        let mut write = std::pin::pin!(write);
        // Almost every write completes at once (the kernel takes it): only a
        // write that has to wait gets a timer, so fan-out of 100,000 frames
        // a second does not register 100,000 timers.
        if let std::task::Poll::Ready(result) = futures::poll!(write.as_mut()) {
            return result;
        }
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(result) => result,
            Err(_) => Err(WriteError::Stalled),
        }
    }

    /// Sends a close frame (bounded by [`CLOSE_TIMEOUT`]; the socket is
    /// dropped either way).
    async fn close(&mut self, code: u16, reason: String) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sink.send(frame)).await;
    }

    /// After an event that ends this socket's user's membership: stop
    /// delivering the room and say so. Returns whether it ended.
    async fn ended(&mut self, room: RoomId, ends: Option<UserId>) -> Result<bool, WriteError> {
        if ends != Some(self.user) {
            return Ok(false);
        }
        // The fan-out already dropped this socket from the room (it sees
        // every event in order); the writer only stops writing it.
        self.cursors.remove(&room);
        self.send(
            encode(&ServerFrame::Unsubscribed {
                id: None,
                room,
                reason: Some(UnsubscribeReason::MembershipEnded),
            }),
            true,
        )
        .await?;
        Ok(true)
    }

    async fn event(
        &mut self,
        room: RoomId,
        seq: Seq,
        text: Utf8Bytes,
        ends: Option<UserId>,
        flush: bool,
    ) -> Result<(), WriteError> {
        let Some(&cursor) = self.cursors.get(&room) else {
            let highest = self.dropped.entry(room).or_insert(seq);
            *highest = (*highest).max(seq);
            return Ok(());
        };
        if seq <= cursor {
            return Ok(());
        }
        if seq > cursor + 1 && self.fill(room, cursor, seq - 1, false).await? {
            return Ok(());
        }
        self.send(text, flush).await?;
        self.metrics.deliveries.inc();
        self.cursors.insert(room, seq);
        self.ended(room, ends).await?;
        Ok(())
    }

    /// Writes the events in `(cursor, upto]` from the database (a gap: lost
    /// wake-up, overtaken pump, or events dropped before the subscription
    /// started). Every seq below a committed one is committed, so a short
    /// read is a hole: never skip it, have the client resume instead.
    /// Flushes after the last when `flush`. Returns whether one of them
    /// ended the socket's membership.
    async fn fill(
        &mut self,
        room: RoomId,
        cursor: Seq,
        upto: Seq,
        flush: bool,
    ) -> Result<bool, WriteError> {
        let epoch = self.history.epoch();
        let rows = match self.history.events_between(room, cursor, upto).await {
            Ok(rows) if rows.len() as i64 == upto - cursor => rows,
            Ok(rows) => {
                return Err(WriteError::Hole(format!(
                    "room {room}: {} of the events {}..={upto} exist",
                    rows.len(),
                    cursor + 1,
                )));
            }
            Err(e) => return Err(WriteError::Hole(format!("room {room}: {e}"))),
        };
        let n = rows.len();
        for (i, r) in rows.into_iter().enumerate() {
            self.send(
                encode(&ServerFrame::event(room, r.seq, &epoch, &r.payload)),
                flush && i + 1 == n,
            )
            .await?;
            self.metrics.deliveries.inc();
            self.cursors.insert(room, r.seq);
            if self.ended(room, r.payload.membership_ended()).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn subscribe(&mut self, req: SubscribeRequest) -> Result<(), WriteError> {
        let history = self.history.clone();
        let epoch = history.epoch();
        let room = req.room;
        let dropped = self.dropped.remove(&room);
        let last = match req.room_last_seq {
            Some(l) => l,
            None => match history.last_seq(room).await {
                Ok(l) => l,
                Err(e) => {
                    return self
                        .send(store_error_frame(req.id.as_deref(), &e), true)
                        .await;
                }
            },
        };
        let limit = i64::from(self.resume_limit);
        let (reason, rows) = match (req.epoch.as_deref(), req.last_seq) {
            (Some(e), Some(ls)) if e == epoch && ls <= last => {
                match history.events_after(room, ls, limit + 1).await {
                    Ok(rows) if rows.len() as i64 > limit => {
                        (Some(ResumeReason::TooFarBehind), Vec::new())
                    }
                    Ok(rows) if rows.first().is_some_and(|r| r.seq != ls + 1) => {
                        (Some(ResumeReason::HistoryGone), Vec::new())
                    }
                    Ok(rows) => (None, rows),
                    Err(e) => {
                        return self
                            .send(store_error_frame(req.id.as_deref(), &e), true)
                            .await;
                    }
                }
            }
            (Some(_), Some(_)) => (Some(ResumeReason::EpochChanged), Vec::new()),
            _ => (Some(ResumeReason::Fresh), Vec::new()),
        };
        let recovered = reason.is_none();
        self.metrics
            .resume(reason.map_or("recovered", ResumeReason::as_str));
        let from = if recovered {
            req.last_seq.unwrap_or(last)
        } else {
            last
        };
        self.send(
            encode(&ServerFrame::Subscribed {
                id: req.id.as_deref().map(Cow::Borrowed),
                room,
                epoch: Cow::Borrowed(&epoch),
                last_seq: from,
                recovered,
                reason,
                replayed: rows.len(),
                room_last_seq: last,
            }),
            rows.is_empty(),
        )
        .await?;
        let mut cursor = from;
        let n = rows.len();
        for (i, r) in rows.into_iter().enumerate() {
            self.send(
                encode(&ServerFrame::event(room, r.seq, &epoch, &r.payload)),
                i + 1 == n,
            )
            .await?;
            self.metrics.deliveries.inc();
            cursor = r.seq;
            if r.payload.membership_ended() == Some(self.user) {
                // Left (or was removed) while replaying: nothing after it.
                return self.ended(room, Some(self.user)).await.map(|_| ());
            }
        }
        self.cursors.insert(room, cursor);
        if let Some(upto) = dropped.filter(|&d| d > cursor) {
            self.fill(room, cursor, upto, true).await?;
        }
        Ok(())
    }
}

/// Writes what the queue holds until it closes, a close frame is sent, the
/// socket fails, or a write stalls past [`WRITE_TIMEOUT`].
pub(crate) async fn write_loop<S, H>(
    sink: S,
    outbox: Arc<Outbox>,
    cx: WriterContext<H>,
) -> WriterEnd
where
    S: Sink<Message> + Unpin + Send,
    S::Error: Into<SocketError>,
    H: History,
{
    let mut w = Writer {
        sink,
        history: cx.history,
        metrics: cx.metrics,
        resume_limit: cx.resume_limit,
        user: cx.user,
        cursors: HashMap::new(),
        dropped: HashMap::new(),
    };
    let mut end = WriterEnd::Closed;
    while let Some(item) = outbox.pop().await {
        let flush = outbox.is_empty();
        let sent = match item {
            Item::Event {
                room,
                seq,
                text,
                ends,
            } => Box::pin(w.event(room, seq, text, ends, flush)).await,
            Item::Reply(text) => w.send(text, flush).await,
            Item::Ephemeral(text, _) => w.send(text, flush).await,
            Item::Subscribe(req) => Box::pin(w.subscribe(*req)).await,
            Item::Reconnect(reason) => {
                w.close(close::RECONNECT, reason.into()).await;
                break;
            }
            Item::Close(code, reason) => {
                w.close(code, reason).await;
                break;
            }
        };
        match sent {
            Ok(()) => {}
            Err(WriteError::Stalled) => {
                tracing::info!("closing a socket whose peer stopped reading (write stalled)");
                end = WriterEnd::Stalled;
                break;
            }
            Err(WriteError::Socket(_)) => {
                end = WriterEnd::PeerGone;
                break;
            }
            Err(e @ WriteError::Hole(_)) => {
                // Never advance past a hole: the client resumes from what it
                // has, on this replica or another.
                tracing::warn!(error = %e, "closing a socket to fill a gap by resume");
                w.close(
                    close::RECONNECT,
                    "could not read missed events; reconnect and resume".into(),
                )
                .await;
                break;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, w.sink.close()).await;
    end
}

#[cfg(test)]
mod tests {
    //! The writer over channels: a `futures` mpsc sender is the socket's
    //! send half, a vector of events is the database.

    use std::sync::Mutex;

    use futures::{StreamExt, channel::mpsc};
    use serde_json::Value;

    use super::*;
    use crate::{
        hub::outbox::Outbox,
        protocol::{MemberAction, RoomEvent, StoredEvent, User, UserRef},
        store::StoreError,
    };

    const ROOM: RoomId = 1;
    const ME: UserId = 7;

    /// A room's log in memory.
    struct Log {
        last_seq: Seq,
        events: Mutex<Vec<EventRow>>,
    }

    impl Log {
        fn new(last_seq: Seq, seqs: impl IntoIterator<Item = Seq>) -> Arc<Self> {
            let events = seqs.into_iter().map(|seq| row(seq, None)).collect();
            Arc::new(Self {
                last_seq,
                events: Mutex::new(events),
            })
        }

        fn rows(&self, keep: impl Fn(Seq) -> bool) -> Vec<EventRow> {
            let events = self.events.lock().unwrap();
            events.iter().filter(|r| keep(r.seq)).cloned().collect()
        }
    }

    impl History for Log {
        fn epoch(&self) -> String {
            "ep".into()
        }

        async fn last_seq(&self, room: RoomId) -> StoreResult<Seq> {
            if room == ROOM {
                Ok(self.last_seq)
            } else {
                Err(StoreError::NotFound(format!("room {room} does not exist")))
            }
        }

        async fn events_after(
            &self,
            _room: RoomId,
            after: Seq,
            limit: i64,
        ) -> StoreResult<Vec<EventRow>> {
            let mut rows = self.rows(|s| s > after);
            rows.truncate(limit as usize);
            Ok(rows)
        }

        async fn events_between(
            &self,
            _room: RoomId,
            after: Seq,
            upto: Seq,
        ) -> StoreResult<Vec<EventRow>> {
            Ok(self.rows(|s| s > after && s <= upto))
        }
    }

    /// A `delete` event, or the `member` event that ends `ends`'s membership.
    fn row(seq: Seq, ends: Option<UserId>) -> EventRow {
        let actor = UserRef {
            id: 1,
            username: "mod".into(),
        };
        let event = match ends {
            None => RoomEvent::Delete {
                message_seq: 1,
                actor,
            },
            Some(id) => RoomEvent::Member {
                action: MemberAction::Kicked,
                actor,
                user: User {
                    id,
                    username: "me".into(),
                    display_name: "Me".into(),
                },
                role: None,
            },
        };
        EventRow {
            seq,
            payload: StoredEvent::Known(event),
            created_ms: 0,
        }
    }

    /// The live item the hub would queue for `row`.
    fn live(row: &EventRow) -> Item {
        Item::Event {
            room: ROOM,
            seq: row.seq,
            text: encode(&ServerFrame::event(ROOM, row.seq, "ep", &row.payload)),
            ends: row.payload.membership_ended(),
        }
    }

    fn subscribe(epoch: Option<&str>, last_seq: Option<Seq>) -> Item {
        Item::Subscribe(Box::new(SubscribeRequest {
            id: Some("s".into()),
            room: ROOM,
            epoch: epoch.map(str::to_string),
            last_seq,
            room_last_seq: None,
        }))
    }

    /// What a socket saw: JSON frames, and the close code if it was closed.
    #[derive(Debug, Default)]
    struct Seen {
        frames: Vec<Value>,
        close: Option<u16>,
    }

    impl Seen {
        fn event_seqs(&self) -> Vec<i64> {
            self.frames
                .iter()
                .filter(|f| f["type"] == "event")
                .map(|f| f["seq"].as_i64().unwrap())
                .collect()
        }
    }

    /// Queues `items`, closes the queue, runs the writer to its end.
    async fn run(log: Arc<Log>, items: Vec<Item>) -> (WriterEnd, Seen) {
        let (sink, mut socket) = mpsc::unbounded::<Message>();
        let outbox = Arc::new(Outbox::new(64, 1 << 20));
        for item in items {
            outbox.push(item);
        }
        outbox.close();
        let cx = WriterContext {
            history: log,
            metrics: Arc::new(Metrics::default()),
            resume_limit: 10,
            user: ME,
        };
        let end = write_loop(sink, outbox, cx).await;
        let mut seen = Seen::default();
        while let Some(m) = socket.next().await {
            match m {
                Message::Text(t) => seen.frames.push(serde_json::from_str(t.as_str()).unwrap()),
                Message::Close(c) => seen.close = c.map(|c| c.code),
                other => panic!("unexpected {other:?}"),
            }
        }
        (end, seen)
    }

    #[tokio::test]
    async fn replies_are_written_in_order_until_the_queue_closes() {
        let items = vec![
            Item::Reply(r#"{"type":"pong","id":"1"}"#.into()),
            Item::Reply(r#"{"type":"pong","id":"2"}"#.into()),
        ];
        let (end, seen) = run(Log::new(0, []), items).await;
        assert_eq!(end, WriterEnd::Closed);
        let ids: Vec<_> = seen.frames.iter().map(|f| f["id"].clone()).collect();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(seen.close, None);
    }

    #[tokio::test]
    async fn events_before_a_subscription_and_duplicates_are_skipped() {
        let log = Log::new(5, [5, 6]);
        let items = vec![
            live(&row(4, None)), // not subscribed yet
            subscribe(None, None),
            live(&row(5, None)), // the client has it (last_seq 5)
            live(&row(6, None)),
            live(&row(6, None)), // at least once upstream, once here
        ];
        let (_, seen) = run(log, items).await;
        let sub = &seen.frames[0];
        assert_eq!(sub["type"], "subscribed");
        assert_eq!(
            (
                &sub["id"],
                &sub["last_seq"],
                &sub["recovered"],
                &sub["reason"]
            ),
            (&"s".into(), &5.into(), &false.into(), &"fresh".into())
        );
        assert_eq!(seen.event_seqs(), [6]);
    }

    #[tokio::test]
    async fn events_dropped_before_a_subscription_read_with_its_check_are_filled() {
        // The session read last_seq 5 with the membership check; event 6
        // reached the queue before the subscribe item (and was dropped):
        // the subscription writes it from the database at once, without
        // waiting for a next event.
        let log = Log::new(9, [6]);
        let mut sub = subscribe(None, None);
        if let Item::Subscribe(req) = &mut sub {
            req.room_last_seq = Some(5);
        }
        let (_, seen) = run(log, vec![live(&row(6, None)), sub]).await;
        assert_eq!(seen.frames[0]["type"], "subscribed");
        assert_eq!(seen.frames[0]["last_seq"], 5, "the session's figure");
        assert_eq!(seen.event_seqs(), [6]);
    }

    #[tokio::test]
    async fn a_gap_is_filled_from_history_in_order() {
        let log = Log::new(5, [6, 7, 8]);
        let eight = row(8, None);
        let (_, seen) = run(log, vec![subscribe(None, None), live(&eight)]).await;
        assert_eq!(seen.event_seqs(), [6, 7, 8]);
    }

    #[tokio::test]
    async fn a_hole_closes_with_the_reconnect_code_instead_of_skipping() {
        let log = Log::new(5, [7, 8]); // 6 is missing
        let eight = row(8, None);
        let (end, seen) = run(log, vec![subscribe(None, None), live(&eight)]).await;
        assert_eq!(end, WriterEnd::Closed);
        assert_eq!(seen.close, Some(close::RECONNECT));
        assert!(seen.event_seqs().is_empty(), "{seen:?}");
    }

    #[tokio::test]
    async fn resume_replays_exactly_the_missed_events() {
        let log = Log::new(7, [5, 6, 7]);
        let (_, seen) = run(log, vec![subscribe(Some("ep"), Some(5))]).await;
        let sub = &seen.frames[0];
        assert_eq!(
            (&sub["recovered"], &sub["replayed"], &sub["room_last_seq"]),
            (&true.into(), &2.into(), &7.into())
        );
        assert!(sub.get("reason").is_none(), "{sub}");
        assert_eq!(seen.event_seqs(), [6, 7]);
        let log = Log::new(7, [5, 6, 7]);
        let (_, seen) = run(log, vec![subscribe(Some("old"), Some(5))]).await;
        assert_eq!(seen.frames[0]["reason"], "epoch_changed");
        assert!(seen.event_seqs().is_empty());
    }

    #[tokio::test]
    async fn nothing_of_a_room_follows_the_event_that_ends_membership() {
        let log = Log::new(5, []);
        let items = vec![
            subscribe(None, None),
            live(&row(6, Some(ME))),
            live(&row(7, None)),
        ];
        let (_, seen) = run(log, items).await;
        assert_eq!(seen.event_seqs(), [6]);
        let last = seen.frames.last().unwrap();
        assert_eq!(
            (&last["type"], &last["reason"]),
            (&"unsubscribed".into(), &"membership_ended".into())
        );
    }

    #[tokio::test]
    async fn a_subscription_to_a_missing_room_is_an_error_frame() {
        let item = Item::Subscribe(Box::new(SubscribeRequest {
            id: Some("x".into()),
            room: 99,
            epoch: None,
            last_seq: None,
            room_last_seq: None,
        }));
        let (_, seen) = run(Log::new(0, []), vec![item]).await;
        let e = &seen.frames[0];
        assert_eq!(
            (&e["type"], &e["id"], &e["code"]),
            (&"error".into(), &"x".into(), &"not_found".into())
        );
    }

    #[tokio::test]
    async fn a_close_item_sends_its_code_and_ends_the_writer() {
        let items = vec![
            Item::Close(close::UNAUTHORIZED, "token expired".into()),
            Item::Reply(r#"{"type":"pong"}"#.into()),
        ];
        let (end, seen) = run(Log::new(0, []), items).await;
        assert_eq!(end, WriterEnd::Closed);
        assert_eq!(seen.close, Some(close::UNAUTHORIZED));
        assert!(seen.frames.is_empty(), "nothing after the close");
    }

    #[tokio::test]
    async fn a_gone_peer_ends_the_writer() {
        let (sink, socket) = mpsc::unbounded::<Message>();
        drop(socket);
        let outbox = Arc::new(Outbox::new(8, 1024));
        outbox.push(Item::Reply(r#"{"type":"ping"}"#.into()));
        outbox.close();
        let cx = WriterContext {
            history: Log::new(0, []),
            metrics: Arc::new(Metrics::default()),
            resume_limit: 10,
            user: ME,
        };
        assert_eq!(write_loop(sink, outbox, cx).await, WriterEnd::PeerGone);
    }
}
