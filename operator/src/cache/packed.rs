//! A watch-fed store that keeps each object as deflate-compressed JSON, with
//! its key and labels beside it uncompressed (so a label query decodes only
//! what matches).
//!
//! Why not `kube::runtime::reflector::Store`: a typed object is far larger in
//! memory than its JSON. On 2026-12-01 a heap profile of the operator holding
//! 1,000 tenants (`heaptrack`, `make bench-operator ARGS="--tenants 1000
//! --isolation schema --replicas 1 --hold"`) put 32.8 MiB in the reflector's
//! Deployment clones alone: about 16 KiB per cached Deployment, whose JSON
//! is about 5 KiB and deflates to about 1.5 KiB. Reads decode on demand (a
//! few microseconds for a Deployment); a reconcile reads a handful.
//!
//! The children of different tenants are nearly the same object: each store
//! deflates against a preset dictionary (RFC 1951 matches reaching into
//! text the decoder already holds, as zlib's `deflateSetDictionary`), the
//! JSON of the first object it packed, kept for the store's life (without
//! a Secret's or ConfigMap's values: [`redacted`]). A
//! Deployment then packs into a few hundred bytes, not 1.5 KiB
//! (`a_deployment_is_kept_in_a_fraction_of_its_json`). Labels are kept as
//! one `key=value` line each in one string, one allocation per object.
//!
//! The events follow the reflector's semantics: objects of an initial list
//! (`Init`, `InitApply`..., `InitDone`) replace the store only when the list
//! is complete, and the store is ready once its first list is.

use std::{
    collections::HashMap,
    marker::PhantomData,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use kube::{ResourceExt, runtime::watcher};
use serde::{Serialize, de::DeserializeOwned};

/// `namespace/name`.
type Key = Box<str>;

fn key(namespace: &str, name: &str) -> Key {
    format!("{namespace}/{name}").into_boxed_str()
}

/// The namespace part of a [`Key`] (namespaces hold no `/`).
fn namespace_of(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

/// The longest dictionary deflate can use: its window, 32 KiB.
const MAX_DICTIONARY: usize = 32 * 1024;

/// One stored object.
struct Packed {
    /// `key=value` per label, one per line (label keys and values hold
    /// neither `=` nor a line break).
    labels: Box<str>,
    /// The object's JSON, deflated against the store's dictionary.
    deflated: Box<[u8]>,
}

impl Packed {
    fn has_label(&self, key: &str, value: &str) -> bool {
        self.labels
            .split('\n')
            .any(|kv| kv.split_once('=') == Some((key, value)))
    }
}

#[derive(Default)]
struct Shared {
    objects: RwLock<HashMap<Key, Packed>>,
    /// The objects of an initial list in progress (`None`: no list).
    listing: Mutex<Option<HashMap<Key, Packed>>>,
    ready: tokio::sync::watch::Sender<bool>,
    /// The preset dictionary: the JSON of the first object packed.
    dictionary: OnceLock<Box<[u8]>>,
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
    /// Compression.
    #[error("deflate: {0}")]
    Compress(#[from] flate2::CompressError),
    /// Decompression.
    #[error("inflate: {0}")]
    Decompress(#[from] flate2::DecompressError),
    /// The compressed stream ended early or never ended.
    #[error("inflate: truncated stream")]
    Truncated,
    /// (De)serialization.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// `json` as a raw deflate stream (RFC 1951) primed with `dictionary`.
fn deflate(json: &[u8], dictionary: &[u8]) -> Result<Box<[u8]>, PackError> {
    let mut c = Compress::new(Compression::default(), false);
    if !dictionary.is_empty() {
        c.set_dictionary(dictionary)?;
    }
    let mut out = Vec::with_capacity(json.len() / 4 + 64);
    loop {
        let read = usize::try_from(c.total_in()).unwrap_or(json.len());
        let rest = json.get(read..).unwrap_or_default();
        match c.compress_vec(rest, &mut out, FlushCompress::Finish)? {
            Status::StreamEnd => break,
            Status::Ok | Status::BufError => out.reserve(out.capacity().max(64)),
        }
    }
    Ok(out.into_boxed_slice())
}

/// The inverse of [`deflate`] with the same `dictionary`.
fn inflate(deflated: &[u8], dictionary: &[u8]) -> Result<Vec<u8>, PackError> {
    let mut d = Decompress::new(false);
    if !dictionary.is_empty() {
        d.set_dictionary(dictionary)?;
    }
    let mut out = Vec::with_capacity(deflated.len() * 8 + 256);
    loop {
        let read = usize::try_from(d.total_in()).unwrap_or(deflated.len());
        let rest = deflated.get(read..).unwrap_or_default();
        let before = (d.total_in(), d.total_out());
        match d.decompress_vec(rest, &mut out, FlushDecompress::Finish)? {
            Status::StreamEnd => return Ok(out),
            _ if out.len() == out.capacity() => out.reserve(out.capacity()),
            // No room was missing and nothing moved: the input ended early.
            _ if before == (d.total_in(), d.total_out()) => return Err(PackError::Truncated),
            _ => {}
        }
    }
}

/// `json` without the values of a Secret or ConfigMap (`data`,
/// `stringData`, `binaryData`), for a dictionary: it outlives the object it
/// came from, and must not keep a tenant's password or key after the Secret
/// changed or went (random values gain nothing from a dictionary anyway).
fn redacted(json: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(json) else {
        return Vec::new();
    };
    for field in ["data", "stringData", "binaryData"] {
        obj.remove(field);
    }
    serde_json::to_vec(&obj).unwrap_or_default()
}

impl Shared {
    /// The store's dictionary, made from `json` when it has none yet.
    fn dictionary(&self, json: &[u8]) -> &[u8] {
        self.dictionary.get_or_init(|| {
            let json = redacted(json);
            let start = json.len().saturating_sub(MAX_DICTIONARY);
            json.get(start..).unwrap_or_default().into()
        })
    }

    fn pack<K: Serialize + kube::Resource>(&self, obj: &K) -> Result<(Key, Packed), PackError> {
        let json = serde_json::to_vec(obj)?;
        let deflated = deflate(&json, self.dictionary(&json))?;
        let mut labels = String::new();
        for (k, v) in obj.labels() {
            if !labels.is_empty() {
                labels.push('\n');
            }
            labels.push_str(k);
            labels.push('=');
            labels.push_str(v);
        }
        Ok((
            key(&obj.namespace().unwrap_or_default(), &obj.name_any()),
            Packed {
                labels: labels.into_boxed_str(),
                deflated,
            },
        ))
    }

    fn unpack<K: DeserializeOwned>(&self, p: &Packed) -> Result<K, PackError> {
        let dictionary = self.dictionary.get().map_or(&[][..], |d| &d[..]);
        Ok(serde_json::from_slice(&inflate(&p.deflated, dictionary)?)?)
    }
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
        match self.shared.pack(obj) {
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
        self.decoded(self.objects().get(&key(namespace, name))?)
    }

    /// The objects in `namespace` whose labels include every pair of
    /// `labels`, decoded.
    pub fn labelled(&self, namespace: &str, labels: &[(&str, &str)]) -> Vec<Arc<K>> {
        self.objects()
            .iter()
            .filter(|(at, p)| {
                namespace_of(at) == namespace && labels.iter().all(|(k, v)| p.has_label(k, v))
            })
            .filter_map(|(_, p)| self.decoded(p))
            .collect()
    }

    fn decoded(&self, p: &Packed) -> Option<Arc<K>> {
        match self.shared.unpack(p) {
            Ok(obj) => Some(Arc::new(obj)),
            Err(e) => {
                tracing::warn!(error = %e, "could not read a cached object");
                None
            }
        }
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

    /// A realistic pod template: the env and probes the builder sets.
    fn realistic(ns: &str, name: &str, tenant: &str) -> Deployment {
        let mut d = deployment(ns, name, tenant, "ghcr.io/chorus/chat-runtime:0.6.0");
        let env: Vec<_> = (0..30)
            .map(|i| serde_json::json!({"name": format!("CHAT_SETTING_{i}"), "value": format!("{tenant}-value-{i}")}))
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
        d
    }

    #[test]
    fn a_deployment_is_kept_in_a_fraction_of_its_json() {
        let store = PackedStore::<Deployment>::default();
        let first = realistic("a", "t-blue", "t");
        let json = serde_json::to_vec(&first).unwrap().len();
        store.apply_watcher_event(&watcher::Event::Apply(first));
        let (n, bytes) = store.footprint();
        assert_eq!(n, 1);
        assert!(bytes * 2 < json, "{bytes} deflated bytes of {json}");

        // Another tenant's Deployment packs against the first one's JSON.
        let other = realistic("b", "other-tenant-blue", "other-tenant");
        store.apply_watcher_event(&watcher::Event::Apply(other.clone()));
        let (n, total) = store.footprint();
        assert_eq!(n, 2);
        let second = total - bytes;
        assert!(second * 8 < json, "{second} deflated bytes of {json}");
        assert_eq!(
            *store.get("b", "other-tenant-blue").unwrap(),
            other,
            "round trip"
        );
    }

    #[test]
    fn a_dictionary_keeps_no_secret_value() {
        use k8s_openapi::{ByteString, api::core::v1::Secret};
        let store = PackedStore::<Secret>::default();
        let mut secret = Secret::default();
        secret.metadata.name = Some("t-db".into());
        secret.metadata.namespace = Some("a".into());
        secret.data = Some(
            [(
                "password".to_string(),
                ByteString(b"hunter2-hunter2".to_vec()),
            )]
            .into(),
        );
        store.apply_watcher_event(&watcher::Event::Apply(secret.clone()));
        let dictionary = store.shared.dictionary.get().unwrap();
        let text = String::from_utf8_lossy(dictionary);
        assert!(text.contains("t-db"), "{text}");
        assert!(!text.contains("password"), "{text}");
        // base64 of the password.
        assert!(!text.contains("aHVudGVyMi1odW50ZXIy"), "{text}");
        assert_eq!(*store.get("a", "t-db").unwrap(), secret, "round trip");
    }

    #[test]
    fn a_damaged_stream_is_an_error_not_a_panic() {
        let json = serde_json::to_vec(&realistic("a", "t-blue", "t")).unwrap();
        let dictionary = b"{\"metadata\":{}}";
        let deflated = deflate(&json, dictionary).unwrap();
        assert_eq!(inflate(&deflated, dictionary).unwrap(), json);
        assert!(inflate(&deflated[..deflated.len() / 2], dictionary).is_err());
        assert_ne!(inflate(&deflated, b"another dictionary").ok(), Some(json));
    }
}
