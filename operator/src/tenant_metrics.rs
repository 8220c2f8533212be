//! Per-tenant gauges on the operator's `/metrics`, for the chart's alerts
//! (docs/metrics.md): each reconcile sets them from the status it computed,
//! and deletion removes the tenant's series. Labels: `namespace`, `tenant`
//! (the ChatTenant's name).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    crd::{ChatTenantStatus, ReleaseState},
    model::Tenant,
};

/// Labels of every per-tenant series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// Namespace of the ChatTenant.
    pub namespace: String,
    /// Its name.
    pub tenant: String,
}

/// The per-tenant gauges.
#[derive(Default)]
pub struct TenantMetrics {
    /// `chorus_tenant_ready`: 1 while condition Ready is True.
    pub ready: Family<TenantLabels, Gauge>,
    /// `chorus_tenant_release_aborted`: 1 while the newest release is
    /// Aborted and still in the spec.
    pub release_aborted: Family<TenantLabels, Gauge>,
    /// `chorus_tenant_database_connection_limit`: the role's connection
    /// limit (`spec.database.connectionLimit`).
    pub connection_limit: Family<TenantLabels, Gauge>,
    /// `chorus_tenant_backup_last_success_timestamp_seconds`: Unix time of
    /// `status.backup.lastSuccessfulTime` (only with `spec.backup`, after
    /// the first success).
    pub backup_last_success: Family<TenantLabels, Gauge>,
    /// `chorus_tenant_backup_interval_seconds`: seconds between two runs of
    /// `spec.backup.schedule` (the next two), for "backup older than its
    /// schedule".
    pub backup_interval: Family<TenantLabels, Gauge>,
}

impl TenantMetrics {
    /// Registers every family in `r` (prefix `chorus_` comes from `r`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "tenant_ready",
            "1 while the ChatTenant's Ready condition is True",
            self.ready.clone(),
        );
        r.register(
            "tenant_release_aborted",
            "1 while the ChatTenant's newest release is Aborted and still in the spec",
            self.release_aborted.clone(),
        );
        r.register(
            "tenant_database_connection_limit",
            "Connection limit of the tenant's database role",
            self.connection_limit.clone(),
        );
        r.register(
            "tenant_backup_last_success_timestamp_seconds",
            "Unix time of the tenant's last successful backup",
            self.backup_last_success.clone(),
        );
        r.register(
            "tenant_backup_interval_seconds",
            "Seconds between two runs of the tenant's backup schedule",
            self.backup_interval.clone(),
        );
    }

    /// Sets the tenant's series from the status just computed.
    pub fn observe(&self, t: &Tenant, s: &ChatTenantStatus) {
        let l = labels(&t.namespace, &t.name);
        let values = values(t, s, jiff::Timestamp::now());
        self.ready.get_or_create(&l).set(values.ready);
        self.release_aborted
            .get_or_create(&l)
            .set(values.release_aborted);
        self.connection_limit
            .get_or_create(&l)
            .set(values.connection_limit);
        match values.backup_last_success {
            Some(v) => {
                self.backup_last_success.get_or_create(&l).set(v);
            }
            None => {
                self.backup_last_success.remove(&l);
            }
        }
        match values.backup_interval {
            Some(v) => {
                self.backup_interval.get_or_create(&l).set(v);
            }
            None => {
                self.backup_interval.remove(&l);
            }
        }
    }

    /// Removes the tenant's series (it was deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        let l = labels(namespace, name);
        self.ready.remove(&l);
        self.release_aborted.remove(&l);
        self.connection_limit.remove(&l);
        self.backup_last_success.remove(&l);
        self.backup_interval.remove(&l);
    }
}

fn labels(namespace: &str, name: &str) -> TenantLabels {
    TenantLabels {
        namespace: namespace.into(),
        tenant: name.into(),
    }
}

/// The gauge values of one tenant. Pure.
#[derive(Debug, PartialEq, Eq)]
struct Values {
    ready: i64,
    release_aborted: i64,
    connection_limit: i64,
    backup_last_success: Option<i64>,
    backup_interval: Option<i64>,
}

fn values(t: &Tenant, s: &ChatTenantStatus, now: jiff::Timestamp) -> Values {
    let ready = s
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let aborted = s
        .release
        .as_ref()
        .is_some_and(|r| r.state == ReleaseState::Aborted && r.closed_at.is_none());
    let backup_last_success = t
        .spec
        .backup
        .as_ref()
        .and(s.backup.as_ref())
        .and_then(|b| b.last_successful_time.as_deref())
        .and_then(|at| at.parse::<jiff::Timestamp>().ok())
        .map(|at| at.as_second());
    let backup_interval = t
        .spec
        .backup
        .as_ref()
        .and_then(|b| schedule_interval(&b.schedule, now));
    Values {
        ready: i64::from(ready),
        release_aborted: i64::from(aborted),
        connection_limit: i64::from(t.spec.database.connection_limit),
        backup_last_success,
        backup_interval,
    }
}

/// Seconds between the next two runs of a cron schedule after `now` (UTC).
fn schedule_interval(schedule: &str, now: jiff::Timestamp) -> Option<i64> {
    let cron: croner::Cron = schedule.parse().ok()?;
    let start = now.to_zoned(jiff::tz::TimeZone::UTC);
    let first = cron.find_next_occurrence(&start, false).ok()?;
    let second = cron.find_next_occurrence(&first, false).ok()?;
    Some(second.timestamp().as_second() - first.timestamp().as_second())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

    #[test]
    fn schedule_intervals() {
        let now: jiff::Timestamp = "2026-12-01T06:30:00Z".parse().unwrap();
        assert_eq!(schedule_interval("*/5 * * * *", now), Some(300));
        assert_eq!(schedule_interval("@daily", now), Some(86400));
        assert_eq!(schedule_interval("0 3 * * *", now), Some(86400));
        assert_eq!(schedule_interval("nope", now), None);
    }

    #[test]
    fn values_follow_the_status() {
        let (t, _) = tenant_and_plan(|ct| {
            ct.spec.backup = Some(
                serde_json::from_value(serde_json::json!({
                    "schedule": "@hourly",
                    "retention": {"count": 3},
                    "destination": {"persistentVolumeClaim": {"claimName": "d"}},
                }))
                .unwrap(),
            );
        });
        let s: ChatTenantStatus = serde_json::from_value(serde_json::json!({
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                            "lastTransitionTime": "2026-12-01T06:00:00Z"}],
            "backup": {"lastSuccessfulTime": "2026-12-01T06:00:00Z"},
        }))
        .unwrap();
        let now = "2026-12-01T06:30:00Z".parse().unwrap();
        assert_eq!(
            values(&t, &s, now),
            Values {
                ready: 1,
                release_aborted: 0,
                connection_limit: 50,
                backup_last_success: Some(1_796_104_800),
                backup_interval: Some(3600),
            }
        );
        let (plain, _) = tenant_and_plan(|_| {});
        let v = values(&plain, &ChatTenantStatus::default(), now);
        assert_eq!(
            (v.ready, v.backup_last_success, v.backup_interval),
            (0, None, None)
        );
    }
}
