//! Prometheus metrics of the operator (`/metrics`).

use std::time::Instant;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Label of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Error label (`Error::metric_label`).
    pub reason: String,
}

/// Label of the per-server gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    /// `host:port` of a database server.
    pub server: String,
}

/// Label of the waiting-reconciles gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    /// `change` or `resync` (`controller::admission::Lane`).
    pub lane: String,
}

/// All operator metrics.
pub struct Metrics {
    registry: Registry,
    /// `chorus_reconciles_total`.
    pub reconciles: Counter,
    /// `chorus_reconcile_failures_total{reason}`.
    pub failures: Family<ReasonLabel, Counter>,
    /// `chorus_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `chorus_reconciles_waiting{lane}`: reconciles waiting for a slot
    /// (`--max-concurrent-reconciles`).
    pub reconciles_waiting: Family<LaneLabel, Gauge>,
    /// `chorus_reconcile_wait_seconds`: how long a reconcile waited for a
    /// slot.
    pub reconcile_wait: Histogram,
    /// `chorus_database_ddl_statements_total`.
    pub ddl_statements: Counter,
    /// `chorus_status_writes_total`.
    pub status_writes: Counter,
    /// `chorus_leader` (1 while this replica holds the lease).
    pub leader: Gauge,
    /// `chorus_tenant_*{namespace,tenant}`.
    pub tenants: crate::tenant_metrics::TenantMetrics,
    /// `chorus_database_server_connections{server}`: client sessions open
    /// on a database server the operator provisions on.
    pub server_connections: Family<ServerLabel, Gauge>,
    /// `chorus_database_server_max_connections{server}`: its
    /// `max_connections`.
    pub server_max_connections: Family<ServerLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("chorus");
        let reconciles = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let reconciles_waiting = Family::<LaneLabel, Gauge>::default();
        let reconcile_wait = Histogram::new([0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0]);
        let ddl_statements = Counter::default();
        let status_writes = Counter::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "ChatTenant reconciles started",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "ChatTenant reconciles that failed, by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of ChatTenant reconciles",
            duration.clone(),
        );
        registry.register(
            "reconciles_waiting",
            "ChatTenant reconciles waiting for a slot, by lane (change before resync)",
            reconciles_waiting.clone(),
        );
        registry.register(
            "reconcile_wait_seconds",
            "How long ChatTenant reconciles waited for a slot",
            reconcile_wait.clone(),
        );
        registry.register(
            "database_ddl_statements",
            "DDL statements executed on tenant database servers",
            ddl_statements.clone(),
        );
        registry.register(
            "status_writes",
            "ChatTenant status writes (idle resyncs write nothing)",
            status_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let tenants = crate::tenant_metrics::TenantMetrics::default();
        tenants.register(&mut registry);
        let server_connections = Family::<ServerLabel, Gauge>::default();
        let server_max_connections = Family::<ServerLabel, Gauge>::default();
        registry.register(
            "database_server_connections",
            "Client sessions open on a database server the operator provisions on",
            server_connections.clone(),
        );
        registry.register(
            "database_server_max_connections",
            "max_connections of a database server the operator provisions on",
            server_max_connections.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            reconciles_waiting,
            reconcile_wait,
            ddl_statements,
            status_writes,
            leader,
            tenants,
            server_connections,
            server_max_connections,
        }
    }
}

impl Metrics {
    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Starts timing a reconcile; the duration is recorded when dropped.
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.clone(),
        }
    }

    /// Sets the per-server and per-tenant connection gauges from a
    /// collection; servers that gave no figures lose their series.
    pub fn observe_connections(&self, servers: &[crate::database::ServerConnections]) {
        self.server_connections.clear();
        self.server_max_connections.clear();
        for s in servers {
            let l = ServerLabel {
                server: s.server.clone(),
            };
            self.server_connections.get_or_create(&l).set(s.total);
            self.server_max_connections.get_or_create(&l).set(s.max);
        }
        self.tenants.observe_connections(servers);
    }

    /// Counts a failure.
    pub fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Records a reconcile's duration on drop.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::default();
        drop(m.reconcile_timer());
        m.failed("database_unreachable");
        let text = m.render();
        for name in [
            "chorus_reconciles_total 1",
            "chorus_reconcile_failures_total{reason=\"database_unreachable\"} 1",
            "chorus_reconcile_duration_seconds_count 1",
            "chorus_database_ddl_statements_total 0",
            "chorus_leader 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
