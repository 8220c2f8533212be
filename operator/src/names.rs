//! Names, labels, annotations and Secret keys the operator's steps share.
//!
//! The builders write these, and `apply` (prune selector), `status` (Secret
//! name, selectors) and the controller (Secret reads, the running key
//! checksum) read them back. They live here, not in `build/`, so that no step
//! reaches into a builder for a name: a renamed label or Secret key changes
//! in one place.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use crate::model::{Slot, Tenant};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "chorus-operator";
/// Label naming the ChatTenant a child belongs to.
pub const TENANT_LABEL: &str = "chorus.dev/tenant";
/// Label naming the slot (`blue`/`green`) of slot-specific children.
pub const SLOT_LABEL: &str = "chorus.dev/slot";
/// Label key saying which controller manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// `app.kubernetes.io/managed-by` value of every child.
pub const MANAGED_BY: &str = "chorus-operator";

/// Pod annotation that changes when the database password is rotated, so
/// pods restart with the new Secret value.
pub const PASSWORD_ANNOTATION: &str = "chorus.dev/db-password-changed-at";
/// Pod annotation carrying a checksum of the JWT key read from a Secret
/// (`<name>-auth` or `spec.auth.externalJwt.secretRef`), so pods restart,
/// one at a time, when the key is rotated.
pub const AUTH_KEY_ANNOTATION: &str = "chorus.dev/auth-key-checksum";

/// Pod annotation carrying a checksum of the connection URI in `<name>-db`
/// (host, port, database, user, password, sslmode): the pods read it only at
/// start-up (`CHAT_DATABASE_URL`), so a changed value rolls them.
pub const DATABASE_URI_ANNOTATION: &str = "chorus.dev/database-uri-checksum";
/// Pod annotation carrying a checksum of every Secret and ConfigMap value
/// `spec.runtime.env` reads through `valueFrom` (read only at start-up).
pub const ENV_REFS_ANNOTATION: &str = "chorus.dev/env-refs-checksum";

/// Key of `<name>-db` holding the full connection URI.
pub const DB_SECRET_URI_KEY: &str = "uri";
/// Key of `<name>-db` holding the password.
pub const DB_SECRET_PASSWORD_KEY: &str = "password";
/// Key of `<name>-auth` holding the HS256 signing key.
pub const AUTH_SECRET_KEY: &str = "jwt-secret";

/// Every suffix the operator appends to `metadata.name` to name a child
/// (Deployments and Services `-blue`/`-green`, the preview Service, the two
/// NetworkPolicies, the two Secrets). The bare name is used too (Service,
/// HPA, PDB, Ingress, HTTPRoute). Admission (the CRD's CEL rule on
/// `metadata.name`) and [`crate::validate`] keep `<name><suffix>` a DNS-1035
/// label (the rule for Service names) for the longest one.
pub const CHILD_SUFFIXES: [&str; 7] = [
    "-blue",
    "-green",
    "-preview",
    "-default-deny",
    "-allow",
    "-db",
    "-auth",
];

/// The longest `metadata.name` whose every child name is a DNS-1035 label
/// (at most 63 characters): 63 minus the longest of [`CHILD_SUFFIXES`].
pub const MAX_NAME_LEN: usize = 50;

/// Every child name of a tenant called `name`.
pub fn child_names(name: &str) -> Vec<String> {
    std::iter::once(name.to_string())
        .chain(CHILD_SUFFIXES.iter().map(|s| format!("{name}{s}")))
        .collect()
}

/// `<name>-<slot>`: the Deployment (and Service) of one slot.
pub fn slot_name(t: &Tenant, slot: Slot) -> String {
    format!("{}-{}", t.name, slot.as_str())
}

/// `<name>-db`.
pub fn db_secret_name(t: &Tenant) -> String {
    format!("{}-db", t.name)
}

/// `<name>-auth`.
pub fn auth_secret_name(t: &Tenant) -> String {
    format!("{}-auth", t.name)
}

/// Labels every child carries.
pub fn labels(t: &Tenant) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "chat-runtime"),
        ("app.kubernetes.io/instance", t.name.as_str()),
        ("app.kubernetes.io/component", "chat"),
        ("app.kubernetes.io/part-of", "chorus"),
        (MANAGED_BY_LABEL, MANAGED_BY),
        (TENANT_LABEL, t.name.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Labels of a slot-specific child.
pub fn slot_labels(t: &Tenant, slot: Slot) -> BTreeMap<String, String> {
    let mut l = labels(t);
    l.insert(SLOT_LABEL.into(), slot.as_str().into());
    l
}

/// The label selector of every pod of the tenant.
pub fn tenant_selector(t: &Tenant) -> BTreeMap<String, String> {
    [(TENANT_LABEL.to_string(), t.name.clone())].into()
}

/// The label selector of the pods of one slot.
pub fn slot_selector(t: &Tenant, slot: Slot) -> BTreeMap<String, String> {
    let mut s = tenant_selector(t);
    s.insert(SLOT_LABEL.into(), slot.as_str().into());
    s
}

/// `key=value,...` form of a selector (status.selector, label queries).
pub fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `app.kubernetes.io/managed-by=chorus-operator`: every child of every
/// tenant (the watches of owned kinds).
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// The children of one tenant (the prune listing): its tenant label and
/// [`managed_selector`].
pub fn tenant_children_selector(t: &Tenant) -> String {
    format!("{TENANT_LABEL}={},{}", t.name, managed_selector())
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
    fn selector_strings_are_sorted() {
        let s: BTreeMap<_, _> =
            [("b".to_string(), "2".to_string()), ("a".into(), "1".into())].into();
        assert_eq!(selector_string(&s), "a=1,b=2");
    }

    #[test]
    fn selectors_name_the_tenant_and_the_manager() {
        let (t, _) = tenant_and_plan(|_| {});
        assert_eq!(
            tenant_children_selector(&t),
            "chorus.dev/tenant=acme,app.kubernetes.io/managed-by=chorus-operator"
        );
        assert_eq!(slot_name(&t, Slot::Green), "acme-green");
    }

    #[test]
    fn the_longest_suffix_fits_a_dns_label_at_the_longest_name() {
        let longest = CHILD_SUFFIXES.iter().map(|s| s.len()).max().unwrap();
        assert_eq!(MAX_NAME_LEN + longest, 63);
        for n in child_names(&"a".repeat(MAX_NAME_LEN)) {
            assert!(n.len() <= 63, "{n}");
        }
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
