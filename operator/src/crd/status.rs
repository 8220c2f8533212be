//! `ChatTenant.status`: what the operator observed and did.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a ChatTenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChatTenantStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Conditions: Ready (summary), DatabaseReady, Available, Progressing,
    /// Degraded, Suspended and (with `spec.backup`) BackupHealthy, following
    /// Kubernetes conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Where tenants connect: `https://<host>` (or `http://` without TLS), or
    /// the in-cluster Service URL when there is no public exposure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// Replicas of the serving slot (read by the /scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Label selector of the serving pods (read by the /scale subresource and
    /// the HorizontalPodAutoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// The slot serving stable traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<SlotStatus>,

    /// The slot running the release in flight, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<SlotStatus>,

    /// The previous stable slot, kept running after a cut-over so its
    /// WebSocket clients move over gradually.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<DrainStatus>,

    /// The current (or last) release: its number and revision, where it
    /// stands, its step and timers. The operator's only memory of a release:
    /// a restarted operator continues from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseStatus>,

    /// The last judgement of the release analysis
    /// (`spec.rollout.analysis`) and the run of passes or failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,

    /// How traffic is split between the slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficStatus>,

    /// The tenant's database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,

    /// The last backups, when `spec.backup` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<super::BackupStatus>,
}

/// One of the two runtime slots.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlotStatus {
    /// Short hash identifying the runtime version (image) in this slot.
    pub revision: String,
    /// Container image.
    pub image: String,
    /// `blue` or `green`.
    pub slot: String,
    /// Desired replicas of the slot's Deployment.
    pub replicas: i32,
    /// Available replicas reported by the slot's Deployment.
    #[serde(default)]
    pub available_replicas: i32,
}

/// Traffic split.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficStatus {
    /// Percent of traffic sent to the candidate.
    pub canary_weight: i32,
    /// Percent of traffic sent to the stable slot.
    pub stable_weight: i32,
    /// How the split is enforced: `GatewayAPI` (exact HTTPRoute weights),
    /// `ReplicaRatio` (rounded to whole pods) or `None` (no release).
    pub provider: String,
}

/// The tenant's database.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// Database name (with Schema isolation: the shared database).
    pub name: String,
    /// Role that owns the database (or the schema).
    pub role: String,
    /// The tenant's schema in the shared database (Schema isolation only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Secret with the connection details (`username`, `password`, `host`,
    /// `port`, `dbname`, `uri`; `schema` with Schema isolation).
    pub secret_name: String,
    /// RFC 3339 time the password was last set by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_changed_at: Option<String>,
    /// The last `spec.database.passwordRotation.requestedAt` acted on; a
    /// different value requests another rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_request_handled: Option<String>,
}

/// A slot kept running after a cut-over.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    /// `blue` or `green`.
    pub slot: String,
    /// Image it runs.
    pub image: String,
    /// Replicas it keeps until `until`.
    pub replicas: i32,
    /// RFC 3339 time of the cut-over that started the drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// RFC 3339 time after which it is scaled to zero: `since` plus the
    /// current `spec.rollout.drainSeconds`.
    pub until: String,
}

/// Where a release stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReleaseState {
    /// The candidate runs (canary steps, weight or preview).
    #[default]
    Progressing,
    /// Promotion started: the candidate scales to full size before the
    /// cut-over.
    Promoting,
    /// The candidate became stable (cut-over done).
    Promoted,
    /// Aborted by `abortRevision`, by the operator (`CandidateUnhealthy`) or
    /// rolled back after the cut-over (`RolledBack`).
    Aborted,
}

/// One release: `spec.rollout.candidate` from its appearance until it is
/// removed or replaced.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStatus {
    /// Release number on this tenant, counting from 1.
    pub number: i64,
    /// Identity of this release: what `promoteRevision` and `abortRevision`
    /// must equal. Derived from the candidate image and the release number,
    /// so a later release of the same image has another revision.
    pub revision: String,
    /// Candidate image.
    pub image: String,
    /// `spec.rollout.candidate.attempt` of this release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i64>,
    /// RFC 3339 time the release started.
    pub started_at: String,
    /// Where it stands.
    pub state: ReleaseState,
    /// CamelCase reason of the last state change (`AbortRequested`,
    /// `CandidateUnhealthy`, `RolledBack`, `PromoteRequested`, `StepsDone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, with figures (for an automatic abort: the pods and
    /// the cause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Index of the current canary step (0-based); equal to the number of
    /// steps once they are done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<i32>,
    /// The step for people: `2/4` (1-based), `done` after the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// RFC 3339 time the current step began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<String>,
    /// RFC 3339 time a timed pause ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_until: Option<String>,
    /// RFC 3339 time since which the candidate has been short of available
    /// updated pods without progress; the release aborts at this plus
    /// `progressDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_since: Option<String>,
    /// Available updated candidate pods when `unavailableSince` was set; one
    /// more restarts the clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_at_progress: Option<i32>,
    /// RFC 3339 time of the cut-over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_over_at: Option<String>,
    /// RFC 3339 time the candidate left the spec (or was replaced); a
    /// closed release never acts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
}

/// One judgement of the release analysis (docs/operations.md, "Analysis").
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// `status.release.number` it belongs to.
    pub release: i64,
    /// `Pass`, `Fail` or `Inconclusive` (too few events, nothing scraped),
    /// or `Pending` before the first interval ends.
    pub phase: String,
    /// What was measured and against which threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Failed events over events of the candidate, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ratio: Option<f64>,
    /// p99 of the candidate's send→ack latency in seconds (from the
    /// `chat_send_ack_seconds` buckets; absent without acked sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_p99_seconds: Option<f64>,
    /// The same p99 of the stable slot over the same interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_ack_p99_seconds: Option<f64>,
    /// Events of the candidate in the interval (sends, HTTP responses,
    /// WebSocket closes).
    #[serde(default)]
    pub samples: i64,
    /// RFC 3339 time of the judgement.
    pub at: String,
    /// Failing intervals in a row.
    #[serde(default)]
    pub consecutive_failures: i32,
    /// Passing intervals in a row (reset when an analysis step begins).
    #[serde(default)]
    pub consecutive_passes: i32,
}
