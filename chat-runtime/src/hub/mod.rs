//! Fan-out and presence for one replica.
//!
//! The broker (PostgreSQL LISTEN/NOTIFY or NATS, behind [`Broker`]) only says
//! "room R has an event at seq S". The hub then reads the rows above what it
//! has delivered for R and pushes each event, serialized once, into the queue
//! of every local subscriber. A timer also compares each subscribed room's
//! `last_seq` with what was delivered, so a lost notification or a listener
//! reconnect only delays delivery. Sessions keep their own per-room cursor and
//! fill any gap from the database, so what a client receives is contiguous.

pub mod broker;
pub mod nats;
pub mod outbox;
pub mod pg;
pub mod presence;

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::{
        Arc, Mutex, MutexGuard, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};

use crate::{
    metrics::Metrics,
    protocol::{ServerFrame, UserRef, encode, server::encode_event_json},
    store::{
        RoomId, Seq, Store, UserId,
        accounts::User,
        events::{CommittedEvent, EventRow},
    },
};
use outbox::{Item, Outbox, Push, SubscribeRequest};

pub use broker::{Broker, Inbound, receive};
use presence::PresenceBook;
pub use presence::Status;

/// Identifies one socket on this replica.
pub type SessionId = u64;

/// How [`Hub::subscribe`] went.
#[derive(Debug)]
pub enum Subscription {
    /// Done: the subscribe item is in the socket's queue.
    Queued,
    /// Registered; the caller checks membership and queues the item.
    Check(Box<SubscribeRequest>),
}

/// Events read per database round trip by the pump.
const PUMP_BATCH: i64 = 500;
/// How often subscribed rooms are polled (covers lost notifications).
pub const POLL_EVERY: Duration = Duration::from_millis(1000);

/// Ephemeral messages between replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Ephemeral {
    /// A user is typing in a room.
    Typing {
        /// Replica that sent it.
        origin: String,
        /// Room.
        room: RoomId,
        /// User id.
        user: UserId,
        /// Username.
        username: String,
    },
    /// Presence of users connected to `origin`.
    Presence {
        /// Replica that sent it.
        origin: String,
        /// (user, status) pairs.
        users: Vec<(UserId, Status)>,
    },
}

struct RoomState {
    delivered: Seq,
    subscribers: HashMap<SessionId, Subscriber>,
    /// Users known to be members as of `delivered` (checked by a
    /// subscription; forgotten when an event ends their membership).
    members: HashSet<UserId>,
    pumping: bool,
    pending: bool,
}

/// One local socket subscribed to a room.
struct Subscriber {
    user: UserId,
    outbox: Arc<Outbox>,
}

struct SessionEntry {
    user: User,
    outbox: Arc<Outbox>,
    status: Status,
    rooms: HashSet<RoomId>,
}

/// The replica's hub.
pub struct Hub {
    store: Store,
    metrics: Arc<Metrics>,
    pod: String,
    epoch: RwLock<String>,
    rooms: Mutex<HashMap<RoomId, RoomState>>,
    sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    /// Per user, how many local sockets announce each status (so a socket
    /// opening or closing does not scan every session).
    tally: Mutex<HashMap<UserId, Tally>>,
    presence: Mutex<PresenceBook>,
    broker: Arc<dyn Broker>,
    next_session: AtomicU64,
}

/// A user's local sockets by announced status.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    online: u32,
    away: u32,
}

impl Tally {
    fn status(self) -> Status {
        if self.online > 0 {
            Status::Online
        } else if self.away > 0 {
            Status::Away
        } else {
            Status::Offline
        }
    }

    fn count(&mut self, status: Status, add: bool) {
        let n = match status {
            Status::Online => &mut self.online,
            Status::Away => &mut self.away,
            Status::Offline => return,
        };
        *n = if add { *n + 1 } else { n.saturating_sub(1) };
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// A hub for `store`, talking to other replicas through `broker`.
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        pod: String,
        epoch: String,
        broker: Arc<dyn Broker>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            metrics,
            pod,
            epoch: RwLock::new(epoch),
            rooms: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            tally: Mutex::new(HashMap::new()),
            presence: Mutex::new(PresenceBook::default()),
            broker,
            next_session: AtomicU64::new(1),
        })
    }

    /// The current resume epoch.
    pub fn epoch(&self) -> String {
        self.epoch.read().map(|e| e.clone()).unwrap_or_default()
    }

    /// The storage handle.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This replica's name.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Registers a socket of `user`; the user becomes online.
    pub fn open_session(self: &Arc<Self>, user: User, outbox: Arc<Outbox>) -> SessionId {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let uid = user.id;
        let (before, after) = self.retally(uid, None, Some(Status::Online));
        lock(&self.sessions).insert(
            id,
            SessionEntry {
                user,
                outbox,
                status: Status::Online,
                rooms: HashSet::new(),
            },
        );
        self.local_presence_changed(uid, before, after);
        id
    }

    /// Forgets a socket: leaves its rooms; the user goes offline with their
    /// last socket on this replica.
    pub fn close_session(self: &Arc<Self>, id: SessionId) {
        let Some(entry) = lock(&self.sessions).remove(&id) else {
            return;
        };
        {
            let mut rooms = lock(&self.rooms);
            for room in &entry.rooms {
                if let Some(state) = rooms.get_mut(room) {
                    state.subscribers.remove(&id);
                    if state.subscribers.is_empty() && !state.pumping {
                        rooms.remove(room);
                    }
                }
            }
        }
        let (before, after) = self.retally(entry.user.id, Some(entry.status), None);
        self.local_presence_changed(entry.user.id, before, after);
    }

    /// Moves one socket of `user` from status `from` to `to` (`None`: not
    /// counted) in the tally; returns the user's local status before and
    /// after.
    fn retally(&self, user: UserId, from: Option<Status>, to: Option<Status>) -> (Status, Status) {
        let mut tally = lock(&self.tally);
        let t = tally.entry(user).or_default();
        let before = t.status();
        if let Some(s) = from {
            t.count(s, false);
        }
        if let Some(s) = to {
            t.count(s, true);
        }
        let after = t.status();
        if after == Status::Offline {
            tally.remove(&user);
        }
        (before, after)
    }

    /// Subscribes a socket to a room's live events.
    ///
    /// When the hub can vouch for the socket's membership, the subscription
    /// completes here: the socket is registered and its subscribe item
    /// queued, positioned at what was delivered, in one step under the
    /// rooms lock (no event can slip in between), with no query when the
    /// room is active. It can when the room was not active (its state is
    /// created from one query that reads membership and position together),
    /// or when an earlier check found this user a member and no event since
    /// ended that. Otherwise the socket is registered and
    /// [`Subscription::Check`] hands the request back: the caller checks
    /// membership (after registering, so that a membership ending meanwhile
    /// is seen either there or by the fan-out), reports it with
    /// [`Hub::member_checked`] and queues the item.
    pub async fn subscribe(
        &self,
        id: SessionId,
        user: UserId,
        mut req: Box<SubscribeRequest>,
    ) -> crate::store::StoreResult<Subscription> {
        let room = req.room;
        let outbox = {
            let mut sessions = lock(&self.sessions);
            let Some(entry) = sessions.get_mut(&id) else {
                return Ok(Subscription::Queued);
            };
            entry.rooms.insert(room);
            entry.outbox.clone()
        };
        let subscriber = || Subscriber {
            user,
            outbox: outbox.clone(),
        };
        // The room becomes active or goes idle between the query and the
        // lock only in a race with other sockets; a few rounds settle it.
        for _ in 0..4 {
            if !lock(&self.rooms).contains_key(&room) {
                let last = match self.store.member_last_seq(room, user).await {
                    Ok(last) => last,
                    Err(e) => {
                        if let Some(entry) = lock(&self.sessions).get_mut(&id) {
                            entry.rooms.remove(&room);
                        }
                        return Err(e);
                    }
                };
                if let Entry::Vacant(vacant) = lock(&self.rooms).entry(room) {
                    let mut state = RoomState {
                        delivered: last,
                        subscribers: HashMap::new(),
                        members: HashSet::new(),
                        pumping: false,
                        pending: false,
                    };
                    state.members.insert(user);
                    state.subscribers.insert(id, subscriber());
                    vacant.insert(state);
                    req.room_last_seq = Some(last);
                    outbox.push(Item::Subscribe(req));
                    return Ok(Subscription::Queued);
                }
                // Another socket made the room active meanwhile: as below.
            }
            let mut rooms = lock(&self.rooms);
            let Some(state) = rooms.get_mut(&room) else {
                // Gone idle meanwhile (its last subscriber left): again.
                continue;
            };
            state.subscribers.insert(id, subscriber());
            // A resume from beyond what this replica delivered (the client
            // saw more on another one) needs the database's position.
            let within = req.last_seq.is_none_or(|s| s <= state.delivered);
            if within && state.members.contains(&user) {
                req.room_last_seq = Some(state.delivered);
                outbox.push(Item::Subscribe(req));
                return Ok(Subscription::Queued);
            }
            return Ok(Subscription::Check(req));
        }
        if let Some(entry) = lock(&self.sessions).get_mut(&id) {
            entry.rooms.remove(&room);
        }
        Err(crate::store::StoreError::Invalid(format!(
            "room {room} is busy starting and stopping; subscribe again"
        )))
    }

    /// The caller of [`Hub::subscribe`] found `user` a member of `room` as
    /// of the room's seq `last`: later subscriptions of the user need no
    /// query, as long as nothing after `last` was delivered yet (an event
    /// in between could have ended the membership; every later one that
    /// does is seen by the fan-out, which forgets the user).
    pub fn member_checked(&self, room: RoomId, user: UserId, last: Seq) {
        if let Some(state) = lock(&self.rooms).get_mut(&room)
            && state.delivered <= last
        {
            state.members.insert(user);
        }
    }

    /// Whether a socket is subscribed to a room.
    pub fn is_subscribed(&self, id: SessionId, room: RoomId) -> bool {
        lock(&self.sessions)
            .get(&id)
            .is_some_and(|e| e.rooms.contains(&room))
    }

    /// How many rooms a socket is subscribed to.
    pub fn subscription_count(&self, id: SessionId) -> usize {
        lock(&self.sessions).get(&id).map_or(0, |e| e.rooms.len())
    }

    /// Stops a socket's subscription.
    pub fn unsubscribe(&self, id: SessionId, room: RoomId) {
        if let Some(entry) = lock(&self.sessions).get_mut(&id) {
            entry.rooms.remove(&room);
        }
        let mut rooms = lock(&self.rooms);
        if let Some(state) = rooms.get_mut(&room) {
            state.subscribers.remove(&id);
            if state.subscribers.is_empty() && !state.pumping {
                rooms.remove(&room);
            }
        }
    }

    /// This replica committed a room event: deliver it to local subscribers
    /// now and tell the other replicas.
    pub fn committed(self: &Arc<Self>, room: RoomId, seq: Seq) {
        self.wake(room, seq);
        self.broker.publish_wakeup(room, seq);
    }

    /// A room has an event at `seq` (from the broker, the poll, or a local
    /// write). Starts the room's pump when there is something to deliver.
    pub fn wake(self: &Arc<Self>, room: RoomId, seq: Seq) {
        let start = {
            let mut rooms = lock(&self.rooms);
            let Some(state) = rooms.get_mut(&room) else {
                return;
            };
            if seq <= state.delivered {
                return;
            }
            if state.pumping {
                state.pending = true;
                false
            } else {
                state.pumping = true;
                true
            }
        };
        if start {
            let hub = self.clone();
            tokio::spawn(async move { hub.pump(room).await });
        }
    }

    async fn pump(self: Arc<Self>, room: RoomId) {
        loop {
            let from = match lock(&self.rooms).get(&room) {
                Some(s) => s.delivered,
                None => return,
            };
            let started = Instant::now();
            let rows = match self.store.events_after(room, from, PUMP_BATCH).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(room, error = %e, "fan-out read failed; the poll retries");
                    if let Some(s) = lock(&self.rooms).get_mut(&room) {
                        s.pumping = false;
                    }
                    return;
                }
            };
            self.metrics
                .db_latency
                .observe(started.elapsed().as_secs_f64());
            let frames = self.encode_frames(room, &rows);
            let (ended, more) = {
                let mut rooms = lock(&self.rooms);
                let Some(state) = rooms.get_mut(&room) else {
                    return;
                };
                let ended = self.push_frames(room, state, &frames);
                let more = frames.len() as i64 == PUMP_BATCH || state.pending;
                state.pending = false;
                if !more {
                    state.pumping = false;
                    if state.subscribers.is_empty() {
                        rooms.remove(&room);
                    }
                }
                (ended, more)
            };
            self.end_memberships(room, ended);
            if !more {
                return;
            }
        }
    }

    /// Messages this replica just committed (from the committer, right
    /// after the commit, in seq order): the other replicas are told, and
    /// local subscribers get them at once, with no read back from the
    /// database. When they do not follow what was delivered (another
    /// replica's event in between, or a pump running), the room is woken
    /// instead and the pump reads them in order.
    pub fn deliver_committed(self: &Arc<Self>, room: RoomId, events: Vec<CommittedEvent>) {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        let (first, last) = (first.seq, last.seq);
        self.broker.publish_wakeup(room, last);
        let follows = |state: &RoomState| !state.pumping && first == state.delivered + 1;
        // (The guard is dropped before `wake`, which takes the lock.)
        let direct = lock(&self.rooms).get(&room).map(follows);
        match direct {
            None => return,
            Some(true) => {}
            Some(false) => return self.wake(room, last),
        }
        let epoch = self.epoch();
        let frames: Vec<PumpFrame> = events
            .iter()
            .map(|e| PumpFrame {
                seq: e.seq,
                text: encode_event_json(room, e.seq, &epoch, &e.payload),
                created_ms: e.created_ms,
                // A message never ends a membership.
                ends: None,
            })
            .collect();
        let ended = {
            let mut rooms = lock(&self.rooms);
            let Some(state) = rooms.get_mut(&room) else {
                return;
            };
            if !follows(state) {
                drop(rooms);
                return self.wake(room, last);
            }
            let ended = self.push_frames(room, state, &frames);
            if state.subscribers.is_empty() {
                rooms.remove(&room);
            }
            ended
        };
        self.end_memberships(room, ended);
    }

    /// Each event encoded once: every subscriber's queue gets the same
    /// bytes (a reference count, no copy).
    fn encode_frames(&self, room: RoomId, rows: &[EventRow]) -> Vec<PumpFrame> {
        let epoch = self.epoch();
        rows.iter()
            .map(|r| PumpFrame {
                seq: r.seq,
                text: encode(&ServerFrame::event(room, r.seq, &epoch, &r.payload)),
                created_ms: r.created_ms,
                ends: r.payload.membership_ended(),
            })
            .collect()
    }

    /// Pushes frames above what was delivered into every subscriber's queue
    /// (under the rooms lock, so deliveries of one room never interleave);
    /// returns the sessions whose membership an event ended.
    fn push_frames(
        &self,
        room: RoomId,
        state: &mut RoomState,
        frames: &[PumpFrame],
    ) -> Vec<SessionId> {
        let now_ms = now_ms();
        let mut ended: Vec<SessionId> = Vec::new();
        for f in frames {
            if f.seq <= state.delivered {
                continue;
            }
            for sub in state.subscribers.values() {
                // An overflow closes that socket; its session counts it.
                sub.outbox.push(Item::Event {
                    room,
                    seq: f.seq,
                    text: f.text.clone(),
                    ends: f.ends,
                });
            }
            // A member who left, or was kicked or banned, gets this
            // event and nothing after it.
            if let Some(user) = f.ends {
                state.members.remove(&user);
                state.subscribers.retain(|sid, sub| {
                    let keep = sub.user != user;
                    if !keep {
                        ended.push(*sid);
                    }
                    keep
                });
            }
            self.metrics
                .fanout_latency
                .observe(((now_ms - f.created_ms).max(0) as f64) / 1000.0);
            state.delivered = f.seq;
        }
        ended
    }

    /// Forgets `room` in the sessions whose membership ended there.
    fn end_memberships(&self, room: RoomId, ended: Vec<SessionId>) {
        if ended.is_empty() {
            return;
        }
        let mut sessions = lock(&self.sessions);
        for sid in ended {
            if let Some(entry) = sessions.get_mut(&sid) {
                entry.rooms.remove(&room);
            }
        }
    }

    /// Compares subscribed rooms with the database and wakes the stale ones.
    pub async fn poll(self: &Arc<Self>) {
        let rooms: Vec<RoomId> = lock(&self.rooms).keys().copied().collect();
        for chunk in rooms.chunks(1000) {
            match self.store.last_seqs(chunk).await {
                Ok(seqs) => {
                    for (room, seq) in seqs {
                        self.wake(room, seq);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "fan-out poll failed"),
            }
        }
    }

    /// Re-reads the epoch; when it changed (restore, failover), every socket
    /// is told to reconnect so clients resume against the new history.
    pub async fn check_epoch(&self) {
        let Ok(fresh) = self.store.epoch().await else {
            return;
        };
        let changed = self.epoch.read().map(|e| *e != fresh).unwrap_or(false);
        if changed {
            tracing::warn!(epoch = %fresh, "database epoch changed (restore or failover); asking clients to reconnect");
            if let Ok(mut e) = self.epoch.write() {
                *e = fresh;
            }
            lock(&self.rooms).clear();
            for entry in lock(&self.sessions).values() {
                entry
                    .outbox
                    .push(Item::Reconnect("database history changed"));
            }
        }
    }

    /// Sends every socket the reconnect close, spread over `window` (drain).
    pub fn drain(self: &Arc<Self>, window: Duration) {
        let outboxes: Vec<Arc<Outbox>> = lock(&self.sessions)
            .values()
            .map(|e| e.outbox.clone())
            .collect();
        let n = outboxes.len().max(1) as u32;
        for (i, outbox) in outboxes.into_iter().enumerate() {
            let delay = window.mul_f64(f64::from(i as u32) / f64::from(n));
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                outbox.push(Item::Reconnect("server restarting"));
            });
        }
    }

    /// Open sockets on this replica.
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    // ---- typing ----

    /// `user` is typing in `room`: tell local subscribers and other replicas.
    pub async fn typing(self: &Arc<Self>, room: RoomId, user: &User) {
        self.deliver_typing(room, user.id, &user.username);
        let msg = Ephemeral::Typing {
            origin: self.pod.clone(),
            room,
            user: user.id,
            username: user.username.clone(),
        };
        if let Ok(text) = serde_json::to_string(&msg) {
            self.broker.publish_ephemeral(text).await;
        }
    }

    fn deliver_typing(&self, room: RoomId, user: UserId, username: &str) {
        let frame = encode(&ServerFrame::Typing {
            room,
            user: std::borrow::Cow::Owned(UserRef {
                id: user,
                username: username.to_string(),
            }),
        });
        if let Some(state) = lock(&self.rooms).get(&room) {
            for sub in state.subscribers.values() {
                if sub.user == user {
                    continue;
                }
                if sub.outbox.push(Item::Ephemeral(frame.clone(), "typing")) == Push::Dropped {
                    self.metrics.dropped("typing");
                }
            }
        }
    }

    /// A message from another replica.
    pub fn on_ephemeral(self: &Arc<Self>, text: &str) {
        let Ok(msg) = serde_json::from_str::<Ephemeral>(text) else {
            tracing::debug!(text, "ignoring an unreadable ephemeral message");
            return;
        };
        match msg {
            Ephemeral::Typing { origin, .. } | Ephemeral::Presence { origin, .. }
                if origin == self.pod => {}
            Ephemeral::Typing {
                room,
                user,
                username,
                ..
            } => self.deliver_typing(room, user, &username),
            Ephemeral::Presence { origin, users } => {
                let now = Instant::now();
                let changed: Vec<(UserId, Status)> = {
                    let mut book = lock(&self.presence);
                    users
                        .into_iter()
                        .filter_map(|(u, s)| book.apply(u, &origin, s, now).map(|eff| (u, eff)))
                        .collect()
                };
                for (user, status) in changed {
                    self.spawn_presence_delivery(user, status);
                }
            }
        }
    }

    // ---- presence ----

    /// Sets the status a socket announces. An unchanged status costs
    /// nothing (no broadcast, no fan-out queries).
    pub fn set_status(self: &Arc<Self>, id: SessionId, status: Status) {
        let (user, old) = {
            let mut sessions = lock(&self.sessions);
            let Some(entry) = sessions.get_mut(&id) else {
                return;
            };
            if entry.status == status {
                return;
            }
            let old = entry.status;
            entry.status = status;
            (entry.user.id, old)
        };
        let (before, after) = self.retally(user, Some(old), Some(status));
        self.local_presence_changed(user, before, after);
    }

    /// The user's status on this replica went from `before` to `after`:
    /// record it and tell the other replicas. Nothing when it is unchanged
    /// (a second socket of an online user costs no broadcast; the
    /// heartbeat re-announces everyone anyway).
    fn local_presence_changed(self: &Arc<Self>, user: UserId, before: Status, after: Status) {
        if before == after {
            return;
        }
        let status = after;
        let changed = lock(&self.presence).apply(user, &self.pod, status, Instant::now());
        let hub = self.clone();
        tokio::spawn(async move {
            let msg = Ephemeral::Presence {
                origin: hub.pod.clone(),
                users: vec![(user, status)],
            };
            if let Ok(text) = serde_json::to_string(&msg) {
                hub.broker.publish_ephemeral(text).await;
            }
        });
        if let Some(effective) = changed {
            self.spawn_presence_delivery(user, effective);
        }
    }

    fn spawn_presence_delivery(self: &Arc<Self>, user: UserId, status: Status) {
        let hub = self.clone();
        tokio::spawn(async move {
            let rooms = match hub.store.room_ids_of(user).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "presence fan-out skipped");
                    return;
                }
            };
            let frame = encode(&ServerFrame::Presence { user, status });
            let mut seen = HashSet::new();
            let room_state = lock(&hub.rooms);
            for room in rooms {
                if let Some(state) = room_state.get(&room) {
                    for (sid, sub) in &state.subscribers {
                        if seen.insert(*sid)
                            && sub.outbox.push(Item::Ephemeral(frame.clone(), "presence"))
                                == Push::Dropped
                        {
                            hub.metrics.dropped("presence");
                        }
                    }
                }
            }
        });
    }

    /// Re-announces every local user (heartbeat) and expires silent replicas.
    pub async fn presence_tick(self: &Arc<Self>) {
        let users: Vec<(UserId, Status)> = lock(&self.tally)
            .iter()
            .map(|(u, t)| (*u, t.status()))
            .collect();
        let now = Instant::now();
        {
            let mut book = lock(&self.presence);
            for (u, s) in &users {
                book.apply(*u, &self.pod, *s, now);
            }
        }
        // NOTIFY payloads stay under 8000 bytes: 300 users per message.
        for chunk in users.chunks(300) {
            let msg = Ephemeral::Presence {
                origin: self.pod.clone(),
                users: chunk.to_vec(),
            };
            if let Ok(text) = serde_json::to_string(&msg) {
                self.broker.publish_ephemeral(text).await;
            }
        }
        let expired = lock(&self.presence).expire(now);
        for (user, status) in expired {
            self.spawn_presence_delivery(user, status);
        }
    }

    /// Presence of `users`: counts, and each status when there are at most
    /// `detail_limit` users.
    pub fn presence_of(&self, users: &[UserId], detail_limit: usize) -> RoomPresence {
        let book = lock(&self.presence);
        let (online, away) = book.counts(users);
        let users_detail = (users.len() <= detail_limit).then(|| {
            users
                .iter()
                .map(|u| (u.to_string(), book.effective(*u)))
                .filter(|(_, s)| *s != Status::Offline)
                .collect()
        });
        RoomPresence {
            online,
            away,
            members: users.len(),
            users: users_detail,
        }
    }
}

/// A room's presence (`GET /api/v1/rooms/{room}/presence`).
#[derive(Debug, Clone, Serialize)]
pub struct RoomPresence {
    /// Members online.
    pub online: usize,
    /// Members away.
    pub away: usize,
    /// Members.
    pub members: usize,
    /// Each member's status (online or away), by id; only for rooms of at
    /// most the detail limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<HashMap<String, Status>>,
}

/// One event as the pump hands it to local subscribers.
struct PumpFrame {
    seq: Seq,
    text: Utf8Bytes,
    created_ms: i64,
    ends: Option<UserId>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs the hub's timers: the fan-out poll every second, presence every
/// 30 s, the epoch check every 30 s.
pub async fn run_timers(hub: Arc<Hub>) {
    let mut poll = tokio::time::interval(POLL_EVERY);
    let mut slow = tokio::time::interval(presence::HEARTBEAT);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    slow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => hub.poll().await,
            _ = slow.tick() => {
                hub.presence_tick().await;
                hub.check_epoch().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures::{StreamExt, future::BoxFuture, stream::BoxStream};

    use super::*;

    /// Counts ephemeral broadcasts.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Broker for Counting {
        fn publish_wakeup(&self, _: RoomId, _: Seq) {}
        fn publish_ephemeral(&self, _: String) -> BoxFuture<'_, ()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {})
        }
        fn subscribe(&self) -> BoxStream<'static, Inbound> {
            futures::stream::pending().boxed()
        }
    }

    fn lazy_hub() -> Arc<Hub> {
        let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        Hub::new(
            Store { pool },
            Arc::new(Metrics::default()),
            "pod-a".into(),
            "epoch".into(),
            Arc::new(Counting::default()),
        )
    }

    fn message(seq: Seq) -> CommittedEvent {
        let sender = crate::protocol::User {
            id: 1,
            username: "alice".into(),
            display_name: "Alice".into(),
        };
        let payload = crate::protocol::event::MessagePayload::new(
            &sender,
            "c1",
            "hi",
            None,
            &[],
            "2026-12-01T00:00:00.000Z",
        );
        CommittedEvent {
            seq,
            payload: serde_json::to_string(&payload).unwrap(),
            created_ms: 0,
        }
    }

    #[tokio::test]
    async fn committed_events_reach_subscribers_only_in_order() {
        let hub = lazy_hub();
        let outbox = Arc::new(Outbox::new(16, 1 << 20));
        let mut subscribers = HashMap::new();
        subscribers.insert(
            1,
            Subscriber {
                user: 2,
                outbox: outbox.clone(),
            },
        );
        let state = |delivered, pumping| RoomState {
            delivered,
            subscribers: HashMap::new(),
            members: HashSet::new(),
            pumping,
            pending: false,
        };
        lock(&hub.rooms).insert(7, state(5, false));
        lock(&hub.rooms).get_mut(&7).unwrap().subscribers = subscribers;
        // Follows what was delivered: queued at once, no database read.
        hub.deliver_committed(7, vec![message(6), message(7)]);
        assert_eq!(outbox.len(), 2);
        assert_eq!(lock(&hub.rooms)[&7].delivered, 7);
        // A hole before it (another replica's event): left to the pump
        // (which starts, and here fails to read), nothing queued.
        hub.deliver_committed(7, vec![message(9)]);
        assert_eq!(outbox.len(), 2);
        assert_eq!(lock(&hub.rooms)[&7].delivered, 7);
        // A pump running: it delivers, in order.
        lock(&hub.rooms).get_mut(&7).unwrap().pumping = true;
        hub.deliver_committed(7, vec![message(8)]);
        assert_eq!(outbox.len(), 2);
        assert!(lock(&hub.rooms)[&7].pending, "the pump reads again");
        // No subscriber: nothing to do.
        hub.deliver_committed(8, vec![message(1)]);
        assert!(!lock(&hub.rooms).contains_key(&8));
    }

    #[tokio::test]
    async fn a_users_local_status_is_its_most_present_socket() {
        let hub = lazy_hub();
        let cases = [
            (
                None,
                Some(Status::Online),
                (Status::Offline, Status::Online),
            ),
            (None, Some(Status::Away), (Status::Online, Status::Online)),
            (Some(Status::Online), None, (Status::Online, Status::Away)),
            (
                Some(Status::Away),
                Some(Status::Online),
                (Status::Away, Status::Online),
            ),
            (
                Some(Status::Online),
                None,
                (Status::Online, Status::Offline),
            ),
        ];
        for (from, to, expected) in cases {
            assert_eq!(hub.retally(1, from, to), expected, "{from:?} -> {to:?}");
        }
        assert!(lock(&hub.tally).is_empty(), "an offline user is forgotten");
    }

    #[tokio::test]
    async fn an_unchanged_presence_costs_no_broadcast() {
        let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let broker = Arc::new(Counting::default());
        let hub = Hub::new(
            Store { pool },
            Arc::new(Metrics::default()),
            "pod-a".into(),
            "epoch".into(),
            broker.clone(),
        );
        let user = User {
            id: 1,
            username: "alice".into(),
            display_name: "Alice".into(),
        };
        let sid = hub.open_session(user, Arc::new(Outbox::new(16, 4096)));
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        settle().await;
        let opened = broker.0.load(Ordering::SeqCst);
        assert_eq!(opened, 1, "coming online is announced");
        for _ in 0..10 {
            hub.set_status(sid, Status::Online);
        }
        settle().await;
        assert_eq!(broker.0.load(Ordering::SeqCst), opened, "nothing changed");
        hub.set_status(sid, Status::Away);
        settle().await;
        assert_eq!(broker.0.load(Ordering::SeqCst), opened + 1);
    }
}
