//! A WebSocket client for load: send frames, count acks, read events while
//! checking per-room seq contiguity. It speaks Chorus's protocol
//! (docs/protocol.md) or, for the side-by-side figures, Centrifugo's JSON
//! protocol (`connect` with a token, `subscribe`, `publish`; a channel
//! `chat:<room>` is the room, a publication's `offset` its seq; replies and
//! pushes may share a frame, one JSON object per line).

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use crate::report::{Latencies, now_micros};

/// Gaps and duplicates seen by readers.
#[derive(Default)]
pub struct Tracker {
    gaps: AtomicU64,
    duplicates: AtomicU64,
    early_closes: AtomicU64,
    /// Events received so far, by all readers.
    pub delivered: AtomicU64,
}

impl Tracker {
    /// Counts the events a reader never got: everything after the last seq
    /// it saw (`reached`, or `start` when it saw none) up to the room's last
    /// seq. A reader whose socket closed early misses the rest of the run.
    pub fn missing(&self, reached: Option<i64>, start: i64, room_last: i64) {
        let from = reached.unwrap_or(start);
        if room_last > from {
            self.gaps
                .fetch_add((room_last - from) as u64, Ordering::Relaxed);
        }
    }

    /// Prints the counts; anything but zero is a failure, said loudly.
    pub fn print(&self) {
        let (gaps, dups, early) = (
            self.gaps.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
            self.early_closes.load(Ordering::Relaxed),
        );
        println!("gaps: {gaps}, duplicates: {dups}, readers closed early: {early}");
        if gaps + dups + early > 0 {
            println!(
                "FAILED: readers must see every event exactly once and stay connected (gaps {gaps}, duplicates {dups}, early closes {early})"
            );
        }
    }

    /// Whether every reader saw every event once and stayed connected.
    pub fn clean(&self) -> bool {
        self.gaps.load(Ordering::Relaxed)
            + self.duplicates.load(Ordering::Relaxed)
            + self.early_closes.load(Ordering::Relaxed)
            == 0
    }
}

/// The server's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// The Chorus chat runtime.
    Chorus,
    /// Centrifugo v6, JSON protocol.
    Centrifugo,
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    proto: Proto,
    next_id: u64,
    /// Frames read but not yet handed out (Centrifugo batches lines).
    queued: std::collections::VecDeque<Value>,
}

impl Client {
    pub async fn connect(proto: Proto, ws_url: &str, token: &str) -> Result<Self, String> {
        let url = match proto {
            Proto::Chorus => format!("{ws_url}?access_token={token}"),
            Proto::Centrifugo => ws_url.to_string(),
        };
        // tungstenite zeroes its whole read buffer (128 KiB by default) for
        // every read: with a thousand readers of small frames that memset
        // was 15% of the machine's CPU in the fan-out scenario, taken from
        // the server under test. 4 KiB, like the runtime's own.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4 * 1024);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|e| format!("websocket connect: {e} (raise `ulimit -n`?)"))?;
        let mut c = Self {
            ws,
            proto,
            next_id: 1,
            queued: Default::default(),
        };
        if proto == Proto::Centrifugo {
            c.command("connect", json!({ "token": token })).await?;
        }
        Ok(c)
    }

    async fn send(&mut self, v: Value) -> Result<(), String> {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    async fn command(&mut self, method: &str, params: Value) -> Result<(), String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut v = json!({ "id": id });
        v[method] = params;
        self.send(v).await
    }

    /// Subscribes to a room's live events.
    pub async fn subscribe(&mut self, room: i64) -> Result<(), String> {
        match self.proto {
            Proto::Chorus => self.send(json!({"type": "subscribe", "room": room})).await,
            Proto::Centrifugo => {
                self.command("subscribe", json!({ "channel": format!("chat:{room}") }))
                    .await
            }
        }
    }

    /// Sends a message; `client_msg_id` must be unique per connection.
    pub async fn send_message(
        &mut self,
        room: i64,
        client_msg_id: &str,
        body: &str,
    ) -> Result<(), String> {
        match self.proto {
            Proto::Chorus => {
                self.send(json!({"type": "send", "room": room, "client_msg_id": client_msg_id, "body": body}))
                    .await
            }
            Proto::Centrifugo => {
                self.command(
                    "publish",
                    json!({ "channel": format!("chat:{room}"), "data": {"client_msg_id": client_msg_id, "body": body} }),
                )
                .await
            }
        }
    }

    /// The next frame, as Chorus-shaped JSON: a Centrifugo reply to
    /// `publish` is `{"type":"ack"}`, an error reply `{"type":"error"}`.
    async fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            if let Some(v) = self.queued.pop_front() {
                return Some(v);
            }
            match tokio::time::timeout(timeout, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => match self.proto {
                    Proto::Chorus => {
                        let v: Value = serde_json::from_str(&t).ok()?;
                        if v["type"] == "ping" {
                            let _ = self
                                .ws
                                .send(Message::Text(r#"{"type":"pong"}"#.into()))
                                .await;
                            continue;
                        }
                        return Some(v);
                    }
                    Proto::Centrifugo => {
                        for line in t.lines() {
                            let Ok(v) = serde_json::from_str::<Value>(line) else {
                                continue;
                            };
                            if v.as_object().is_some_and(|o| o.is_empty()) {
                                // The server's ping: answer with an empty object.
                                let _ = self.ws.send(Message::Text("{}".into())).await;
                            } else if v.get("error").is_some() {
                                self.queued
                                    .push_back(json!({"type": "error", "error": v["error"]}));
                            } else if v.get("publish").is_some() {
                                self.queued.push_back(json!({"type": "ack"}));
                            }
                        }
                    }
                },
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Reads whatever is pending for up to `timeout`.
    pub async fn drain(&mut self, timeout: Duration) {
        while self.next_json(timeout).await.is_some() {}
    }

    /// Counts acks already received (non-blocking).
    pub async fn drain_acks(&mut self) -> u64 {
        let mut n = 0;
        while let Some(v) = self.next_json(Duration::from_millis(0)).await {
            if v["type"] == "ack" {
                n += 1;
            }
        }
        n
    }

    /// Waits for the next ack.
    pub async fn next_ack(&mut self, timeout: Duration) -> Option<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let v = self
                .next_json(deadline.saturating_duration_since(Instant::now()))
                .await?;
            if v["type"] == "ack" {
                return Some(());
            }
            if v["type"] == "error" {
                eprintln!("  server error: {v}");
            }
        }
        None
    }

    /// Waits for `n` acks; returns how many came.
    pub async fn wait_acks(&mut self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut got = 0;
        while got < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.next_ack(left).await.is_none() {
                break;
            }
            got += 1;
        }
        got
    }

    /// Reads events until `stop` (or until the socket ends, which is counted
    /// and reported as an early close), recording latency (from `t=<micros>` bodies)
    /// and checking that seqs arrive contiguously, once each. Works on the
    /// raw text (no JSON parse per frame) and keeps its figures local, so the
    /// load generator is not what limits the measurement.
    pub async fn read_events(
        mut self,
        room: i64,
        lat: &Latencies,
        tracker: &Tracker,
        stop: &AtomicBool,
    ) -> Option<i64> {
        let mut samples = Vec::with_capacity(4096);
        let (mut gaps, mut dups) = (0u64, 0u64);
        let mut cursor: Option<i64> = None;
        while !stop.load(Ordering::Relaxed) {
            let msg = match tokio::time::timeout(Duration::from_millis(200), self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    tracker.early_closes.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "  READER CLOSED EARLY: room {room} at seq {cursor:?}: server closed it ({frame:?}); the events after it count as gaps"
                    );
                    break;
                }
                Ok(Some(Ok(_))) | Err(_) => continue,
                Ok(other) => {
                    tracker.early_closes.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "  READER CLOSED EARLY: room {room} at seq {cursor:?}: {}; the events after it count as gaps",
                        match other {
                            Some(Err(e)) => format!("socket error: {e}"),
                            _ => "socket ended".to_string(),
                        }
                    );
                    break;
                }
            };
            let text = msg.as_str();
            if self.proto == Proto::Centrifugo {
                for line in text.lines() {
                    if line == "{}" {
                        let _ = self.ws.send(Message::Text("{}".into())).await;
                        continue;
                    }
                    if line.contains(r#""subscribe":{"#) && cursor.is_none() {
                        cursor = Some(field_i64(line, "\"offset\":").unwrap_or(0));
                        continue;
                    }
                    if !line.contains(r#""pub":{"#) {
                        continue;
                    }
                    let Some(seq) = field_i64(line, "\"offset\":") else {
                        continue;
                    };
                    tracker.delivered.fetch_add(1, Ordering::Relaxed);
                    track(&mut cursor, seq, &mut gaps, &mut dups);
                    if let Some(t) = field_i64(line, "\"t=") {
                        samples.push(now_micros().saturating_sub(t as u64));
                    }
                }
                continue;
            }
            if text.contains(r#""type":"ping""#) {
                let _ = self
                    .ws
                    .send(Message::Text(r#"{"type":"pong"}"#.into()))
                    .await;
                continue;
            }
            if text.contains(r#""type":"subscribed""#) {
                cursor = field_i64(text, "\"last_seq\":");
                continue;
            }
            if !text.contains(r#""type":"event""#) {
                continue;
            }
            let Some(seq) = field_i64(text, "\"seq\":") else {
                continue;
            };
            tracker.delivered.fetch_add(1, Ordering::Relaxed);
            track(&mut cursor, seq, &mut gaps, &mut dups);
            if let Some(t) = field_i64(text, "\"t=") {
                samples.push(now_micros().saturating_sub(t as u64));
            }
        }
        lat.extend(samples);
        tracker.gaps.fetch_add(gaps, Ordering::Relaxed);
        tracker.duplicates.fetch_add(dups, Ordering::Relaxed);
        cursor
    }
}

/// Moves a reader's cursor to `seq`, counting gaps and duplicates.
fn track(cursor: &mut Option<i64>, seq: i64, gaps: &mut u64, dups: &mut u64) {
    match *cursor {
        Some(c) if seq <= c => *dups += 1,
        Some(c) => {
            *gaps += (seq - c - 1) as u64;
            *cursor = Some(seq);
        }
        None => *cursor = Some(seq),
    }
}

/// The integer right after `key` in `text`.
fn field_i64(text: &str, key: &str) -> Option<i64> {
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}
