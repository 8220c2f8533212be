//! Prometheus metrics (`/metrics` on the admin listener).

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Label for resume outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `recovered`, `not_recovered`, `fresh`.
    pub outcome: String,
}

/// Label for dropped frames.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// Frame kind.
    pub kind: String,
}

/// Every runtime metric.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Upgrades refused (full or draining).
    pub connections_refused: Counter,
    /// Messages accepted (REST + WebSocket), duplicates excluded.
    pub messages_in: Counter,
    /// Retried sends answered with the original ack.
    pub duplicate_sends: Counter,
    /// Events written to sockets.
    pub deliveries: Counter,
    /// Resume outcomes.
    pub resumes: Family<Outcome, Counter>,
    /// Frames dropped from full queues, by kind (typing, presence).
    pub queue_drops: Family<Kind, Counter>,
    /// Sockets closed because their queue overflowed or pings went unanswered.
    pub slow_disconnects: Counter,
    /// Sends refused by the rate limit.
    pub rate_limited: Counter,
    /// Frames refused as invalid.
    pub bad_frames: Counter,
    /// Database latency of event writes and reads (seconds).
    pub db_latency: Histogram,
    /// Send-to-fan-out latency: commit of an event to its delivery on this replica.
    pub fanout_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("chat");
        let m = Metrics {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            connections_refused: Counter::default(),
            messages_in: Counter::default(),
            duplicate_sends: Counter::default(),
            deliveries: Counter::default(),
            resumes: Family::default(),
            queue_drops: Family::default(),
            slow_disconnects: Counter::default(),
            rate_limited: Counter::default(),
            bad_frames: Counter::default(),
            db_latency: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            fanout_latency: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            registry: Registry::default(),
        };
        r.register(
            "connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "connections_accepted",
            "WebSocket connections accepted",
            m.connections_total.clone(),
        );
        r.register(
            "connections_refused",
            "WebSocket upgrades refused (full or draining)",
            m.connections_refused.clone(),
        );
        r.register(
            "messages_in",
            "Messages accepted (duplicates excluded)",
            m.messages_in.clone(),
        );
        r.register(
            "duplicate_sends",
            "Retried sends answered with the original ack",
            m.duplicate_sends.clone(),
        );
        r.register(
            "deliveries",
            "Room events written to sockets",
            m.deliveries.clone(),
        );
        r.register(
            "resumes",
            "Subscriptions by resume outcome",
            m.resumes.clone(),
        );
        r.register(
            "queue_drops",
            "Ephemeral frames dropped from full socket queues",
            m.queue_drops.clone(),
        );
        r.register(
            "slow_client_disconnects",
            "Sockets closed for overflow or missed pings",
            m.slow_disconnects.clone(),
        );
        r.register(
            "rate_limited",
            "Sends refused by the per-user rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "bad_frames",
            "Client frames refused as invalid",
            m.bad_frames.clone(),
        );
        r.register(
            "db_latency_seconds",
            "Latency of event writes and reads",
            m.db_latency.clone(),
        );
        r.register(
            "fanout_latency_seconds",
            "Commit-to-delivery latency on this replica",
            m.fanout_latency.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

impl Metrics {
    /// Text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts a resume outcome.
    pub fn resume(&self, outcome: &str) {
        self.resumes
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts a dropped ephemeral frame.
    pub fn dropped(&self, kind: &str) {
        self.queue_drops
            .get_or_create(&Kind { kind: kind.into() })
            .inc();
    }
}
