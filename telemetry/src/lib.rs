//! Telemetry shared by the Chorus services: JSON log lines on stdout and,
//! when an OTLP endpoint is configured through the standard
//! `OTEL_EXPORTER_OTLP_*` variables, OpenTelemetry traces exported over
//! OTLP/HTTP.
//!
//! Two layers sit on one registry, each with its own filter:
//!
//! - the log layer (JSON lines) takes the level from `RUST_LOG` or the
//!   service's setting, and never sees the spans that exist for traces only
//!   (target [`TRACE_TARGET`]), so a log line keeps naming the span it did
//!   before (a request's `request_id`, a reconcile's tenant);
//! - the trace layer (only when an endpoint is set) takes the service's own
//!   spans and the trace-only spans at `info`. Lines logged inside a traced
//!   span carry its `trace_id` and `span_id`.
//!
//! With no endpoint there is no trace layer and no exporter: trace-only
//! spans are disabled at their call sites and cost a branch.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tracing::{Level, Span};
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, prelude::*};

mod format;
mod otlp;
#[cfg(feature = "receiver")]
pub mod receiver;

pub use format::{DispatchCell, JsonLines};
pub use otlp::{HyperClient, OtlpError, configured_endpoint, tracer_provider};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces (set by [`init`]): spans can skip
/// recording trace-only fields otherwise.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The target of spans that exist for traces only: `info_span!(target:
/// TRACE_TARGET, "ws.frame")`. Log lines never show them.
pub const TRACE_TARGET: &str = "otel";

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    /// The log level (or `EnvFilter` directives) when `RUST_LOG` is unset.
    pub level: &'a str,
    /// Fields added first to every log line: `[("tenant", "acme")]`.
    pub ids: &'a [(&'a str, &'a str)],
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor
    /// `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub service: &'a str,
    /// The service's own target (its crate name, `chat_runtime`): its spans
    /// and events at `info` and above go into traces.
    pub crate_target: &'a str,
    /// Whether log lines list every enclosing span (`spans`) besides the
    /// current one (`span`).
    pub span_list: bool,
    /// Whether to export traces at all (`false` for one-shot commands such
    /// as `migrate`).
    pub traces: bool,
}

/// The installed telemetry; keep it until the process ends and call
/// [`Telemetry::shutdown`] to flush the spans not yet exported.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is queued and stops the exporter (at most `timeout`).
    /// Runs the blocking flush off the async workers.
    pub async fn shutdown(self, timeout: Duration) {
        let Some(provider) = self.provider else {
            return;
        };
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing the last traces failed"),
            Err(e) => tracing::warn!(error = %e, "flushing the last traces failed"),
        }
    }
}

/// Installs the global subscriber (once; later calls change nothing and
/// return a [`Telemetry`] without traces). Call it inside a Tokio runtime:
/// the exporter sends from it. An endpoint that cannot be used is logged as
/// an error and the service runs without traces.
pub fn init(options: &Options<'_>) -> Telemetry {
    let endpoint = if options.traces {
        configured_endpoint()
    } else {
        None
    };
    let built = endpoint
        .as_ref()
        .map(|_| tracer_provider(options.service, None));
    let (provider, failure) = match built {
        Some(Ok(p)) => (Some(p), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let cell = DispatchCell::default();
    let logs = log_layer(options, provider.is_some().then(|| cell.clone()));
    let traces = provider
        .as_ref()
        .map(|p| trace_layer(p, options.service, options.crate_target));
    let dispatch = cell.dispatch(tracing_subscriber::registry().with(logs).with(traces));
    let installed = dispatch.try_init().is_ok();
    if !installed {
        if let Some(p) = provider {
            let _ = p.shutdown();
        }
        return Telemetry::default();
    }
    if provider.is_some() {
        ENABLED.store(true, Ordering::Relaxed);
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing::info!(
            endpoint = endpoint.as_deref().unwrap_or_default(),
            "exporting traces over OTLP/HTTP"
        );
    }
    if let Some(e) = failure {
        tracing::error!(error = %e, "traces are off: the OTLP exporter cannot be set up");
    }
    Telemetry { provider }
}

/// The JSON log layer on stdout: level from `RUST_LOG` or `options.level`,
/// without trace-only spans; `trace_ids` (the dispatcher the layer ends up
/// in) adds the current span's ids to each line.
pub fn log_layer<S>(
    options: &Options<'_>,
    trace_ids: Option<DispatchCell>,
) -> impl Layer<S> + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    log_layer_to(options, trace_ids, std::io::stdout)
}

/// [`log_layer`] writing to `writer`.
pub fn log_layer_to<S, W>(
    options: &Options<'_>,
    trace_ids: Option<DispatchCell>,
    writer: W,
) -> impl Layer<S> + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let mut level =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(options.level));
    // Trace-only spans are off for the log layer. (One EnvFilter with exact
    // callsite interest: a `filter_fn` beside it, whose interest is
    // "sometimes", made tracing-subscriber drop the next event after one
    // that every per-layer filter refused.)
    if let Ok(off) = format!("{TRACE_TARGET}=off").parse() {
        level = level.add_directive(off);
    }
    tracing_subscriber::fmt::layer()
        .json()
        .event_format(JsonLines::new(options.ids, options.span_list, trace_ids))
        .with_writer(writer)
        .with_filter(level)
}

/// The trace layer over `provider`: the service's own spans and events
/// (`crate_target`) and the trace-only spans ([`TRACE_TARGET`]) at `info`
/// and above.
pub fn trace_layer<S>(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
    service: &str,
    crate_target: &str,
) -> impl Layer<S> + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    let tracer = provider.tracer(service.to_string());
    let targets = Targets::new()
        .with_target(TRACE_TARGET, Level::INFO)
        .with_target(crate_target.to_string(), Level::INFO);
    // Without context activation a span's parent is the enclosing tracing
    // span (as the log lines see it), not a thread-local OpenTelemetry
    // context: nothing here uses the OpenTelemetry API directly.
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(targets)
}

/// Makes `span` continue the trace of an incoming request's W3C
/// `traceparent` header, when there is one (and traces are on).
pub fn continue_remote_trace(span: &Span, headers: &http::HeaderMap) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if headers.get("traceparent").is_none() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests;
