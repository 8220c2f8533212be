//! Structured JSON logs on stdout.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber: JSON lines, level from `RUST_LOG` or
/// `level` (for example `info`, `chorus_operator=debug`).
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true),
        )
        .try_init();
}
