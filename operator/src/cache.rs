//! The controller's cache of owned children: one store per child kind and
//! watch scope ([`packed::PackedStore`], each object kept as deflated JSON), filled by the very watches that start reconciles
//! (`controller/watches.rs` registers them). A reconcile reads the children
//! it applies, prunes and observes from here, so a resync of N tenants costs
//! no LIST and no GET of children: each kind is listed once when its watch
//! starts (and again only when the watch must relist).
//!
//! The cached objects carry no `managedFields` and no
//! `kubectl.kubernetes.io/last-applied-configuration` (neither is read, and
//! together they are about half of an object's size).
//!
//! Without a store for a kind and namespace (a unit test, Secrets when every
//! namespace is watched, the Gateway API HTTPRoute), callers read from the
//! apiserver as before. A store that has not finished its initial list is
//! waited for up to [`READY_WAIT`], then the callers read from the apiserver.

use std::{
    any::{Any, TypeId},
    sync::{Arc, RwLock},
    time::Duration,
};

use kube::Resource;

use crate::children::ChildKind;

pub mod packed;

pub use packed::PackedStore;

/// How long a reconcile waits for a store's initial list before it reads
/// from the apiserver instead.
pub const READY_WAIT: Duration = Duration::from_secs(20);

struct Entry {
    kind: TypeId,
    /// `None`: every namespace.
    scope: Option<String>,
    store: Box<dyn Any + Send + Sync>,
}

/// Stores of owned children by kind and watch scope.
#[derive(Default)]
pub struct ChildCache {
    entries: RwLock<Vec<Entry>>,
}

impl std::fmt::Debug for ChildCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.read().map(|e| e.len()).unwrap_or_default();
        f.debug_struct("ChildCache").field("stores", &n).finish()
    }
}

impl ChildCache {
    /// Registers the store of kind `K` for `scope` (`None`: every
    /// namespace), replacing an earlier one of the same kind and scope.
    pub fn register<K: ChildKind>(&self, scope: Option<String>, store: PackedStore<K>) {
        if let Ok(mut entries) = self.entries.write() {
            entries.retain(|e| !(e.kind == TypeId::of::<K>() && e.scope == scope));
            entries.push(Entry {
                kind: TypeId::of::<K>(),
                scope,
                store: Box::new(store),
            });
        }
    }

    /// Forgets every store (the controller stopped: its stores no longer
    /// follow the cluster).
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.write() {
            entries.clear();
        }
    }

    /// The store of kind `K` covering `namespace`, once it has listed;
    /// `None` when there is none or it did not list within [`READY_WAIT`].
    pub async fn store<K: ChildKind>(&self, namespace: &str) -> Option<PackedStore<K>> {
        let store = self.entries.read().ok()?.iter().find_map(|e| {
            let covers = e.scope.as_deref().is_none_or(|s| s == namespace);
            (e.kind == TypeId::of::<K>() && covers)
                .then(|| e.store.downcast_ref::<PackedStore<K>>().cloned())
                .flatten()
        })?;
        match tokio::time::timeout(READY_WAIT, store.wait_until_ready()).await {
            Ok(()) => Some(store),
            Err(_) => None,
        }
    }
}

/// One cached object of `store`.
pub fn cached<K: ChildKind>(store: &PackedStore<K>, namespace: &str, name: &str) -> Option<Arc<K>> {
    store.get(namespace, name)
}

/// Drops what the cache never reads from a watched object. Applied to every
/// object before it enters a store.
pub fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Drops what no reader of the controller's ChatTenant store uses: the
/// status, labels, annotations and `managedFields`. The store then holds the
/// spec and the identity the controller, the finalizer and Events need
/// (name, namespace, uid, resourceVersion, generation, finalizers, deletion
/// timestamp). This store was the largest item of the peak heap of 1,000
/// tenants, 2.8 MiB (heaptrack, docs/operations.md "Scale").
///
/// Whoever needs the status or the annotations reads the tenant fresh
/// ([`crate::controller`] does at the start of every reconcile, and before
/// the status write of a deletion that waits), as the status written a
/// moment ago may not have reached the watch yet anyway.
pub fn slim_tenant(ct: &mut crate::crd::ChatTenant) {
    slim(ct);
    ct.status = None;
    ct.metadata.labels = None;
    ct.metadata.annotations = None;
}

/// The cached objects of `store` in `namespace` whose labels include every
/// pair of `labels`.
pub fn labelled<K: ChildKind>(
    store: &PackedStore<K>,
    namespace: &str,
    labels: &[(&str, &str)],
) -> Vec<Arc<K>> {
    store.labelled(namespace, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
    use kube::{ResourceExt, runtime::watcher};

    fn deployment(ns: &str, name: &str, tenant: &str) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"chorus.dev/tenant": tenant},
                         "managedFields": [{"manager": "x"}],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "1"}}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_store_is_found_by_kind_and_scope_once_listed() {
        let cache = ChildCache::default();
        let writer = PackedStore::<Deployment>::default();
        cache.register(Some("a".into()), writer.clone());
        let mut d = deployment("a", "t-blue", "t");
        slim(&mut d);
        assert!(d.metadata.managed_fields.is_none());
        assert_eq!(d.annotations().len(), 1);
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(d));
        writer.apply_watcher_event(&watcher::Event::InitApply(deployment("a", "u-blue", "u")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let store = cache.store::<Deployment>("a").await.unwrap();
        assert!(cached(&store, "a", "t-blue").is_some());
        assert_eq!(
            labelled(&store, "a", &[("chorus.dev/tenant", "t")]).len(),
            1
        );
        assert!(cache.store::<Deployment>("b").await.is_none(), "scope");
        assert!(cache.store::<Service>("a").await.is_none(), "kind");
        cache.clear();
        assert!(cache.store::<Deployment>("a").await.is_none());
    }

    #[test]
    fn a_cached_tenant_keeps_its_spec_and_identity_only() {
        let mut ct = crate::validate::tests::sample();
        ct.metadata.finalizers = Some(vec!["chorus.dev/cleanup".into()]);
        ct.metadata.resource_version = Some("7".into());
        ct.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
        ct.status = Some(Box::new(crate::crd::ChatTenantStatus {
            endpoint: Some("http://x".into()),
            ..Default::default()
        }));
        let spec = serde_json::to_value(&ct.spec).unwrap();
        let before = serde_json::to_vec(&ct).unwrap().len();
        slim_tenant(&mut ct);
        assert!(ct.status.is_none() && ct.metadata.labels.is_none());
        assert_eq!(serde_json::to_value(&ct.spec).unwrap(), spec, "spec kept");
        assert_eq!(
            ct.metadata.finalizers.as_deref().map(<[String]>::len),
            Some(1)
        );
        assert_eq!(ct.metadata.resource_version.as_deref(), Some("7"));
        assert!(ct.metadata.uid.is_some() && ct.metadata.generation.is_some());
        assert!(serde_json::to_vec(&ct).unwrap().len() < before);
    }

    /// The store keeps one `ChatTenant` per tenant: its status and the
    /// optional parts of its spec are boxed, so an absent one costs a
    /// pointer, not its inline size (2,816 bytes before, status 1,104 of
    /// them).
    #[test]
    fn a_chat_tenant_is_small_inline() {
        let size = std::mem::size_of::<crate::crd::ChatTenant>();
        assert!(size <= 1024, "{size} bytes");
    }
}
