//! JSON logs on stdout and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, OpenTelemetry traces over
//! OTLP/HTTP ([`chorus_telemetry`]). Every line carries the tenant and the
//! replica (pod) as top-level fields; lines logged inside a request (and a
//! WebSocket it opened) also carry that request's span (`request_id`,
//! `method`, `path`), and, when traces are on, `trace_id` and `span_id`.
//!
//! The spans (docs/operations.md, "Tracing"): `request` per HTTP request;
//! per WebSocket frame `ws.frame` (a trace of its own, linked to the
//! socket's upgrade request); a send's `chat.send` → `chat.commit` (the
//! committer's transaction) → `chat.fanout` (local delivery).

pub use chorus_telemetry::{TRACE_TARGET, Telemetry};

/// Installs the global subscriber (idempotent). `ids` are added to every
/// line, first: `[("tenant", "acme"), ("pod", "acme-blue-7d9c")]`.
/// `traces`: export traces when an endpoint is configured.
pub fn init(level: &str, ids: &[(&str, &str)], traces: bool) -> Telemetry {
    chorus_telemetry::init(&chorus_telemetry::Options {
        level,
        ids,
        service: "chat-runtime",
        crate_target: "chat_runtime",
        span_list: false,
        traces,
    })
}
