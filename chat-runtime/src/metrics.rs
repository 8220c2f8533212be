//! Prometheus metrics (`/metrics` on the admin listener). Names follow the
//! Prometheus conventions (base units, `_total` on counters); the list with
//! what each one means is in docs/runtime.md ("Metrics"). Every label value
//! of the fixed label sets is created at start-up, so each series reads 0
//! before its first event and a scraper's deltas start from the first scrape.

use std::fmt;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
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

/// Why a send failed (`chat_send_errors_total{reason}`). The first three
/// are the server's fault, the others the client's.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SendErrorReason {
    /// The database failed the write (connection, constraint, read-only).
    Database,
    /// The room's commit queue was full.
    Overloaded,
    /// The commit never answered (its task ended).
    Internal,
    /// The message failed validation (size, NUL, thread root).
    Rejected,
    /// Not allowed: not a member, no such room, a conflict.
    Refused,
    /// Over the per-user send rate.
    RateLimited,
}

impl SendErrorReason {
    /// Every reason, in label order.
    pub const ALL: [SendErrorReason; 6] = [
        SendErrorReason::Database,
        SendErrorReason::Overloaded,
        SendErrorReason::Internal,
        SendErrorReason::Rejected,
        SendErrorReason::Refused,
        SendErrorReason::RateLimited,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            SendErrorReason::Database => "database",
            SendErrorReason::Overloaded => "overloaded",
            SendErrorReason::Internal => "internal",
            SendErrorReason::Rejected => "rejected",
            SendErrorReason::Refused => "refused",
            SendErrorReason::RateLimited => "rate_limited",
        }
    }

    /// True for the reasons that are the server's fault (what a release
    /// analysis counts as failed sends).
    pub const fn is_server_fault(self) -> bool {
        matches!(
            self,
            SendErrorReason::Database | SendErrorReason::Overloaded | SendErrorReason::Internal
        )
    }
}

/// How a WebSocket ended (`chat_websocket_closes_total{class}`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CloseClass {
    /// A close handshake for a protocol reason: the client closed, the
    /// server drained (4000) or the token expired (4001).
    Normal,
    /// Closed for the client's behaviour: a frame over the limit (1009), no
    /// frame for 60 s, a queue overflow or a stalled write (slow reader).
    Client,
    /// The connection ended without a close handshake (1006): the stream
    /// failed or ended, or a write to it failed.
    Abnormal,
}

impl CloseClass {
    /// Every class, in label order.
    pub const ALL: [CloseClass; 3] = [CloseClass::Normal, CloseClass::Client, CloseClass::Abnormal];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseClass::Normal => "normal",
            CloseClass::Client => "client",
            CloseClass::Abnormal => "abnormal",
        }
    }
}

/// The class of an HTTP status (`chat_http_responses_total{status_class}`):
/// `1xx` (WebSocket upgrades) to `5xx`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct StatusClass(u8);

impl StatusClass {
    /// Every class, in label order.
    pub const ALL: [StatusClass; 5] = [
        StatusClass(1),
        StatusClass(2),
        StatusClass(3),
        StatusClass(4),
        StatusClass(5),
    ];

    /// The class of `status` (100..=599; anything else counts as `5xx`).
    pub fn of(status: u16) -> Self {
        match status / 100 {
            c @ 1..=5 => StatusClass(c as u8),
            _ => StatusClass(5),
        }
    }

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self.0 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        }
    }
}

macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    )*};
}
label_value!(SendErrorReason, CloseClass, StatusClass);

/// Label of `chat_send_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendErrorLabels {
    /// Why the send failed.
    pub reason: SendErrorReason,
}

/// Label of `chat_websocket_closes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// How the socket ended.
    pub class: CloseClass,
}

/// Label of `chat_http_responses_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// `1xx` .. `5xx`.
    pub status_class: StatusClass,
}

/// Label of `chat_database_pool_connections`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    /// `in_use` or `idle`.
    pub state: String,
}

/// Buckets of `chat_send_ack_seconds` (seconds).
pub const SEND_ACK_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

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
    /// Broker (re)connections, each followed by a catch-up read of every
    /// subscribed room.
    pub broker_resyncs: Counter,
    /// Database latency of event writes and reads (seconds).
    pub db_latency: Histogram,
    /// Send-to-fan-out latency: commit of an event to its delivery on this replica.
    pub fanout_latency: Histogram,
    /// Failed sends by reason (`chat_send_errors_total`).
    pub send_errors: Family<SendErrorLabels, Counter>,
    /// Seconds from a send reaching the service (REST or WebSocket) to its
    /// ack being ready (committed); sends only (`chat_send_ack_seconds`).
    pub send_ack: Histogram,
    /// WebSocket connections ended, by class (`chat_websocket_closes_total`).
    pub websocket_closes: Family<CloseLabels, Counter>,
    /// Public listener responses by status class
    /// (`chat_http_responses_total`).
    pub http_responses: Family<StatusLabels, Counter>,
    /// The database pool's connections by state, read at each scrape
    /// (`chat_database_pool_connections{state}`).
    pub db_pool: Family<PoolStateLabels, Gauge>,
    /// The pool's size limit (`chat_database_pool_max_connections`,
    /// `CHAT_DB_POOL_SIZE`).
    pub db_pool_max: Gauge,
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
            broker_resyncs: Counter::default(),
            db_latency: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            fanout_latency: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            send_errors: Family::default(),
            send_ack: Histogram::new(SEND_ACK_BUCKETS),
            websocket_closes: Family::default(),
            http_responses: Family::default(),
            db_pool: Family::default(),
            db_pool_max: Gauge::default(),
            registry: Registry::default(),
        };
        for reason in SendErrorReason::ALL {
            drop(m.send_errors.get_or_create(&SendErrorLabels { reason }));
        }
        for class in CloseClass::ALL {
            drop(m.websocket_closes.get_or_create(&CloseLabels { class }));
        }
        for status_class in StatusClass::ALL {
            drop(
                m.http_responses
                    .get_or_create(&StatusLabels { status_class }),
            );
        }
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
            "broker_resyncs",
            "Broker (re)connections, each followed by a catch-up read of subscribed rooms",
            m.broker_resyncs.clone(),
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
        r.register(
            "send_errors",
            "Sends that failed, by reason (database, overloaded, internal: the server's fault; rejected, refused, rate_limited: the client's)",
            m.send_errors.clone(),
        );
        r.register(
            "send_ack_seconds",
            "Seconds from a send reaching the service to its ack (committed)",
            m.send_ack.clone(),
        );
        r.register(
            "websocket_closes",
            "WebSocket connections ended, by class (normal, client, abnormal)",
            m.websocket_closes.clone(),
        );
        r.register(
            "http_responses",
            "Responses of the public listener, by status class",
            m.http_responses.clone(),
        );
        r.register(
            "database_pool_connections",
            "Connections of the replica's database pool, by state (in_use, idle)",
            m.db_pool.clone(),
        );
        r.register(
            "database_pool_max_connections",
            "Most connections the replica's database pool opens (CHAT_DB_POOL_SIZE)",
            m.db_pool_max.clone(),
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

    /// Sets the pool gauges: `size` connections open, `idle` of them idle,
    /// at most `max`.
    pub fn observe_pool(&self, size: u32, idle: usize, max: u32) {
        let idle = i64::try_from(idle).unwrap_or(i64::MAX);
        let size = i64::from(size);
        for (state, n) in [("in_use", (size - idle).max(0)), ("idle", idle)] {
            self.db_pool
                .get_or_create(&PoolStateLabels {
                    state: state.into(),
                })
                .set(n);
        }
        self.db_pool_max.set(i64::from(max));
    }

    /// Counts a resume outcome.
    pub fn resume(&self, outcome: &str) {
        self.resumes
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts a failed send.
    pub fn send_failed(&self, reason: SendErrorReason) {
        self.send_errors
            .get_or_create(&SendErrorLabels { reason })
            .inc();
    }

    /// Records the ack of a send that took `seconds`.
    pub fn send_acked(&self, seconds: f64) {
        self.send_ack.observe(seconds);
    }

    /// Counts an ended WebSocket.
    pub fn websocket_closed(&self, class: CloseClass) {
        self.websocket_closes
            .get_or_create(&CloseLabels { class })
            .inc();
    }

    /// Counts a response of the public listener with `status`.
    pub fn http_response(&self, status: u16) {
        self.http_responses
            .get_or_create(&StatusLabels {
                status_class: StatusClass::of(status),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix} in\n{text}"))
    }

    #[test]
    fn every_label_value_reads_zero_before_its_first_event() {
        let text = Metrics::default().render();
        for r in SendErrorReason::ALL {
            let l = format!("chat_send_errors_total{{reason=\"{}\"}} 0", r.as_str());
            assert!(text.contains(&l), "{l} missing in\n{text}");
        }
        for c in CloseClass::ALL {
            let l = format!("chat_websocket_closes_total{{class=\"{}\"}} 0", c.as_str());
            assert!(text.contains(&l), "{l} missing in\n{text}");
        }
        for s in StatusClass::ALL {
            let l = format!(
                "chat_http_responses_total{{status_class=\"{}\"}} 0",
                s.as_str()
            );
            assert!(text.contains(&l), "{l} missing in\n{text}");
        }
        assert_eq!(
            line(&text, "chat_send_ack_seconds_count"),
            "chat_send_ack_seconds_count 0"
        );
    }

    #[test]
    fn recording_counts_under_the_right_label() {
        let m = Metrics::default();
        m.send_failed(SendErrorReason::Database);
        m.send_failed(SendErrorReason::Database);
        m.send_failed(SendErrorReason::RateLimited);
        m.websocket_closed(CloseClass::Abnormal);
        m.http_response(503);
        m.http_response(101);
        m.http_response(200);
        m.http_response(204);
        m.send_acked(0.003);
        m.send_acked(0.2);
        let text = m.render();
        for want in [
            "chat_send_errors_total{reason=\"database\"} 2",
            "chat_send_errors_total{reason=\"rate_limited\"} 1",
            "chat_send_errors_total{reason=\"rejected\"} 0",
            "chat_websocket_closes_total{class=\"abnormal\"} 1",
            "chat_websocket_closes_total{class=\"normal\"} 0",
            "chat_http_responses_total{status_class=\"5xx\"} 1",
            "chat_http_responses_total{status_class=\"1xx\"} 1",
            "chat_http_responses_total{status_class=\"2xx\"} 2",
            "chat_send_ack_seconds_count 2",
            "chat_send_ack_seconds_bucket{le=\"0.005\"} 1",
            "chat_send_ack_seconds_bucket{le=\"0.25\"} 2",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        assert!(
            line(&text, "chat_send_ack_seconds_sum").starts_with("chat_send_ack_seconds_sum 0.203")
        );
    }

    #[test]
    fn status_classes_and_server_faults() {
        let classes: Vec<&str> = [100, 101, 200, 302, 404, 499, 500, 503, 599, 42, 600]
            .into_iter()
            .map(|s| StatusClass::of(s).as_str())
            .collect();
        assert_eq!(
            classes,
            [
                "1xx", "1xx", "2xx", "3xx", "4xx", "4xx", "5xx", "5xx", "5xx", "5xx", "5xx"
            ]
        );
        let faults: Vec<&str> = SendErrorReason::ALL
            .into_iter()
            .filter(|r| r.is_server_fault())
            .map(SendErrorReason::as_str)
            .collect();
        assert_eq!(faults, ["database", "overloaded", "internal"]);
    }
}
