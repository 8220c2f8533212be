//! `status.backup`, the `BackupHealthy` condition and the backup Events,
//! derived from what Kubernetes reports about the backup CronJob's Jobs:
//! their `Complete`/`Failed` conditions and times (written by the Job
//! controller) and the termination message of their pods (written by the
//! kubelet from the `chorus-backup` script's result, or from pg_dump's last
//! log lines when it failed). [`observe`] reads; [`apply`] and [`events`]
//! are pure.
//!
//! `BackupHealthy` is `True` (`BackupSucceeded`) when the newest finished
//! backup succeeded, `False` (`BackupFailed`, `ClaimNotFound`) when the
//! newest failed or the claim does not exist (a Job would only wait for
//! it), and `Unknown` (`NoBackupYet`) before the first Job finishes.

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{PersistentVolumeClaim, Pod},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{Api, ResourceExt, api::ListParams};
use serde::Deserialize;

use super::{Context, events::Event, events::truncate};
use crate::{
    build::backup::{BACKUP_CONTAINER, backup_job_selector},
    crd::ChatTenantStatus,
    error::{Error, Result},
    model::Tenant,
};

/// Condition type.
pub const BACKUP_HEALTHY: &str = "BackupHealthy";

/// One finished backup Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutcome {
    /// Job name.
    pub name: String,
    /// When it completed or failed.
    pub finished_at: jiff::Timestamp,
    /// Whether it completed.
    pub succeeded: bool,
    /// Its pod's termination message (the script's JSON result, or the
    /// failure's last log lines), if a pod reported one.
    pub pod_message: Option<String>,
    /// The Job condition's reason and message (failures).
    pub job_message: Option<String>,
}

/// What [`observe`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// Whether the destination claim exists.
    pub claim_found: bool,
    /// Finished backup Jobs, in any order.
    pub jobs: Vec<JobOutcome>,
}

/// The script's result line (`backup/chorus-backup`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScriptResult {
    file: String,
    size_bytes: i64,
}

/// Reads the claim, the backup Jobs and their pods; `None` without
/// `spec.backup`.
pub(super) async fn observe(ctx: &Context, t: &Tenant) -> Result<Option<Observation>> {
    let Some(b) = t.spec.backup.as_ref() else {
        return Ok(None);
    };
    let claim = &b.destination.persistent_volume_claim.claim_name;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &t.namespace);
    let claim_found = claims
        .get_metadata_opt(claim)
        .await
        .map_err(Error::kube(format!(
            "reading PersistentVolumeClaim {claim}"
        )))?
        .is_some();
    let lp = ListParams::default().labels(&backup_job_selector(t));
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &t.namespace)
        .list(&lp)
        .await
        .map_err(Error::kube("listing backup Jobs"))?
        .items;
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &t.namespace)
        .list(&lp)
        .await
        .map_err(Error::kube("listing backup pods"))?
        .items;
    Ok(Some(Observation {
        claim_found,
        jobs: jobs.iter().filter_map(|j| outcome(j, &pods)).collect(),
    }))
}

/// A finished Job's outcome, with the newest termination message among its
/// pods. Pure.
fn outcome(job: &Job, pods: &[Pod]) -> Option<JobOutcome> {
    let name = job.name_any();
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let done = conditions
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    let succeeded = done.type_ == "Complete";
    let finished_at = job
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .filter(|_| succeeded)
        .or(done.last_transition_time.as_ref())
        .map(|t| t.0)?;
    let pod_message = pods
        .iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.kind == "Job" && o.name == name)
        })
        .filter_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
            let term = statuses
                .iter()
                .find(|c| c.name == BACKUP_CONTAINER)?
                .state
                .as_ref()?
                .terminated
                .as_ref()?;
            let at = term.finished_at.as_ref().map(|t| t.0);
            Some((at, term.message.clone()?.trim().to_string()))
        })
        .filter(|(_, m)| !m.is_empty())
        .max_by_key(|(at, _)| *at)
        .map(|(_, m)| m);
    let job_message = (!succeeded).then(|| {
        format!(
            "{}: {}",
            done.reason.as_deref().unwrap_or("Failed"),
            done.message.as_deref().unwrap_or_default()
        )
    });
    Some(JobOutcome {
        name,
        finished_at,
        succeeded,
        pod_message,
        job_message,
    })
}

fn parse_time(s: Option<&String>) -> Option<jiff::Timestamp> {
    s.and_then(|s| s.parse().ok())
}

/// Sets `status.backup` and `BackupHealthy` from `obs` (removes both when
/// `spec.backup` is absent). Times only move forward, so a Job deleted by
/// the CronJob's history limit does not erase what it did. Pure.
pub fn apply(s: &mut ChatTenantStatus, t: &Tenant, obs: Option<&Observation>, now: &Time) {
    let (Some(spec), Some(obs)) = (t.spec.backup.as_ref(), obs) else {
        s.backup = None;
        s.conditions.retain(|c| c.type_ != BACKUP_HEALTHY);
        return;
    };
    let mut b = s.backup.clone().unwrap_or_default();
    let newest = |ok: bool| {
        obs.jobs
            .iter()
            .filter(|j| j.succeeded == ok)
            .max_by_key(|j| j.finished_at)
    };
    if let Some(j) = newest(true)
        && parse_time(b.last_successful_time.as_ref()).is_none_or(|at| j.finished_at > at)
    {
        let result = j
            .pod_message
            .as_deref()
            .and_then(|m| serde_json::from_str::<ScriptResult>(m).ok());
        b.last_successful_time = Some(j.finished_at.to_string());
        b.last_size_bytes = result.as_ref().map(|r| r.size_bytes);
        b.last_file = result.map(|r| r.file);
    }
    let mut failure = None;
    if let Some(j) = newest(false) {
        let why = j
            .pod_message
            .clone()
            .or_else(|| j.job_message.clone())
            .unwrap_or_default();
        let message = truncate(
            format!(
                "backup Job {} failed at {}: {}",
                j.name,
                j.finished_at,
                why.trim()
            ),
            600,
        );
        if parse_time(b.last_failure_time.as_ref()).is_none_or(|at| j.finished_at >= at) {
            b.last_failure_time = Some(j.finished_at.to_string());
            failure = Some(message);
        }
    }
    let last_ok = parse_time(b.last_successful_time.as_ref());
    let last_failed = parse_time(b.last_failure_time.as_ref());
    let claim = &spec.destination.persistent_volume_claim.claim_name;
    let (status, reason, message) = if !obs.claim_found {
        (
            "False",
            "ClaimNotFound",
            format!(
                "spec.backup.destination.persistentVolumeClaim.claimName: PersistentVolumeClaim {claim} does not exist in namespace {}; create it (docs/operations.md, Backups) or fix the name",
                t.namespace
            ),
        )
    } else if last_failed.is_some_and(|f| last_ok.is_none_or(|ok| f > ok)) {
        let message = failure
            .or_else(|| b.message.clone().filter(|m| m.starts_with("backup Job")))
            .unwrap_or_else(|| "the last backup Job failed".into());
        ("False", "BackupFailed", message)
    } else if let Some(ok) = last_ok {
        let what = match (&b.last_file, b.last_size_bytes) {
            (Some(f), Some(n)) => format!("{f} ({n} bytes)"),
            _ => "a dump".into(),
        };
        (
            "True",
            "BackupSucceeded",
            format!("last backup {what} in claim {claim} at {ok}"),
        )
    } else {
        (
            "Unknown",
            "NoBackupYet",
            format!(
                "no backup Job has finished yet; CronJob {} runs on schedule '{}'",
                t.name, spec.schedule
            ),
        )
    };
    b.message = Some(message.clone());
    s.backup = Some(b);
    set(
        &mut s.conditions,
        status,
        reason,
        message,
        t.generation,
        now,
    );
}

/// Sets the condition, keeping `lastTransitionTime` while its status holds.
fn set(
    conditions: &mut Vec<Condition>,
    status: &str,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) {
    let new = Condition {
        type_: BACKUP_HEALTHY.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: now.clone(),
    };
    match conditions.iter_mut().find(|c| c.type_ == BACKUP_HEALTHY) {
        Some(c) => {
            let since = if c.status == status {
                c.last_transition_time.clone()
            } else {
                now.clone()
            };
            *c = Condition {
                last_transition_time: since,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

/// The backup Events between two statuses: a new successful backup, or a
/// new failure (a failed Job, a missing claim). Pure.
pub fn events(old: Option<&ChatTenantStatus>, new: &ChatTenantStatus) -> Vec<Event> {
    let mut out = Vec::new();
    let Some(b) = new.backup.as_ref() else {
        return out;
    };
    let was = old.and_then(|s| s.backup.as_ref());
    let cond = |s: &ChatTenantStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == BACKUP_HEALTHY)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    if b.last_successful_time.is_some()
        && was.and_then(|w| w.last_successful_time.as_ref()) != b.last_successful_time.as_ref()
    {
        out.push(Event::BackupSucceeded {
            message: b.message.clone().unwrap_or_default(),
            at: b.last_successful_time.clone().unwrap_or_default(),
        });
    }
    let now = cond(new);
    let before = old.and_then(cond);
    let new_failure = b.last_failure_time.is_some()
        && was.and_then(|w| w.last_failure_time.as_ref()) != b.last_failure_time.as_ref();
    if let Some((status, reason)) = &now
        && status == "False"
        && (before != now || new_failure)
    {
        let cause = match (reason.as_str(), &b.last_failure_time) {
            ("BackupFailed", Some(at)) => at.clone(),
            _ => reason.clone(),
        };
        out.push(Event::BackupFailed {
            message: b.message.clone().unwrap_or_default(),
            cause,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn now() -> Time {
        Time(ts("2026-12-01T07:00:00Z"))
    }

    fn tenant() -> Tenant {
        tenant_and_plan(|ct| {
            ct.spec.backup = Some(
                serde_json::from_value(serde_json::json!({
                    "schedule": "0 * * * *",
                    "retention": {"count": 3},
                    "destination": {"persistentVolumeClaim": {"claimName": "dumps"}},
                }))
                .unwrap(),
            );
        })
        .0
    }

    fn ok(name: &str, at: &str, size: i64) -> JobOutcome {
        JobOutcome {
            name: name.into(),
            finished_at: ts(at),
            succeeded: true,
            pod_message: Some(format!(
                r#"{{"file":"acme-x.dump","sizeBytes":{size},"deleted":0}}"#
            )),
            job_message: None,
        }
    }

    fn failed(name: &str, at: &str) -> JobOutcome {
        JobOutcome {
            name: name.into(),
            finished_at: ts(at),
            succeeded: false,
            pod_message: Some("pg_dump: error: connection refused".into()),
            job_message: Some(
                "BackoffLimitExceeded: Job has reached the specified backoff limit".into(),
            ),
        }
    }

    fn run(old: &ChatTenantStatus, obs: &Observation) -> ChatTenantStatus {
        let mut s = old.clone();
        apply(&mut s, &tenant(), Some(obs), &now());
        s
    }

    fn cond(s: &ChatTenantStatus) -> (String, String) {
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == BACKUP_HEALTHY)
            .unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn the_condition_follows_the_newest_finished_job() {
        let found = |jobs| Observation {
            claim_found: true,
            jobs,
        };
        let cases: Vec<(&str, Observation, (&str, &str))> = vec![
            ("none yet", found(vec![]), ("Unknown", "NoBackupYet")),
            (
                "one success",
                found(vec![ok("a", "2026-12-01T06:00:00Z", 10)]),
                ("True", "BackupSucceeded"),
            ),
            (
                "failure after success",
                found(vec![
                    ok("a", "2026-12-01T06:00:00Z", 10),
                    failed("b", "2026-12-01T06:30:00Z"),
                ]),
                ("False", "BackupFailed"),
            ),
            (
                "success after failure",
                found(vec![
                    failed("b", "2026-12-01T06:00:00Z"),
                    ok("a", "2026-12-01T06:30:00Z", 10),
                ]),
                ("True", "BackupSucceeded"),
            ),
            (
                "missing claim",
                Observation {
                    claim_found: false,
                    jobs: vec![ok("a", "2026-12-01T06:00:00Z", 10)],
                },
                ("False", "ClaimNotFound"),
            ),
        ];
        for (what, obs, (status, reason)) in cases {
            let s = run(&ChatTenantStatus::default(), &obs);
            assert_eq!(cond(&s), (status.into(), reason.into()), "{what}");
        }
    }

    #[test]
    fn time_and_size_come_from_the_job_and_its_pod() {
        let obs = Observation {
            claim_found: true,
            jobs: vec![
                ok("a", "2026-12-01T05:00:00Z", 10),
                ok("b", "2026-12-01T06:00:00Z", 2048),
            ],
        };
        let s = run(&ChatTenantStatus::default(), &obs);
        let b = s.backup.as_ref().unwrap();
        assert_eq!(
            b.last_successful_time.as_deref(),
            Some("2026-12-01T06:00:00Z")
        );
        assert_eq!(b.last_size_bytes, Some(2048));
        assert_eq!(b.last_file.as_deref(), Some("acme-x.dump"));
        // The Jobs are gone (history limit): what they did stays.
        let later = run(
            &s,
            &Observation {
                claim_found: true,
                jobs: vec![],
            },
        );
        assert_eq!(later.backup, s.backup);
        assert_eq!(cond(&later).1, "BackupSucceeded");
    }

    #[test]
    fn a_failure_names_the_job_and_the_cause() {
        let obs = Observation {
            claim_found: true,
            jobs: vec![failed("acme-1", "2026-12-01T06:00:00Z")],
        };
        let s = run(&ChatTenantStatus::default(), &obs);
        let msg = s.backup.as_ref().unwrap().message.clone().unwrap();
        assert!(
            msg.contains("acme-1") && msg.contains("connection refused"),
            "{msg}"
        );
        let ev = events(None, &s);
        assert!(matches!(&ev[..], [Event::BackupFailed { .. }]), "{ev:?}");
        // The same failure seen again: no new Event.
        assert!(events(Some(&s), &run(&s, &obs)).is_empty());
    }

    #[test]
    fn a_new_success_is_one_event() {
        let obs = Observation {
            claim_found: true,
            jobs: vec![ok("a", "2026-12-01T06:00:00Z", 10)],
        };
        let s = run(&ChatTenantStatus::default(), &obs);
        let ev = events(None, &s);
        assert!(matches!(&ev[..], [Event::BackupSucceeded { .. }]), "{ev:?}");
        assert!(events(Some(&s), &run(&s, &obs)).is_empty());
    }

    #[test]
    fn removing_spec_backup_removes_its_status() {
        let obs = Observation {
            claim_found: false,
            jobs: vec![],
        };
        let mut s = run(&ChatTenantStatus::default(), &obs);
        let (t, _) = tenant_and_plan(|_| {});
        apply(&mut s, &t, None, &now());
        assert!(s.backup.is_none());
        assert!(s.conditions.iter().all(|c| c.type_ != BACKUP_HEALTHY));
    }
}
