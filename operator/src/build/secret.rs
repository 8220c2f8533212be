//! Secrets `<name>-db` (connection details) and `<name>-auth` (the JWT key).
//!
//! Both are created once. The operator passes the existing values back in
//! (the Secret is the source of truth) and never regenerates them silently.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use rand::RngCore;

use super::meta::{child_meta, labels};
use crate::{
    database::{Ident, ServerConfig},
    model::Tenant,
};

/// Key of `<name>-db` holding the full connection URI.
pub const DB_SECRET_URI_KEY: &str = "uri";
/// Key of `<name>-db` holding the password.
pub const DB_SECRET_PASSWORD_KEY: &str = "password";
/// Key of `<name>-auth` holding the HS256 signing key.
pub const AUTH_SECRET_KEY: &str = "jwt-secret";

/// `<name>-db`.
pub fn db_secret_name(t: &Tenant) -> String {
    format!("{}-db", t.name)
}

/// `<name>-auth`.
pub fn auth_secret_name(t: &Tenant) -> String {
    format!("{}-auth", t.name)
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// The connection Secret for `role` with `password` on `server`.
pub fn build_db_secret(t: &Tenant, server: &ServerConfig, role: &Ident, password: &str) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        ("username", role.as_str().to_string()),
        (DB_SECRET_PASSWORD_KEY, password.to_string()),
        ("host", server.host.clone()),
        ("port", server.port.to_string()),
        ("dbname", role.as_str().to_string()),
        (DB_SECRET_URI_KEY, server.tenant_uri(role, password, role)),
        (
            "jdbc-uri",
            format!(
                "jdbc:postgresql://{}:{}/{}?user={}&sslmode={}",
                server.host, server.port, role, role, server.ssl_mode
            ),
        ),
    ]
    .into_iter()
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

/// Reads a key of a Secret as UTF-8, if present and non-empty.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).to_string())
        .filter(|v| !v.is_empty())
}

/// A short checksum of a key, safe to show in a pod annotation: it changes
/// when the key does and reveals nothing usable about it.
pub fn key_checksum(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

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
    }

    #[test]
    fn jwt_keys_are_long_and_random() {
        let k = generate_jwt_key();
        assert_eq!(k.len(), 64);
        assert_ne!(k, generate_jwt_key());
    }

    #[test]
    fn key_checksums_differ_by_key_and_hide_it() {
        let a = key_checksum("0123456789abcdef0123456789abcdef");
        assert_eq!(a.len(), 16);
        assert_eq!(a, key_checksum("0123456789abcdef0123456789abcdef"));
        assert_ne!(a, key_checksum("0123456789abcdef0123456789abcdeF"));
        assert!(!a.contains("0123"));
    }
}
