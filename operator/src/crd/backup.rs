//! `spec.backup` and `status.backup`: scheduled logical backups of the
//! tenant's database (`pg_dump --format=custom` into a PersistentVolumeClaim,
//! run by a CronJob `<name>` with the tenant's own credentials).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Image of the backup Job when `spec.backup.image` is not set: PostgreSQL
/// 15 client binaries (`pg_dump`, `pg_restore`, `psql`), busybox and the
/// `chorus-backup` script (`backup/`).
pub const DEFAULT_BACKUP_IMAGE: &str = "ghcr.io/chorus-dev/chorus-backup:0.1.0";

/// Scheduled backups of the tenant's database. When set, the operator owns
/// a CronJob `<name>` whose Jobs run `pg_dump --format=custom` as the
/// tenant's role (credentials from Secret `<name>-db`, never the server's
/// admin), write `<name>-<UTC timestamp>.dump` into the destination, then
/// delete this tenant's dumps beyond `retention`. Removing the field deletes
/// the CronJob; the dumps stay.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to back up: a cron schedule of 5 fields (minute, hour,
    /// day-of-month, month, day-of-week), for example `0 3 * * *`, or one of
    /// `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. Times are in
    /// the kube-controller-manager's time zone unless `timeZone` is set.
    #[x_kube(validation = Rule::new("self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[-0-9A-Za-z*/,?]+( +[-0-9A-Za-z*/,?]+){4})$')").message("spec.backup.schedule must be a cron schedule of 5 fields (minute hour day-of-month month day-of-week) such as '0 3 * * *', or one of @hourly, @daily, @weekly, @monthly, @yearly"))]
    #[schemars(length(min = 1, max = 100))]
    pub schedule: String,

    /// IANA time zone of `schedule`, for example `Europe/Paris` (the
    /// CronJob's `timeZone`). Default: the kube-controller-manager's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_+\-/]+$"))]
    pub time_zone: Option<String>,

    /// How many dumps of this tenant to keep.
    pub retention: BackupRetention,

    /// Where the dumps go.
    pub destination: BackupDestination,

    /// Image of the backup Job: PostgreSQL client binaries at least as new
    /// as the server, and the `chorus-backup` entrypoint. Default
    /// `ghcr.io/chorus-dev/chorus-backup:0.1.0` (PostgreSQL 15 clients).
    #[serde(default = "default_backup_image")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[^\s]+$"))]
    pub image: String,

    /// Seconds a backup Job may run (pending included) before Kubernetes
    /// fails it. Default 3600.
    #[serde(default = "default_deadline")]
    #[schemars(range(min = 60, max = 86400))]
    pub active_deadline_seconds: i64,
}

fn default_backup_image() -> String {
    DEFAULT_BACKUP_IMAGE.into()
}

fn default_deadline() -> i64 {
    3600
}

/// Which dumps are kept after a successful backup: the newest `count`, or
/// those younger than `days`. Exactly one is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.count) != has(self.days)").message("spec.backup.retention: set exactly one of count (newest dumps kept) or days (age in days after which a dump is deleted)"))]
pub struct BackupRetention {
    /// Keep the newest `count` dumps of this tenant (the one just written
    /// included) and delete older ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub count: Option<i32>,

    /// Delete this tenant's dumps whose file is more than `days` days old
    /// (24-hour periods; the dump just written is always kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub days: Option<i32>,
}

/// Where the dumps are written. Only a PersistentVolumeClaim is supported
/// (S3-compatible buckets are not).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupDestination {
    /// A PersistentVolumeClaim in the tenant's namespace, mounted at
    /// `/backups`. It must exist and be writable by user 65532 (the Job
    /// sets `fsGroup: 65532`); several tenants may share one claim, since
    /// each only touches files named `<its name>-<timestamp>.dump`.
    pub persistent_volume_claim: ClaimDestination,
}

/// A PersistentVolumeClaim by name.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimDestination {
    /// Name of the claim (a DNS-1123 subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub claim_name: String,
}

/// What the backup Jobs did, read from the Jobs' status (written by the
/// Job controller) and from the termination message of their pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// RFC 3339 completion time of the last successful backup Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<String>,
    /// Size in bytes of the dump it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_size_bytes: Option<i64>,
    /// File name of that dump, relative to the claim's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_file: Option<String>,
    /// RFC 3339 time the last failed backup Job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
    /// What went wrong last, or what the last backup wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
