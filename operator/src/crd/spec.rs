//! `ChatTenant.spec`: what a SaaS admin asks for.
//!
//! Every field carries a doc comment (it becomes `kubectl explain` text) and
//! the validation that the apiserver enforces at admission: schema ranges,
//! patterns and enums, plus CEL rules (`x-kubernetes-validations`) for
//! cross-field rules and immutable fields.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    autoscaling::v2::HorizontalPodAutoscalerBehavior,
    core::v1::{EnvVar, ResourceRequirements},
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ChatTenantStatus;

/// What the SaaS admin asks for: the runtime, its database, authentication,
/// limits, exposure, isolation and how releases roll out.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "chorus.dev",
    version = "v1alpha1",
    kind = "ChatTenant",
    namespaced,
    // Boxed: the controller caches a ChatTenant per tenant with no status,
    // and an inline `Option<ChatTenantStatus>` is 1,104 bytes even then.
    status = "Box<ChatTenantStatus>",
    shortname = "ct",
    category = "chorus",
    doc = "A chat tenant: its own PostgreSQL database, chat-runtime pods with autoscaling, network isolation and an endpoint, and blue-green or canary rollouts of new runtime versions.",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.runtime.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Stable", type_ = "string", json_path = ".status.stable.image"),
    printcolumn(name = "Candidate", type_ = "string", json_path = ".status.candidate.image"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".status.traffic.canaryWeight"),
    printcolumn(name = "Step", type_ = "string", json_path = ".status.release.step"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type=='Ready')].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 50").message("metadata.name must be at most 50 characters: child objects append suffixes such as '-default-deny' and must stay valid DNS labels"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, ending with a letter or digit): it names the tenant's Services, which Kubernetes before v1.34 accepts only as DNS-1035 labels"),
    validation = Rule::new("!has(self.spec.rollout) || !has(self.spec.rollout.candidate) || !self.spec.rollout.candidate.image.contains(' ')").message("spec.rollout.candidate.image must be an image reference without spaces"),
)]
#[serde(rename_all = "camelCase")]
pub struct ChatTenantSpec {
    /// Stable identifier of the tenant, written into every token the runtime
    /// issues or accepts. Lowercase letters, digits and '-', at most 32
    /// characters. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.tenantId is immutable"))]
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
    )]
    pub tenant_id: String,

    /// The chat-runtime pods.
    pub runtime: RuntimeSpec,

    /// Horizontal autoscaling. When set, a HorizontalPodAutoscaler targets
    /// this ChatTenant's /scale subresource and owns `spec.runtime.replicas`
    /// (leave that field out of manifests you re-apply). When absent, no HPA
    /// exists and `spec.runtime.replicas` is used as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Box<AutoscalingSpec>>,

    /// The tenant's PostgreSQL database and role.
    pub database: DatabaseSpec,

    /// How the tenant's users authenticate.
    #[serde(default)]
    pub auth: AuthSpec,

    /// Per-replica and per-user limits the runtime enforces.
    #[serde(default)]
    pub limits: LimitsSpec,

    /// The public endpoint. When absent the tenant is reachable only inside
    /// the cluster, at the Service `<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<Box<ExposureSpec>>,

    /// Network isolation. When set, a default-deny NetworkPolicy plus
    /// allow rules for the listed namespaces, DNS and the database are
    /// created. When absent, no NetworkPolicy is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<Box<NetworkPolicySpec>>,

    /// PodDisruptionBudget settings.
    #[serde(default)]
    pub disruption: DisruptionSpec,

    /// How new runtime versions are rolled out.
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// Scheduled backups of the tenant's database (`pg_dump` into a
    /// PersistentVolumeClaim). When absent, no backup CronJob exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Box<super::BackupSpec>>,

    /// When true the operator stops changing anything for this tenant (no
    /// child object, database or status change except the Suspended
    /// condition) until it is set back to false. Deletion still runs.
    #[serde(default)]
    pub suspend: bool,
}

/// The chat-runtime pods of the stable slot.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tracing) || !has(self.env) || self.env.all(e, !e.name.startsWith('OTEL_'))").message("spec.runtime.env: OTEL_* variables are set by the operator from spec.runtime.tracing; remove them, or remove spec.runtime.tracing to set them by hand"))]
pub struct RuntimeSpec {
    /// Container image of the chat runtime, for example
    /// `ghcr.io/chorus-dev/chat-runtime:0.1.0`.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[^\s]+$"))]
    pub image: String,

    /// Desired number of runtime pods. With autoscaling the HPA writes this
    /// field through the /scale subresource.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// CPU and memory requests and limits of the runtime container. Defaults:
    /// requests 100m CPU and 128Mi memory, limit 512Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<ResourceRequirements>>,

    /// Seconds a pod may take to stop. On SIGTERM the runtime turns unready
    /// and closes WebSockets with a reconnect code spread over this period
    /// minus 15 seconds, so clients move without a thundering herd.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 20, max = 86400))]
    pub termination_grace_period_seconds: i64,

    /// Extra environment variables for the runtime container. Names starting
    /// with `CHAT_` are reserved for the operator; names are
    /// `[-._a-zA-Z][-._a-zA-Z0-9]*` (what every supported Kubernetes version
    /// accepts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('CHAT_'))").message("spec.runtime.env: names starting with CHAT_ are set by the operator; rename the variable"))]
    #[x_kube(validation = Rule::new("self.all(e, e.name.matches('^[-._a-zA-Z][-._a-zA-Z0-9]*$'))").message("spec.runtime.env[].name must match [-._a-zA-Z][-._a-zA-Z0-9]* (at most 256 characters)"))]
    #[schemars(length(max = 64), schema_with = "env_schema")]
    pub env: Vec<EnvVar>,

    /// Transport of wake-ups and typing/presence between the runtime's
    /// replicas. Default: PostgreSQL LISTEN/NOTIFY on the tenant's database.
    /// Messages stay durable in PostgreSQL either way (docs/runtime.md,
    /// "Choosing a broker").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<Box<BrokerSpec>>,

    /// OpenTelemetry traces of the runtime pods, exported over OTLP/HTTP
    /// (docs/operations.md, "Tracing"). Off when absent. The operator sets
    /// the pods' `OTEL_*` variables from it, so `spec.runtime.env` must not
    /// set any while it is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Box<TracingSpec>>,
}

/// `spec.runtime.tracing`: where the runtime sends its traces and how many.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// Base URL of an OTLP/HTTP receiver (an OpenTelemetry Collector, Tempo,
    /// Jaeger), for example `http://otel-collector.observability:4318`; the
    /// runtime posts to `<endpoint>/v1/traces`. `http://` or `https://`.
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('http://') || self.startsWith('https://')) && url(self).getHostname() != ''").message("spec.runtime.tracing.endpoint must be an http:// or https:// URL with a host, such as http://otel-collector.observability:4318 (the runtime posts to <endpoint>/v1/traces)"))]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: String,

    /// Share of traces kept, 0 to 1 (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`):
    /// a trace started by the runtime (a WebSocket frame, an HTTP request
    /// without a sampled `traceparent`) is kept with this probability;
    /// one continuing a caller's trace follows the caller's decision.
    /// Default 0.1.
    #[serde(default = "default_sampling_ratio")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("spec.runtime.tracing.samplingRatio must be between 0 and 1 (0.1 keeps one trace in ten)"))]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampling_ratio: f64,

    /// Wire format: `http/protobuf` (default) or `http/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<TracingProtocol>,
}

fn default_sampling_ratio() -> f64 {
    0.1
}

impl TracingSpec {
    /// The endpoint's host (brackets removed from an IPv6 address) and
    /// port (4318 for `http://`, 443 for `https://` when none is given);
    /// `None` unless it is an `http(s)://` URL with a host.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let uri: http::Uri = self.endpoint.parse().ok()?;
        let default = match uri.scheme_str()? {
            "http" => 4318,
            "https" => 443,
            _ => return None,
        };
        let host = uri.host().filter(|h| !h.is_empty())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some((host.to_string(), uri.port_u16().unwrap_or(default)))
    }
}

/// OTLP/HTTP encodings the runtime speaks (not gRPC).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TracingProtocol {
    /// Protobuf over HTTP (`application/x-protobuf`), port 4318 by convention.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// JSON over HTTP (`application/json`).
    #[serde(rename = "http/json")]
    HttpJson,
}

impl TracingProtocol {
    /// The `OTEL_EXPORTER_OTLP_PROTOCOL` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpProtobuf => "http/protobuf",
            Self::HttpJson => "http/json",
        }
    }
}

/// `spec.runtime.broker`: which transport the replicas share.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'Nats' || has(self.nats)").message("spec.runtime.broker.nats (with url) is required when spec.runtime.broker.type is Nats"))]
#[x_kube(validation = Rule::new("self.type == 'Nats' || !has(self.nats)").message("spec.runtime.broker.nats is only read when spec.runtime.broker.type is Nats: set the type or remove it"))]
pub struct BrokerSpec {
    /// `Postgres` (default): LISTEN/NOTIFY on the tenant's database.
    /// `Nats`: NATS core at `nats.url`.
    #[serde(rename = "type", default)]
    pub kind: BrokerType,

    /// NATS settings, required with `type: Nats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsBrokerSpec>,
}

/// The broker's transport.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BrokerType {
    /// PostgreSQL LISTEN/NOTIFY (nothing else to run).
    #[default]
    Postgres,
    /// NATS core (a NATS server or cluster the tenant's pods can reach).
    Nats,
}

/// Where the runtime finds NATS and which subjects it uses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NatsBrokerSpec {
    /// NATS server URL, or a comma-separated list of them, each `nats://`
    /// or `tls://`, for example `nats://nats.nats.svc:4222`.
    #[x_kube(validation = Rule::new("self.matches('^(nats|tls)://[^,\\\\s]+(,\\\\s*(nats|tls)://[^,\\\\s]+)*$')").message("spec.runtime.broker.nats.url must be nats://host:port or tls://host:port (several separated by commas)"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,

    /// Subject prefix: the runtime uses `<prefix>.wakeup` and
    /// `<prefix>.ephemeral`. Default `chorus.<tenantId>`; tenants sharing a
    /// NATS server must use different prefixes. Dot-separated tokens of
    /// letters, digits, `-` and `_` (no wildcards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 200),
        regex(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    )]
    pub subject_prefix: Option<String>,

    /// How the runtime logs in to NATS; omitted: no login (a server
    /// without authorization). The Secret must be in the ChatTenant's
    /// namespace; a missing Secret or key keeps the pods from starting (an
    /// Event on the pod says which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<NatsAuthSpec>,
}

/// `spec.runtime.broker.nats.auth`: exactly one way to log in (source:
/// <https://docs.nats.io/running-a-nats-service/configuration/securing_nats/auth_intro>).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.tokenSecretRef) != has(self.basicAuthSecretRef)").message("spec.runtime.broker.nats.auth needs exactly one of tokenSecretRef and basicAuthSecretRef"))]
pub struct NatsAuthSpec {
    /// A NATS token (nats-server `authorization { token }`) in a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// A Secret of type `kubernetes.io/basic-auth`: keys `username` and
    /// `password` (nats-server `authorization { user, password }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_secret_ref: Option<ServerRef>,
}

/// `spec.runtime.env`: Kubernetes' `EnvVar` list with a bounded name length
/// (at most 256 characters), so the apiserver can bound the cost of the CEL
/// rule that checks every name.
fn env_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<EnvVar>>();
    if let Some(name) = schema
        .get_mut("items")
        .and_then(|items| items.get_mut("properties"))
        .and_then(|props| props.get_mut("name"))
        .and_then(|name| name.as_object_mut())
    {
        name.insert("maxLength".into(), 256.into());
    }
    schema
}

fn default_replicas() -> i32 {
    2
}
fn default_grace() -> i64 {
    120
}

/// Autoscaling of the runtime between `minReplicas` and `maxReplicas`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas"))]
pub struct AutoscalingSpec {
    /// Lowest replica count.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,

    /// Highest replica count.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// Target average CPU utilization, percent of the CPU request.
    #[serde(
        default = "default_cpu_target",
        rename = "targetCPUUtilizationPercentage"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,

    /// Target average memory utilization, percent of the memory request.
    #[serde(default = "default_memory_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_memory_utilization_percentage: i32,

    /// Scale-up and scale-down behaviour. Default: up by 100% every 15 s,
    /// down by 50% every 60 s after a 5-minute stabilization window, select
    /// policy Max. Each field left out (per direction: policies,
    /// selectPolicy, stabilizationWindowSeconds) keeps this default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

fn default_min_replicas() -> i32 {
    2
}
fn default_max_replicas() -> i32 {
    9
}
fn default_cpu_target() -> i32 {
    70
}
fn default_memory_target() -> i32 {
    80
}

/// The tenant's database on a shared PostgreSQL server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.sharedDatabase) || self.isolation == 'Schema'").message("spec.database.sharedDatabase is only read with spec.database.isolation Schema: set the isolation or remove it"))]
#[x_kube(validation = Rule::new("(has(self.sharedDatabase) ? self.sharedDatabase : 'chorus_tenants') == (has(oldSelf.sharedDatabase) ? oldSelf.sharedDatabase : 'chorus_tenants')").message("spec.database.sharedDatabase is immutable: the tenant's schema stays in the database it was created in"))]
pub struct DatabaseSpec {
    /// The PostgreSQL server to provision on. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.database.serverRef is immutable: a tenant cannot move servers"))]
    pub server_ref: ServerRef,

    /// Name of the database, also used as the name of the role that owns it.
    /// Lowercase letters, digits and '_', starting with a letter or '_', at
    /// most 63 characters; `postgres`, `template0`, `template1`, `public`
    /// and names starting with `pg_` are reserved. Must not be used by
    /// another ChatTenant on the same server. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.database.name is immutable"))]
    #[x_kube(validation = Rule::new("!(self in ['postgres', 'template0', 'template1', 'public']) && !self.startsWith('pg_')").message("spec.database.name is reserved by PostgreSQL: choose another name"))]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub name: String,

    /// What happens to the database and role when the ChatTenant is deleted:
    /// `Retain` (default) keeps both; `Delete` terminates open sessions, drops
    /// the database, then the role.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,

    /// Maximum concurrent connections of the tenant's role.
    #[serde(default = "default_connection_limit")]
    #[schemars(range(min = 1, max = 10000))]
    pub connection_limit: i32,

    /// An explicit request to rotate the role's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_rotation: Option<PasswordRotation>,

    /// `Database` (default): the tenant gets a database of its own, owned by
    /// its role. `Schema`: the tenant gets a schema of its own, owned by its
    /// role, in a database shared by the Schema tenants of the server
    /// (`sharedDatabase`); about 8 MB less per tenant, for servers with many
    /// small tenants (docs/operations.md, "Database or schema per tenant").
    /// Immutable: the data does not move.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.database.isolation is immutable: the data would not move between a database and a schema; create a new ChatTenant and restore a backup into it"))]
    pub isolation: DatabaseIsolation,

    /// With `isolation: Schema`, the database the schema is created in,
    /// shared with the other Schema tenants of the server that name it.
    /// Created by the operator when missing, with role `<name>_members`
    /// (the roles that may connect to it). Default `chorus_tenants`. Same
    /// rules as `name`, at most 55 characters. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!(self in ['postgres', 'template0', 'template1', 'public']) && !self.startsWith('pg_')").message("spec.database.sharedDatabase is reserved by PostgreSQL: choose another name"))]
    #[schemars(length(min = 1, max = 55), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub shared_database: Option<String>,
}

/// The shared database of Schema tenants when `sharedDatabase` is not set.
pub const DEFAULT_SHARED_DATABASE: &str = "chorus_tenants";

impl DatabaseSpec {
    /// The shared database of a Schema tenant (`None` with Database
    /// isolation).
    pub fn shared_database(&self) -> Option<&str> {
        match self.isolation {
            DatabaseIsolation::Database => None,
            DatabaseIsolation::Schema => Some(
                self.shared_database
                    .as_deref()
                    .unwrap_or(DEFAULT_SHARED_DATABASE),
            ),
        }
    }
}

/// How a tenant's data is separated from other tenants' on its server.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DatabaseIsolation {
    /// A database per tenant, owned by the tenant's role.
    #[default]
    Database,
    /// A schema per tenant, owned by the tenant's role, in a shared database.
    Schema,
}

fn default_connection_limit() -> i32 {
    50
}

/// Reference to a PostgreSQL server: a Secret in the operator's namespace with
/// the keys `host`, `port`, `username`, `password` and optionally `sslmode`
/// (`disable`, `prefer`, `require`; default `prefer`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerRef {
    /// Name of the Secret holding the server's admin credentials (a DNS-1123
    /// subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// What deletion of the ChatTenant does to its database.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReclaimPolicy {
    /// Keep the database and the role.
    #[default]
    Retain,
    /// Terminate sessions, drop the database, then the role.
    Delete,
}

/// A timestamped request to rotate the database password.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PasswordRotation {
    /// RFC 3339 time of the request, for example `2026-11-24T10:00:00Z`.
    /// Each new value rotates once: the operator sets a new password on the
    /// role and then in Secret `<name>-db`, and records the value in
    /// `status.database.rotationRequestHandled`. Set it to the current time
    /// to rotate again.
    #[schemars(length(min = 20, max = 40), extend("format" = "date-time"))]
    pub requested_at: String,
}

/// How the tenant's users authenticate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'External' || has(self.externalJwt)").message("spec.auth.externalJwt is required when spec.auth.mode is External"))]
pub struct AuthSpec {
    /// `Builtin` (default): the runtime keeps accounts and issues JWTs signed
    /// with a key the operator generates into Secret `<name>-auth`.
    /// `External`: the runtime accepts JWTs the tenant issues.
    #[serde(default)]
    pub mode: AuthMode,

    /// Verification settings for `External` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_jwt: Option<Box<ExternalJwt>>,
}

/// Authentication mode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// Accounts in the runtime; tokens signed with the operator-generated key.
    #[default]
    Builtin,
    /// Tokens issued by the tenant.
    External,
}

/// How the runtime verifies the tenant's own JWTs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretRef) || has(self.jwksUri)").message("spec.auth.externalJwt needs secretRef (HS256 shared secret) or jwksUri (RS256/ES256 keys)"))]
pub struct ExternalJwt {
    /// A key of a Secret in the ChatTenant's namespace holding the HS256
    /// shared secret (at least 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// HTTPS URL of the tenant's JSON Web Key Set (RS256/ES256 keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("spec.auth.externalJwt.jwksUri must be an https:// URL"))]
    #[schemars(length(max = 2048))]
    pub jwks_uri: Option<String>,

    /// Required `iss` claim.
    #[schemars(length(min = 1, max = 512))]
    pub issuer: String,

    /// Required `aud` claim.
    #[schemars(length(min = 1, max = 512))]
    pub audience: String,
}

/// A key in a Secret of the ChatTenant's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name (a DNS-1123 subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key within the Secret (letters, digits, '-', '_' and '.').
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Limits the runtime enforces.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// WebSocket connections one replica accepts; further upgrades get 503.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections_per_replica: i32,

    /// Sustained messages per second one user may send (token bucket).
    #[serde(default = "default_messages_per_second")]
    #[schemars(range(min = 1, max = 1000))]
    pub messages_per_second_per_user: i32,

    /// Largest message body, in bytes.
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 256, max = 1_048_576))]
    pub max_message_bytes: i32,

    /// Days of history kept; 0 keeps everything.
    #[serde(default)]
    #[schemars(range(min = 0, max = 36500))]
    pub history_retention_days: i32,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_connections_per_replica: default_max_connections(),
            messages_per_second_per_user: default_messages_per_second(),
            max_message_bytes: default_max_message_bytes(),
            history_retention_days: 0,
        }
    }
}

fn default_max_connections() -> i32 {
    10_000
}
fn default_messages_per_second() -> i32 {
    10
}
fn default_max_message_bytes() -> i32 {
    16_384
}

/// The public endpoint: an Ingress, or a Gateway API HTTPRoute when a gateway
/// is named.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.ingress) && has(self.gateway))").message("spec.exposure: set either ingress or gateway, not both"))]
pub struct ExposureSpec {
    /// Public host name, for example `acme.chat.example.com`: dot-separated
    /// DNS labels of at most 63 characters, the last starting with a letter
    /// (Ingress and HTTPRoute refuse IP addresses).
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
        )
    )]
    pub host: String,

    /// TLS for the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Ingress settings (used when no gateway is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// Gateway API settings: an HTTPRoute attached to this parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
}

/// TLS settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret (type kubernetes.io/tls) with the certificate, in the
    /// ChatTenant's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: String,
}

/// Ingress settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// IngressClass name; the cluster default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub class_name: Option<String>,

    /// Extra annotations for the Ingress. WebSocket-friendly timeouts for
    /// ingress-nginx are set unless overridden here. Keys are annotation
    /// keys: `[prefix/]name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))").message("spec.exposure.ingress.annotations: keys must be annotation keys ([prefix/]name, name at most 63 characters of letters, digits, '-', '_' and '.')"))]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,
}

/// Gateway API settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The Gateway the HTTPRoute attaches to.
    pub parent_ref: GatewayParentRef,
}

/// A Gateway reference.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParentRef {
    /// Gateway name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Gateway namespace; the ChatTenant's namespace when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
    /// Listener name on the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub section_name: Option<String>,
}

/// Network isolation of the runtime pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Namespaces (for example the ingress controller's or the gateway's)
    /// allowed to reach the chat port 8080. Nothing else may.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub allow_ingress_from: Vec<NamespacePeer>,

    /// Namespaces (for example Prometheus's) allowed to reach the admin port
    /// 9090 (/metrics and health).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allow_metrics_from: Vec<NamespacePeer>,

    /// Extra egress destinations, beyond DNS and the database server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allow_egress_to: Vec<EgressPeer>,
}

/// A namespace, by name.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespacePeer {
    /// Namespace name.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    )]
    pub namespace: String,
}

/// An egress destination.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressPeer {
    /// Destination CIDR, for example `10.0.0.0/16`.
    #[x_kube(validation = Rule::new("isCIDR(self)").message("spec.networkPolicy.allowEgressTo[].cidr must be a CIDR such as 10.0.0.0/16"))]
    #[schemars(length(min = 1, max = 64))]
    pub cidr: String,
    /// TCP ports (1 to 65535); all ports when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 65535)), length(max = 32))]
    pub ports: Vec<i32>,
}

/// PodDisruptionBudget settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionSpec {
    /// Pods of the serving slot that voluntary disruptions (node drains) may
    /// take down at once.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable: i32,
}

impl Default for DisruptionSpec {
    fn default() -> Self {
        Self {
            max_unavailable: default_max_unavailable(),
        }
    }
}

fn default_max_unavailable() -> i32 {
    1
}

/// How new runtime versions are rolled out. A release is in flight while
/// `candidate` is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.canary) || self.strategy == 'Canary'").message("spec.rollout.canary is only valid with strategy Canary"))]
#[x_kube(validation = Rule::new("!has(self.blueGreen) || self.strategy == 'BlueGreen'").message("spec.rollout.blueGreen is only valid with strategy BlueGreen"))]
#[x_kube(validation = Rule::new("has(self.candidate) || !has(self.canary) || !has(self.canary.weight) || self.canary.weight == 0").message("spec.rollout.canary.weight needs spec.rollout.candidate: set the candidate image first"))]
#[x_kube(validation = Rule::new("has(self.analysis) || !has(self.canary) || !has(self.canary.steps) || self.canary.steps.all(s, !has(s.analysis))").message("spec.rollout.canary.steps[].analysis needs spec.rollout.analysis (its thresholds and interval)"))]
pub struct RolloutSpec {
    /// `Canary` (default) shifts traffic by weight; `BlueGreen` runs the
    /// candidate behind the preview Service until promoted.
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// The release in flight: present from the start of a release until it is
    /// promoted (then move the image to `spec.runtime.image`) or aborted.
    /// Each appearance of a candidate (or a change of its image) starts a new
    /// release with its own number and revision (`status.release`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,

    /// Canary settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,

    /// Blue-green settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenSpec>,

    /// Promotes the release whose revision it equals
    /// (`status.candidate.revision`, also `status.release.revision`). Each
    /// release has its own revision, so a value left in Git never acts on a
    /// later release, even one of the same image. With canary steps it
    /// approves the release: indefinite pauses stop waiting, the remaining
    /// steps run, then the candidate is promoted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub promote_revision: String,

    /// Aborts the release whose revision it equals. Before the cut-over it
    /// always wins over `promoteRevision`: all traffic to stable, the
    /// candidate at zero. After the cut-over, while the previous slot still
    /// drains (`drainSeconds`), it rolls back: traffic returns to the previous
    /// slot at once.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 64))]
    pub abort_revision: String,

    /// Seconds the previous slot keeps running after a cut-over, so its
    /// WebSocket clients drain to the new slot; also the rollback window.
    /// Measured from the cut-over with the value in the spec now: lowering it
    /// shortens a drain in progress.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_seconds: i64,

    /// Seconds the candidate may be short of available updated pods (for the
    /// size it is asked to have) without progress before the release aborts
    /// by itself with reason `CandidateUnhealthy`. Each additional available
    /// updated pod counts as progress and restarts the clock.
    #[serde(default = "default_progress_deadline_seconds")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: i64,

    /// A candidate pod whose container restarted more than this many times
    /// aborts the release by itself (reason `CandidateUnhealthy`).
    #[serde(default = "default_max_restarts")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_restarts: i32,

    /// Analysis from the runtime's own metrics: every `intervalSeconds` the
    /// operator scrapes `/metrics` of the candidate's and the stable slot's
    /// pods and judges the candidate over that interval; `failureLimit`
    /// failing intervals in a row abort the release (reason
    /// `AnalysisFailed`), before the cut-over and, after it, within the
    /// rollback window (`drainSeconds`). Without it, nothing is measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Box<AnalysisSpec>>,
}

/// Thresholds of the release analysis (docs/operations.md, "Analysis").
/// Figures are over one interval: the difference of two scrapes of every
/// pod of a slot (counters are cumulative; a restarted pod counts from 0).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.maxAckP99Seconds) || self.maxAckP99Seconds > 0.0").message("spec.rollout.analysis.maxAckP99Seconds must be above 0 (seconds)"))]
#[x_kube(validation = Rule::new("!has(self.maxAckP99Ratio) || self.maxAckP99Ratio >= 1.0").message("spec.rollout.analysis.maxAckP99Ratio must be at least 1 (the candidate's p99 over the stable slot's)"))]
pub struct AnalysisSpec {
    /// Seconds between two judgements (the measuring window).
    #[serde(default = "default_analysis_interval_seconds")]
    #[schemars(range(min = 5, max = 3600))]
    pub interval_seconds: i64,

    /// Largest share of failed events of the candidate in an interval, 0 to
    /// 1: (server-fault send errors + HTTP 5xx + abnormal WebSocket closes)
    /// over (sends + HTTP responses + WebSocket closes).
    #[serde(default = "default_max_error_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_ratio: f64,

    /// Largest p99 of the candidate's send→ack latency, in seconds
    /// (`chat_send_ack_seconds`); checked when it acked at least
    /// `minSamples` sends in the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 60.0))]
    pub max_ack_p99_seconds: Option<f64>,

    /// Largest ratio of the candidate's send→ack p99 to the stable slot's
    /// over the same interval; checked when both acked at least
    /// `minSamples` sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000.0))]
    pub max_ack_p99_ratio: Option<f64>,

    /// Fewest events (sends, HTTP responses, WebSocket closes) of the
    /// candidate in an interval for a judgement; fewer is inconclusive
    /// (neither passes nor fails).
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_samples: i64,

    /// Failing intervals in a row that abort the release.
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_limit: i32,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            interval_seconds: default_analysis_interval_seconds(),
            max_error_ratio: default_max_error_ratio(),
            max_ack_p99_seconds: None,
            max_ack_p99_ratio: None,
            min_samples: default_min_samples(),
            failure_limit: default_failure_limit(),
        }
    }
}

fn default_analysis_interval_seconds() -> i64 {
    30
}
fn default_max_error_ratio() -> f64 {
    0.05
}
fn default_min_samples() -> i64 {
    20
}
fn default_failure_limit() -> i32 {
    2
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            strategy: RolloutStrategy::default(),
            candidate: None,
            canary: None,
            blue_green: None,
            promote_revision: String::new(),
            abort_revision: String::new(),
            drain_seconds: default_drain_seconds(),
            progress_deadline_seconds: default_progress_deadline_seconds(),
            max_restarts: default_max_restarts(),
            analysis: None,
        }
    }
}

fn default_drain_seconds() -> i64 {
    600
}
fn default_progress_deadline_seconds() -> i64 {
    600
}
fn default_max_restarts() -> i32 {
    3
}

/// Rollout strategy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RolloutStrategy {
    /// Shift traffic to the candidate by weight.
    #[default]
    Canary,
    /// Preview the candidate, then cut over at once.
    BlueGreen,
}

/// The release in flight.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// Container image of the candidate runtime.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Changing it starts a new release of the same image (for example to
    /// try again after an abort; `kubectl chorus retry` increments it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub attempt: Option<i64>,
}

/// Canary settings: a fixed `weight`, or `steps` the operator walks through.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.weight) || !has(self.steps) || size(self.steps) == 0").message("spec.rollout.canary: set either weight or steps, not both"))]
pub struct CanarySpec {
    /// Percent of new connections sent to the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<i32>,

    /// Steps of each release, in order. `setWeight` moves traffic and waits
    /// until the candidate's updated pods for that weight are available;
    /// `pause` waits `durationSeconds`, or without it until
    /// `promoteRevision` names the release. After the last step the
    /// candidate is promoted. Changing the list during a release keeps the
    /// current step index (clamped to the new length, so removing the
    /// remaining steps promotes); a timed pause counts from when its step
    /// began, with the duration now in the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub steps: Vec<CanaryStep>,
}

/// One canary step: exactly one of `setWeight` or `pause`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.setWeight) ? 1 : 0) + (has(self.pause) ? 1 : 0) + (has(self.analysis) ? 1 : 0) == 1").message("spec.rollout.canary.steps[]: set exactly one of setWeight, pause or analysis"))]
pub struct CanaryStep {
    /// Percent of new connections sent to the candidate from this step on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub set_weight: Option<i32>,

    /// Wait: `{durationSeconds: N}`, or `{}` to wait for `promoteRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,

    /// Wait for `passes` passing analysis intervals in a row, counted from
    /// this step's start (needs `spec.rollout.analysis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStep>,
}

/// An analysis step.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStep {
    /// Passing intervals in a row needed to go on.
    #[serde(default = "default_analysis_passes")]
    #[schemars(range(min = 1, max = 100))]
    pub passes: i32,
}

fn default_analysis_passes() -> i32 {
    1
}

/// A pause step.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// Seconds to wait; without it the release waits for
    /// `spec.rollout.promoteRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604800))]
    pub duration_seconds: Option<i64>,
}

/// Blue-green settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenSpec {
    /// Candidate replicas behind the preview Service before promotion.
    #[serde(default = "default_preview_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub preview_replicas: i32,
}

fn default_preview_replicas() -> i32 {
    1
}
