//! The JSON line format: fixed ids first, then the trace ids of the current
//! span (when traced), then what `tracing-subscriber`'s JSON format writes.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use opentelemetry::trace::TraceContextExt as _;
use tracing::{Dispatch, Event, Subscriber, dispatcher::WeakDispatch};
use tracing_subscriber::{
    Registry,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{Format, Json, Writer},
    },
    registry::LookupSpan,
};

/// A JSON event format: `{"tenant":"acme","pod":"…","trace_id":"…",
/// "span_id":"…","timestamp":…}` — fixed fields, then the current span's
/// trace ids, spliced in after the opening brace.
pub struct JsonLines {
    inner: Format<Json>,
    prefix: String,
    trace_ids: Option<DispatchCell>,
}

/// The dispatcher a [`JsonLines`] layer ends up in, set once the subscriber
/// is built ([`DispatchCell::dispatch`]): while an event is formatted, the
/// thread's default dispatcher is not reachable (tracing refuses re-entry),
/// so the trace ids are read through this one.
#[derive(Clone, Debug, Default)]
pub struct DispatchCell(Arc<OnceLock<WeakDispatch>>);

impl DispatchCell {
    /// Turns `subscriber` into the dispatcher this cell refers to.
    pub fn dispatch(&self, subscriber: impl Into<Dispatch>) -> Dispatch {
        let dispatch = subscriber.into();
        let _ = self.0.set(dispatch.downgrade());
        dispatch
    }

    /// The trace and span ids (32 and 16 hex digits) of the innermost
    /// traced span around the current position, if any.
    fn current_ids(&self) -> Option<(String, String)> {
        let dispatch = self.0.get()?.upgrade()?;
        let current = dispatch.current_span();
        let registry = dispatch.downcast_ref::<Registry>()?;
        let scope: Vec<tracing::span::Id> = {
            use tracing_subscriber::registry::LookupSpan as _;
            registry
                .span(current.id()?)?
                .scope()
                .map(|s| s.id())
                .collect()
        };
        scope.iter().find_map(|id| {
            let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
            let span = cx.span();
            let sc = span.span_context();
            sc.is_valid()
                .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
        })
    }
}

impl JsonLines {
    /// `ids` come first on every line; `span_list` adds the enclosing spans
    /// (`spans`); `trace_ids` (the dispatcher the layer is in) adds
    /// `trace_id` and `span_id` on lines logged inside a traced span.
    pub fn new(ids: &[(&str, &str)], span_list: bool, trace_ids: Option<DispatchCell>) -> Self {
        Self {
            inner: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(span_list),
            prefix: prefix(ids),
            trace_ids,
        }
    }
}

/// `"k":"v",` for each id, JSON-escaped.
pub(crate) fn prefix(ids: &[(&str, &str)]) -> String {
    ids.iter()
        .filter_map(|(k, v)| {
            Some(format!(
                "{}:{},",
                serde_json::to_string(k).ok()?,
                serde_json::to_string(v).ok()?
            ))
        })
        .collect()
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // (No span extension is held here: the ids are read after the
        // inner format released them.)
        let ids = self.trace_ids.as_ref().and_then(DispatchCell::current_ids);
        match line.strip_prefix('{') {
            Some(rest) if !self.prefix.is_empty() || ids.is_some() => {
                writer.write_char('{')?;
                writer.write_str(&self.prefix)?;
                if let Some((trace, span)) = ids {
                    write!(writer, "\"trace_id\":\"{trace}\",\"span_id\":\"{span}\",")?;
                }
                writer.write_str(rest)
            }
            _ => writer.write_str(&line),
        }
    }
}
