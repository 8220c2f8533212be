//! Test support: a fresh PostgreSQL database per test (on the server `make
//! test` starts, `CHORUS_TEST_DATABASE_URL`), runtime replicas as real child
//! processes of the built binary, a small HTTP client and a WebSocket client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code

use std::{
    process::Stdio,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

pub const JWT_SECRET: &str = "test-secret-0123456789abcdef0123456789";

pub fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{:x}{:x}{}",
        std::process::id() % 0xfff,
        nanos % 0xfffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn admin_url() -> String {
    std::env::var("CHORUS_TEST_DATABASE_URL")
        .expect("CHORUS_TEST_DATABASE_URL is not set: run the suites with `make test`")
}

/// A fresh, empty database; returns its URL.
pub async fn fresh_db() -> String {
    let admin = admin_url();
    let name = format!("rt_{}", unique());
    let mut conn = PgConnection::connect(&admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let i = admin.rfind('/').unwrap();
    format!("{}/{name}", &admin[..i])
}

/// A runtime replica: the real binary in a child process.
pub struct Replica {
    pub child: Child,
    pub http: String,
    pub ws: String,
    pub admin: String,
    pub name: String,
    /// Every stdout line (JSON logs) so far.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub struct ReplicaOpts<'a> {
    pub tenant: &'a str,
    pub env: Vec<(&'a str, String)>,
}

impl Default for ReplicaOpts<'_> {
    fn default() -> Self {
        Self {
            tenant: "acme",
            env: vec![],
        }
    }
}

impl Replica {
    pub async fn start(db: &str) -> Self {
        Self::start_with(db, ReplicaOpts::default()).await
    }

    pub async fn start_with(db: &str, opts: ReplicaOpts<'_>) -> Self {
        let name = format!("replica-{}", unique());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-runtime"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CHAT_DATABASE_URL", db)
            .env("CHAT_TENANT_ID", opts.tenant)
            .env("CHAT_POD_NAME", &name)
            .env("CHAT_LISTEN_ADDR", "127.0.0.1:0")
            .env("CHAT_ADMIN_ADDR", "127.0.0.1:0")
            .env("CHAT_JWT_SECRET", JWT_SECRET)
            .env("CHAT_DRAIN_SECONDS", "2")
            .env("CHAT_LOG_LEVEL", "info")
            // Every test client comes from 127.0.0.1: the per-address
            // sign-up/login bucket would otherwise limit the suites; tests of
            // the limits set their own.
            .env("CHAT_AUTH_IP_BURST", "100000")
            .env("CHAT_AUTH_IP_PER_MINUTE", "100000");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn chat-runtime");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // The lines before the start, kept too (start-up warnings).
        let mut early = Vec::new();
        let started = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("chat runtime started") {
                    return Some(line);
                }
                early.push(line);
            }
            None
        })
        .await;
        let line = match started {
            Ok(Some(line)) => line,
            _ => {
                let mut err = String::new();
                let mut e = BufReader::new(stderr).lines();
                while let Ok(Ok(Some(l))) =
                    tokio::time::timeout(Duration::from_millis(200), e.next_line()).await
                {
                    err.push_str(&l);
                    err.push('\n');
                }
                panic!("replica did not start; stderr:\n{err}");
            }
        };
        // Keep draining output so the child never blocks on a full pipe.
        early.push(line.clone());
        let logs = std::sync::Arc::new(std::sync::Mutex::new(early));
        let kept = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                kept.lock().unwrap().push(l);
            }
        });
        tokio::spawn(async move {
            let mut e = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = e.next_line().await {
                eprintln!("[replica stderr] {l}");
            }
        });
        let v: Value = serde_json::from_str(&line).unwrap();
        let public = v["public_addr"].as_str().unwrap().to_string();
        let admin = v["admin_addr"].as_str().unwrap().to_string();
        Self {
            child,
            http: format!("http://{public}"),
            ws: format!("ws://{public}/ws"),
            admin: format!("http://{admin}"),
            name,
            logs,
        }
    }

    /// Log lines (parsed JSON) for which `pred` holds.
    pub fn log_lines(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| pred(v))
            .collect()
    }

    /// SIGKILL: the replica vanishes mid-flight.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM: graceful drain.
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, headers, body).
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Bytes>,
) -> (u16, hyper::HeaderMap, Bytes) {
    let uri: hyper::Uri = url.parse().unwrap();
    let host = uri.host().unwrap().to_string();
    let port = uri.port_u16().unwrap();
    let stream = TcpStream::connect((host.as_str(), port)).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", format!("{host}:{port}"));
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let body = Full::new(body.unwrap_or_default());
    let resp = sender.send_request(req.body(body).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes)
}

/// A tiny HTTP client: returns (status, JSON body or null).
pub async fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut headers = Vec::new();
    if let Some(t) = token {
        headers.push(("authorization", format!("Bearer {t}")));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json".to_string()));
    }
    let body = body.map(|b| Bytes::from(b.to_string()));
    let (status, _, bytes) = request(method, url, &headers, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// GET `url` and return the body as text (for `/metrics`).
pub async fn get_text(url: &str) -> String {
    let (_, _, body) = request("GET", url, &[], None).await;
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of an unlabelled metric on a replica's admin listener.
pub async fn metric(admin: &str, name: &str) -> Option<f64> {
    let text = get_text(&format!("{admin}/metrics")).await;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

/// Signs up `name` (password "password-<name>") and returns the token.
pub async fn signup(base: &str, name: &str) -> String {
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/auth/signup"),
        None,
        Some(json!({"username": name, "password": format!("password-{name}")})),
    )
    .await;
    assert_eq!(status, 200, "signup {name}: {body}");
    body["token"].as_str().unwrap().to_string()
}

/// Creates a public room owned by `token`'s user; returns its id.
pub async fn public_room(base: &str, token: &str, name: &str) -> i64 {
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/rooms"),
        Some(token),
        Some(json!({"name": name, "kind": "public"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["room"]["id"].as_i64().unwrap()
}

pub async fn join(base: &str, token: &str, room: i64) {
    let (status, body) = http(
        "POST",
        &format!("{base}/api/v1/rooms/{room}/join"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A replica allowing `rate` messages per second per user, with alice and
/// bob (their tokens) in public room "general".
pub struct TwoInARoom {
    /// The replica.
    pub r: Replica,
    /// Alice's token (she created the room).
    pub alice: String,
    /// Bob's token.
    pub bob: String,
    /// The room.
    pub room: i64,
}

/// Starts [`TwoInARoom`] on database `db`.
pub async fn two_in_a_room(db: &str, rate: u32) -> TwoInARoom {
    let r = Replica::start_with(
        db,
        ReplicaOpts {
            env: vec![("CHAT_MESSAGES_PER_SECOND", rate.to_string())],
            ..Default::default()
        },
    )
    .await;
    let alice = signup(&r.http, "alice").await;
    let bob = signup(&r.http, "bob").await;
    let room = public_room(&r.http, &alice, "general").await;
    join(&r.http, &bob, room).await;
    TwoInARoom {
        r,
        alice,
        bob,
        room,
    }
}

/// A WebSocket client.
pub struct Ws {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Value,
}

pub enum Next {
    Frame(Value),
    Closed(Option<u16>),
    Timeout,
}

impl Ws {
    pub async fn connect(ws_url: &str, token: &str) -> Self {
        Self::try_connect(ws_url, token)
            .await
            .expect("websocket connect")
    }

    pub async fn try_connect(
        ws_url: &str,
        token: &str,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        Self::try_connect_url(&format!("{ws_url}?access_token={token}")).await
    }

    /// Connects to a full URL (query included) and waits for `hello`.
    pub async fn try_connect_url(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut c = Self {
            ws,
            hello: Value::Null,
        };
        match c.next(Duration::from_secs(5)).await {
            Next::Frame(f) if f["type"] == "hello" => c.hello = f,
            _ => panic!("no hello frame"),
        }
        Ok(c)
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON frame (answering server pings), a close, or a timeout.
    pub async fn next(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return Next::Timeout,
                Ok(None) => return Next::Closed(None),
                Ok(Some(Err(_))) => return Next::Closed(None),
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "ping" {
                        let _ = self
                            .ws
                            .send(Message::Text(json!({"type": "pong"}).to_string().into()))
                            .await;
                        continue;
                    }
                    return Next::Frame(v);
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Next::Closed(frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next frame for which `pred` holds (others are skipped).
    pub async fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Next::Frame(f) if pred(&f) => return f,
                Next::Frame(f) => skipped.push(f),
                Next::Closed(code) => {
                    panic!("closed ({code:?}) while waiting for {what}; skipped {skipped:?}")
                }
                Next::Timeout => panic!("timed out waiting for {what}; skipped {skipped:?}"),
            }
        }
    }

    /// Subscribes and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, room: i64, resume: Option<(&str, i64)>) -> Value {
        let mut f = json!({"type": "subscribe", "id": format!("sub-{room}"), "room": room});
        if let Some((epoch, last)) = resume {
            f["epoch"] = json!(epoch);
            f["last_seq"] = json!(last);
        }
        self.send(f).await;
        self.expect("subscribed", Duration::from_secs(10), |f| {
            f["type"] == "subscribed" || f["type"] == "error"
        })
        .await
    }
}
