//! A small chat client for the suites that talk to the runtime's pods on the
//! local node: JSON over HTTP, and WebSocket frames (docs/protocol.md), through
//! a tenant's Service (its ClusterIP, which kube-proxy routes from the host).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::frame::coding::CloseCode},
};

use crate::{HarnessError, Result};

/// `http://<ClusterIP>:<port>` of Service `name`'s port `port_name`.
pub async fn service_url(
    client: &Client,
    namespace: &str,
    name: &str,
    port_name: &str,
) -> Result<String> {
    let svc = Api::<Service>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    let spec = svc.spec.unwrap_or_default();
    let ip = spec
        .cluster_ip
        .filter(|ip| !ip.is_empty() && ip != "None")
        .ok_or_else(|| {
            HarnessError::Manifest(format!("Service {namespace}/{name} has no ClusterIP"))
        })?;
    let port = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some(port_name))
        .ok_or_else(|| {
            HarnessError::Manifest(format!(
                "Service {namespace}/{name} has no port {port_name}"
            ))
        })?
        .port;
    Ok(format!("http://{ip}:{port}"))
}

/// [`service_url`], once the Service answers `GET /` with 200: a tenant is
/// Ready when its pods are, and kube-proxy programs the Service's rules a
/// moment later (its sync period is one second).
pub async fn reachable_service_url(
    client: &Client,
    namespace: &str,
    name: &str,
    port_name: &str,
) -> Result<String> {
    let url = service_url(client, namespace, name, port_name).await?;
    crate::wait_for(
        &format!("Service {namespace}/{name} to answer"),
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let (status, _) = request("GET", &format!("{url}/"), None, None).await.ok()?;
                (status == 200).then_some(())
            }
        },
    )
    .await?;
    Ok(url)
}

/// One HTTP/1.1 request with an optional JSON body and bearer token; returns
/// the status and the JSON answer (`null` when the body is not JSON).
pub async fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| HarnessError::Manifest(format!("bad URL {url}: {e}")))?;
    let host = uri.host().unwrap_or("127.0.0.1").to_string();
    let port = uri.port_u16().unwrap_or(80);
    let io_err = |e: std::io::Error| HarnessError::Manifest(format!("{method} {url}: {e}"));
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| HarnessError::Timeout(Duration::from_secs(10), format!("connecting to {url}")))?
    .map_err(io_err)?;
    let http_err = |e: hyper::Error| HarnessError::Manifest(format!("{method} {url}: {e}"));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(http_err)?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", host)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = http_body_util::Full::new(hyper::body::Bytes::from(
        body.map(|b| b.to_string()).unwrap_or_default(),
    ));
    let req = req
        .body(body)
        .map_err(|e| HarnessError::Manifest(format!("{method} {url}: {e}")))?;
    let resp = sender.send_request(req).await.map_err(http_err)?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(http_err)?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Signs `username` up (built-in accounts) and returns the access token.
pub async fn signup(base: &str, username: &str) -> Result<String> {
    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/auth/signup"),
        None,
        Some(json!({"username": username, "password": format!("password-{username}")})),
    )
    .await?;
    body["token"]
        .as_str()
        .filter(|_| status == 200)
        .map(str::to_string)
        .ok_or_else(|| {
            HarnessError::Manifest(format!("signup of {username}: HTTP {status} {body}"))
        })
}

/// Creates a room (`kind`: `public` or `private`) as the holder of `token`
/// and returns its id.
pub async fn create_room(base: &str, token: &str, name: &str, kind: &str) -> Result<i64> {
    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/rooms"),
        Some(token),
        Some(json!({"name": name, "kind": kind})),
    )
    .await?;
    body["room"]["id"]
        .as_i64()
        .filter(|_| status == 200)
        .ok_or_else(|| HarnessError::Manifest(format!("room {name}: HTTP {status} {body}")))
}

/// Joins room `room` as the holder of `token`.
pub async fn join_room(base: &str, token: &str, room: i64) -> Result<()> {
    let (status, body) = request(
        "POST",
        &format!("{base}/api/v1/rooms/{room}/join"),
        Some(token),
        None,
    )
    .await?;
    if status == 200 {
        Ok(())
    } else {
        Err(HarnessError::Manifest(format!(
            "joining room {room}: HTTP {status} {body}"
        )))
    }
}

/// A WebSocket connection to the runtime.
pub struct ChatSocket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `hello` frame: `server` names the pod that serves this socket.
    pub hello: Value,
}

/// How a connection ended, when it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The stream ended or failed without a close frame.
    Dropped,
    /// No frame within the wait; the connection is still open.
    Idle,
}

impl ChatSocket {
    /// Opens `ws://.../ws?access_token=` and reads the `hello` frame.
    pub async fn connect(base: &str, token: &str) -> Result<Self> {
        let url = format!(
            "{}/ws?access_token={token}",
            base.replacen("http://", "ws://", 1)
        );
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| {
            HarnessError::Timeout(Duration::from_secs(10), "the WebSocket upgrade".into())
        })?
        .map_err(|e| HarnessError::Manifest(format!("WebSocket upgrade: {e}")))?;
        let mut socket = Self {
            ws,
            hello: Value::Null,
        };
        let hello = socket
            .next_frame(Duration::from_secs(10))
            .await
            .map_err(|c| HarnessError::Manifest(format!("closed before hello: {c:?}")))?;
        socket.hello = hello;
        Ok(socket)
    }

    /// Closes with a close frame (code 1000) as a browser leaving a page
    /// does; the server counts it as a normal close. Gives up after 2 s.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }

    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: Value) -> Result<()> {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| HarnessError::Manifest(format!("WebSocket send: {e}")))
    }

    /// The next JSON frame (answering pings), or how the connection ended
    /// (`Idle` when nothing arrived within `timeout`).
    pub async fn next_frame(&mut self, timeout: Duration) -> std::result::Result<Value, Closed> {
        loop {
            let msg = match tokio::time::timeout(timeout, self.ws.next()).await {
                Err(_) => return Err(Closed::Idle),
                Ok(None) | Ok(Some(Err(_))) => return Err(Closed::Dropped),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if v["type"] == "ping" {
                        let _ = self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    return Ok(v);
                }
                Message::Close(Some(f)) => return Err(Closed::Code(u16::from(f.code))),
                Message::Close(None) => return Err(Closed::Code(u16::from(CloseCode::Status))),
                _ => continue,
            }
        }
    }

    /// Reads frames until one of `type_` arrives; fails on anything else
    /// ending the connection first.
    pub async fn expect(&mut self, type_: &str, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(v) if v["type"] == type_ => return Ok(v),
                Ok(_) => continue,
                Err(c) => {
                    return Err(HarnessError::Manifest(format!(
                        "waiting for a {type_} frame: connection ended ({c:?})"
                    )));
                }
            }
        }
    }
}
