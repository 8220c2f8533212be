//! Structured JSON logs on stdout and, when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, OpenTelemetry traces
//! over OTLP/HTTP ([`chorus_telemetry`]): one `reconcile` span per
//! reconcile (tenant, namespace) with a child span per step. Lines logged
//! inside a traced span carry `trace_id` and `span_id`.

pub use chorus_telemetry::{TRACE_TARGET, Telemetry};

/// Installs the global subscriber: JSON lines, level from `RUST_LOG` or
/// `level` (for example `info`, `chorus_operator=debug`).
pub fn init(level: &str) -> Telemetry {
    chorus_telemetry::init(&chorus_telemetry::Options {
        level,
        ids: &[],
        service: "chorus-operator",
        crate_target: "chorus_operator",
        span_list: true,
        traces: true,
    })
}
