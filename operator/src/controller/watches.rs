//! What starts a reconcile: the ChatTenant watch (spec, finalizer and
//! deletion changes only, so status writes do not echo back), the Secrets
//! tenants name ([`super::referenced`]), every owned kind from the one list
//! ([`crate::children`]), backup Jobs (by their `chorus.dev/backup-of`
//! label), and the resync each reconcile asks for.

use std::{collections::HashMap, sync::Arc};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::DynamicObject,
    runtime::{Controller, WatchStreamExt, controller, reflector, reflector::ObjectRef, watcher},
};

use super::{Context, error_policy, reconcile, referenced};
use crate::{
    build::backup::BACKUP_OF_LABEL,
    cache,
    children::{ChildKind, Children, KindFold},
    crd::ChatTenant,
    database::connections::INTERVAL,
    names::managed_selector,
};

/// Runs the controller until `shutdown` resolves: one over every namespace,
/// or one per namespace of `Settings::watch_namespaces` (each with its own
/// watches, so the operator needs RBAC in those namespaces only).
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt;
    let shutdown = shutdown.shared();
    let scopes = scopes(&ctx.settings.watch_namespaces);
    ctx.health.controller_started(scopes.len());
    let stopped = ctx.clone();
    // Stopped when aborted (lease lost) as well as on return.
    let _stopped = scopeguard(move || {
        stopped.health.controller_stopped();
        stopped.children.clear();
        stopped.server_secrets.clear();
    });
    let controllers = futures::future::join_all(
        scopes
            .into_iter()
            .map(|ns| run_scope(ctx.clone(), ns, shutdown.clone())),
    );
    // The database servers' connection figures, while this replica leads.
    tokio::select! {
        _ = controllers => {}
        _ = collect_connections(ctx.clone()) => {}
        _ = renew_recorder(ctx.clone()) => {}
    }
}

/// Lets the Event recorder be replaced every minute when it is old enough
/// (`Context::renew_recorder`). Never returns.
async fn renew_recorder(ctx: Arc<Context>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        every.tick().await;
        ctx.renew_recorder();
    }
}

/// Reads the connection figures of every database server provisioned on,
/// every [`INTERVAL`], into the operator's gauges. Never returns.
async fn collect_connections(ctx: Arc<Context>) {
    let mut every = tokio::time::interval(INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let figures = ctx.databases.connections().await;
        ctx.metrics.observe_connections(&figures);
    }
}

/// `None` (every namespace) or each listed namespace once. Pure.
fn scopes(namespaces: &[String]) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = Vec::new();
    for ns in namespaces {
        if !out.iter().any(|o| o.as_deref() == Some(ns.as_str())) {
            out.push(Some(ns.clone()));
        }
    }
    if out.is_empty() {
        out.push(None);
    }
    out
}

async fn run_scope(
    ctx: Arc<Context>,
    ns: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let tenants: Api<ChatTenant> = namespaced_or_all(&client, &ns);
    // Only spec changes (generation), finalizer changes and deletion start a
    // reconcile from the ChatTenant itself, so status writes do not echo back.
    let (reader, writer) = reflector::store();
    let edits = ctx.clone();
    let main = watcher(tenants, watcher::Config::default().any_semantic())
        .default_backoff()
        // Spec and identity only: reconciles read the tenant fresh.
        .modify(cache::slim_tenant)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_changes, Default::default())
        // An edit does not wait behind the tenant's resync.
        .inspect_ok(move |ct| edits.admission.spec_changed(ct));
    // Readiness: this store has its initial list. Never completes: it ends
    // with the controller (returned or aborted).
    let health = ctx.health.clone();
    let ready = reader.clone();
    let readiness = async move {
        if ready.wait_until_ready().await.is_ok() {
            health.store_ready();
        }
        futures::future::pending::<()>().await
    };
    let (referenced, to_tenants) = referenced::secret_events(
        &client,
        &ctx.settings,
        ns.as_deref(),
        reader.clone(),
        ctx.server_secrets.clone(),
    );
    // A burst of child events for one tenant (its children created, its
    // pods coming up) makes one reconcile, not one each. No limit here:
    // reconciles wait for a slot in `admission`'s order, not in
    // kube-runtime's.
    let config = controller::Config::default()
        .concurrency(0)
        .debounce(DEBOUNCE);
    let controller = Controller::for_stream(main, reader)
        .with_config(config)
        .watches_stream(referenced, to_tenants);
    // Backup Jobs belong to the CronJob, not the tenant: they map to their
    // tenant by label, so a finished backup updates the status at once.
    let controller = controller.watches(
        namespaced_or_all::<Job>(&client, &ns),
        watcher::Config::default().labels(BACKUP_OF_LABEL),
        |job: Job| {
            let tenant = job.labels().get(BACKUP_OF_LABEL)?.clone();
            Some(ObjectRef::new(&tenant).within(&job.namespace()?))
        },
    );
    let Owns { controller, .. } = Children::default().fold(Owns {
        controller,
        client,
        ctx: ctx.clone(),
        namespace: ns,
        config: watcher::Config::default().labels(&managed_selector()),
    });
    let running = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(tenant = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile stream error"),
            }
        });
    tokio::select! {
        _ = running => {},
        _ = readiness => {},
    }
}

/// How long a tenant's reconcile waits for more events about it (each new
/// event restarts the wait). It sits on the path of every step of a new
/// tenant (finalizer, provisioning, Ready), so it is short: with 1,000
/// tenants applied at once (`make bench-operator`, README "Operator at
/// scale") 100 ms gave the first Ready after 4.5, 4.8 and 5.1 s against
/// 4.9, 5.3 and 5.3 s with 500 ms, the same time to all Ready (99 to 100 s)
/// and 1 % more reconciles.
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

fn namespaced_or_all<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Adds a watch of every owned kind to the controller, feeding a
/// [`cache::PackedStore`] the reconciles read ([`crate::cache`]).
struct Owns {
    controller: Controller<ChatTenant>,
    client: Client,
    ctx: Arc<Context>,
    namespace: Option<String>,
    config: watcher::Config,
}

impl KindFold<'_> for Owns {
    fn kind<K: ChildKind>(self, _: &[K]) -> Self {
        // Watching every namespace, owned Secrets are not watched: the
        // cluster-wide RBAC has no list/watch on Secrets (a Secret deleted by
        // hand comes back at the next resync).
        if self.namespace.is_none() && K::kind(&()) == "Secret" {
            return self;
        }
        let api = namespaced_or_all::<K>(&self.client, &self.namespace);
        let store = cache::PackedStore::<K>::default();
        self.ctx
            .children
            .register(self.namespace.clone(), store.clone());
        let mut last = HashMap::new();
        let stream = watcher(api, self.config.clone())
            .default_backoff()
            .modify(cache::slim::<K>)
            .inspect(move |event| {
                if let Ok(event) = event {
                    store.apply_watcher_event(event);
                }
            })
            .filter_map(move |event| futures::future::ready(trigger(&mut last, event)));
        Self {
            controller: self.controller.owns_stream(stream),
            ..self
        }
    }

    /// Not watched: the Gateway API may not be served, and a watch of a
    /// kind that is not served fails. A hand-edited route is repaired at the
    /// next resync.
    fn http_route(self, _: Option<&DynamicObject>) -> Self {
        self
    }
}

/// Which events of an owned child start a reconcile of its tenant: a
/// deletion always; a new or changed object only when [`trigger_hash`]
/// changed (not for its own `resourceVersion`, nor for the status of a kind
/// whose status the operator does not read). `last` holds the hash of each
/// object seen, by a hash of its namespace and name (16 bytes an object,
/// where an `ObjectRef` key held four strings).
fn trigger<K: ChildKind>(
    last: &mut HashMap<u64, u64>,
    event: Result<watcher::Event<K>, watcher::Error>,
) -> Option<Result<K, watcher::Error>> {
    match event {
        Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
            let hash = trigger_hash(&obj);
            (last.insert(object_key(&obj), hash) != Some(hash)).then_some(Ok(obj))
        }
        Ok(watcher::Event::Delete(obj)) => {
            last.remove(&object_key(&obj));
            Some(Ok(obj))
        }
        Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        Err(e) => Some(Err(e)),
    }
}

/// A hash of `obj`'s namespace and name. Pure. Also the tenant's key in
/// the reconcile queue ([`super::admission`]).
pub(super) fn object_key<K: kube::Resource>(obj: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.meta().namespace.hash(&mut h);
    obj.meta().name.hash(&mut h);
    h.finish()
}

/// The Deployment status fields a reconcile reads
/// (`dereference::observe_deployments`).
const DEPLOYMENT_STATUS_READ: [&str; 4] = [
    "observedGeneration",
    "replicas",
    "updatedReplicas",
    "availableReplicas",
];

/// A hash of what a reconcile reads of an owned child: the object without
/// `metadata.resourceVersion` and without `status`, except for the fields
/// of a Deployment's status the rollout reads. Pure.
fn trigger_hash<K: ChildKind>(obj: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(meta) = v
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    if let Some(o) = v.as_object_mut() {
        match o.remove("status") {
            // Only the fields the rollout and the status read: the
            // controller manager rewrites the rest (readyReplicas,
            // condition times) several times while pods come up.
            Some(status) if K::kind(&()) == "Deployment" => {
                let read: serde_json::Map<String, serde_json::Value> = DEPLOYMENT_STATUS_READ
                    .iter()
                    .filter_map(|k| Some((k.to_string(), status.get(*k)?.clone())))
                    .collect();
                o.insert("status".into(), read.into());
            }
            _ => {}
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// The predicate of the main watch: generation, finalizers and the deletion
/// mark. Status and label/annotation writes do not change it.
fn spec_changes(ct: &ChatTenant) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ct.metadata.generation.hash(&mut h);
    ct.metadata.finalizers.hash(&mut h);
    ct.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::sample;

    #[test]
    fn one_controller_per_listed_namespace_or_one_for_all() {
        assert_eq!(scopes(&[]), [None]);
        assert_eq!(
            scopes(&["a".into(), "b".into(), "a".into()]),
            [Some("a".to_string()), Some("b".to_string())]
        );
    }

    #[test]
    fn a_child_starts_a_reconcile_when_what_is_read_of_it_changes() {
        use k8s_openapi::api::{apps::v1::Deployment, policy::v1::PodDisruptionBudget};
        let pdb = |rv: &str, healthy: i32| -> PodDisruptionBudget {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "a", "namespace": "n", "resourceVersion": rv},
                "status": {"currentHealthy": healthy, "desiredHealthy": 1, "disruptionsAllowed": 0, "expectedPods": 2}
            }))
            .unwrap()
        };
        let mut last = HashMap::new();
        let mut fire = |e| trigger(&mut last, Ok(e)).is_some();
        assert!(fire(watcher::Event::InitApply(pdb("1", 0))));
        assert!(!fire(watcher::Event::Apply(pdb("2", 1))), "PDB status only");
        assert!(fire(watcher::Event::Delete(pdb("2", 1))), "deletion");
        assert!(fire(watcher::Event::Apply(pdb("3", 1))), "created again");
        let deployment = |available: i32| -> Deployment {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "a", "namespace": "n"},
                "status": {"availableReplicas": available}
            }))
            .unwrap()
        };
        let mut last = HashMap::new();
        let mut fire = |e| trigger(&mut last, Ok(e)).is_some();
        assert!(fire(watcher::Event::Apply(deployment(0))));
        assert!(
            fire(watcher::Event::Apply(deployment(1))),
            "Deployment status is read"
        );
        assert!(!fire(watcher::Event::Apply(deployment(1))));
        let mut ready_only = deployment(1);
        if let Some(st) = ready_only.status.as_mut() {
            st.ready_replicas = Some(2);
            st.conditions = Some(vec![Default::default()]);
        }
        assert!(
            !fire(watcher::Event::Apply(ready_only)),
            "status fields the reconcile does not read"
        );
    }

    #[test]
    fn only_spec_finalizers_and_deletion_start_a_reconcile() {
        let ct = sample();
        let mut status_only = ct.clone();
        status_only.status = Some(Default::default());
        status_only.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
        assert_eq!(spec_changes(&ct), spec_changes(&status_only));
        let mut new_generation = ct.clone();
        new_generation.metadata.generation = Some(4);
        assert_ne!(spec_changes(&ct), spec_changes(&new_generation));
        let mut finalized = ct.clone();
        finalized.metadata.finalizers = Some(vec!["chorus.dev/cleanup".into()]);
        assert_ne!(spec_changes(&ct), spec_changes(&finalized));
    }
}
