//! JSON logs on stdout, with the tenant and replica on every line.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber (idempotent).
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false),
        )
        .try_init();
}
