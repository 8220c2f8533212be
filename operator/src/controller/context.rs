//! What every reconcile shares: the settings, the API client, metrics, the
//! Event recorder, the database [`Provisioner`], and two small caches (the
//! Gateway API probe, the failure counts behind the backoff).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, Instant},
};

use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        events::{Event as KubeEvent, Recorder, Reporter},
        reflector::ObjectRef,
    },
};

use super::events::{Event, truncate};
use crate::{
    cache::ChildCache,
    crd::{ChatTenant, ChatTenantStatus},
    database::{Postgres, Provisioner},
    error::{Error, Result},
    metrics::Metrics,
    status,
};

/// How long one Event recorder is used. kube-runtime's recorder keeps every
/// Event it published for 6 minutes (its `CACHE_TTL`), to count a repeat
/// into the first one's `series`, and its table never shrinks: after a
/// burst of 1,000 new tenants it held about 18 MiB, the operator's largest
/// item (heaptrack, docs/operations.md "Scale"). A new recorder every 6
/// minutes frees it; a repeat that straddles the change starts a new Event
/// instead of counting into the old one.
const RECORDER_LIFETIME: Duration = Duration::from_secs(6 * 60);

/// How many Events one recorder publishes before it is replaced, whatever
/// its age. Each cached Event takes about 2 KiB of table and strings (17.7
/// MiB for the ~9,000 Events of a 1,000-tenant burst, heaptrack on
/// 2026-12-01), and the table is sized in powers of two with 7/8 of its
/// slots usable: 768 Events fit a 1,024-slot table, about 2 MiB in all. A
/// burst of new tenants then costs no more Event memory than a quiet day;
/// only a repeat straddling a change starts a new Event.
const RECORDER_EVENTS: u32 = 768;

/// Whether a recorder made `age` ago that has published `published` Events
/// is replaced ([`RECORDER_LIFETIME`], [`RECORDER_EVENTS`]). Pure.
fn recorder_spent(age: Duration, published: u32) -> bool {
    age >= RECORDER_LIFETIME || published >= RECORDER_EVENTS
}

/// The recorder in use, when it was made and how many Events it published.
struct RecorderSlot {
    recorder: Recorder,
    made: Instant,
    published: u32,
}

impl RecorderSlot {
    fn new(client: &Client, reporter: &Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            made: Instant::now(),
            published: 0,
        }
    }

    /// Starts a new recorder when this one is spent ([`recorder_spent`]).
    fn renew_if_spent(&mut self, client: &Client, reporter: &Reporter) {
        if recorder_spent(self.made.elapsed(), self.published) {
            *self = Self::new(client, reporter);
        }
    }
}

/// Operator settings shared by every reconcile.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace holding the database server Secrets.
    pub server_namespace: String,
    /// Only watch these namespaces (all namespaces when empty).
    pub watch_namespaces: Vec<String>,
    /// Interval of the idle resync.
    pub resync: Duration,
    /// Identity reported in Events (pod name).
    pub instance: String,
    /// Reconciles that may run at once, over every watched namespace (0: no
    /// limit); see [`DEFAULT_CONCURRENCY`]. The others wait in the order of
    /// [`super::admission`].
    pub concurrency: u16,
}

/// Default of [`Settings::concurrency`]. A reconcile mostly waits on the
/// apiserver and PostgreSQL; 16 in flight keep both busy on a small
/// control plane while a burst of new tenants cannot open hundreds of
/// PostgreSQL connections at once (each reconcile holds at most one pooled
/// admin connection and one short tenant login), nor starve the apiserver
/// of the watch traffic that reports Ready. Measured with
/// `make bench-operator` (README).
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// State shared by reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Reconciles this instance ran (tests use it to prove only the leader works).
    pub reconcile_count: AtomicU64,
    /// What `/readyz` reports (API reachability, watches listed).
    pub health: Arc<crate::runner::Health>,
    /// The watch caches of owned children (registered by the watches).
    pub children: ChildCache,
    pub(super) databases: Arc<dyn Provisioner>,
    /// kube-runtime's recorder, its age and Events ([`recorder_spent`]).
    recorder: Mutex<RecorderSlot>,
    reporter: Reporter,
    gateway_cache: Mutex<Option<(Instant, bool)>>,
    failures: Mutex<HashMap<ObjectRef<ChatTenant>, u32>>,
    /// The release analysis' last scrapes.
    pub(super) scrapes: super::analysis::Scrapes,
    /// Tenants whose database was found in order a moment ago.
    pub(super) verified: super::verified::Verified,
    /// The server Secrets' data, by the version the watch saw.
    pub(super) server_secrets: Arc<super::server_secrets::ServerSecrets>,
    /// The slots reconciles wait for ([`Settings::concurrency`]).
    pub(super) admission: super::admission::Admission,
}

impl Context {
    /// A context for `client`, provisioning on PostgreSQL.
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self::with_provisioner(client, settings, metrics, Arc::new(Postgres::default()))
    }

    /// A context whose database work goes to `databases` (a test seam).
    pub fn with_provisioner(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        databases: Arc<dyn Provisioner>,
    ) -> Self {
        let reporter = Reporter {
            controller: "chorus-operator".into(),
            instance: Some(settings.instance.clone()),
        };
        let recorder = Mutex::new(RecorderSlot::new(&client, &reporter));
        let admission = super::admission::Admission::new(
            settings.concurrency,
            metrics.reconciles_waiting.clone(),
            metrics.reconcile_wait.clone(),
        );
        Self {
            client,
            settings,
            metrics,
            reconcile_count: AtomicU64::new(0),
            health: Arc::default(),
            children: ChildCache::default(),
            databases,
            recorder,
            reporter,
            gateway_cache: Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
            scrapes: super::analysis::Scrapes::default(),
            verified: super::verified::Verified::default(),
            server_secrets: Arc::default(),
            admission,
        }
    }

    /// Publishes `event` about `ct`. A failure is logged, never returned:
    /// Events are advice, not state.
    pub(super) async fn publish(&self, ct: &ChatTenant, event: Event) {
        let reason = event.reason();
        let ev = KubeEvent {
            type_: event.type_(),
            reason: reason.into(),
            note: Some(truncate(event.note(), 1000)),
            action: event.action(),
            secondary: None,
        };
        if let Err(e) = self.recorder().publish(&ev, &ct.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }

    /// The Event recorder for one more Event, a new one when the one in use
    /// is spent (one lock for both, so the count holds under concurrency).
    fn recorder(&self) -> Recorder {
        match self.recorder.lock() {
            Ok(mut r) => {
                r.renew_if_spent(&self.client, &self.reporter);
                r.published = r.published.saturating_add(1);
                r.recorder.clone()
            }
            Err(_) => Recorder::new(self.client.clone(), self.reporter.clone()),
        }
    }

    /// Replaces the Event recorder once it is spent ([`recorder_spent`]),
    /// so its cache is freed. Called every minute (`watches::run`), so an
    /// idle operator frees it too; each publish checks as well.
    pub(super) fn renew_recorder(&self) {
        if let Ok(mut r) = self.recorder.lock() {
            r.renew_if_spent(&self.client, &self.reporter);
        }
    }

    /// Whether the Gateway API HTTPRoute kind is served. A "yes" is cached
    /// for a minute, a "no" for ten seconds, so installing the Gateway API
    /// CRDs takes effect within seconds.
    pub(super) async fn gateway_api(&self) -> bool {
        if let Ok(cache) = self.gateway_cache.lock()
            && let Some((at, present)) = *cache
            && at.elapsed() < Duration::from_secs(if present { 60 } else { 10 })
        {
            return present;
        }
        let present = match self
            .client
            .list_api_group_resources("gateway.networking.k8s.io/v1")
            .await
        {
            Ok(list) => list.resources.iter().any(|r| r.name == "httproutes"),
            Err(_) => false,
        };
        if let Ok(mut cache) = self.gateway_cache.lock() {
            *cache = Some((Instant::now(), present));
        }
        present
    }

    /// Writes `new` as the status of `ct` unless it is unchanged.
    pub(super) async fn write_status(
        &self,
        api: &Api<ChatTenant>,
        ct: &ChatTenant,
        new: &ChatTenantStatus,
    ) -> Result<()> {
        let wrote = status::write(api, &ct.name_any(), ct.status.as_deref(), new)
            .await
            .map_err(Error::kube("writing status"))?;
        if wrote {
            self.metrics.status_writes.inc();
        }
        Ok(())
    }

    /// Counts one more failure of `ct`; returns the delay before its retry.
    pub(super) fn record_failure(&self, ct: &ChatTenant) -> Duration {
        let key = ObjectRef::from_obj(ct);
        let attempts = self
            .failures
            .lock()
            .map(|mut f| {
                let n = f.entry(key).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1);
        backoff(attempts)
    }

    /// Forgets the failures of `ct` (it reconciled).
    pub(super) fn clear_failures(&self, ct: &ChatTenant) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&ObjectRef::from_obj(ct));
        }
    }
}

/// The retry delay after `attempts` failures in a row: 1 s doubling, at most
/// 256 s (the 5 min cap is never reached).
pub(super) fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(9).saturating_sub(1)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorder_is_replaced_when_old_or_after_its_share_of_events() {
        let minute = Duration::from_secs(60);
        assert!(!recorder_spent(minute, 0));
        assert!(!recorder_spent(5 * minute, RECORDER_EVENTS - 1));
        assert!(recorder_spent(6 * minute, 0), "its cache's TTL");
        assert!(recorder_spent(Duration::ZERO, RECORDER_EVENTS), "a burst");
    }

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        let secs: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 256]);
        assert_eq!(backoff(0).as_secs(), 1);
    }
}
