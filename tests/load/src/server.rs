//! The runtime under test: started on a fresh database on loopback, stopped
//! at the end; REST helpers and RSS from /proc.

use std::{process::Stdio, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

pub struct Runtime {
    child: Child,
    pub http: String,
    pub ws: String,
    admin: String,
    db: String,
}

impl Runtime {
    pub async fn start(bin: &str, admin_url: &str) -> Result<Self, String> {
        let name = format!("bench_{}", std::process::id());
        let mut conn = PgConnection::connect(admin_url)
            .await
            .map_err(|e| format!("database: {e}"))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\""
        )))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let i = admin_url.rfind('/').ok_or("bad database URL")?;
        let db = format!("{}/{name}", &admin_url[..i]);
        let mut child = Command::new(bin)
            .env("CHAT_DATABASE_URL", &db)
            .env("CHAT_TENANT_ID", "bench")
            .env("CHAT_JWT_SECRET", "bench-secret-0123456789abcdef0123456789")
            .env("CHAT_LISTEN_ADDR", "127.0.0.1:0")
            .env("CHAT_ADMIN_ADDR", "127.0.0.1:0")
            .env("CHAT_MAX_CONNECTIONS", "100000")
            .env("CHAT_MESSAGES_PER_SECOND", "100000")
            .env("CHAT_DB_POOL_SIZE", "32")
            .env("CHAT_LOG_LEVEL", "warn,chat_runtime::server=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains("chat runtime started") {
                    return Some(l);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or("the runtime did not start")?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        let public = v["public_addr"]
            .as_str()
            .ok_or("no public_addr")?
            .to_string();
        let admin = v["admin_addr"].as_str().ok_or("no admin_addr")?.to_string();
        Ok(Self {
            child,
            http: format!("http://{public}"),
            ws: format!("ws://{public}/ws"),
            admin: format!("http://{admin}"),
            db,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Resident set size of the runtime, KiB.
    pub fn rss_kib(&self) -> Result<u64, String> {
        let pid = self.child.id().ok_or("runtime exited")?;
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| "no VmRSS".to_string())
    }

    async fn call(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let host = uri.host().unwrap_or("127.0.0.1").to_string();
        let port = uri.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header("host", format!("{host}:{port}"))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()));
        let resp = sender
            .send_request(req.body(body).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        if !status.is_success() {
            return Err(format!("{method} {url}: {status} {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn signup(&self, name: &str) -> Result<String, String> {
        let v = self
            .call(
                "POST",
                &format!("{}/api/v1/auth/signup", self.http),
                None,
                Some(json!({"username": name, "password": format!("password-{name}")})),
            )
            .await?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "no token".into())
    }

    pub async fn room(&self, token: &str, name: &str) -> Result<i64, String> {
        let v = self
            .call(
                "POST",
                &format!("{}/api/v1/rooms", self.http),
                Some(token),
                Some(json!({"name": name, "kind": "public"})),
            )
            .await?;
        v["room"]["id"].as_i64().ok_or_else(|| "no room id".into())
    }

    pub async fn join(&self, token: &str, room: i64) -> Result<(), String> {
        self.call(
            "POST",
            &format!("{}/api/v1/rooms/{room}/join", self.http),
            Some(token),
            None,
        )
        .await
        .map(|_| ())
    }

    /// A gauge or counter from /metrics.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let v = self
            .call("GET", &format!("{}/metrics", self.admin), None, None)
            .await
            .ok()?;
        let text = v.as_str()?.to_string();
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
    }

    /// Messages stored in the database.
    pub async fn count_messages(&self) -> Result<i64, String> {
        let mut conn = PgConnection::connect(&self.db)
            .await
            .map_err(|e| e.to_string())?;
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(n)
    }

    /// The room's latest seq (what every reader should have reached).
    pub async fn last_seq(&self, room: i64) -> Result<i64, String> {
        let mut conn = PgConnection::connect(&self.db)
            .await
            .map_err(|e| e.to_string())?;
        let (n,): (i64,) = sqlx::query_as("SELECT last_seq FROM rooms WHERE id = $1")
            .bind(room)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(n)
    }
}
