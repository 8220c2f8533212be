//! Secrets `<name>-db` (connection details) and `<name>-auth` (the JWT key).
//!
//! Both are created once. The operator passes the existing values back in
//! (the Secret is the source of truth) and never regenerates them silently.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use rand::RngCore;

use super::meta::child_meta;
use crate::{
    database::{Ident, ServerConfig},
    model::Tenant,
    names::{
        AUTH_SECRET_KEY, DB_SECRET_PASSWORD_KEY, DB_SECRET_URI_KEY, auth_secret_name,
        db_secret_name, labels,
    },
};

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// The connection Secret for `role` with `password` on `server`: to the
/// tenant's database, or with Schema isolation to the shared database (key
/// `schema` then names the tenant's schema, the role's `search_path`).
pub fn build_db_secret(t: &Tenant, server: &ServerConfig, role: &Ident, password: &str) -> Secret {
    let db = t.database.database();
    let data: BTreeMap<String, ByteString> = [
        ("username", role.as_str().to_string()),
        (DB_SECRET_PASSWORD_KEY, password.to_string()),
        ("host", server.host.clone()),
        ("port", server.port.to_string()),
        ("dbname", db.as_str().to_string()),
        (DB_SECRET_URI_KEY, server.tenant_uri(role, password, db)),
        (
            "jdbc-uri",
            format!(
                "jdbc:postgresql://{}:{}/{}?user={}&sslmode={}",
                server.host, server.port, db, role, server.ssl_mode
            ),
        ),
    ]
    .into_iter()
    .chain(
        t.database
            .schema()
            .map(|s| ("schema", s.as_str().to_string())),
    )
    .map(|(k, v)| (k.to_string(), bytes(&v)))
    .collect();
    Secret {
        metadata: child_meta(t, db_secret_name(t), labels(t)),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The JWT signing-key Secret holding `key`.
pub fn build_auth_secret(t: &Tenant, key: &str) -> Secret {
    Secret {
        metadata: child_meta(t, auth_secret_name(t), labels(t)),
        type_: Some("Opaque".into()),
        data: Some([(AUTH_SECRET_KEY.to_string(), bytes(key))].into()),
        ..Secret::default()
    }
}

/// A new HS256 signing key: 48 random bytes, base64url (64 characters).
pub fn generate_jwt_key() -> String {
    let mut raw = [0u8; 48];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build::tests::tenant_and_plan, names::secret_value};

    #[test]
    fn db_secret_has_every_connection_key() {
        let (t, _) = tenant_and_plan(|_| {});
        let server = ServerConfig {
            host: "pg.db.svc".into(),
            port: 5432,
            username: "admin".into(),
            password: "x".into(),
            ssl_mode: "require".into(),
        };
        let s = build_db_secret(&t, &server, &t.database.name, "pw123");
        assert_eq!(s.metadata.name.as_deref(), Some("acme-db"));
        for key in [
            "username", "password", "host", "port", "dbname", "uri", "jdbc-uri",
        ] {
            assert!(secret_value(&s, key).is_some(), "missing {key}");
        }
        assert_eq!(
            secret_value(&s, "uri").unwrap(),
            "postgres://chat_acme:pw123@pg.db.svc:5432/chat_acme?sslmode=require"
        );
        assert!(!secret_value(&s, "jdbc-uri").unwrap().contains("pw123"));
        assert!(secret_value(&s, "schema").is_none());

        let (t, _) = tenant_and_plan(|ct| {
            ct.spec.database.isolation = crate::crd::DatabaseIsolation::Schema;
        });
        let s = build_db_secret(&t, &server, &t.database.name, "pw123");
        assert_eq!(
            secret_value(&s, "uri").unwrap(),
            "postgres://chat_acme:pw123@pg.db.svc:5432/chorus_tenants?sslmode=require"
        );
        assert_eq!(secret_value(&s, "dbname").unwrap(), "chorus_tenants");
        assert_eq!(secret_value(&s, "schema").unwrap(), "chat_acme");
        assert_eq!(
            secret_value(&s, "jdbc-uri").unwrap(),
            "jdbc:postgresql://pg.db.svc:5432/chorus_tenants?user=chat_acme&sslmode=require"
        );
    }

    #[test]
    fn jwt_keys_are_long_and_random() {
        let k = generate_jwt_key();
        assert_eq!(k.len(), 64);
        assert_ne!(k, generate_jwt_key());
    }
}
