//! Configuration: environment variables with matching flags (docs/runtime.md).
//! Bad or missing values fail at start with one line naming the variable.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The `chat-runtime` command line.
#[derive(Debug, Parser)]
#[command(
    name = "chat-runtime",
    version,
    about = "Chorus chat runtime: real-time chat over WebSocket and HTTP on PostgreSQL"
)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve` when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve (the default).
    Serve(Box<ServeArgs>),
    /// Apply migrations and exit.
    Migrate(MigrateArgs),
}

/// `migrate` settings.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL of the tenant's database.
    #[arg(long, env = "CHAT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Log filter.
    #[arg(long, env = "CHAT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// How users authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Accounts kept by the runtime; tokens signed with CHAT_JWT_SECRET.
    Builtin,
    /// Tokens issued by the tenant.
    External,
}

/// When PostgreSQL answers a commit (its `synchronous_commit`, set on every
/// connection of the pool). Source:
/// <https://www.postgresql.org/docs/current/runtime-config-wal.html#GUC-SYNCHRONOUS-COMMIT>.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SynchronousCommit {
    /// The server's own setting (its default is `on`: a commit returns once
    /// its WAL is flushed to disk, so every acked message survives a crash).
    Server,
    /// A commit returns before its WAL is flushed: several times the send
    /// throughput, but a PostgreSQL crash loses the sends acked in the last
    /// moments (up to three times `wal_writer_delay`, 600 ms by default).
    /// Never corrupts: what survives is a prefix of each room.
    Off,
}

impl SynchronousCommit {
    /// The value to set on each connection; `None` keeps the server's.
    pub fn setting(self) -> Option<&'static str> {
        match self {
            SynchronousCommit::Server => None,
            SynchronousCommit::Off => Some("off"),
        }
    }
}

/// Which transport carries wake-ups and typing/presence between replicas
/// (docs/runtime.md, "Choosing a broker").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BrokerKind {
    /// PostgreSQL LISTEN/NOTIFY on the tenant's database (nothing else to run).
    Postgres,
    /// NATS core at `CHAT_NATS_URL`.
    Nats,
}

/// The validated broker choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// LISTEN/NOTIFY on the tenant's database.
    Postgres,
    /// NATS core.
    Nats {
        /// One server or a comma-separated list (`nats://` or `tls://`).
        url: String,
        /// Subjects are `<prefix>.wakeup` and `<prefix>.ephemeral`.
        subject_prefix: String,
        /// How the replica logs in to NATS.
        auth: NatsAuth,
    },
}

/// How the runtime authenticates to NATS (source:
/// <https://docs.nats.io/running-a-nats-service/configuration/securing_nats/auth_intro>).
/// `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum NatsAuth {
    /// No credentials (a server without authorization).
    #[default]
    None,
    /// A token (`CHAT_NATS_TOKEN`; nats-server `authorization { token }`).
    Token(String),
    /// A user and password (`CHAT_NATS_USER`, `CHAT_NATS_PASSWORD`).
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: <redacted> }}")
            }
        }
    }
}

/// `serve` settings, as read.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// PostgreSQL URL of the tenant's database.
    #[arg(long, env = "CHAT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Tenant id; tokens must carry it (claim `tid`).
    #[arg(long, env = "CHAT_TENANT_ID")]
    pub tenant_id: Option<String>,
    /// Replica name for logs and presence (default: the host name).
    #[arg(long, env = "CHAT_POD_NAME")]
    pub pod_name: Option<String>,
    /// Public listener: REST, WebSocket, web client.
    #[arg(long, env = "CHAT_LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: String,
    /// Admin listener: /livez, /readyz, /startupz, /metrics.
    #[arg(long, env = "CHAT_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: String,
    /// `builtin` or `external`.
    #[arg(long, env = "CHAT_AUTH_MODE", value_enum, default_value = "builtin")]
    pub auth_mode: AuthMode,
    /// HS256 key signing built-in tokens (at least 32 bytes).
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// HS256 shared secret for External tokens.
    #[arg(long, env = "CHAT_EXTERNAL_JWT_SECRET", hide_env_values = true)]
    pub external_jwt_secret: Option<String>,
    /// JWKS URL for External RS256/ES256 tokens.
    #[arg(long, env = "CHAT_EXTERNAL_JWKS_URL")]
    pub external_jwks_url: Option<String>,
    /// JWKS file for External RS256/ES256 tokens.
    #[arg(long, env = "CHAT_EXTERNAL_JWKS_FILE")]
    pub external_jwks_file: Option<PathBuf>,
    /// Required `iss` of External tokens.
    #[arg(long, env = "CHAT_EXTERNAL_ISSUER")]
    pub external_issuer: Option<String>,
    /// Required `aud` of External tokens.
    #[arg(long, env = "CHAT_EXTERNAL_AUDIENCE")]
    pub external_audience: Option<String>,
    /// WebSocket connections this replica accepts.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: u32,
    /// Sustained messages per second per user (burst: 2x).
    #[arg(long, env = "CHAT_MESSAGES_PER_SECOND", default_value_t = 10)]
    pub messages_per_second: u32,
    /// Largest message body in bytes.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = 16_384)]
    pub max_message_bytes: u32,
    /// Days of history kept (0: forever).
    #[arg(long, env = "CHAT_HISTORY_RETENTION_DAYS", default_value_t = 0)]
    pub history_retention_days: u32,
    /// Seconds over which open sockets are closed on SIGTERM.
    #[arg(long, env = "CHAT_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    /// Largest number of events replayed on resume before answering
    /// `recovered: false`.
    #[arg(long, env = "CHAT_RESUME_LIMIT", default_value_t = 1000)]
    pub resume_limit: u32,
    /// Database connections of this replica.
    #[arg(long, env = "CHAT_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    /// `off` acks sends before their commit reaches the disk (see
    /// [`SynchronousCommit`]); `server` keeps PostgreSQL's setting.
    #[arg(
        long,
        env = "CHAT_DATABASE_SYNCHRONOUS_COMMIT",
        value_enum,
        default_value = "server"
    )]
    pub database_synchronous_commit: SynchronousCommit,
    /// Transport between replicas: `postgres` (LISTEN/NOTIFY) or `nats`.
    #[arg(long, env = "CHAT_BROKER", value_enum, default_value = "postgres")]
    pub broker: BrokerKind,
    /// NATS server(s) when `CHAT_BROKER=nats`, e.g. `nats://nats:4222`.
    #[arg(long, env = "CHAT_NATS_URL")]
    pub nats_url: Option<String>,
    /// Subject prefix on NATS (default `chorus.<tenant id>`); tenants
    /// sharing a server need different prefixes.
    #[arg(long, env = "CHAT_NATS_SUBJECT_PREFIX")]
    pub nats_subject_prefix: Option<String>,
    /// Token for NATS (exclusive with `CHAT_NATS_USER`).
    #[arg(long, env = "CHAT_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// User for NATS; needs `CHAT_NATS_PASSWORD`.
    #[arg(long, env = "CHAT_NATS_USER")]
    pub nats_user: Option<String>,
    /// Password of `CHAT_NATS_USER`.
    #[arg(long, env = "CHAT_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Log filter.
    #[arg(long, env = "CHAT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Sign-ups and logins one client address may start in a burst.
    #[arg(long, env = "CHAT_AUTH_IP_BURST", default_value_t = 30)]
    pub auth_ip_burst: u32,
    /// Sign-ups and logins per minute one client address gets back, sustained.
    #[arg(long, env = "CHAT_AUTH_IP_PER_MINUTE", default_value_t = 10)]
    pub auth_ip_per_minute: u32,
    /// Logins (and sign-ups) naming one username in a burst.
    #[arg(long, env = "CHAT_AUTH_USERNAME_BURST", default_value_t = 10)]
    pub auth_username_burst: u32,
    /// Logins (and sign-ups) per minute naming one username, sustained.
    #[arg(long, env = "CHAT_AUTH_USERNAME_PER_MINUTE", default_value_t = 2)]
    pub auth_username_per_minute: u32,
    /// Consecutive failed logins of a username before it is locked out
    /// (0: never).
    #[arg(long, env = "CHAT_LOGIN_LOCKOUT_AFTER", default_value_t = 5)]
    pub login_lockout_after: u32,
    /// First lockout, in seconds; each further failure doubles it.
    #[arg(long, env = "CHAT_LOGIN_LOCKOUT_SECONDS", default_value_t = 30)]
    pub login_lockout_seconds: u64,
    /// Longest lockout, in seconds.
    #[arg(long, env = "CHAT_LOGIN_LOCKOUT_MAX_SECONDS", default_value_t = 900)]
    pub login_lockout_max_seconds: u64,
    /// Proxies whose `X-Forwarded-For` is believed: comma-separated
    /// addresses or CIDR blocks (default: none, the TCP peer is the client).
    #[arg(long, env = "CHAT_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Origins allowed cross-origin REST calls and WebSocket upgrades:
    /// comma-separated, e.g. https://app.example.com (default: none, same
    /// origin only).
    #[arg(long, env = "CHAT_CORS_ORIGINS", default_value = "")]
    pub cors_origins: String,
    /// Lifetime of a WebSocket ticket (`POST /api/v1/ws-ticket`), seconds.
    #[arg(long, env = "CHAT_WS_TICKET_SECONDS", default_value_t = 30)]
    pub ws_ticket_seconds: u64,
}

/// Verified External-auth settings.
#[derive(Clone, Debug)]
pub struct ExternalAuth {
    /// HS256 secret, if any.
    pub hs256_secret: Option<String>,
    /// JWKS location, if any.
    pub jwks: Option<JwksSource>,
    /// Required issuer.
    pub issuer: String,
    /// Required audience.
    pub audience: String,
}

/// Where RS256/ES256 keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// Fetched over HTTPS (refreshed hourly and on unknown `kid`).
    Url(String),
    /// Read once at start.
    File(PathBuf),
}

/// Authentication settings.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Built-in accounts, tokens signed with this key.
    Builtin {
        /// HS256 signing key.
        secret: String,
    },
    /// External tokens.
    External(ExternalAuth),
}

/// Validated configuration of `serve`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Database URL.
    pub database_url: String,
    /// Tenant id.
    pub tenant_id: String,
    /// Replica name.
    pub pod_name: String,
    /// Public listener.
    pub listen_addr: SocketAddr,
    /// Admin listener.
    pub admin_addr: SocketAddr,
    /// Authentication.
    pub auth: Auth,
    /// Limits.
    pub limits: Limits,
    /// Drain window.
    pub drain: Duration,
    /// Resume replay limit.
    pub resume_limit: u32,
    /// Pool size.
    pub db_pool_size: u32,
    /// The connections' `synchronous_commit`.
    pub synchronous_commit: SynchronousCommit,
    /// Sign-up and login limits.
    pub auth_limits: AuthLimits,
    /// Proxies whose `X-Forwarded-For` is believed (empty: none).
    pub trusted_proxies: Vec<IpNet>,
    /// Origins allowed cross-origin (empty: same origin only).
    pub cors_origins: Vec<String>,
    /// Lifetime of a WebSocket ticket.
    pub ws_ticket_ttl: Duration,
    /// Transport between replicas.
    pub broker: Broker,
}

/// Sign-up and login limits (docs/runtime.md, "Sign-up and login limits").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthLimits {
    /// Attempts per client address in a burst.
    pub ip_burst: u32,
    /// Attempts per client address per minute, sustained.
    pub ip_per_minute: u32,
    /// Attempts per username in a burst.
    pub username_burst: u32,
    /// Attempts per username per minute, sustained.
    pub username_per_minute: u32,
    /// Consecutive failures before a lockout (0: never).
    pub lockout_after: u32,
    /// First lockout.
    pub lockout: Duration,
    /// Longest lockout.
    pub lockout_max: Duration,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            ip_burst: 30,
            ip_per_minute: 10,
            username_burst: 10,
            username_per_minute: 2,
            lockout_after: 5,
            lockout: Duration::from_secs(30),
            lockout_max: Duration::from_secs(900),
        }
    }
}

/// An address block: an address and a prefix length (`10.0.0.0/8`,
/// `::1/128`; a bare address is a block of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Self { addr, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let bits = |ip: IpAddr| -> u128 {
            match ip {
                IpAddr::V4(a) => u128::from(u32::from(a)),
                IpAddr::V6(a) => u128::from(a),
            }
        };
        let width: u32 = if self.addr.is_ipv4() { 32 } else { 128 };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        let mask = if shift >= 128 {
            0
        } else {
            (u128::MAX << shift) & (u128::MAX >> (128 - width))
        };
        bits(ip) & mask == bits(self.addr) & mask
    }
}

/// Limits enforced per replica.
#[derive(Clone, Debug)]
pub struct Limits {
    /// WebSocket connections.
    pub max_connections: u32,
    /// Messages per second per user.
    pub messages_per_second: u32,
    /// Body size.
    pub max_message_bytes: u32,
    /// Retention in days (0 = forever).
    pub history_retention_days: u32,
}

/// A configuration problem: one line naming the variable and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    /// The variable (and flag) at fault.
    pub var: &'static str,
    /// What is wrong and what to do.
    pub problem: String,
}

fn missing(var: &'static str, what: &str) -> ConfigError {
    ConfigError {
        var,
        problem: format!("is required: set it to {what}"),
    }
}

fn addr(var: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError {
        var,
        problem: format!("{value:?} is not an address such as 0.0.0.0:8080"),
    })
}

impl ServeArgs {
    /// Validates the arguments into a [`Config`].
    pub fn validate(self) -> Result<Config, ConfigError> {
        let database_url = self
            .database_url
            .filter(|u| !u.is_empty())
            .ok_or_else(|| missing("CHAT_DATABASE_URL", "postgres://user:password@host:5432/db"))?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError {
                var: "CHAT_DATABASE_URL",
                problem: "must start with postgres:// or postgresql://".into(),
            });
        }
        let tenant_id = self
            .tenant_id
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing("CHAT_TENANT_ID", "the tenant's id, e.g. acme"))?;
        if !tenant_id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || tenant_id.len() > 63
        {
            return Err(ConfigError {
                var: "CHAT_TENANT_ID",
                problem: format!("{tenant_id:?} must be a lowercase DNS label (a-z, 0-9, -)"),
            });
        }
        let auth = match self.auth_mode {
            AuthMode::Builtin => {
                let secret = self.jwt_secret.filter(|s| !s.is_empty()).ok_or_else(|| {
                    missing("CHAT_JWT_SECRET", "a random key of at least 32 bytes")
                })?;
                if secret.len() < 32 {
                    return Err(ConfigError {
                        var: "CHAT_JWT_SECRET",
                        problem: format!("is {} bytes; use at least 32 random bytes", secret.len()),
                    });
                }
                Auth::Builtin { secret }
            }
            AuthMode::External => {
                let issuer = self
                    .external_issuer
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        missing("CHAT_EXTERNAL_ISSUER", "the `iss` your tokens carry")
                    })?;
                let audience = self
                    .external_audience
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        missing("CHAT_EXTERNAL_AUDIENCE", "the `aud` your tokens carry")
                    })?;
                let hs256_secret = self.external_jwt_secret.filter(|s| !s.is_empty());
                if let Some(s) = &hs256_secret
                    && s.len() < 32
                {
                    return Err(ConfigError {
                        var: "CHAT_EXTERNAL_JWT_SECRET",
                        problem: format!("is {} bytes; use at least 32 bytes", s.len()),
                    });
                }
                let jwks = match (self.external_jwks_url, self.external_jwks_file) {
                    (Some(_), Some(_)) => {
                        return Err(ConfigError {
                            var: "CHAT_EXTERNAL_JWKS_URL",
                            problem:
                                "set CHAT_EXTERNAL_JWKS_URL or CHAT_EXTERNAL_JWKS_FILE, not both"
                                    .into(),
                        });
                    }
                    (Some(url), None) => {
                        if !url.starts_with("https://")
                            && !url.starts_with("http://127.0.0.1")
                            && !url.starts_with("http://localhost")
                        {
                            return Err(ConfigError {
                                var: "CHAT_EXTERNAL_JWKS_URL",
                                problem: "must be an https:// URL".into(),
                            });
                        }
                        Some(JwksSource::Url(url))
                    }
                    (None, Some(file)) => Some(JwksSource::File(file)),
                    (None, None) => None,
                };
                if hs256_secret.is_none() && jwks.is_none() {
                    return Err(ConfigError {
                        var: "CHAT_EXTERNAL_JWT_SECRET",
                        problem: "External auth needs CHAT_EXTERNAL_JWT_SECRET (HS256) or CHAT_EXTERNAL_JWKS_URL / CHAT_EXTERNAL_JWKS_FILE (RS256/ES256)".into(),
                    });
                }
                Auth::External(ExternalAuth {
                    hs256_secret,
                    jwks,
                    issuer,
                    audience,
                })
            }
        };
        let positive = |var: &'static str, v: u32| {
            if v == 0 {
                Err(ConfigError {
                    var,
                    problem: "must be greater than 0".into(),
                })
            } else {
                Ok(v)
            }
        };
        let limits = Limits {
            max_connections: positive("CHAT_MAX_CONNECTIONS", self.max_connections)?,
            messages_per_second: positive("CHAT_MESSAGES_PER_SECOND", self.messages_per_second)?,
            max_message_bytes: positive("CHAT_MAX_MESSAGE_BYTES", self.max_message_bytes)?,
            history_retention_days: self.history_retention_days,
        };
        let auth_limits = AuthLimits {
            ip_burst: positive("CHAT_AUTH_IP_BURST", self.auth_ip_burst)?,
            ip_per_minute: positive("CHAT_AUTH_IP_PER_MINUTE", self.auth_ip_per_minute)?,
            username_burst: positive("CHAT_AUTH_USERNAME_BURST", self.auth_username_burst)?,
            username_per_minute: positive(
                "CHAT_AUTH_USERNAME_PER_MINUTE",
                self.auth_username_per_minute,
            )?,
            lockout_after: self.login_lockout_after,
            lockout: Duration::from_secs(self.login_lockout_seconds),
            lockout_max: Duration::from_secs(
                self.login_lockout_max_seconds
                    .max(self.login_lockout_seconds),
            ),
        };
        let trusted_proxies = split_list(&self.trusted_proxies)
            .map(|p| {
                IpNet::parse(p).ok_or_else(|| ConfigError {
                    var: "CHAT_TRUSTED_PROXIES",
                    problem: format!("{p:?} is not an address or CIDR block such as 10.0.0.0/8"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cors_origins = split_list(&self.cors_origins)
            .map(|o| {
                let o = o.trim_end_matches('/');
                let ok = (o.starts_with("https://") || o.starts_with("http://"))
                    && o
                        .split_once("://")
                        .is_some_and(|(_, host)| !host.is_empty() && !host.contains('/'))
                    && o.is_ascii()
                    && !o.contains(char::is_whitespace);
                if ok {
                    Ok(o.to_ascii_lowercase())
                } else {
                    Err(ConfigError {
                        var: "CHAT_CORS_ORIGINS",
                        problem: format!(
                            "{o:?} is not an origin such as https://app.example.com (scheme, host, optional port; no path)"
                        ),
                    })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !(1..=300).contains(&self.ws_ticket_seconds) {
            return Err(ConfigError {
                var: "CHAT_WS_TICKET_SECONDS",
                problem: "must be 1 to 300".into(),
            });
        }
        let broker = broker(
            self.broker,
            NatsArgs {
                url: self.nats_url,
                prefix: self.nats_subject_prefix,
                token: self.nats_token,
                user: self.nats_user,
                password: self.nats_password,
            },
            &tenant_id,
        )?;
        Ok(Config {
            broker,
            database_url,
            tenant_id,
            pod_name: self
                .pod_name
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "chat-runtime".into()),
            listen_addr: addr("CHAT_LISTEN_ADDR", &self.listen_addr)?,
            admin_addr: addr("CHAT_ADMIN_ADDR", &self.admin_addr)?,
            auth,
            limits,
            drain: Duration::from_secs(self.drain_seconds),
            resume_limit: positive("CHAT_RESUME_LIMIT", self.resume_limit)?,
            db_pool_size: positive("CHAT_DB_POOL_SIZE", self.db_pool_size)?,
            synchronous_commit: self.database_synchronous_commit,
            auth_limits,
            trusted_proxies,
            cors_origins,
            ws_ticket_ttl: Duration::from_secs(self.ws_ticket_seconds),
        })
    }
}

/// The `CHAT_NATS_*` settings as read (empty values count as unset).
struct NatsArgs {
    url: Option<String>,
    prefix: Option<String>,
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

/// Validates the broker settings. Rules: NATS needs `CHAT_NATS_URL` (each
/// server `nats://` or `tls://`); the NATS settings are refused with
/// `postgres` (a likely typo of the choice); a subject prefix is dot-separated
/// tokens of letters, digits, `-` and `_` (no wildcards `*`/`>`, source:
/// <https://docs.nats.io/nats-concepts/subjects>); a token excludes a user,
/// and a user needs a password.
fn broker(kind: BrokerKind, nats: NatsArgs, tenant_id: &str) -> Result<Broker, ConfigError> {
    let set = |v: Option<String>| v.filter(|x| !x.trim().is_empty());
    let url = set(nats.url);
    let prefix = set(nats.prefix);
    let (token, user, password) = (set(nats.token), set(nats.user), set(nats.password));
    match kind {
        BrokerKind::Postgres => {
            let given = [
                ("CHAT_NATS_URL", url.is_some()),
                ("CHAT_NATS_SUBJECT_PREFIX", prefix.is_some()),
                ("CHAT_NATS_TOKEN", token.is_some()),
                ("CHAT_NATS_USER", user.is_some()),
                ("CHAT_NATS_PASSWORD", password.is_some()),
            ];
            if let Some((var, _)) = given.iter().find(|(_, set)| *set) {
                return Err(ConfigError {
                    var,
                    problem: "is set but CHAT_BROKER is postgres: set CHAT_BROKER=nats or unset it"
                        .into(),
                });
            }
            Ok(Broker::Postgres)
        }
        BrokerKind::Nats => {
            let url = url.ok_or_else(|| {
                missing(
                    "CHAT_NATS_URL",
                    "the NATS server(s) when CHAT_BROKER=nats, e.g. nats://nats:4222",
                )
            })?;
            if let Some(bad) =
                split_list(&url).find(|s| !(s.starts_with("nats://") || s.starts_with("tls://")))
            {
                return Err(ConfigError {
                    var: "CHAT_NATS_URL",
                    problem: format!("{bad:?} must start with nats:// or tls://"),
                });
            }
            let subject_prefix = prefix.unwrap_or_else(|| format!("chorus.{tenant_id}"));
            let token_ok = |t: &str| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            if !subject_prefix.split('.').all(token_ok) {
                return Err(ConfigError {
                    var: "CHAT_NATS_SUBJECT_PREFIX",
                    problem: format!(
                        "{subject_prefix:?} must be dot-separated tokens of letters, digits, - and _ (no wildcards), e.g. chorus.acme"
                    ),
                });
            }
            let auth = match (token, user, password) {
                (None, None, None) => NatsAuth::None,
                (Some(token), None, None) => NatsAuth::Token(token),
                (None, Some(user), Some(password)) => NatsAuth::UserPassword { user, password },
                (Some(_), _, _) => {
                    return Err(ConfigError {
                        var: "CHAT_NATS_TOKEN",
                        problem: "is set together with CHAT_NATS_USER/CHAT_NATS_PASSWORD: use one way to log in".into(),
                    });
                }
                (None, Some(_), None) => {
                    return Err(missing(
                        "CHAT_NATS_PASSWORD",
                        "the password of CHAT_NATS_USER",
                    ));
                }
                (None, None, Some(_)) => {
                    return Err(missing("CHAT_NATS_USER", "the user of CHAT_NATS_PASSWORD"));
                }
            };
            Ok(Broker::Nats {
                url,
                subject_prefix,
                auth,
            })
        }
    }
}

/// The non-empty items of a comma-separated list.
fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["chat-runtime"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().serve
    }

    const OK: [&str; 6] = [
        "--database-url",
        "postgres://u:p@127.0.0.1/db",
        "--tenant-id",
        "acme",
        "--jwt-secret",
        "0123456789abcdef0123456789abcdef",
    ];

    #[test]
    fn a_complete_builtin_config_validates() {
        let c = args(&OK).validate().unwrap();
        assert_eq!(c.tenant_id, "acme");
        assert_eq!(c.listen_addr.port(), 8080);
        assert!(matches!(c.auth, Auth::Builtin { .. }));
    }

    #[test]
    fn the_broker_is_postgres_unless_nats_is_chosen() {
        assert_eq!(args(&OK).validate().unwrap().broker, Broker::Postgres);
        let nats = |extra: &[&str]| {
            let mut argv = OK.to_vec();
            argv.extend_from_slice(extra);
            args(&argv).validate()
        };
        assert_eq!(
            nats(&["--broker", "nats", "--nats-url", "nats://n:4222"])
                .unwrap()
                .broker,
            Broker::Nats {
                url: "nats://n:4222".into(),
                subject_prefix: "chorus.acme".into(),
                auth: NatsAuth::None,
            }
        );
        assert_eq!(
            nats(&[
                "--broker",
                "nats",
                "--nats-url",
                "nats://a:4222, tls://b:4222",
                "--nats-subject-prefix",
                "eu.chat_1"
            ])
            .unwrap()
            .broker,
            Broker::Nats {
                url: "nats://a:4222, tls://b:4222".into(),
                subject_prefix: "eu.chat_1".into(),
                auth: NatsAuth::None,
            }
        );
        let login = |extra: &[&str]| {
            let mut argv = vec!["--broker", "nats", "--nats-url", "nats://n:4222"];
            argv.extend_from_slice(extra);
            match nats(&argv).map(|c| c.broker) {
                Ok(Broker::Nats { auth, .. }) => Ok(auth),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        };
        assert_eq!(
            login(&["--nats-token", "s3cret"]).unwrap(),
            NatsAuth::Token("s3cret".into())
        );
        let user = login(&["--nats-user", "chat", "--nats-password", "pw"]).unwrap();
        assert_eq!(
            user,
            NatsAuth::UserPassword {
                user: "chat".into(),
                password: "pw".into()
            }
        );
        assert!(!format!("{user:?}").contains("pw"), "{user:?}");
        for (extra, var) in [
            (
                &["--nats-token", "t", "--nats-user", "u"][..],
                "CHAT_NATS_TOKEN",
            ),
            (&["--nats-user", "u"][..], "CHAT_NATS_PASSWORD"),
            (&["--nats-password", "p"][..], "CHAT_NATS_USER"),
        ] {
            assert_eq!(login(extra).unwrap_err().var, var, "{extra:?}");
        }
        assert_eq!(
            nats(&["--nats-token", "t"]).unwrap_err().var,
            "CHAT_NATS_TOKEN"
        );
        let cases: [(&[&str], &str, &str); 5] = [
            (&["--broker", "nats"], "CHAT_NATS_URL", "is required"),
            (
                &["--broker", "nats", "--nats-url", "http://n:4222"],
                "CHAT_NATS_URL",
                "must start with nats://",
            ),
            (
                &["--nats-url", "nats://n:4222"],
                "CHAT_NATS_URL",
                "CHAT_BROKER is postgres",
            ),
            (
                &["--nats-subject-prefix", "x"],
                "CHAT_NATS_SUBJECT_PREFIX",
                "CHAT_BROKER is postgres",
            ),
            (
                &[
                    "--broker",
                    "nats",
                    "--nats-url",
                    "nats://n:4222",
                    "--nats-subject-prefix",
                    "chorus.*",
                ],
                "CHAT_NATS_SUBJECT_PREFIX",
                "no wildcards",
            ),
        ];
        for (extra, var, problem) in cases {
            let e = nats(extra).unwrap_err();
            assert_eq!(e.var, var, "{extra:?}");
            assert!(e.problem.contains(problem), "{extra:?}: {e}");
        }
    }

    #[test]
    fn each_problem_names_its_variable() {
        let e = args(&["--tenant-id", "acme"]).validate().unwrap_err();
        assert_eq!(e.var, "CHAT_DATABASE_URL");
        assert!(e.to_string().starts_with("CHAT_DATABASE_URL: is required"));
        let mut short = OK.to_vec();
        short[5] = "short";
        assert_eq!(args(&short).validate().unwrap_err().var, "CHAT_JWT_SECRET");
        let mut bad_tenant = OK.to_vec();
        bad_tenant[3] = "Acme!";
        assert_eq!(
            args(&bad_tenant).validate().unwrap_err().var,
            "CHAT_TENANT_ID"
        );
        let mut bad_addr = OK.to_vec();
        bad_addr.extend(["--listen-addr", "nope"]);
        assert_eq!(
            args(&bad_addr).validate().unwrap_err().var,
            "CHAT_LISTEN_ADDR"
        );
    }

    #[test]
    fn hardening_settings_validate_and_default_to_closed() {
        let c = args(&OK).validate().unwrap();
        assert_eq!(c.auth_limits, AuthLimits::default());
        assert!(c.trusted_proxies.is_empty(), "X-Forwarded-For is off");
        assert!(c.cors_origins.is_empty(), "same origin only");
        assert_eq!(c.ws_ticket_ttl, Duration::from_secs(30));
        let mut more = OK.to_vec();
        more.extend([
            "--trusted-proxies",
            "10.0.0.0/8, 192.168.1.7,::1",
            "--cors-origins",
            "https://App.example.com/,http://localhost:3000",
        ]);
        let c = args(&more).validate().unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
        assert_eq!(
            c.cors_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        for (flag, value, var) in [
            ("--trusted-proxies", "10.0.0.0/33", "CHAT_TRUSTED_PROXIES"),
            ("--trusted-proxies", "proxy.local", "CHAT_TRUSTED_PROXIES"),
            ("--cors-origins", "*", "CHAT_CORS_ORIGINS"),
            (
                "--cors-origins",
                "https://a.example/path",
                "CHAT_CORS_ORIGINS",
            ),
            ("--ws-ticket-seconds", "0", "CHAT_WS_TICKET_SECONDS"),
            ("--auth-ip-burst", "0", "CHAT_AUTH_IP_BURST"),
        ] {
            let mut bad = OK.to_vec();
            bad.extend([flag, value]);
            assert_eq!(
                args(&bad).validate().unwrap_err().var,
                var,
                "{flag} {value}"
            );
        }
    }

    #[test]
    fn address_blocks_contain_what_they_should() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.0.9".parse().unwrap()),
            "v4-mapped"
        );
        let one = IpNet::parse("192.168.1.7").unwrap();
        assert!(one.contains("192.168.1.7".parse().unwrap()));
        assert!(!one.contains("192.168.1.8".parse().unwrap()));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("::/0")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
    }

    #[test]
    fn external_mode_needs_issuer_audience_and_a_key() {
        let base = [
            "--database-url",
            "postgres://u@h/d",
            "--tenant-id",
            "acme",
            "--auth-mode",
            "external",
        ];
        assert_eq!(
            args(&base).validate().unwrap_err().var,
            "CHAT_EXTERNAL_ISSUER"
        );
        let mut with_iss = base.to_vec();
        with_iss.extend(["--external-issuer", "i", "--external-audience", "a"]);
        assert_eq!(
            args(&with_iss).validate().unwrap_err().var,
            "CHAT_EXTERNAL_JWT_SECRET"
        );
        let mut ok = with_iss.clone();
        ok.extend(["--external-jwks-url", "https://id.example/jwks.json"]);
        assert!(matches!(
            args(&ok).validate().unwrap().auth,
            Auth::External(_)
        ));
        let mut insecure = with_iss;
        insecure.extend(["--external-jwks-url", "http://id.example/jwks.json"]);
        assert_eq!(
            args(&insecure).validate().unwrap_err().var,
            "CHAT_EXTERNAL_JWKS_URL"
        );
    }
}
