//! Per-tenant gauges on the operator's `/metrics`, for the chart's alerts
//! (docs/metrics.md): each reconcile sets them from the status it computed,
//! and deletion removes the tenant's series. Labels: `namespace`, `tenant`
//! (the ChatTenant's name).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use std::{collections::HashMap, sync::Mutex};

use crate::{
    crd::{ChatTenantStatus, ReleaseState},
    database::ServerConnections,
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
    /// `chorus_tenant_database_connections`: sessions of the tenant's role
    /// on its server now (runtime pods, backups, anything logged in as
    /// it), read every [`crate::database::connections::INTERVAL`].
    pub connections: Family<TenantLabels, Gauge>,
    /// Each tenant's server (`host:port`) and role, for `connections`.
    roles: Mutex<HashMap<TenantLabels, (String, String)>>,
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
            "tenant_database_connections",
            "Sessions of the tenant's database role on its server",
            self.connections.clone(),
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

    /// Remembers that the tenant's role lives on `server` (`host:port`).
    pub fn database_server(&self, t: &Tenant, server: String) {
        if let Ok(mut roles) = self.roles.lock() {
            roles.insert(
                labels(&t.namespace, &t.name),
                (server, t.database.name.to_string()),
            );
        }
    }

    /// Sets `connections` of every known tenant from its server's figures;
    /// the series of tenants whose server gave none this time are removed
    /// (no stale figure to alert on).
    pub fn observe_connections(&self, servers: &[ServerConnections]) {
        let Ok(roles) = self.roles.lock() else {
            return;
        };
        for (l, (server, role)) in roles.iter() {
            match servers.iter().find(|s| &s.server == server) {
                Some(figures) => {
                    let n = figures.by_role.get(role).copied().unwrap_or(0);
                    self.connections.get_or_create(l).set(n);
                }
                None => {
                    self.connections.remove(l);
                }
            }
        }
    }

    /// Removes the tenant's series (it was deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        let l = labels(namespace, name);
        self.connections.remove(&l);
        if let Ok(mut roles) = self.roles.lock() {
            roles.remove(&l);
        }
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
    fn tenant_connections_follow_their_servers_figures() {
        let m = TenantMetrics::default();
        let (t, _) = tenant_and_plan(|_| {});
        m.database_server(&t, "db:5432".into());
        let l = labels("tenants", "acme");
        let figures = |server: &str, n: i64| ServerConnections {
            server: server.into(),
            max: 100,
            total: n + 1,
            by_role: [("chat_acme".to_string(), n)].into(),
        };
        m.observe_connections(&[figures("db:5432", 7)]);
        assert_eq!(m.connections.get_or_create(&l).get(), 7);
        // Another server's figures say nothing of this tenant: its series goes.
        m.observe_connections(&[figures("other:5432", 3)]);
        let mut r = Registry::default();
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(!text.contains("tenant_database_connections{"), "{text}");
        // No session of the role: 0.
        m.observe_connections(&[ServerConnections {
            server: "db:5432".into(),
            max: 100,
            total: 1,
            by_role: HashMap::new(),
        }]);
        assert_eq!(m.connections.get_or_create(&l).get(), 0);
        m.forget("tenants", "acme");
        m.observe_connections(&[figures("db:5432", 9)]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(!text.contains("tenant_database_connections{"), "{text}");
    }

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
