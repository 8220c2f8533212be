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

/// CPU seconds `pid` and its reaped children used so far (`utime + stime +
/// cutime + cstime` of /proc/PID/stat): for PostgreSQL's postmaster that
/// includes every backend that has exited.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..15)?
        .iter()
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
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
        .sum::<f64>()
        // An empty sum is -0.
        + 0.0
}

/// `label=value` pairs of a labelled counter, e.g. `reason=conflict: 3`
/// (comma separated; empty when every series is 0).
pub fn labelled(text: &str, name: &str, label: &str) -> String {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let key = format!("{label}=\"");
            let v = labels.split_once(&key)?.1.split('"').next()?;
            (value > 0.0).then(|| format!("{v}: {value}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The upper bound of the bucket holding the `q`-quantile (0..=1) of a
/// histogram, `None` when it is empty or beyond the last finite bucket.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, rest) = rest.split_once('"')?;
            let count: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            Some((le.parse().ok()?, count))
        })
        .collect();
    let total = buckets.iter().map(|b| b.1).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(le, count)| le.is_finite() && *count >= q * total)
        .map(|b| b.0)
}

/// `apiserver_request_total` summed by client-visible verb and resource
/// (`PATCH deployments`), from the apiserver's `/metrics` text.
pub fn apiserver_requests(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split_once(&format!("{key}=\""))
                .and_then(|(_, v)| v.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let sub = label("subresource");
        let resource = if sub.is_empty() {
            label("resource")
        } else {
            format!("{}/{sub}", label("resource"))
        };
        let key = format!("{} {resource}", label("verb"));
        *out.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or_default();
    }
    out
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
        assert_eq!(labelled(text, "x", "a"), "b: 2, c: 3");
    }

    #[test]
    fn apiserver_requests_by_verb_and_resource() {
        let text = "apiserver_request_total{code=\"200\",resource=\"pods\",subresource=\"status\",verb=\"PATCH\"} 3\n\
                    apiserver_request_total{code=\"409\",resource=\"pods\",subresource=\"status\",verb=\"PATCH\"} 1\n\
                    apiserver_request_total{code=\"201\",resource=\"pods\",subresource=\"\",verb=\"POST\"} 2\n";
        let r = apiserver_requests(text);
        assert_eq!(r["PATCH pods/status"], 4.0);
        assert_eq!(r["POST pods"], 2.0);
    }

    #[test]
    fn histogram_quantiles_by_bucket() {
        let text =
            "h_bucket{le=\"0.1\"} 2\nh_bucket{le=\"1.0\"} 9\nh_bucket{le=\"+Inf\"} 10\nh_sum 3\n";
        assert_eq!(histogram_quantile(text, "h", 0.5), Some(1.0));
        assert_eq!(histogram_quantile(text, "h", 0.2), Some(0.1));
        assert_eq!(histogram_quantile(text, "h", 0.99), None);
        assert_eq!(histogram_quantile("", "h", 0.5), None);
    }
}
