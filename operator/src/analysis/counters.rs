//! What one runtime pod's `/metrics` says about its health, and the
//! difference of two scrapes. Pure: the text comes from
//! `controller/analysis.rs`.
//!
//! Read from the runtime's metrics (docs/runtime.md, "Metrics"):
//! `chat_send_ack_seconds` (histogram), `chat_send_errors_total{reason}`,
//! `chat_http_responses_total{status_class}` and
//! `chat_websocket_closes_total{class}`. A pod of an older runtime without
//! these series reads as zeros (no events).

/// Send error reasons that are the server's fault.
pub const SERVER_FAULT_REASONS: [&str; 3] = ["database", "overloaded", "internal"];

/// Cumulative counts of one pod, or the events of a window (a difference).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// Acked sends (`chat_send_ack_seconds_count`).
    pub acked: f64,
    /// `(le, cumulative count)` of `chat_send_ack_seconds_bucket`, by `le`.
    pub ack_buckets: Vec<(f64, f64)>,
    /// Failed sends, every reason.
    pub send_errors: f64,
    /// Failed sends that are the server's fault ([`SERVER_FAULT_REASONS`]).
    pub send_faults: f64,
    /// HTTP responses of the public listener.
    pub responses: f64,
    /// Of those, `5xx`.
    pub responses_5xx: f64,
    /// Ended WebSockets.
    pub closes: f64,
    /// Of those, `abnormal` (no close handshake).
    pub closes_abnormal: f64,
}

/// The text did not parse as the Prometheus text format.
#[derive(Debug, thiserror::Error)]
#[error("the metrics text does not parse: {0}")]
pub struct ParseError(#[source] std::io::Error);

impl Counters {
    /// Reads the counts out of a `/metrics` text (Prometheus text format or
    /// OpenMetrics).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        use prometheus_parse::{Scrape, Value};
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = Scrape::parse(lines).map_err(ParseError)?;
        let mut c = Counters::default();
        for s in &scrape.samples {
            let label = |k: &str| s.labels.get(k).unwrap_or_default().to_string();
            let v = match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) if s.metric == "chat_send_ack_seconds" => {
                    c.ack_buckets = buckets.iter().map(|b| (b.less_than, b.count)).collect();
                    c.ack_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                    continue;
                }
                _ => continue,
            };
            match s.metric.as_str() {
                "chat_send_ack_seconds_count" => c.acked += v,
                "chat_send_errors_total" => {
                    c.send_errors += v;
                    if SERVER_FAULT_REASONS.contains(&label("reason").as_str()) {
                        c.send_faults += v;
                    }
                }
                "chat_http_responses_total" => {
                    c.responses += v;
                    if label("status_class") == "5xx" {
                        c.responses_5xx += v;
                    }
                }
                "chat_websocket_closes_total" => {
                    c.closes += v;
                    if label("class") == "abnormal" {
                        c.closes_abnormal += v;
                    }
                }
                _ => {}
            }
        }
        Ok(c)
    }

    fn scalars(&self) -> [f64; 7] {
        [
            self.acked,
            self.send_errors,
            self.send_faults,
            self.responses,
            self.responses_5xx,
            self.closes,
            self.closes_abnormal,
        ]
    }

    /// Events since `before` (the same pod's earlier scrape). A counter
    /// that went down means the process restarted and counts from zero
    /// again: then the whole of `self` is the increase (as Prometheus'
    /// `increase()` treats a reset).
    pub fn since(&self, before: &Counters) -> Counters {
        let reset = self
            .scalars()
            .iter()
            .zip(before.scalars())
            .any(|(now, then)| *now < then)
            || self.ack_buckets.len() != before.ack_buckets.len()
            || self
                .ack_buckets
                .iter()
                .zip(&before.ack_buckets)
                .any(|(a, b)| a.0 != b.0 || a.1 < b.1);
        if reset {
            return self.clone();
        }
        Counters {
            acked: self.acked - before.acked,
            ack_buckets: self
                .ack_buckets
                .iter()
                .zip(&before.ack_buckets)
                .map(|(a, b)| (a.0, a.1 - b.1))
                .collect(),
            send_errors: self.send_errors - before.send_errors,
            send_faults: self.send_faults - before.send_faults,
            responses: self.responses - before.responses,
            responses_5xx: self.responses_5xx - before.responses_5xx,
            closes: self.closes - before.closes,
            closes_abnormal: self.closes_abnormal - before.closes_abnormal,
        }
    }

    /// Adds another pod's events (buckets matched by `le`).
    pub fn add(&mut self, other: &Counters) {
        self.acked += other.acked;
        self.send_errors += other.send_errors;
        self.send_faults += other.send_faults;
        self.responses += other.responses;
        self.responses_5xx += other.responses_5xx;
        self.closes += other.closes;
        self.closes_abnormal += other.closes_abnormal;
        for (le, n) in &other.ack_buckets {
            match self.ack_buckets.iter_mut().find(|(l, _)| l == le) {
                Some(b) => b.1 += n,
                None => self.ack_buckets.push((*le, *n)),
            }
        }
        self.ack_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// Sends: acked and failed (every reason).
    pub fn sends(&self) -> f64 {
        self.acked + self.send_errors
    }

    /// Events: sends, HTTP responses and WebSocket closes.
    pub fn events(&self) -> f64 {
        self.sends() + self.responses + self.closes
    }

    /// Failed events: server-fault send errors, HTTP 5xx, abnormal closes.
    pub fn failures(&self) -> f64 {
        self.send_faults + self.responses_5xx + self.closes_abnormal
    }

    /// The `q` quantile (0 to 1) of the ack latency in seconds, estimated
    /// from the buckets as Prometheus' `histogram_quantile` does (linear
    /// within the bucket; in the `+Inf` bucket, the largest finite bound).
    /// `None` without acked sends.
    pub fn ack_quantile(&self, q: f64) -> Option<f64> {
        let total = self.ack_buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, count) in &self.ack_buckets {
            if *count >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let share = if count - below > 0.0 {
                    (rank - below) / (count - below)
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * share);
            }
            (lower, below) = (*le, *count);
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/metrics` text as the runtime writes it (OpenMetrics).
    pub(crate) fn text(
        acked: &[u64; 4],
        errors: [u64; 6],
        http: [u64; 5],
        closes: [u64; 3],
    ) -> String {
        let reasons = [
            "database",
            "overloaded",
            "internal",
            "rejected",
            "refused",
            "rate_limited",
        ];
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let ends = ["normal", "client", "abnormal"];
        let mut t = String::from(
            "# HELP chat_connections Open WebSocket connections.\n# TYPE chat_connections gauge\nchat_connections 3\n",
        );
        t += "# TYPE chat_send_errors counter\n";
        for (r, n) in reasons.iter().zip(errors) {
            t += &format!("chat_send_errors_total{{reason=\"{r}\"}} {n}\n");
        }
        t += "# HELP chat_send_ack_seconds Seconds.\n# TYPE chat_send_ack_seconds histogram\n";
        t += &format!(
            "chat_send_ack_seconds_sum 1.5\nchat_send_ack_seconds_count {}\n",
            acked[3]
        );
        for (le, n) in ["0.01", "0.1", "1.0", "+Inf"].iter().zip(acked) {
            t += &format!("chat_send_ack_seconds_bucket{{le=\"{le}\"}} {n}\n");
        }
        t += "# TYPE chat_http_responses counter\n";
        for (c, n) in classes.iter().zip(http) {
            t += &format!("chat_http_responses_total{{status_class=\"{c}\"}} {n}\n");
        }
        t += "# TYPE chat_websocket_closes counter\n";
        for (c, n) in ends.iter().zip(closes) {
            t += &format!("chat_websocket_closes_total{{class=\"{c}\"}} {n}\n");
        }
        t + "# EOF\n"
    }

    #[test]
    fn parses_the_runtime_text() {
        let c = Counters::parse(&text(
            &[5, 8, 9, 10],
            [2, 1, 0, 4, 0, 3],
            [7, 20, 0, 3, 1],
            [4, 1, 2],
        ))
        .unwrap();
        assert_eq!(c.acked, 10.0);
        assert_eq!(c.ack_buckets.len(), 4);
        assert_eq!((c.send_errors, c.send_faults), (10.0, 3.0));
        assert_eq!((c.responses, c.responses_5xx), (31.0, 1.0));
        assert_eq!((c.closes, c.closes_abnormal), (7.0, 2.0));
        assert_eq!(c.events(), 20.0 + 31.0 + 7.0);
        assert_eq!(c.failures(), 3.0 + 1.0 + 2.0);
        // An older runtime without these series reads as no events.
        let old = Counters::parse("chat_connections 1\n# EOF\n").unwrap();
        assert_eq!(old.events(), 0.0);
        assert_eq!(old.ack_quantile(0.99), None);
    }

    #[test]
    fn differences_handle_resets() {
        let before = Counters::parse(&text(
            &[5, 8, 9, 10],
            [2, 0, 0, 0, 0, 0],
            [0, 20, 0, 0, 0],
            [0, 0, 0],
        ))
        .unwrap();
        let after = Counters::parse(&text(
            &[6, 18, 19, 20],
            [5, 0, 0, 0, 0, 0],
            [0, 25, 0, 0, 1],
            [1, 0, 0],
        ))
        .unwrap();
        let d = after.since(&before);
        assert_eq!(
            (
                d.acked,
                d.send_faults,
                d.responses,
                d.responses_5xx,
                d.closes
            ),
            (10.0, 3.0, 6.0, 1.0, 1.0)
        );
        assert_eq!(
            d.ack_buckets.iter().map(|b| b.1).collect::<Vec<_>>(),
            [1.0, 10.0, 10.0, 10.0]
        );
        // A restarted pod counts from zero: its whole count is the increase.
        let restarted = Counters::parse(&text(
            &[1, 2, 2, 2],
            [1, 0, 0, 0, 0, 0],
            [0, 3, 0, 0, 0],
            [0, 0, 0],
        ))
        .unwrap();
        assert_eq!(restarted.since(&after), restarted);
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        let c = |b: &[(f64, f64)]| Counters {
            ack_buckets: b.to_vec(),
            ..Counters::default()
        };
        // 100 acks: 50 under 10 ms, 90 under 100 ms, all under 1 s.
        let h = c(&[
            (0.01, 50.0),
            (0.1, 90.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ]);
        let p50 = h.ack_quantile(0.5).unwrap();
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        let p99 = h.ack_quantile(0.99).unwrap();
        assert!((p99 - (0.1 + 0.9 * 0.9)).abs() < 1e-9, "{p99}");
        // Beyond the last finite bound: that bound.
        let slow = c(&[(0.01, 0.0), (1.0, 1.0), (f64::INFINITY, 100.0)]);
        assert_eq!(slow.ack_quantile(0.99), Some(1.0));
        assert_eq!(
            c(&[(0.01, 0.0), (f64::INFINITY, 0.0)]).ack_quantile(0.99),
            None
        );
    }

    #[test]
    fn pods_add_up() {
        let mut sum = Counters::default();
        let a = Counters::parse(&text(
            &[1, 2, 3, 4],
            [1, 0, 0, 0, 0, 0],
            [0, 1, 0, 0, 0],
            [0, 0, 1],
        ))
        .unwrap();
        sum.add(&a);
        sum.add(&a);
        assert_eq!(
            (sum.acked, sum.send_faults, sum.closes_abnormal),
            (8.0, 2.0, 2.0)
        );
        assert_eq!(
            sum.ack_buckets.iter().map(|b| b.1).collect::<Vec<_>>(),
            [2.0, 4.0, 6.0, 8.0]
        );
    }
}
