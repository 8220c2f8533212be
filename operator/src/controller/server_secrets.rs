//! The database servers' admin Secrets, read once per change instead of once
//! per reconcile.
//!
//! Every reconcile needs its server's admin Secret. The operator already
//! watches the server namespace's Secrets' metadata ([`super::referenced`]),
//! so it knows each Secret's current `resourceVersion`; the data read at that
//! version is reused until the watch reports another (or the deletion).
//! Before the watch has listed, and for a version it has not seen, the
//! Secret is read as before. A change the watch has not delivered yet is
//! caught up when it is: the same event reconciles every tenant naming the
//! Secret.
//!
//! Measured on 1,000 tenants (`make bench-operator`): the server Secret was
//! a third of the operator's `GET secrets` (one of three per reconcile).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
};

use k8s_openapi::ByteString;
use kube::runtime::watcher;

/// A Secret's data.
pub(super) type SecretData = BTreeMap<String, ByteString>;

/// What the watch saw and what was read, by Secret name.
#[derive(Debug, Default)]
pub(super) struct ServerSecrets {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The `resourceVersion` the watch last saw.
    seen: HashMap<String, String>,
    /// The names of an initial list in progress.
    listing: Option<HashSet<String>>,
    /// The data read, with its `resourceVersion`.
    read: HashMap<String, (String, SecretData)>,
}

impl ServerSecrets {
    /// Follows one metadata watch event of the server namespace.
    pub(super) fn follow<K: kube::Resource>(&self, event: &watcher::Event<K>) {
        let Ok(mut s) = self.inner.lock() else {
            return;
        };
        let name_rv = |o: &K| {
            let m = o.meta();
            Some((m.name.clone()?, m.resource_version.clone()?))
        };
        match event {
            watcher::Event::Init => s.listing = Some(HashSet::new()),
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                if let Some((name, rv)) = name_rv(o) {
                    if let Some(l) = s.listing.as_mut() {
                        l.insert(name.clone());
                    }
                    s.seen.insert(name, rv);
                }
            }
            watcher::Event::InitDone => {
                // A Secret deleted while the watch was down is not listed.
                if let Some(listed) = s.listing.take() {
                    s.seen.retain(|n, _| listed.contains(n));
                    s.read.retain(|n, _| listed.contains(n));
                }
            }
            watcher::Event::Delete(o) => {
                if let Some(name) = o.meta().name.as_deref() {
                    s.seen.remove(name);
                    s.read.remove(name);
                }
            }
        }
    }

    /// The data of Secret `name` read at the version the watch saw last;
    /// `None` when it must be read.
    pub(super) fn current(&self, name: &str) -> Option<SecretData> {
        let s = self.inner.lock().ok()?;
        let seen = s.seen.get(name)?;
        let (rv, data) = s.read.get(name)?;
        (rv == seen).then(|| data.clone())
    }

    /// Keeps what a read of Secret `name` returned.
    pub(super) fn remember(&self, name: &str, resource_version: Option<&str>, data: &SecretData) {
        if let (Ok(mut s), Some(rv)) = (self.inner.lock(), resource_version) {
            s.read
                .insert(name.to_string(), (rv.to_string(), data.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;

    fn secret(name: &str, rv: &str) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "chorus-system", "resourceVersion": rv}
        }))
        .unwrap()
    }

    fn data(v: &str) -> SecretData {
        BTreeMap::from([("host".to_string(), ByteString(v.as_bytes().to_vec()))])
    }

    #[test]
    fn a_read_is_reused_until_the_watch_sees_another_version() {
        let s = ServerSecrets::default();
        s.remember("pg", Some("1"), &data("a"));
        assert_eq!(s.current("pg"), None, "the watch has not seen it");
        s.follow(&watcher::Event::<Secret>::Init);
        s.follow(&watcher::Event::InitApply(secret("pg", "1")));
        s.follow(&watcher::Event::<Secret>::InitDone);
        assert_eq!(s.current("pg"), Some(data("a")));
        s.follow(&watcher::Event::Apply(secret("pg", "2")));
        assert_eq!(s.current("pg"), None, "changed: read again");
        s.remember("pg", Some("2"), &data("b"));
        assert_eq!(s.current("pg"), Some(data("b")));
        // A read that raced behind the watch is not taken as current.
        s.remember("pg", Some("1"), &data("a"));
        assert_eq!(s.current("pg"), None);
    }

    #[test]
    fn a_deleted_secret_is_read_again() {
        let s = ServerSecrets::default();
        s.follow(&watcher::Event::Apply(secret("pg", "1")));
        s.remember("pg", Some("1"), &data("a"));
        s.follow(&watcher::Event::Delete(secret("pg", "1")));
        assert_eq!(s.current("pg"), None);

        // Deleted while the watch was down: the relist does not have it.
        s.follow(&watcher::Event::Apply(secret("pg", "3")));
        s.remember("pg", Some("3"), &data("c"));
        s.follow(&watcher::Event::<Secret>::Init);
        s.follow(&watcher::Event::InitApply(secret("other", "7")));
        assert_eq!(s.current("pg"), Some(data("c")), "until the list is done");
        s.follow(&watcher::Event::<Secret>::InitDone);
        assert_eq!(s.current("pg"), None);
    }
}
