//! A watch-fed store that keeps each object as deflate-compressed JSON, with
//! its namespace, name and labels beside it uncompressed (so a label query
//! decodes only what matches).
//!
//! Why not `kube::runtime::reflector::Store`: a typed object is far larger in
//! memory than its JSON. On 2026-12-01 a heap profile of the operator holding
//! 1,000 tenants (`heaptrack`, `make bench-operator ARGS="--tenants 1000
//! --isolation schema --replicas 1 --hold"`) put 32.8 MiB in the reflector's
//! Deployment clones alone: about 16 KiB per cached Deployment, whose JSON
//! is about 5 KiB and deflates to about 1.5 KiB. Reads decode on demand (a
//! few microseconds for a Deployment); a reconcile reads a handful.
//!
//! The events follow the reflector's semantics: objects of an initial list
//! (`Init`, `InitApply`..., `InitDone`) replace the store only when the list
//! is complete, and the store is ready once its first list is.

use std::{
    collections::HashMap,
    io::Read,
    marker::PhantomData,
    sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use flate2::{Compression, read::DeflateDecoder, write::DeflateEncoder};
use kube::{ResourceExt, runtime::watcher};
use serde::{Serialize, de::DeserializeOwned};

/// `namespace/name`.
type Key = Box<str>;

fn key(namespace: &str, name: &str) -> Key {
    format!("{namespace}/{name}").into_boxed_str()
}

/// One stored object.
struct Packed {
    namespace: Box<str>,
    labels: Box<[(Box<str>, Box<str>)]>,
    /// The object's JSON, deflated.
    deflated: Box<[u8]>,
}

#[derive(Default)]
struct Shared {
    objects: RwLock<HashMap<Key, Packed>>,
    /// The objects of an initial list in progress (`None`: no list).
    listing: Mutex<Option<HashMap<Key, Packed>>>,
    ready: tokio::sync::watch::Sender<bool>,
}

/// The cached objects of kind `K` for one watch. Clones share the store.
pub struct PackedStore<K> {
    shared: Arc<Shared>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for PackedStore<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> Default for PackedStore<K> {
    fn default() -> Self {
        Self {
            shared: Arc::default(),
            kind: PhantomData,
        }
    }
}

/// Why an object could not be packed or unpacked (never expected: the JSON
/// comes from and goes to the same type).
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// (De)compression.
    #[error("deflate: {0}")]
    Io(#[from] std::io::Error),
    /// (De)serialization.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn pack<K: Serialize + kube::Resource>(obj: &K) -> Result<(Key, Packed), PackError> {
    let mut enc = DeflateEncoder::new(Vec::new(), Compression::fast());
    serde_json::to_writer(&mut enc, obj)?;
    let deflated = enc.finish()?.into_boxed_slice();
    let namespace = obj.namespace().unwrap_or_default();
    let mut labels: Vec<(Box<str>, Box<str>)> = obj
        .labels()
        .iter()
        .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
        .collect();
    labels.shrink_to_fit();
    Ok((
        key(&namespace, &obj.name_any()),
        Packed {
            namespace: namespace.into_boxed_str(),
            labels: labels.into_boxed_slice(),
            deflated,
        },
    ))
}

fn unpack<K: DeserializeOwned>(p: &Packed) -> Result<K, PackError> {
    let mut json = Vec::with_capacity(p.deflated.len() * 4);
    DeflateDecoder::new(&p.deflated[..]).read_to_end(&mut json)?;
    Ok(serde_json::from_slice(&json)?)
}

impl<K> PackedStore<K>
where
    K: kube::Resource + Serialize + DeserializeOwned,
{
    /// Applies one watch event (the reflector's `apply_watcher_event`).
    pub fn apply_watcher_event(&self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => *self.listing() = Some(HashMap::new()),
            watcher::Event::InitApply(obj) => {
                if let Some((k, p)) = self.packed(obj) {
                    self.listing().get_or_insert_with(HashMap::new).insert(k, p);
                }
            }
            watcher::Event::InitDone => {
                let listed = self.listing().take().unwrap_or_default();
                let mut objects = self.objects_mut();
                *objects = listed;
                objects.shrink_to_fit();
                drop(objects);
                self.shared.ready.send_replace(true);
            }
            watcher::Event::Apply(obj) => {
                let packed = self.packed(obj);
                let mut objects = self.objects_mut();
                match packed {
                    Some((k, p)) => {
                        objects.insert(k, p);
                    }
                    // Not the old version either: readers see none.
                    None => {
                        objects.remove(&key(&obj.namespace().unwrap_or_default(), &obj.name_any()));
                    }
                }
            }
            watcher::Event::Delete(obj) => {
                let k = key(&obj.namespace().unwrap_or_default(), &obj.name_any());
                self.objects_mut().remove(&k);
            }
        }
    }

    // Poisoning is ignored: no code panics while holding these locks, and
    // every write replaces whole entries.
    fn objects_mut(&self) -> RwLockWriteGuard<'_, HashMap<Key, Packed>> {
        self.shared
            .objects
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn objects(&self) -> RwLockReadGuard<'_, HashMap<Key, Packed>> {
        self.shared
            .objects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn listing(&self) -> MutexGuard<'_, Option<HashMap<Key, Packed>>> {
        self.shared
            .listing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn packed(&self, obj: &K) -> Option<(Key, Packed)> {
        match pack(obj) {
            Ok(kp) => Some(kp),
            Err(e) => {
                // Left out of the store (an older version too): a reader
                // then sees no object and applies it (a write, never a
                // skipped repair).
                tracing::warn!(error = %e, name = %obj.name_any(), "could not cache an object");
                None
            }
        }
    }

    /// Waits until the first initial list is stored.
    pub async fn wait_until_ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        // Err only when the sender is gone, and `self` holds it.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Whether the first initial list is stored.
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// The object `namespace/name`, decoded.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        decoded(self.objects().get(&key(namespace, name))?)
    }

    /// The objects in `namespace` whose labels include every pair of
    /// `labels`, decoded.
    pub fn labelled(&self, namespace: &str, labels: &[(&str, &str)]) -> Vec<Arc<K>> {
        self.objects()
            .values()
            .filter(|p| {
                &*p.namespace == namespace
                    && labels
                        .iter()
                        .all(|(k, v)| p.labels.iter().any(|(pk, pv)| &**pk == *k && &**pv == *v))
            })
            .filter_map(decoded)
            .collect()
    }

    /// How many objects are stored, and their deflated bytes.
    pub fn footprint(&self) -> (usize, usize) {
        let objects = self.objects();
        (
            objects.len(),
            objects.values().map(|p| p.deflated.len()).sum(),
        )
    }
}

fn decoded<K: DeserializeOwned>(p: &Packed) -> Option<Arc<K>> {
    match unpack(p) {
        Ok(obj) => Some(Arc::new(obj)),
        Err(e) => {
            tracing::warn!(error = %e, "could not read a cached object");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;

    fn deployment(ns: &str, name: &str, tenant: &str, image: &str) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"chorus.dev/tenant": tenant, "app": "chat"}},
            "spec": {"selector": {"matchLabels": {"app": "chat"}}, "template": {"spec": {"containers": [{"name": "chat", "image": image}]}}},
            "status": {"availableReplicas": 2}
        }))
        .unwrap()
    }

    fn image(d: &Deployment) -> &str {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .as_deref()
            .unwrap()
    }

    #[tokio::test]
    async fn an_initial_list_replaces_the_store_when_complete() {
        let store = PackedStore::<Deployment>::default();
        assert!(!store.is_ready());
        store.apply_watcher_event(&watcher::Event::Init);
        store.apply_watcher_event(&watcher::Event::InitApply(deployment(
            "a", "t-blue", "t", "v1",
        )));
        assert!(store.get("a", "t-blue").is_none(), "listed, not done");
        store.apply_watcher_event(&watcher::Event::InitDone);
        store.wait_until_ready().await;
        let d = store.get("a", "t-blue").unwrap();
        assert_eq!(*d, deployment("a", "t-blue", "t", "v1"), "round trip");

        store.apply_watcher_event(&watcher::Event::Apply(deployment("a", "t-blue", "t", "v2")));
        assert_eq!(image(&store.get("a", "t-blue").unwrap()), "v2");
        store.apply_watcher_event(&watcher::Event::Apply(deployment("a", "u-blue", "u", "v1")));

        // A relist keeps serving the old objects until it is done, then
        // forgets what it did not list.
        store.apply_watcher_event(&watcher::Event::Init);
        store.apply_watcher_event(&watcher::Event::InitApply(deployment(
            "a", "u-blue", "u", "v3",
        )));
        assert!(store.get("a", "t-blue").is_some());
        store.apply_watcher_event(&watcher::Event::InitDone);
        assert!(store.get("a", "t-blue").is_none());
        assert_eq!(image(&store.get("a", "u-blue").unwrap()), "v3");

        store.apply_watcher_event(&watcher::Event::Delete(deployment(
            "a", "u-blue", "u", "v3",
        )));
        assert_eq!(store.footprint().0, 0);
    }

    #[test]
    fn a_label_query_matches_namespace_and_every_pair() {
        let store = PackedStore::<Deployment>::default();
        for (ns, name, tenant) in [
            ("a", "t-blue", "t"),
            ("a", "t-green", "t"),
            ("a", "u-blue", "u"),
            ("b", "t-blue", "t"),
        ] {
            store.apply_watcher_event(&watcher::Event::Apply(deployment(ns, name, tenant, "v1")));
        }
        let mut names: Vec<_> = store
            .labelled("a", &[("chorus.dev/tenant", "t"), ("app", "chat")])
            .iter()
            .map(|d| d.name_any())
            .collect();
        names.sort();
        assert_eq!(names, ["t-blue", "t-green"]);
        assert!(
            store
                .labelled("a", &[("chorus.dev/tenant", "t"), ("app", "x")])
                .is_empty()
        );
        assert_eq!(store.labelled("c", &[]).len(), 0);
        assert_eq!(store.labelled("b", &[]).len(), 1);
    }

    #[test]
    fn a_deployment_is_kept_in_a_fraction_of_its_json() {
        let store = PackedStore::<Deployment>::default();
        let mut d = deployment("a", "t-blue", "t", "v1");
        // A realistic pod template: the env and probes the builder sets.
        let env: Vec<_> = (0..30)
            .map(|i| serde_json::json!({"name": format!("CHAT_SETTING_{i}"), "value": format!("value-{i}")}))
            .collect();
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .env = serde_json::from_value(serde_json::Value::Array(env)).unwrap();
        let json = serde_json::to_vec(&d).unwrap().len();
        store.apply_watcher_event(&watcher::Event::Apply(d));
        let (n, bytes) = store.footprint();
        assert_eq!(n, 1);
        assert!(bytes * 2 < json, "{bytes} deflated bytes of {json}");
    }
}
