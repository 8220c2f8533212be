//! Latency collection and percentiles.

use std::{
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

/// Microseconds since the epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Recorded latencies (microseconds).
#[derive(Default)]
pub struct Latencies {
    samples: Mutex<Vec<u64>>,
}

impl Latencies {
    /// Adds a reader's samples.
    pub fn extend(&self, samples: Vec<u64>) {
        if let Ok(mut s) = self.samples.lock() {
            s.extend(samples);
        }
    }

    pub fn count(&self) -> u64 {
        self.samples.lock().map(|s| s.len() as u64).unwrap_or(0)
    }

    /// p50, p99 and max in milliseconds (`None` without samples).
    pub fn percentiles(&self) -> Option<(f64, f64, f64)> {
        let mut s = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        if s.is_empty() {
            return None;
        }
        s.sort_unstable();
        let pct = |p: f64| s[((s.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
        Some((pct(0.50), pct(0.99), pct(1.0)))
    }

    /// Prints p50/p99/max in milliseconds.
    pub fn print(&self, what: &str) {
        match self.percentiles() {
            None => println!("{what}: no samples"),
            Some((p50, p99, max)) => println!(
                "{what}: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({} samples)",
                self.count()
            ),
        }
    }
}
