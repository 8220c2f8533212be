//! Tenants whose role, database and login were found in order a moment ago.
//!
//! A new tenant reconciles several times within seconds: once to provision,
//! then again as its Deployment's pods come up. Each of those would read
//! the catalog on an admin connection and log in as the tenant (a new
//! PostgreSQL backend and a SCRAM exchange on both sides) to find what the
//! first one just found. A tenant verified within [`window`] of the resync,
//! against the same server settings, database settings and password, skips
//! both; the idle resync (never inside the window) always checks, so drift
//! made by hand is still found and repaired at the next resync.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::runtime::reflector::ObjectRef;

use crate::{
    crd::ChatTenant,
    database::{ServerConfig, TenantDatabase},
};

/// The longest a verification is trusted.
pub(super) const MAX_WINDOW: Duration = Duration::from_secs(30);

/// How long a verification is trusted with `resync`: half the resync, at
/// most [`MAX_WINDOW`], so every resync checks again. Pure.
pub(super) fn window(resync: Duration) -> Duration {
    (resync / 2).min(MAX_WINDOW)
}

/// What a verification held for: the server's settings (admin login
/// included), the tenant's database settings and the password checked.
/// Pure.
pub(super) fn key(server: &ServerConfig, db: &TenantDatabase, password: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &server.host,
        server.port,
        &server.username,
        &server.password,
        &server.ssl_mode,
    )
        .hash(&mut h);
    (
        db.name.as_str(),
        db.database().as_str(),
        db.connection_limit,
        &db.owner,
        password,
    )
        .hash(&mut h);
    h.finish()
}

/// The last successful verification of each tenant.
#[derive(Default)]
pub(super) struct Verified {
    entries: Mutex<HashMap<ObjectRef<ChatTenant>, (Instant, u64)>>,
}

impl Verified {
    /// Whether `ct` was verified with `key` less than `window` ago.
    pub(super) fn fresh(&self, ct: &ChatTenant, key: u64, window: Duration) -> bool {
        self.entries.lock().is_ok_and(|e| {
            e.get(&ObjectRef::from_obj(ct))
                .is_some_and(|(at, k)| *k == key && at.elapsed() < window)
        })
    }

    /// `ct` was verified with `key` just now.
    pub(super) fn record(&self, ct: &ChatTenant, key: u64) {
        if let Ok(mut e) = self.entries.lock() {
            e.insert(ObjectRef::from_obj(ct), (Instant::now(), key));
        }
    }

    /// `ct` is not known to be in order (a check failed, or it is deleted).
    pub(super) fn forget(&self, ct: &ChatTenant) {
        if let Ok(mut e) = self.entries.lock() {
            e.remove(&ObjectRef::from_obj(ct));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{database::Ident, validate::tests::sample};

    fn server() -> ServerConfig {
        ServerConfig {
            host: "pg".into(),
            port: 5432,
            username: "admin".into(),
            password: "secret".into(),
            ssl_mode: "disable".into(),
        }
    }

    fn db() -> TenantDatabase {
        TenantDatabase {
            name: Ident::new("chat_acme").unwrap(),
            connection_limit: 20,
            owner: "ns/acme".into(),
            isolation: crate::database::provision::Isolation::Database,
        }
    }

    #[test]
    fn the_window_is_half_the_resync_and_at_most_thirty_seconds() {
        assert_eq!(window(Duration::from_secs(300)), MAX_WINDOW);
        assert_eq!(window(Duration::from_secs(20)), Duration::from_secs(10));
        assert_eq!(window(Duration::from_secs(1)), Duration::from_millis(500));
    }

    #[test]
    fn any_change_of_server_database_or_password_needs_a_new_check() {
        let k = key(&server(), &db(), "pw");
        assert_eq!(k, key(&server(), &db(), "pw"));
        assert_ne!(k, key(&server(), &db(), "other"));
        let mut s = server();
        s.host = "pg2".into();
        assert_ne!(k, key(&s, &db(), "pw"));
        let mut s = server();
        s.password = "new-admin-password".into();
        assert_ne!(k, key(&s, &db(), "pw"));
        let mut d = db();
        d.connection_limit = 30;
        assert_ne!(k, key(&server(), &d, "pw"));
    }

    #[test]
    fn a_verification_holds_for_its_key_within_the_window_until_forgotten() {
        let ct = sample();
        let v = Verified::default();
        let long = Duration::from_secs(60);
        assert!(!v.fresh(&ct, 1, long));
        v.record(&ct, 1);
        assert!(v.fresh(&ct, 1, long));
        assert!(!v.fresh(&ct, 2, long), "another key");
        assert!(!v.fresh(&ct, 1, Duration::ZERO), "outside the window");
        v.forget(&ct);
        assert!(!v.fresh(&ct, 1, long));
    }
}
