//! The OTLP/HTTP exporter: `opentelemetry-otlp`'s HTTP transport
//! (`http/protobuf` by default, `http/json` on request; `grpc` is refused)
//! over the service's own hyper client, and the SDK's batch span processor.
//!
//! Why HTTP and this client: gRPC would bring tonic and a second HTTP/2
//! stack; reqwest a second HTTP client. The services already carry hyper,
//! hyper-util and hyper-rustls (ring, webpki roots), so the exporter sends
//! with those. The SDK's batch processor exports from a thread of its own
//! (no async runtime there), so each request is spawned onto the service's
//! Tokio runtime and the processor thread waits for it.

use std::{env, future::Future, pin::Pin, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// Not inside a Tokio runtime.
    #[error("the OTLP exporter needs a Tokio runtime to send from")]
    NoRuntime,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` names a protocol this build
    /// does not speak.
    #[error(
        "OTEL_EXPORTER_OTLP_PROTOCOL: {0:?} is not supported: set http/protobuf (the default, port 4318) or http/json"
    )]
    Protocol(String),
    /// A variable (endpoint, headers, timeout) is unusable.
    #[error("{0} (check the OTEL_EXPORTER_OTLP_* variables)")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The endpoint traces go to, from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (empty means unset). `None` (traces off)
/// when neither is set, when `OTEL_SDK_DISABLED=true`, or when
/// `OTEL_TRACES_EXPORTER=none`.
pub fn configured_endpoint() -> Option<String> {
    let var = |k: &str| env::var(k).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// A tracer provider exporting over OTLP/HTTP protobuf with a batch span
/// processor. `endpoint`, when given, is the full URL of the traces path
/// (`http://collector:4318/v1/traces`) and overrides the variables; the
/// other settings come from the standard variables: protocol, headers and
/// timeout (`OTEL_EXPORTER_OTLP_*`), sampler (`OTEL_TRACES_SAMPLER`,
/// `OTEL_TRACES_SAMPLER_ARG`), resource (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`), batching (`OTEL_BSP_*`). `service` is the
/// `service.name` when the variables name none. Must run inside a Tokio
/// runtime.
pub fn tracer_provider(
    service: &str,
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, OtlpError> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
    // Refused rather than sending HTTP to a gRPC port.
    let protocol = match env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default()
        .trim()
    {
        "" | "http/protobuf" => opentelemetry_otlp::Protocol::HttpBinary,
        "http/json" => opentelemetry_otlp::Protocol::HttpJson,
        other => return Err(OtlpError::Protocol(other.to_string())),
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_http_client(HyperClient::new(handle));
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let exporter = builder.build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(service))
        .build())
}

/// The resource from the variables, with `service.name` = `service` unless
/// they name one.
fn resource(service: &str) -> Resource {
    let named = env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(service.to_string()).build()
    }
}

/// The exporter's HTTP client: hyper-util over hyper-rustls (http and
/// https, webpki roots), each request run on the service's runtime.
#[derive(Debug, Clone)]
pub struct HyperClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl HyperClient {
    /// A client sending on `runtime`; a request (and its answer) takes at
    /// most `OTEL_EXPORTER_OTLP_TIMEOUT` (10 s by default).
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        let timeout = env::var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|_| env::var("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .ok()
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis);
        Self {
            client,
            runtime,
            timeout,
        }
    }
}

/// Answers larger than this are refused (a collector answers a few bytes).
const MAX_ANSWER_BYTES: usize = 1 << 20;

#[async_trait::async_trait]
impl HttpClient for HyperClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, Full::new(body));
        let exchange: Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send>> =
            Box::pin(async move {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                    .collect()
                    .await?
                    .to_bytes();
                Ok(Response::from_parts(parts, body))
            });
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, exchange).await });
        match task.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(format!("no answer within {timeout:?}").into()),
            Err(e) => Err(Box::new(e) as HttpError),
        }
    }
}
