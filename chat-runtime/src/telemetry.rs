//! JSON logs on stdout. Every line carries the tenant and the replica (pod)
//! as top-level fields; lines logged inside a request (and a WebSocket it
//! opened) also carry that request's span (`request_id`, `method`, `path`).

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    prelude::*,
    registry::LookupSpan,
};

/// Installs the global subscriber (idempotent). `ids` are added to every
/// line, first: `[("tenant", "acme"), ("pod", "acme-blue-7d9c")]`.
pub fn init(level: &str, ids: &[(&str, &str)]) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = tracing_subscriber::fmt::format()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .event_format(WithIds {
                    inner: json,
                    prefix: prefix(ids),
                }),
        )
        .try_init();
}

/// `"k":"v",` for each id, JSON-escaped.
fn prefix(ids: &[(&str, &str)]) -> String {
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

/// A JSON event format with fixed fields spliced in after the opening brace.
struct WithIds<F> {
    inner: F,
    prefix: String,
}

impl<S, N, F> FormatEvent<S, N> for WithIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
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
        match line.strip_prefix('{') {
            Some(rest) if !self.prefix.is_empty() => {
                write!(writer, "{{{}{rest}", self.prefix)
            }
            _ => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_escaped_json_members() {
        assert_eq!(
            prefix(&[("tenant", "acme"), ("pod", "p\"1")]),
            r#""tenant":"acme","pod":"p\"1","#
        );
        assert_eq!(prefix(&[]), "");
    }
}
