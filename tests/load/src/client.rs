//! A WebSocket client for load: send frames, count acks, read events while
//! checking per-room seq contiguity.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
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

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(ws_url: &str, token: &str) -> Result<Self, String> {
        let url = format!("{ws_url}?access_token={token}");
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .map_err(|e| format!("websocket connect: {e} (raise `ulimit -n`?)"))?;
        Ok(Self { ws })
    }

    pub async fn send(&mut self, v: Value) -> Result<(), String> {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    async fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(timeout, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
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
            match cursor {
                Some(c) if seq <= c => dups += 1,
                Some(c) => {
                    gaps += (seq - c - 1) as u64;
                    cursor = Some(seq);
                }
                None => cursor = Some(seq),
            }
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

/// The integer right after `key` in `text`.
fn field_i64(text: &str, key: &str) -> Option<i64> {
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}
