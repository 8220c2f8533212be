//! Which reconcile runs when every slot is busy ([`super::Settings::concurrency`]).
//!
//! kube-runtime's own limit (`controller::Config::concurrency`) parks the
//! reconciles it cannot start yet in a hash set and starts them in that
//! set's iteration order. Under a burst a tenant can stay parked until the
//! set drains: with 3,000 tenants applied at once, one tenant's Ready came
//! 594 s after its pod was available, and the p99 of that gap was 38.6 s
//! with 1,000 tenants (`make bench-operator`, README "Operator at scale").
//! So kube-runtime runs with no limit, and each reconcile first waits here
//! for one of the slots, taken in this order:
//!
//! 1. **The lane.** [`Lane::Change`] (a watch event, a retry after a
//!    failure, a release's timer, a first reconcile) comes before
//!    [`Lane::Resync`] (the idle resync, which only looks for drift). So a
//!    resync never delays a new tenant or an edit, even when the operator
//!    cannot keep up with the resync interval.
//! 2. **The older tenant** (`metadata.creationTimestamp`, then a fixed
//!    order of the tenants created in the same second). A tenant that
//!    started provisioning finishes before a younger one starts, so a burst
//!    makes tenants Ready one after another rather than all near its end,
//!    and a tenant waits only behind older ones.
//! 3. **Arrival.**
//!
//! A reconcile is in the resync lane when it comes no earlier than the
//! resync its tenant's last reconcile asked for ([`Admission::resync_in`]);
//! kube-runtime starts one earlier only for a watch event. A spec change of
//! a tenant whose resync is waiting moves it to the change lane
//! ([`Admission::spec_changed`]), so an edit (a canary promotion) never
//! waits behind a resync.
//!
//! [`Queue`] is the pure state; [`Admission`] hands out [`Permit`]s.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::metrics::{family::Family, gauge::Gauge, histogram::Histogram};
use tokio::sync::oneshot;

use crate::{crd::ChatTenant, metrics::LaneLabel};

/// Why a reconcile runs, as far as the order of waiting goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// Something changed, or a retry or a release's timer is due.
    Change,
    /// The idle resync: nothing is known to have changed.
    Resync,
}

impl Lane {
    /// The `lane` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Change => "change",
            Lane::Resync => "resync",
        }
    }
}

/// How late a reconcile may come before the resync it is taken for. The
/// scheduler adds its debounce (100 ms) to every requeue.
const RESYNC_SLACK: Duration = Duration::from_secs(1);

/// A waiting reconcile's place: lane, creation second, the tenant (a hash
/// of its namespace and name: a fixed order within one second), arrival.
/// The smallest runs first. 32 bytes, no allocation: thousands wait during
/// a burst or a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    lane: Lane,
    created: i64,
    tenant: TenantKey,
    arrival: u64,
}

/// A tenant, as the queue knows it: a hash of namespace and name.
type TenantKey = u64;

/// The pure state of the queue; `W` is how a waiter is woken.
#[derive(Debug)]
pub struct Queue<W> {
    free: usize,
    arrivals: u64,
    waiting: BTreeMap<Place, W>,
    /// The place of each tenant waiting in the resync lane.
    resyncing: HashMap<TenantKey, Place>,
    /// When each tenant's plain resync is due.
    due: HashMap<TenantKey, Instant>,
}

impl<W> Queue<W> {
    /// A queue with `slots` slots.
    pub fn new(slots: usize) -> Self {
        Self {
            free: slots,
            arrivals: 0,
            waiting: BTreeMap::new(),
            resyncing: HashMap::new(),
            due: HashMap::new(),
        }
    }

    /// The lane of a reconcile of `tenant` arriving at `now`: the resync
    /// lane when its last reconcile asked for a resync due by then.
    pub fn lane(&mut self, tenant: TenantKey, now: Instant) -> Lane {
        match self.due.remove(&tenant) {
            Some(due) if now + RESYNC_SLACK >= due => Lane::Resync,
            _ => Lane::Change,
        }
    }

    /// A reconcile arrives at `place`: `true` when it takes a free slot now, `false` when `waiter` is queued (woken by a
    /// [`Queue::release`]).
    pub fn arrive(&mut self, mut place: Place, waiter: W) -> bool {
        if self.free > 0 {
            self.free -= 1;
            return true;
        }
        self.arrivals += 1;
        place.arrival = self.arrivals;
        if place.lane == Lane::Resync {
            self.resyncing.insert(place.tenant, place);
        }
        self.waiting.insert(place, waiter);
        false
    }

    /// A slot is given back: the first waiter takes it, or it is free.
    pub fn release(&mut self) -> Option<W> {
        match self.waiting.pop_first() {
            Some((place, waiter)) => {
                // Only its own entry: a dropped reconcile's place can still
                // wait beside the tenant's next one.
                if self.resyncing.get(&place.tenant) == Some(&place) {
                    self.resyncing.remove(&place.tenant);
                }
                Some(waiter)
            }
            None => {
                self.free += 1;
                None
            }
        }
    }

    /// `tenant`'s spec changed: a resync of it that waits moves to the
    /// change lane, keeping its age. Returns whether one moved.
    pub fn spec_changed(&mut self, tenant: TenantKey) -> bool {
        let Some(place) = self.resyncing.remove(&tenant) else {
            return false;
        };
        let Some(entry) = self.waiting.remove(&place) else {
            return false;
        };
        self.waiting.insert(
            Place {
                lane: Lane::Change,
                ..place
            },
            entry,
        );
        true
    }

    /// `tenant`'s last reconcile asked for the plain resync at `due`.
    pub fn resync_at(&mut self, tenant: TenantKey, due: Instant) {
        self.due.insert(tenant, due);
    }

    /// Waiting reconciles in `lane`.
    pub fn waiting(&self, lane: Lane) -> usize {
        match lane {
            Lane::Resync => self.resyncing.len(),
            Lane::Change => self.waiting.len().saturating_sub(self.resyncing.len()),
        }
    }
}

/// The slots reconciles wait for. Without a limit (`slots == 0`) every
/// reconcile runs at once.
pub struct Admission {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    queue: Mutex<Queue<oneshot::Sender<Permit>>>,
    waiting: Family<LaneLabel, Gauge>,
    wait_seconds: Histogram,
}

/// A slot, held while a reconcile runs; given to the next waiter when
/// dropped.
pub struct Permit {
    shared: Option<Arc<Shared>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.release();
        }
    }
}

impl Shared {
    /// Gives the slot to the first waiter still waiting (one whose
    /// reconcile was dropped, at shutdown, is passed over).
    fn release(self: Arc<Self>) {
        loop {
            let next = match self.queue.lock() {
                Ok(mut q) => q.release(),
                Err(_) => return,
            };
            self.observe();
            let Some(waiter) = next else { return };
            let permit = Permit {
                shared: Some(self.clone()),
            };
            match waiter.send(permit) {
                Ok(()) => return,
                // Defused: this loop gives the slot on.
                Err(mut permit) => permit.shared = None,
            }
        }
    }

    fn observe(&self) {
        let Ok(q) = self.queue.lock() else { return };
        for lane in [Lane::Change, Lane::Resync] {
            self.waiting
                .get_or_create(&LaneLabel {
                    lane: lane.as_str().into(),
                })
                .set(q.waiting(lane) as i64);
        }
    }
}

impl Admission {
    /// `slots` reconciles at once (0: no limit); `waiting` and
    /// `wait_seconds` are the operator's `chorus_reconciles_waiting{lane}`
    /// and `chorus_reconcile_wait_seconds`.
    pub fn new(slots: u16, waiting: Family<LaneLabel, Gauge>, wait_seconds: Histogram) -> Self {
        Self {
            shared: (slots > 0).then(|| {
                Arc::new(Shared {
                    queue: Mutex::new(Queue::new(slots.into())),
                    waiting,
                    wait_seconds,
                })
            }),
        }
    }

    /// Waits for a slot to reconcile `ct`; `None` without a limit.
    pub async fn admit(&self, ct: &ChatTenant) -> Option<Permit> {
        let shared = self.shared.as_ref()?;
        let start = Instant::now();
        let tenant = tenant_key(ct);
        let (tx, rx) = oneshot::channel();
        let now = {
            let mut q = shared.queue.lock().ok()?;
            let lane = q.lane(tenant, start);
            q.arrive(place(ct, tenant, lane), tx)
        };
        let permit = if now {
            Permit {
                shared: Some(shared.clone()),
            }
        } else {
            shared.observe();
            // The sender is dropped only with the queue.
            rx.await.ok()?
        };
        shared.wait_seconds.observe(start.elapsed().as_secs_f64());
        Some(permit)
    }

    /// `ct`'s reconcile asked to run again in `requeue`, which is the
    /// plain resync when it equals `resync`.
    pub fn resync_in(&self, ct: &ChatTenant, requeue: Duration, resync: Duration) {
        let Some(shared) = &self.shared else { return };
        if requeue != resync {
            return;
        }
        if let Ok(mut q) = shared.queue.lock() {
            q.resync_at(tenant_key(ct), Instant::now() + requeue);
        }
    }

    /// `ct`'s spec, finalizers or deletion mark changed (the controller's
    /// own watch saw it).
    pub fn spec_changed(&self, ct: &ChatTenant) {
        let Some(shared) = &self.shared else { return };
        let moved = shared
            .queue
            .lock()
            .is_ok_and(|mut q| q.spec_changed(tenant_key(ct)));
        // Only then do the gauges change: this runs for every spec event.
        if moved {
            shared.observe();
        }
    }
}

fn place(ct: &ChatTenant, tenant: TenantKey, lane: Lane) -> Place {
    Place {
        lane,
        created: ct
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        tenant,
        arrival: 0,
    }
}

/// `ct`'s key: the hash the child watches use ([`super::watches`]).
fn tenant_key(ct: &ChatTenant) -> TenantKey {
    super::watches::object_key(ct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    fn at(lane: Lane, created: i64, tenant: TenantKey) -> Place {
        Place {
            lane,
            created,
            tenant,
            arrival: 0,
        }
    }

    #[test]
    fn waiters_run_by_lane_then_age_then_arrival() {
        let mut q = Queue::new(1);
        assert!(q.arrive(at(Lane::Change, 50, 1), "a"), "a free slot");
        assert!(!q.arrive(at(Lane::Resync, 10, 2), "old-resync"));
        assert!(!q.arrive(at(Lane::Change, 30, 3), "young"));
        assert!(!q.arrive(at(Lane::Change, 20, 4), "old"));
        assert!(!q.arrive(at(Lane::Change, 30, 3), "young-again"));
        assert!(!q.arrive(at(Lane::Change, 30, 1), "same-second"));
        assert_eq!(q.waiting(Lane::Change), 4);
        assert_eq!(q.waiting(Lane::Resync), 1);
        let order: Vec<_> = std::iter::from_fn(|| q.release()).collect();
        assert_eq!(
            order,
            ["old", "same-second", "young", "young-again", "old-resync"]
        );
        assert_eq!(q.free, 1, "the last release frees the slot");
        assert!(q.arrive(at(Lane::Resync, 0, 6), "x"));
    }

    #[test]
    fn no_waiter_is_passed_over_by_younger_ones() {
        // The starvation of kube-runtime's hash set: a steady stream of
        // younger tenants' reconciles never goes ahead of an older one.
        let mut q = Queue::new(2);
        assert!(q.arrive(at(Lane::Change, 0, 0), 0));
        assert!(q.arrive(at(Lane::Change, 0, 1), 1));
        assert!(!q.arrive(at(Lane::Change, 100, u64::MAX), 7));
        for i in 0..50u64 {
            assert!(!q.arrive(at(Lane::Change, 101, i), 1000 + i));
            let next = q.release();
            if i == 0 {
                assert_eq!(
                    next,
                    Some(7),
                    "the oldest waiter runs at the first free slot"
                );
            } else {
                assert_ne!(next, Some(7));
            }
        }
    }

    #[test]
    fn a_reconcile_is_a_resync_only_when_it_comes_when_the_resync_was_due() {
        let mut q: Queue<()> = Queue::new(1);
        let now = Instant::now();
        assert_eq!(q.lane(1, now), Lane::Change, "never reconciled");
        q.resync_at(1, now + Duration::from_secs(300));
        assert_eq!(
            q.lane(1, now + Duration::from_secs(30)),
            Lane::Change,
            "earlier than the resync: a watch event"
        );
        assert_eq!(
            q.lane(1, now + Duration::from_secs(300)),
            Lane::Change,
            "the due time is used once"
        );
        q.resync_at(1, now + Duration::from_secs(300));
        assert_eq!(
            q.lane(1, now + Duration::from_millis(300_100)),
            Lane::Resync
        );
        q.resync_at(2, now + Duration::from_secs(300));
        assert_eq!(
            q.lane(2, now + Duration::from_millis(299_500)),
            Lane::Resync
        );
    }

    #[test]
    fn a_spec_change_moves_a_waiting_resync_to_the_change_lane() {
        let mut q = Queue::new(1);
        assert!(q.arrive(at(Lane::Change, 0, 9), "busy"));
        assert!(!q.arrive(at(Lane::Resync, 5, 1), "edited"));
        assert!(!q.arrive(at(Lane::Change, 60, 2), "new"));
        assert!(q.spec_changed(1));
        assert!(!q.spec_changed(3), "not waiting");
        assert_eq!(q.waiting(Lane::Resync), 0);
        assert_eq!(q.release(), Some("edited"), "older, and now a change");
        assert_eq!(q.release(), Some("new"));
    }

    #[test]
    fn a_dropped_reconciles_place_does_not_hide_the_next_one() {
        let mut q = Queue::new(1);
        assert!(q.arrive(at(Lane::Change, 0, 9), "busy"));
        assert!(!q.arrive(at(Lane::Resync, 5, 1), "dropped"));
        assert!(!q.arrive(at(Lane::Resync, 5, 1), "next"));
        assert!(!q.arrive(at(Lane::Resync, 60, 2), "younger"));
        assert_eq!(q.release(), Some("dropped"));
        assert_eq!(q.waiting(Lane::Resync), 2, "next and younger");
        assert!(q.spec_changed(1));
        assert_eq!(q.waiting(Lane::Resync), 1);
        assert_eq!(q.release(), Some("next"), "moved to the change lane");
        assert_eq!(q.release(), Some("younger"));
    }

    #[tokio::test]
    async fn permits_bound_reconciles_and_pass_on_when_dropped() {
        let admission = Admission::new(1, Family::default(), Histogram::new([1.0]));
        let tenant = |name: &str, created: i64| {
            let mut ct = crate::validate::tests::sample();
            ct.metadata.name = Some(name.into());
            ct.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::from_second(created).unwrap(),
                ));
            ct
        };
        let (young, old) = (tenant("young", 200), tenant("old", 100));
        let first = admission.admit(&tenant("first", 300)).await.unwrap();
        let admission = Arc::new(admission);
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for ct in [young, old] {
            let (a, tx) = (admission.clone(), order_tx.clone());
            tasks.push(tokio::spawn(async move {
                let _p = a.admit(&ct).await.unwrap();
                tx.send(ct.name_any()).unwrap();
            }));
            tokio::task::yield_now().await;
        }
        // A waiter whose reconcile is dropped is passed over.
        let dropped = {
            let a = admission.clone();
            let ct = tenant("dropped", 1);
            tokio::spawn(async move { a.admit(&ct).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        dropped.abort();
        let _ = dropped.await;
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(order.recv().await.unwrap(), "old");
        assert_eq!(order.recv().await.unwrap(), "young");
        assert!(
            admission.admit(&tenant("after", 1)).await.is_some(),
            "the slot is free again"
        );
    }
}
