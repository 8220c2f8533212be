//! The server under test: the Chorus runtime, started on a fresh database
//! on loopback, or Centrifugo (memory engine, history on) for the side-by-side
//! figures; stopped at the end. Accounts, rooms and sequence numbers through
//! each one's API; RSS from /proc.

use std::{process::Stdio, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::client::Proto;

/// Shared secret of the tokens both servers check (HS256).
const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
/// Centrifugo's server API key.
const API_KEY: &str = "bench-api-key";

pub struct Runtime {
    child: Child,
    pub proto: Proto,
    pub http: String,
    pub ws: String,
    admin: String,
    db: String,
    /// The admin URL the database was created with (dropped at `stop`).
    admin_url: Option<String>,
    rooms: std::sync::atomic::AtomicI64,
    _dir: Option<TempDir>,
}

/// A directory removed on drop (Centrifugo's config file).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Runtime {
    /// Starts Centrifugo `bin` on a free loopback port: memory engine,
    /// namespace `chat` with history (1,000 per channel, 300 s) and forced
    /// recovery, clients may subscribe and publish, tokens HS256 with
    /// [`SECRET`].
    pub async fn start_centrifugo(bin: &str) -> Result<Self, String> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("chat-load-centrifugo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let dir = TempDir(dir);
        let config = json!({
            "http_server": {"address": "127.0.0.1", "port": port},
            "log": {"level": "warn"},
            "engine": {"type": "memory"},
            "usage_stats": {"disabled": true},
            "health": {"enabled": true},
            "http_api": {"key": API_KEY},
            "client": {"token": {"hmac_secret_key": SECRET}, "allowed_origins": ["http://127.0.0.1"]},
            "channel": {"namespaces": [{
                "name": "chat", "history_size": 1000, "history_ttl": "300s", "force_recovery": true,
                "allow_subscribe_for_client": true, "allow_publish_for_client": true
            }]}
        });
        let file = dir.0.join("config.json");
        std::fs::write(&file, config.to_string()).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let rt = Self {
            child,
            proto: Proto::Centrifugo,
            http: format!("http://127.0.0.1:{port}"),
            ws: format!("ws://127.0.0.1:{port}/connection/websocket"),
            admin: String::new(),
            admin_url: None,
            db: String::new(),
            rooms: Default::default(),
            _dir: Some(dir),
        };
        for _ in 0..300 {
            if rt
                .call("GET", &format!("{}/health", rt.http), None, None)
                .await
                .is_ok()
            {
                return Ok(rt);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("Centrifugo did not start".into())
    }

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
            .env("CHAT_JWT_SECRET", SECRET)
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
        // The new database's files (a copy of the template) and the last
        // scenario's writes reach the disk now, not in the timed checkpoint
        // that would otherwise sync them in the middle of a measurement
        // (one such checkpoint in the server log: 31,887 files, 8.2 s of
        // sync, while WAL flushes of acked sends waited behind it).
        sqlx::raw_sql("CHECKPOINT")
            .execute(&mut conn)
            .await
            .map_err(|e| {
                format!("CHECKPOINT (the bench's database URL must be a superuser's): {e}")
            })?;
        Ok(Self {
            child,
            proto: Proto::Chorus,
            http: format!("http://{public}"),
            ws: format!("ws://{public}/ws"),
            admin: format!("http://{admin}"),
            db,
            admin_url: Some(admin_url.to_string()),
            rooms: Default::default(),
            _dir: None,
        })
    }

    /// Stops the server; a runtime's database is dropped (a benchmark's
    /// gigabytes are not kept).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let (Some(admin_url), Some(i)) = (&self.admin_url, self.db.rfind('/')) else {
            return;
        };
        let name = &self.db[i + 1..];
        if let Ok(mut conn) = PgConnection::connect(admin_url).await
            && let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
        {
            eprintln!("could not drop the bench database {name}: {e}");
        }
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
            req = req.header("authorization", t);
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

    /// A user's token: a Chorus account signed up over REST, or a
    /// Centrifugo token for subject `name`.
    pub async fn signup(&self, name: &str) -> Result<String, String> {
        if self.proto == Proto::Centrifugo {
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs()
                + 3600;
            return jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &json!({"sub": name, "exp": exp}),
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .map_err(|e| e.to_string());
        }
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

    /// A new public room (Centrifugo: a new channel number).
    pub async fn room(&self, token: &str, name: &str) -> Result<i64, String> {
        if self.proto == Proto::Centrifugo {
            return Ok(self
                .rooms
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1);
        }
        let v = self
            .call(
                "POST",
                &format!("{}/api/v1/rooms", self.http),
                Some(&format!("Bearer {token}")),
                Some(json!({"name": name, "kind": "public"})),
            )
            .await?;
        v["room"]["id"].as_i64().ok_or_else(|| "no room id".into())
    }

    /// Joins a room (Centrifugo: nothing to join).
    pub async fn join(&self, token: &str, room: i64) -> Result<(), String> {
        if self.proto == Proto::Centrifugo {
            return Ok(());
        }
        self.call(
            "POST",
            &format!("{}/api/v1/rooms/{room}/join", self.http),
            Some(&format!("Bearer {token}")),
            None,
        )
        .await
        .map(|_| ())
    }

    /// A gauge or counter from /metrics.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        if self.proto == Proto::Centrifugo {
            return None;
        }
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
        if self.proto == Proto::Centrifugo {
            // The channel's stream top, from the server API.
            let v = self
                .call(
                    "POST",
                    &format!("{}/api/history", self.http),
                    Some(&format!("apikey {API_KEY}")),
                    Some(json!({"channel": format!("chat:{room}"), "limit": 0})),
                )
                .await?;
            return Ok(v["result"]["offset"].as_i64().unwrap_or(0));
        }
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
