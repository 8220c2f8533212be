//! The exporter end to end (spans through the real OTLP/HTTP exporter into
//! the in-process receiver) and the log lines' ids.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use tracing_subscriber::prelude::*;

use super::*;
use crate::receiver::Receiver;

#[test]
fn ids_are_escaped_json_members() {
    assert_eq!(
        format::prefix(&[("tenant", "acme"), ("pod", "p\"1")]),
        r#""tenant":"acme","pod":"p\"1","#
    );
    assert_eq!(format::prefix(&[]), "");
}

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn json(&self) -> Vec<serde_json::Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The two tests below install scoped dispatchers. tracing-core caches each
/// callsite's interest across every live dispatcher, so a callsite first hit
/// while the other test's dispatcher (which enables trace-only spans) is alive
/// can be cached as enabled (CI saw `ws.frame` enabled under the log-only
/// subscriber). Running them one at a time, and checking what the log lines
/// show rather than the cache, keeps each test about its own subscriber. (Services install one global dispatcher, where this cannot
/// happen.)
static SCOPED_DISPATCH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const OPTIONS: Options<'static> = Options {
    level: "info",
    ids: &[("tenant", "acme")],
    service: "test-service",
    crate_target: "chorus_telemetry",
    span_list: false,
    traces: true,
};

#[tokio::test]
async fn spans_reach_the_receiver_and_log_lines_carry_their_ids() {
    let _one_at_a_time = SCOPED_DISPATCH.lock().await;
    let receiver = Receiver::start().await.unwrap();
    let provider = tracer_provider("test-service", Some(&receiver.traces_url())).unwrap();
    let lines = Lines::default();
    let writer = lines.clone();
    let cell = DispatchCell::default();
    let dispatch = cell.dispatch(
        tracing_subscriber::registry()
            .with(log_layer_to(&OPTIONS, Some(cell.clone()), move || {
                writer.clone()
            }))
            .with(trace_layer(&provider, "test-service", "chorus_telemetry")),
    );
    {
        let _default = tracing::dispatcher::set_default(&dispatch);
        let request = tracing::info_span!("request", request_id = "r1");
        let _r = request.enter();
        tracing::info!("in the request");
        // A trace-only span: in the trace, not in the log line's `span`.
        let frame = tracing::info_span!(target: TRACE_TARGET, "ws.frame", frame.type = "send");
        let _f = frame.enter();
        tracing::info!("in the frame");
    }
    Telemetry {
        provider: Some(provider),
    }
    .shutdown(Duration::from_secs(5))
    .await;

    let spans = receiver
        .wait_for(Duration::from_secs(5), |s| s.len() >= 2)
        .await;
    let request = spans
        .iter()
        .find(|s| s.name == "request")
        .expect("request span");
    let frame = spans
        .iter()
        .find(|s| s.name == "ws.frame")
        .expect("frame span");
    assert_eq!(frame.trace_id, request.trace_id);
    assert_eq!(frame.parent_span_id, request.span_id);
    assert_eq!(request.parent_span_id, "");
    assert_eq!(frame.attr("frame.type"), Some("send"));
    assert_eq!(request.attr("request_id"), Some("r1"));
    assert_eq!(
        request.resource.get("service.name").map(String::as_str),
        Some("test-service")
    );

    let logged = lines.json();
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert_eq!(logged[0]["tenant"], "acme");
    assert_eq!(logged[0]["trace_id"], request.trace_id.as_str());
    assert_eq!(logged[0]["span_id"], request.span_id.as_str());
    assert_eq!(logged[0]["span"]["request_id"], "r1");
    // Inside the trace-only span: its ids, but the request's fields.
    assert_eq!(logged[1]["trace_id"], request.trace_id.as_str());
    assert_eq!(logged[1]["span_id"], frame.span_id.as_str());
    assert_eq!(logged[1]["span"]["name"], "request", "{}", logged[1]);
}

#[tokio::test]
async fn without_the_trace_layer_lines_have_no_trace_ids_and_never_name_trace_only_spans() {
    let _one_at_a_time = SCOPED_DISPATCH.lock().await;
    let lines = Lines::default();
    let writer = lines.clone();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(log_layer_to(
        &OPTIONS,
        None,
        move || writer.clone(),
    )));
    let _default = tracing::dispatcher::set_default(&dispatch);
    let request = tracing::info_span!("request", request_id = "r2");
    request.in_scope(|| {
        tracing::info!("hello");
        // Whether the callsite cache enables this span depends on every live
        // dispatcher; what must hold is that no log line ever names it.
        let frame = tracing::info_span!(target: TRACE_TARGET, "ws.frame");
        frame.in_scope(|| tracing::info!("in the frame"));
    });
    let logged = lines.json();
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(logged[1].get("trace_id").is_none(), "{}", logged[1]);
    assert_eq!(logged[1]["span"]["name"], "request", "{}", logged[1]);
    assert!(logged[0].get("trace_id").is_none(), "{}", logged[0]);
    assert_eq!(logged[0]["span"]["request_id"], "r2");
}
