//! What the bench samples while it runs: the operator's RSS (from /proc),
//! PostgreSQL's client connections, and the operator's own counters (its
//! `/metrics`), plus the percentile arithmetic of the report.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `VmRSS` and `VmHWM` (peak) of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Client connections PostgreSQL has open now, this one excluded.
pub async fn pg_connections(conn: &mut PgConnection) -> Option<i64> {
    sqlx::query_as::<_, (i64,)>(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .fetch_one(conn)
    .await
    .ok()
    .map(|(n,)| n)
}

/// Opens the sampling connection.
pub async fn pg_connect(url: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(url).await
}

/// A plain HTTP/1.0 GET on loopback: status and body.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let call = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .ok()?
}

/// The value of an OpenMetrics counter or gauge line `name ...` (summed
/// over its labels).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `p`-th percentile (0..=100) of sorted `values` (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_secs(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_secs(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_secs(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn metrics_sum_over_labels() {
        let text =
            "chorus_reconciles_total 7\nchorus_reconciles_totalx 1\nx{a=\"b\"} 2\nx{a=\"c\"} 3\n";
        assert_eq!(metric(text, "chorus_reconciles_total"), 7.0);
        assert_eq!(metric(text, "x"), 5.0);
    }
}
