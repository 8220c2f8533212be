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
//! Each watch scope (one controller per namespace of
//! `CHORUS_WATCH_NAMESPACE`, or one for all) keeps its own versions and
//! reads, fed only by its own watch of the server namespace: the event that
//! reconciles a scope's tenants has then always reached the versions those
//! reconciles compare with (a lagging watch of another scope cannot take
//! them back). Everything is forgotten when the controller stops (a lost
//! lease), and a read is reused for at most [`MAX_AGE`], so a watch that
//! stops delivering cannot keep old data for longer.
//!
//! Measured on 1,000 tenants (`make bench-operator`): the server Secret was
//! a third of the operator's `GET secrets` (one of three per reconcile).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::ByteString;
use kube::runtime::watcher;

/// A Secret's data.
pub(super) type SecretData = BTreeMap<String, ByteString>;

/// The longest a read is reused, whatever the watch says.
pub(super) const MAX_AGE: Duration = Duration::from_secs(300);

/// A watch scope: `None` for every namespace, or one namespace.
pub(super) type Scope = Option<String>;

/// What each scope's watch saw and what was read, by Secret name.
#[derive(Debug, Default)]
pub(super) struct ServerSecrets {
    scopes: Mutex<HashMap<Scope, Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The `resourceVersion` the watch last saw.
    seen: HashMap<String, String>,
    /// The names of an initial list in progress.
    listing: Option<HashSet<String>>,
    /// The data read, with its `resourceVersion` and when.
    read: HashMap<String, (String, SecretData, Instant)>,
}

impl ServerSecrets {
    fn lock(&self) -> MutexGuard<'_, HashMap<Scope, Inner>> {
        self.scopes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows one event of `scope`'s metadata watch of the server namespace.
    pub(super) fn follow<K: kube::Resource>(&self, scope: &Scope, event: &watcher::Event<K>) {
        let mut scopes = self.lock();
        let s = scopes.entry(scope.clone()).or_default();
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

    /// The data of Secret `name` read at the version `scope`'s watch saw
    /// last, within [`MAX_AGE`]; `None` when it must be read.
    pub(super) fn current(&self, scope: &Scope, name: &str) -> Option<SecretData> {
        let scopes = self.lock();
        let s = scopes.get(scope)?;
        let seen = s.seen.get(name)?;
        let (rv, data, at) = s.read.get(name)?;
        (rv == seen && at.elapsed() < MAX_AGE).then(|| data.clone())
    }

    /// Keeps what a read of Secret `name` returned, for `scope`.
    pub(super) fn remember(
        &self,
        scope: &Scope,
        name: &str,
        resource_version: Option<&str>,
        data: &SecretData,
    ) {
        if let Some(rv) = resource_version {
            self.lock().entry(scope.clone()).or_default().read.insert(
                name.to_string(),
                (rv.to_string(), data.clone(), Instant::now()),
            );
        }
    }

    /// Forgets everything (the controller stopped: its watches no longer
    /// follow the Secrets).
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;

    const ALL: Scope = None;

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
        s.remember(&ALL, "pg", Some("1"), &data("a"));
        assert_eq!(s.current(&ALL, "pg"), None, "the watch has not seen it");
        s.follow(&ALL, &watcher::Event::<Secret>::Init);
        s.follow(&ALL, &watcher::Event::InitApply(secret("pg", "1")));
        s.follow(&ALL, &watcher::Event::<Secret>::InitDone);
        assert_eq!(s.current(&ALL, "pg"), Some(data("a")));
        s.follow(&ALL, &watcher::Event::Apply(secret("pg", "2")));
        assert_eq!(s.current(&ALL, "pg"), None, "changed: read again");
        s.remember(&ALL, "pg", Some("2"), &data("b"));
        assert_eq!(s.current(&ALL, "pg"), Some(data("b")));
        // A read that raced behind the watch is not taken as current.
        s.remember(&ALL, "pg", Some("1"), &data("a"));
        assert_eq!(s.current(&ALL, "pg"), None);
        s.remember(&ALL, "pg", Some("2"), &data("b"));
        s.clear();
        assert_eq!(s.current(&ALL, "pg"), None, "forgotten when stopped");
    }

    #[test]
    fn a_deleted_secret_is_read_again() {
        let s = ServerSecrets::default();
        s.follow(&ALL, &watcher::Event::Apply(secret("pg", "1")));
        s.remember(&ALL, "pg", Some("1"), &data("a"));
        s.follow(&ALL, &watcher::Event::Delete(secret("pg", "1")));
        assert_eq!(s.current(&ALL, "pg"), None);

        // Deleted while the watch was down: the relist does not have it.
        s.follow(&ALL, &watcher::Event::Apply(secret("pg", "3")));
        s.remember(&ALL, "pg", Some("3"), &data("c"));
        s.follow(&ALL, &watcher::Event::<Secret>::Init);
        s.follow(&ALL, &watcher::Event::InitApply(secret("other", "7")));
        assert_eq!(
            s.current(&ALL, "pg"),
            Some(data("c")),
            "until the list is done"
        );
        s.follow(&ALL, &watcher::Event::<Secret>::InitDone);
        assert_eq!(s.current(&ALL, "pg"), None);
    }

    #[test]
    fn a_lagging_watch_of_another_scope_cannot_take_a_scope_back() {
        let s = ServerSecrets::default();
        let (a, b) = (Some("a".to_string()), Some("b".to_string()));
        s.follow(&b, &watcher::Event::Apply(secret("pg", "3")));
        s.remember(&b, "pg", Some("2"), &data("old"));
        // Scope a's watch is behind: it delivers version 2 now.
        s.follow(&a, &watcher::Event::Apply(secret("pg", "2")));
        assert_eq!(s.current(&b, "pg"), None, "b saw 3: read again");
        assert_eq!(s.current(&a, "pg"), None, "a has read nothing yet");
    }
}
