//! CronJob `<name>` when `spec.backup` is set: each Job runs the backup
//! image's `chorus-backup` script (`backup/chorus-backup`), which runs
//! `pg_dump --format=custom` as the tenant's own role (the `uri` key of
//! Secret `<name>-db`; never the server's admin credentials; with Schema
//! isolation `--schema=<name>`, from `BACKUP_SCHEMA`), writes
//! `<name>-<UTC timestamp>.dump` into the claim mounted at `/backups`,
//! deletes this tenant's dumps beyond the retention, and reports
//! `{"file","sizeBytes","deleted"}` as the container's termination message.
//!
//! Jobs and pods carry [`BACKUP_OF_LABEL`] (not the tenant label: the
//! runtime's Services, PDB and `status.selector` select on that one, and a
//! backup pod must never count as a runtime pod).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec},
        core::v1::{
            Capabilities, Container, EnvVar, EnvVarSource, PersistentVolumeClaimVolumeSource,
            PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
            SecretKeySelector, SecurityContext, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};

use super::meta::child_meta;
use crate::{
    crd::BackupSpec,
    model::Tenant,
    names::{
        DB_SECRET_URI_KEY, MANAGED_BY, MANAGED_BY_LABEL, db_secret_name, labels, selector_string,
    },
};

/// Label on backup Jobs and their pods naming the ChatTenant they back up.
pub const BACKUP_OF_LABEL: &str = "chorus.dev/backup-of";
/// Name of the backup container (its termination message is the result).
pub const BACKUP_CONTAINER: &str = "backup";
/// Where the claim is mounted in the backup container.
pub const BACKUP_MOUNT: &str = "/backups";
/// User (and group) the backup container runs as: the image's `nonroot`.
pub const BACKUP_UID: i64 = 65532;

/// Labels of a tenant's backup Jobs and pods.
pub fn backup_job_labels(t: &Tenant) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "chorus-backup"),
        ("app.kubernetes.io/instance", t.name.as_str()),
        ("app.kubernetes.io/component", "backup"),
        ("app.kubernetes.io/part-of", "chorus"),
        (MANAGED_BY_LABEL, MANAGED_BY),
        (BACKUP_OF_LABEL, t.name.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `chorus.dev/backup-of=<name>,app.kubernetes.io/managed-by=chorus-operator`:
/// the label query for a tenant's backup Jobs and pods.
pub fn backup_job_selector(t: &Tenant) -> String {
    let l = backup_job_labels(t);
    selector_string(
        &l.into_iter()
            .filter(|(k, _)| k == BACKUP_OF_LABEL || k == MANAGED_BY_LABEL)
            .collect(),
    )
}

/// The backup CronJob, when `spec.backup` asks for one.
pub fn build_backup(t: &Tenant) -> Option<CronJob> {
    let b = t.spec.backup.as_ref()?;
    let job_labels = backup_job_labels(t);
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(BACKUP_UID),
            run_as_group: Some(BACKUP_UID),
            // Most volume plugins make the claim group-writable for this
            // group; hostPath volumes do not (see docs/operations.md).
            fs_group: Some(BACKUP_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container(t, b)],
        volumes: Some(vec![Volume {
            name: "backups".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: b.destination.persistent_volume_claim.claim_name.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    let job_meta = ObjectMeta {
        labels: Some(job_labels.clone()),
        ..ObjectMeta::default()
    };
    Some(CronJob {
        metadata: child_meta(t, t.name.clone(), labels(t)),
        spec: CronJobSpec {
            schedule: b.schedule.clone(),
            time_zone: b.time_zone.clone(),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(300),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            suspend: Some(false),
            job_template: JobTemplateSpec {
                metadata: Some(job_meta),
                spec: Some(JobSpec {
                    backoff_limit: Some(1),
                    active_deadline_seconds: Some(b.active_deadline_seconds),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(job_labels),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(pod),
                    },
                    ..JobSpec::default()
                }),
            },
        },
        status: None,
    })
}

fn container(t: &Tenant, b: &BackupSpec) -> Container {
    let env = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    let mut vars = vec![
        EnvVar {
            name: "DATABASE_URL".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: db_secret_name(t),
                    key: DB_SECRET_URI_KEY.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
        env("BACKUP_PREFIX", t.name.clone()),
        env("BACKUP_DIR", BACKUP_MOUNT.into()),
    ];
    // Schema isolation: only the tenant's schema of the shared database
    // (its role may read nothing else there).
    if let Some(schema) = t.database.schema() {
        vars.push(env("BACKUP_SCHEMA", schema.to_string()));
    }
    if let Some(count) = b.retention.count {
        vars.push(env("KEEP_COUNT", count.to_string()));
    } else if let Some(days) = b.retention.days {
        vars.push(env("KEEP_DAYS", days.to_string()));
    }
    let q = |s: &str| Quantity(s.into());
    Container {
        name: BACKUP_CONTAINER.into(),
        image: Some(b.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        env: Some(vars),
        volume_mounts: Some(vec![VolumeMount {
            name: "backups".into(),
            mount_path: BACKUP_MOUNT.into(),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        resources: Some(ResourceRequirements {
            requests: Some([("cpu".into(), q("10m")), ("memory".into(), q("32Mi"))].into()),
            limits: Some([("memory".into(), q("256Mi"))].into()),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

    fn with_backup(retention: serde_json::Value) -> Tenant {
        tenant_and_plan(|ct| {
            ct.spec.backup = Some(
                serde_json::from_value(serde_json::json!({
                    "schedule": "*/5 * * * *",
                    "retention": retention,
                    "destination": {"persistentVolumeClaim": {"claimName": "backups"}},
                }))
                .unwrap(),
            );
        })
        .0
    }

    fn pod(cj: &CronJob) -> PodSpec {
        cj.spec
            .clone()
            .job_template
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    fn env_of(c: &Container) -> BTreeMap<String, String> {
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| {
                let v = e.value.unwrap_or_else(|| {
                    let r = e.value_from.unwrap().secret_key_ref.unwrap();
                    format!("secret:{}/{}", r.name, r.key)
                });
                (e.name, v)
            })
            .collect()
    }

    #[test]
    fn no_backup_spec_no_cronjob() {
        let (t, _) = tenant_and_plan(|_| {});
        assert!(build_backup(&t).is_none());
    }

    #[test]
    fn the_job_dumps_with_the_tenants_own_credentials_into_the_claim() {
        let t = with_backup(serde_json::json!({"count": 7}));
        let cj = build_backup(&t).unwrap();
        assert_eq!(cj.metadata.name.as_deref(), Some("acme"));
        let spec = cj.spec.clone();
        assert_eq!(spec.schedule, "*/5 * * * *");
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        let p = pod(&cj);
        let c = &p.containers[0];
        assert_eq!(c.name, BACKUP_CONTAINER);
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/chorus-dev/chorus-backup:0.1.0")
        );
        let env = env_of(c);
        // The tenant's role (the uri of <name>-db), never the server Secret.
        assert_eq!(env["DATABASE_URL"], "secret:acme-db/uri");
        assert_eq!(env["BACKUP_PREFIX"], "acme");
        assert_eq!(env["BACKUP_DIR"], "/backups");
        assert_eq!(env["KEEP_COUNT"], "7");
        assert!(!env.contains_key("KEEP_DAYS"));
        assert!(!env.contains_key("BACKUP_SCHEMA"));
        let vol = &p.volumes.unwrap()[0];
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            "backups"
        );
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        assert_eq!(p.security_context.unwrap().run_as_user, Some(65532));
    }

    #[test]
    fn schema_isolation_dumps_only_the_tenants_schema() {
        let (t, _) = tenant_and_plan(|ct| {
            ct.spec.database.isolation = crate::crd::DatabaseIsolation::Schema;
            ct.spec.backup = Some(
                serde_json::from_value(serde_json::json!({
                    "schedule": "0 3 * * *",
                    "retention": {"count": 2},
                    "destination": {"persistentVolumeClaim": {"claimName": "backups"}},
                }))
                .unwrap(),
            );
        });
        let env = env_of(&pod(&build_backup(&t).unwrap()).containers[0]);
        assert_eq!(env["BACKUP_SCHEMA"], "chat_acme");
        assert_eq!(env["DATABASE_URL"], "secret:acme-db/uri");
    }

    #[test]
    fn retention_in_days() {
        let t = with_backup(serde_json::json!({"days": 14}));
        let env = env_of(&pod(&build_backup(&t).unwrap()).containers[0]);
        assert_eq!(env["KEEP_DAYS"], "14");
        assert!(!env.contains_key("KEEP_COUNT"));
    }

    #[test]
    fn backup_pods_are_not_runtime_pods() {
        let t = with_backup(serde_json::json!({"count": 1}));
        let cj = build_backup(&t).unwrap();
        let tmpl = cj.spec.job_template;
        for labels in [
            tmpl.metadata.unwrap().labels.unwrap(),
            tmpl.spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .labels
                .unwrap(),
        ] {
            assert!(!labels.contains_key(crate::names::TENANT_LABEL));
            assert_eq!(labels[BACKUP_OF_LABEL], "acme");
        }
        // The CronJob itself is a child: tenant label, owner reference.
        assert_eq!(
            cj.metadata.labels.unwrap()[crate::names::TENANT_LABEL],
            "acme"
        );
        assert_eq!(
            backup_job_selector(&t),
            "app.kubernetes.io/managed-by=chorus-operator,chorus.dev/backup-of=acme"
        );
    }
}
